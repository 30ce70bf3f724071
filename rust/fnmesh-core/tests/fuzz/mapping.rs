//! Target `mapping`: the HTTP request mapping (`request_input`, `request_summary`) and the
//! reading of function results (`reply_from_result`, `middleware_verdict`, `condition_skips`,
//! `error_reply`).
//!
//! Properties, for any method, template, path parameters, query, headers, body and results:
//! nothing panics; the function input and the middleware summary are valid JSON objects with
//! their fields; every reply is a status from 100 to 599 and headers `http` accepts, so the
//! server can always build the response.
//!
//! An input is a byte string of chunks (see `gen::Chunks`): method, template, path parameters,
//! query, headers, body, a function result, a middleware result, an error code and message.

use std::collections::BTreeMap;

use ::http::header::{HeaderMap, HeaderName, HeaderValue};
use fnmesh_core::http::mapping::{
    condition_skips, error_reply, middleware_verdict, reply_from_result, request_input,
    request_summary, HttpReply, MiddlewareVerdict, RequestParts,
};
use fnmesh_core::protocol::{decode, InvokeFunction, Message};
use serde_json::value::RawValue;
use serde_json::Value;

use super::gen::{
    json_number, json_string, json_value, mutate, put_chunk, random_bytes, result_corpus,
    route_corpus, Chunks,
};
use super::runner::{ensure, Finding, Rng, Target};

pub const TARGET: Target = Target {
    name: "mapping",
    generate,
    check,
};

/// The JSON text of what `request_input` returns, whether a tree (`serde_json::Value`) or raw
/// JSON (`Box<RawValue>`), so the harness checks either.
pub trait JsonText {
    fn json_text(&self) -> String;
}

impl JsonText for Value {
    fn json_text(&self) -> String {
        self.to_string()
    }
}

impl JsonText for Box<RawValue> {
    fn json_text(&self) -> String {
        self.get().to_owned()
    }
}

const METHODS: &[&str] = &[
    "GET", "post", "Put", "DELETE", "PATCH", "HEAD", "OPTIONS", "FETCH", "",
];

const HEADER_NAMES: &[&str] = &[
    "content-type",
    "Content-Type",
    "x-a",
    "set-cookie",
    "accept",
    "authorization",
    "x-\u{e9}",
    "bad name",
    "",
];

const HEADER_VALUES: &[&[u8]] = &[
    b"application/json",
    b"Application/JSON; charset=utf-8",
    b"text/plain",
    b"applicationjson",
    b"caf\xe9",
    b"\xff\xfe",
    b"a\r\nb",
    b"",
    b" padded ",
];

const QUERY_PIECES: &[&str] = &[
    "a=1",
    "a=2",
    "b=x+y%2Bz",
    "flag",
    "",
    "%zz=%",
    "caf%C3%A9=%E2%82%AC",
    "bad=%ff",
    "=v",
    "e=",
    "k=%",
    "k=%4",
    "+=+",
    "a=b=c",
];

fn generate(rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(10) {
        return random_bytes(rng, 512);
    }
    let mut out = Vec::new();
    put_chunk(&mut out, rng.pick(METHODS).as_bytes());
    let template = match route_corpus() {
        [] => "todo/:id".to_owned(),
        routes => rng.pick(routes).1.clone(),
    };
    put_chunk(&mut out, template.as_bytes());
    let params = rng.below(4);
    put_chunk(&mut out, &[params as u8]);
    for _ in 0..params {
        put_chunk(&mut out, &string_contents(rng));
        put_chunk(&mut out, &string_contents(rng));
    }
    let query: Vec<&str> = (0..rng.below(6)).map(|_| *rng.pick(QUERY_PIECES)).collect();
    put_chunk(&mut out, &[rng.byte()]);
    put_chunk(&mut out, query.join("&").as_bytes());
    let headers = rng.below(6);
    put_chunk(&mut out, &[headers as u8]);
    for _ in 0..headers {
        put_chunk(&mut out, rng.pick(HEADER_NAMES).as_bytes());
        let value = if rng.one_in(4) {
            random_bytes(rng, 16)
        } else {
            rng.pick(HEADER_VALUES).to_vec()
        };
        put_chunk(&mut out, &value);
    }
    let mut body = Vec::new();
    let strict = rng.one_in(2);
    json_value(rng, strict, 4, &mut body);
    if rng.one_in(4) {
        body = mutate(rng, &body, &[]);
    }
    put_chunk(&mut out, &body);
    put_chunk(&mut out, &result(rng));
    put_chunk(&mut out, &verdict(rng));
    put_chunk(&mut out, &string_contents(rng));
    put_chunk(&mut out, &string_contents(rng));
    out
}

/// The text inside a generated JSON string literal (escapes and odd bytes included).
fn string_contents(rng: &mut Rng) -> Vec<u8> {
    let mut s = Vec::new();
    let strict = rng.one_in(2);
    json_string(rng, strict, &mut s);
    s[1..s.len() - 1].to_vec()
}

/// A function result read as a response: a seed, mutated or not, or a generated object.
fn result(rng: &mut Rng) -> Vec<u8> {
    let corpus = result_corpus();
    if !corpus.is_empty() && rng.one_in(2) {
        let seed = rng.pick(corpus).clone();
        return if rng.one_in(2) {
            seed
        } else {
            mutate(rng, &seed, corpus)
        };
    }
    response_object(rng)
}

/// `{status_code?, statusCode?, headers?, body?}` with right and wrong types.
fn response_object(rng: &mut Rng) -> Vec<u8> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for key in ["status_code", "statusCode"] {
        if rng.one_in(2) {
            let mut f = format!("\"{key}\":").into_bytes();
            match rng.below(4) {
                0 => f.extend_from_slice(b"null"),
                1 => {
                    let strict = !rng.one_in(8);
                    json_value(rng, strict, 1, &mut f)
                }
                _ => json_number(rng, &mut f),
            }
            fields.push(f);
        }
    }
    if rng.one_in(2) {
        let mut f = b"\"headers\":".to_vec();
        match rng.below(4) {
            0 => {
                f.push(b'{');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        f.push(b',');
                    }
                    let strict = !rng.one_in(8);
                    json_string(rng, strict, &mut f);
                    f.push(b':');
                    let strict = !rng.one_in(8);
                    json_value(rng, strict, 1, &mut f);
                }
                f.push(b'}');
            }
            1 => {
                f.push(b'[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        f.push(b',');
                    }
                    let strict = !rng.one_in(8);
                    json_string(rng, strict, &mut f);
                }
                f.push(b']');
            }
            2 => f.extend_from_slice(
                rng.pick(&[
                    r#"{"Content-Type":"text/html"}"#,
                    r#"["content-type: text/plain","Set-Cookie: a=1"]"#,
                    r#"{"x-a":"v\r\nx-b: 1"}"#,
                    r#"[": v"]"#,
                ])
                .as_bytes(),
            ),
            _ => {
                let strict = !rng.one_in(8);
                json_value(rng, strict, 2, &mut f)
            }
        }
        fields.push(f);
    }
    if rng.one_in(2) {
        let mut f = b"\"body\":".to_vec();
        let strict = !rng.one_in(8);
        json_value(rng, strict, 3, &mut f);
        fields.push(f);
    }
    let mut out = b"{".to_vec();
    out.extend_from_slice(&fields.join(&b","[..]));
    out.push(b'}');
    out
}

/// A middleware result: `continue`, `respond` with a response, or something else.
fn verdict(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => br#"{"action":"continue"}"#.to_vec(),
        1 | 2 => {
            let mut out = br#"{"action":"respond","response":"#.to_vec();
            out.extend_from_slice(&response_object(rng));
            out.push(b'}');
            out
        }
        _ => {
            let mut out = Vec::new();
            let strict = !rng.one_in(8);
            json_value(rng, strict, 3, &mut out);
            out
        }
    }
}

fn check(input: &[u8]) -> Result<bool, Finding> {
    let mut chunks = Chunks::new(input);
    let method = chunks.text();
    let template = chunks.text();
    let path_params: Vec<(String, String)> = (0..chunks.small() % 9)
        .map(|_| (chunks.text(), chunks.text()))
        .collect();
    let has_query = chunks.small() % 2 == 0;
    let query = chunks.text();
    let mut headers = HeaderMap::new();
    for _ in 0..chunks.small() % 17 {
        let (name, value) = (chunks.bytes(), chunks.bytes());
        // The server only ever sees headers `http` accepted.
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    let body = chunks.bytes();
    let result = raw_json(chunks.bytes());
    let verdict = raw_json(chunks.bytes());
    let (code, message) = (chunks.text(), chunks.text());

    let parts = RequestParts {
        method: &method,
        template: &template,
        path_params: &path_params,
        query: has_query.then_some(query.as_str()),
        headers: &headers,
        body,
    };
    let input_json = request_input(&parts);
    carried_in_a_call(&input_json.json_text())?;
    let input = json_object(&input_json, "request_input")?;
    for key in [
        "query_params",
        "path_params",
        "headers",
        "path",
        "method",
        "body",
        "trigger",
    ] {
        ensure(input.contains_key(key), || {
            format!("request_input has no `{key}`")
        })?;
    }
    let upper = serde_json::from_str::<String>(input["method"].get()).ok();
    ensure(upper == Some(method.to_ascii_uppercase()), || {
        format!("request_input method {} for {method:?}", input["method"])
    })?;
    let summary = json_object(&request_summary(&parts), "request_summary")?;
    ensure(!summary.contains_key("body"), || {
        "request_summary has a body".to_owned()
    })?;

    let deep = result
        .as_deref()
        .is_some_and(|r| reply_from_result(Some(r)).is_ok());
    for result in [None, result.as_deref(), verdict.as_deref()] {
        if let Ok(reply) = reply_from_result(result) {
            sendable(&reply, "reply_from_result")?;
        }
        if let Ok(MiddlewareVerdict::Respond(reply)) = middleware_verdict(result) {
            sendable(&reply, "middleware_verdict")?;
        }
        let _ = condition_skips(result);
    }
    let status = 100 + (body.len() % 500) as u16;
    let reply = error_reply(
        status,
        &code,
        &message,
        Some(&template),
        &[("skipped", Value::Bool(true))],
    );
    sendable(&reply, "error_reply")?;
    let envelope: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| Finding::Property(format!("error_reply body is not JSON: {e}")))?;
    ensure(
        envelope["error"]["code"].as_str() == Some(code.as_str()),
        || format!("error_reply lost the code {code:?}: {envelope}"),
    )?;
    Ok(deep)
}

/// What a worker's `invocationresult` would hold: the value as raw JSON, if it is JSON.
fn raw_json(bytes: &[u8]) -> Option<Box<RawValue>> {
    serde_json::from_slice(bytes).ok()
}

/// Parses what a mapping function returned as a JSON object, its values kept raw.
///
/// "Valid JSON" is JSON syntax, as the codec reads it: a string may hold a lone surrogate escape
/// (`"\ud800"`), which a body passed through raw keeps and Python's `json` reads.
fn json_object(
    value: &impl JsonText,
    what: &str,
) -> Result<BTreeMap<String, Box<RawValue>>, Finding> {
    let text = value.json_text();
    serde_json::from_str(&text)
        .map_err(|e| Finding::Property(format!("{what} is not a JSON object ({e}): {text}")))
}

/// The function input travels as the `data` of an `invokefunction`: that frame decodes (within
/// serde_json's nesting limit) and gives the input back unchanged.
fn carried_in_a_call(input: &str) -> Result<(), Finding> {
    let data = RawValue::from_string(input.to_owned())
        .map_err(|e| Finding::Property(format!("request_input is not JSON ({e}): {input}")))?;
    let call = Message::InvokeFunction(InvokeFunction {
        function_id: "f".to_owned(),
        data: Some(data),
        ..InvokeFunction::default()
    });
    match decode(&call.encode()) {
        Ok(Message::InvokeFunction(decoded)) => {
            ensure(decoded.data_or_null().get() == input, || {
                format!("the call changed the input: {input}")
            })
        }
        other => Err(Finding::Property(format!(
            "a call carrying the input does not decode: {other:?}; input: {input}"
        ))),
    }
}

/// The reply is one the server can send: a valid status and header set.
fn sendable(reply: &HttpReply, what: &str) -> Result<(), Finding> {
    ensure((100..=599).contains(&reply.status), || {
        format!("{what}: status {}", reply.status)
    })?;
    let mut response = ::http::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        ensure(
            HeaderName::from_bytes(name.as_bytes()).is_ok()
                && HeaderValue::from_bytes(value.as_bytes()).is_ok(),
            || format!("{what}: unsendable header {name:?}: {value:?}"),
        )?;
        response = response.header(name.as_str(), value.as_str());
    }
    response
        .body(reply.body.clone())
        .map(|_| ())
        .map_err(|e| Finding::Property(format!("{what}: the response does not build: {e}")))
}

/// The seeds of this target, for the corpus test: each seed result as the function result of
/// an otherwise plain request.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    super::gen::files("fuzz/http-results", "json")
        .into_iter()
        .map(|(name, result)| {
            let mut input = Vec::new();
            for chunk in [&b"GET"[..], b"todo/:id", b"\0", b"\0", b"a=1", b"\0", b"{}"] {
                put_chunk(&mut input, chunk);
            }
            put_chunk(&mut input, &result);
            put_chunk(&mut input, &result);
            (name, input)
        })
        .collect()
}
