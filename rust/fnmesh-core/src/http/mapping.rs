//! What the `http` trigger hands to functions and how it turns their results into responses
//! (docs/protocol.md 6.3, buffered mode): the request as the function's input, the function's result
//! as an [`HttpReply`], the error envelope, and the middleware and condition verdicts.
//!
//! Everything here is pure: no sockets, no runtime; the server calls it.
//!
//! ```
//! use fnmesh_core::http::mapping::reply_from_result;
//! use serde_json::value::RawValue;
//!
//! let result = RawValue::from_string(
//!     r#"{"status_code":201,"headers":{"x-id":"7"},"body":{"ok":true}}"#.to_owned(),
//! )
//! .unwrap();
//! let reply = reply_from_result(Some(&result))?;
//! assert_eq!(reply.status, 201);
//! assert_eq!(reply.body, br#"{"ok":true}"#);
//! assert!(reply.headers.contains(&("content-type".to_owned(), "application/json".to_owned())));
//! # Ok::<(), fnmesh_core::http::mapping::MappingError>(())
//! ```

use ::http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::protocol::RawJson;

use super::route::percent_decode;

const APPLICATION_JSON: &str = "application/json";

/// The deepest nesting of a JSON request body passed to the function; a deeper one reads as
/// `null`, like invalid JSON.
///
/// serde_json refuses text nested more than 128 levels. The function input wraps the body one
/// level down and the `invokefunction` frame that carries the input one more, so a body of 127
/// levels (accepted by the parser) made a call no worker could decode. 100 leaves room for
/// those envelopes and for queue deliveries that wrap a payload again.
pub const MAX_BODY_DEPTH: usize = 100;

/// One HTTP request, as the server received it and the router matched it.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The method as received (any case); functions see it upper-case.
    pub method: &'a str,
    /// The registered template (no leading `/`), not the concrete URL.
    pub template: &'a str,
    /// `(name, decoded value)` of the path parameters, as [`super::route::Router::find`] gives them.
    pub path_params: &'a [(String, String)],
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The whole request body.
    pub body: &'a [u8],
}

/// The function input for a request:
/// `{"query_params":{..},"path_params":{..},"headers":{..},"path":template,"method":"PUT","body":..,
/// "trigger":{"type":"http","path":template,"method":"PUT"}}`.
///
/// `query_params` are form-urlencoded (`+` is a space), one value per key, the last one winning;
/// `headers` have lower-case names, one value per name (the last one), values decoded lossily
/// when they are not UTF-8; `body` is the request's JSON text when `content-type` contains
/// `application/json` in any case (`null` when it is empty or invalid), else `null`.
///
/// The body is checked to be JSON but never parsed into a tree: it is copied into the input
/// as sent, so a body costs its own size once more, whatever its shape. (A tree costs up to 16x
/// the text for `[0,0,...]`, which let a body within the limit cost many times the limit.)
pub fn request_input(parts: &RequestParts<'_>) -> RawJson {
    let mut input = summary_fields(parts);
    let method = parts.method.to_ascii_uppercase();
    input.insert("path".to_owned(), Value::from(parts.template));
    let mut trigger = Map::new();
    trigger.insert("type".to_owned(), Value::from("http"));
    trigger.insert("path".to_owned(), Value::from(parts.template));
    trigger.insert("method".to_owned(), Value::from(method));
    input.insert("trigger".to_owned(), Value::Object(trigger));
    let rest = Value::Object(input).to_string();
    let body = body_json(parts).unwrap_or("null");
    // `rest` is a non-empty object (`{"headers":...}`): splice `"body":<raw>,` in after its `{`.
    let mut text = String::with_capacity(rest.len() + body.len() + 8);
    text.push_str("{\"body\":");
    text.push_str(body);
    text.push(',');
    text.push_str(&rest[1..]);
    RawValue::from_string(text).expect("a JSON object with valid JSON spliced in")
}

/// The request as middleware sees it: `{"path_params","query_params","headers","method"}`, the
/// fields of [`request_input`] without the body.
pub fn request_summary(parts: &RequestParts<'_>) -> Value {
    Value::Object(summary_fields(parts))
}

fn summary_fields(parts: &RequestParts<'_>) -> Map<String, Value> {
    let path_params: Map<String, Value> = parts
        .path_params
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let mut headers = Map::new();
    for (name, value) in parts.headers {
        // `http` stores names lower-case already; a repeated name keeps its last value.
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.insert(name.as_str().to_owned(), Value::from(value));
    }
    let mut fields = Map::new();
    fields.insert(
        "query_params".to_owned(),
        Value::Object(query_params(parts.query)),
    );
    fields.insert("path_params".to_owned(), Value::Object(path_params));
    fields.insert("headers".to_owned(), Value::Object(headers));
    fields.insert(
        "method".to_owned(),
        Value::from(parts.method.to_ascii_uppercase()),
    );
    fields
}

/// Decodes a form-urlencoded query string; a key without `=` gets an empty value.
fn query_params(query: Option<&str>) -> Map<String, Value> {
    let mut params = Map::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(form_decode(key), Value::from(form_decode(value)));
    }
    params
}

fn form_decode(raw: &str) -> String {
    // '+' is replaced before the escapes are decoded, so "%2B" still yields a literal '+'.
    if raw.contains('+') {
        percent_decode(&raw.replace('+', " "))
    } else {
        percent_decode(raw)
    }
}

/// The body's JSON text, when the content-type is JSON and the body is valid JSON.
fn body_json<'a>(parts: &RequestParts<'a>) -> Option<&'a str> {
    // The same content-type the function sees in `headers`: the last one.
    let is_json = parts
        .headers
        .get_all(CONTENT_TYPE)
        .iter()
        .next_back()
        .is_some_and(|ct| {
            ct.as_bytes()
                .windows(APPLICATION_JSON.len())
                .any(|w| w.eq_ignore_ascii_case(APPLICATION_JSON.as_bytes()))
        });
    if !is_json {
        return None;
    }
    if nesting_depth(parts.body) > MAX_BODY_DEPTH {
        return None;
    }
    // Validates (UTF-8, syntax, serde_json's nesting limit) without building anything.
    serde_json::from_slice::<&RawValue>(parts.body)
        .ok()
        .map(RawValue::get)
}

/// Why a function's result (or a middleware's verdict) cannot be turned into an HTTP response.
/// The text names the problem and is the message of the 500 the client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    /// The result is not a response object, or its status is not an integer from 100 to 599.
    #[error("invalid response: {0}")]
    Response(String),
    /// The body is a JSON string that does not decode.
    #[error("invalid response body: {0}")]
    Body(String),
    /// `headers` is neither an object nor an array of `"Name: value"` strings, or a header
    /// could not be sent.
    #[error("invalid response headers: {0}")]
    Headers(String),
    /// A middleware answered something other than `continue` or `respond` with a response.
    #[error("invalid middleware result: {0}")]
    Middleware(String),
}

/// How deeply arrays and objects nest in a JSON text (brackets inside strings not counted); one
/// pass, no allocation. Only meaningful for valid JSON.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A buffered HTTP response.
///
/// Every header name and value is valid for [`HeaderName::from_bytes`] and
/// [`HeaderValue::from_bytes`]. A name may repeat (`set-cookie`): the server appends, it does not
/// replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code, 100 to 599.
    pub status: u16,
    /// `(name, value)` pairs in the order the function gave them.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl HttpReply {
    pub(crate) fn json(status: u16, body: Vec<u8>) -> HttpReply {
        HttpReply {
            status,
            headers: vec![(
                CONTENT_TYPE.as_str().to_owned(),
                APPLICATION_JSON.to_owned(),
            )],
            body,
        }
    }
}

/// The fields of a function result read as a response; values stay raw JSON so a large body is
/// copied, not parsed and re-serialized.
#[derive(Deserialize)]
struct ResponseFields<'a> {
    #[serde(borrow, default)]
    status_code: Option<&'a RawValue>,
    #[serde(rename = "statusCode", borrow, default)]
    status_code_camel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    headers: Option<&'a RawValue>,
    // `null` is a body (an empty one under a handler's content-type), unlike a missing `body`.
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// Turns a function's result (raw JSON; `None` when there is none) into a response.
///
/// The status is `status_code`, or `statusCode` when `status_code` is absent or `null`, default
/// 200. `headers` is an object `{name: value}` (a value that is not a string becomes its JSON
/// text) or an array of `"Name: value"` strings. `body` defaults to `{}`. With a content-type
/// from the handler (any case) a string body is sent as its raw bytes, a `null` body as nothing
/// and any other body as its JSON text; without one the body is sent as JSON text with
/// `content-type: application/json` added. A result that is not a JSON object is `200 {}`.
///
/// # Errors
///
/// A [`MappingError`] (the server answers 500) when the status is not an integer from 100 to 599,
/// `headers` is neither an object nor an array of strings, an array entry has no `:`, or a header
/// name or value could not be sent.
pub fn reply_from_result(result: Option<&RawValue>) -> Result<HttpReply, MappingError> {
    match result {
        Some(raw) if is_object(raw) => reply_from_object(raw),
        _ => Ok(HttpReply::json(200, b"{}".to_vec())),
    }
}

fn reply_from_object(raw: &RawValue) -> Result<HttpReply, MappingError> {
    let fields: ResponseFields<'_> =
        serde_json::from_str(raw.get()).map_err(|e| MappingError::Response(e.to_string()))?;
    let status = match (fields.status_code, fields.status_code_camel) {
        (Some(code), _) => parse_status(code, "status_code")?,
        (None, Some(code)) => parse_status(code, "statusCode")?,
        (None, None) => 200,
    };
    let mut headers = match fields.headers {
        Some(raw) => parse_headers(raw)?,
        None => Vec::new(),
    };
    let has_content_type = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    let body = match fields.body {
        None => b"{}".to_vec(),
        Some(body) if has_content_type => match body.get().as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(body.get())
                .map_err(|e| MappingError::Body(e.to_string()))?
                .into_bytes(),
            Some(b'n') => Vec::new(), // `null`: the only JSON value starting with 'n'
            _ => body.get().as_bytes().to_vec(),
        },
        Some(body) => body.get().as_bytes().to_vec(),
    };
    if !has_content_type {
        headers.push((
            CONTENT_TYPE.as_str().to_owned(),
            APPLICATION_JSON.to_owned(),
        ));
    }
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

fn parse_status(raw: &RawValue, field: &str) -> Result<u16, MappingError> {
    serde_json::from_str::<u64>(raw.get())
        .ok()
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (100..=599).contains(code))
        .ok_or_else(|| {
            MappingError::Response(format!(
                "'{field}' must be an integer from 100 to 599, got {}",
                excerpt(raw)
            ))
        })
}

fn parse_headers(raw: &RawValue) -> Result<Vec<(String, String)>, MappingError> {
    let parsed: Value =
        serde_json::from_str(raw.get()).map_err(|e| MappingError::Headers(e.to_string()))?;
    let mut headers = Vec::new();
    match parsed {
        Value::Null => {}
        Value::Object(map) => {
            for (name, value) in map {
                let value = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                headers.push(checked_header(name, value)?);
            }
        }
        Value::Array(entries) => {
            for entry in entries {
                let Value::String(line) = entry else {
                    return Err(MappingError::Headers(format!(
                        "entry {entry} is not a \"Name: value\" string"
                    )));
                };
                let Some((name, value)) = line.split_once(':') else {
                    return Err(MappingError::Headers(format!(
                        "entry \"{line}\" has no ':' (expected \"Name: value\")"
                    )));
                };
                headers.push(checked_header(
                    name.trim().to_owned(),
                    value.trim().to_owned(),
                )?);
            }
        }
        other => {
            return Err(MappingError::Headers(format!(
                "expected an object or an array of \"Name: value\" strings, got {}",
                excerpt_str(&other.to_string())
            )))
        }
    }
    Ok(headers)
}

/// Refuses what the server could not send (a CR/LF in a value would split the response).
fn checked_header(name: String, value: String) -> Result<(String, String), MappingError> {
    if HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(MappingError::Headers(format!(
            "invalid header name \"{name}\""
        )));
    }
    if HeaderValue::from_bytes(value.as_bytes()).is_err() {
        return Err(MappingError::Headers(format!(
            "invalid value for header \"{name}\""
        )));
    }
    Ok((name, value))
}

/// The start of a JSON text for an error message, so a huge value is not echoed whole.
fn excerpt(raw: &RawValue) -> String {
    excerpt_str(raw.get())
}

fn excerpt_str(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The error envelope `{"error":{"code":..,"message":..,"error_id"?:..}}`, plus `extra`
/// top-level fields (e.g. `("skipped", true)` for a condition that was not met), as JSON.
pub fn error_reply(
    status: u16,
    code: &str,
    message: &str,
    error_id: Option<&str>,
    extra: &[(&str, Value)],
) -> HttpReply {
    let mut error = Map::new();
    error.insert("code".to_owned(), Value::from(code));
    error.insert("message".to_owned(), Value::from(message));
    if let Some(id) = error_id {
        error.insert("error_id".to_owned(), Value::from(id));
    }
    let mut envelope: Map<String, Value> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    // Inserted last so an `extra` named "error" cannot hide the envelope.
    envelope.insert("error".to_owned(), Value::Object(error));
    let body = Value::Object(envelope).to_string().into_bytes();
    HttpReply::json(status, body)
}

/// What a middleware function decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MiddlewareVerdict {
    /// `{"action":"continue"}`: go on to the next middleware or the handler.
    Continue,
    /// `{"action":"respond","response":{..}}`: answer with this response, skip the handler.
    Respond(HttpReply),
}

#[derive(Deserialize)]
struct VerdictFields<'a> {
    #[serde(borrow, default)]
    action: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

/// Reads a middleware function's result: `{"action":"continue"}` or
/// `{"action":"respond","response":{status_code|statusCode, body, headers}}`, the response being
/// read like [`reply_from_result`] reads a result.
///
/// # Errors
///
/// A [`MappingError::Middleware`] for anything else: no result, not an object, another or no `action`, a `respond`
/// whose `response` is not an object, or a response [`reply_from_result`] refuses.
pub fn middleware_verdict(result: Option<&RawValue>) -> Result<MiddlewareVerdict, MappingError> {
    let raw = result.ok_or_else(|| MappingError::Middleware("no result".to_owned()))?;
    if !is_object(raw) {
        return Err(MappingError::Middleware(format!(
            "expected an object, got {}",
            excerpt(raw)
        )));
    }
    let fields: VerdictFields<'_> =
        serde_json::from_str(raw.get()).map_err(|e| MappingError::Middleware(e.to_string()))?;
    let action = fields
        .action
        .and_then(|a| serde_json::from_str::<String>(a.get()).ok());
    match action.as_deref() {
        Some("continue") => Ok(MiddlewareVerdict::Continue),
        Some("respond") => match fields.response {
            Some(response) if is_object(response) => {
                reply_from_object(response).map(MiddlewareVerdict::Respond)
            }
            _ => Err(MappingError::Middleware(
                "'respond' needs a 'response' object".to_owned(),
            )),
        },
        _ => Err(MappingError::Middleware(format!(
            "'action' must be \"continue\" or \"respond\", got {}",
            fields.action.map_or_else(|| "nothing".to_owned(), excerpt)
        ))),
    }
}

pub use crate::triggers::condition_skips;

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::header::HeaderValue;
    use serde_json::json;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn reply(text: &str) -> Result<HttpReply, String> {
        reply_from_result(Some(&raw(text))).map_err(|e| e.to_string())
    }

    fn header<'r>(reply: &'r HttpReply, name: &str) -> Vec<&'r str> {
        reply
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn input_value(parts: &RequestParts<'_>) -> Value {
        serde_json::from_str(request_input(parts).get()).unwrap()
    }

    fn parts<'a>(
        headers: &'a HeaderMap,
        query: Option<&'a str>,
        body: &'a [u8],
        path_params: &'a [(String, String)],
    ) -> RequestParts<'a> {
        RequestParts {
            method: "put",
            template: "todo/:id",
            path_params,
            query,
            headers,
            body,
        }
    }

    #[test]
    fn request_input_has_the_iii_shape() {
        let map = headers(&[("content-type", b"application/json"), ("x-trace", b"abc")]);
        let params = [("id".to_owned(), "42".to_owned())];
        let input = input_value(&parts(&map, Some("q=x"), br#"{"title":"t"}"#, &params));
        assert_eq!(
            input,
            json!({
                "query_params": {"q": "x"},
                "path_params": {"id": "42"},
                "headers": {"content-type": "application/json", "x-trace": "abc"},
                "path": "todo/:id",
                "method": "PUT",
                "body": {"title": "t"},
                "trigger": {"type": "http", "path": "todo/:id", "method": "PUT"},
            })
        );
    }

    #[test]
    fn request_summary_is_the_input_without_body() {
        let map = headers(&[("Accept", b"*/*")]);
        let params = [("id".to_owned(), "a b".to_owned())];
        let summary = request_summary(&parts(&map, None, b"ignored", &params));
        assert_eq!(
            summary,
            json!({
                "path_params": {"id": "a b"},
                "query_params": {},
                "headers": {"accept": "*/*"},
                "method": "PUT",
            })
        );
    }

    #[test]
    fn query_params_are_form_decoded_last_wins() {
        let map = HeaderMap::new();
        let query = "a=1&b=x+y%2Bz&a=2&flag&&caf%C3%A9=%E2%82%AC&bad=%ff&e=";
        let input = input_value(&parts(&map, Some(query), b"", &[]));
        assert_eq!(
            input["query_params"],
            json!({"a": "2", "b": "x y+z", "flag": "", "café": "€", "bad": "\u{fffd}", "e": ""})
        );
    }

    #[test]
    fn headers_are_lower_case_last_wins_and_lossy() {
        let map = headers(&[
            ("X-Dup", b"first"),
            ("x-dup", b"second"),
            ("x-latin1", b"caf\xe9"),
        ]);
        let input = input_value(&parts(&map, None, b"", &[]));
        assert_eq!(
            input["headers"],
            json!({"x-dup": "second", "x-latin1": "caf\u{fffd}"})
        );
    }

    #[test]
    fn body_is_json_only_under_a_json_content_type() {
        let body_for = |content_type: Option<&'static [u8]>, body: &[u8]| {
            let map = match content_type {
                Some(ct) => headers(&[("content-type", ct)]),
                None => HeaderMap::new(),
            };
            input_value(&parts(&map, None, body, &[]))["body"].clone()
        };
        assert_eq!(body_for(Some(b"application/json"), b"[1,2]"), json!([1, 2]));
        assert_eq!(
            body_for(Some(b"Application/JSON; charset=utf-8"), b"\"s\""),
            json!("s")
        );
        assert_eq!(
            body_for(Some(b"application/json"), b"{not json"),
            Value::Null
        );
        assert_eq!(body_for(Some(b"application/json"), b""), Value::Null);
        assert_eq!(body_for(Some(b"text/plain"), b"{\"a\":1}"), Value::Null);
        assert_eq!(body_for(None, b"{\"a\":1}"), Value::Null);
    }

    #[test]
    fn body_uses_the_last_content_type() {
        let map = headers(&[
            ("content-type", b"text/plain"),
            ("content-type", b"application/json"),
        ]);
        let input = input_value(&parts(&map, None, b"1", &[]));
        assert_eq!(input["body"], json!(1));
        assert_eq!(input["headers"]["content-type"], "application/json");
    }

    #[test]
    fn nesting_depth_skips_strings() {
        assert_eq!(nesting_depth(b"1"), 0);
        assert_eq!(nesting_depth(b"[[1],{\"a\":[]}]"), 3);
        assert_eq!(nesting_depth(br#"{"a":"[[[{{","b":"\\\"[[["}"#), 1);
        assert_eq!(nesting_depth(br#"["\"]"]"#), 1);
    }

    #[test]
    fn reply_defaults() {
        let empty = HttpReply::json(200, b"{}".to_vec());
        assert_eq!(reply_from_result(None).unwrap(), empty);
        for text in ["null", "\"text\"", "[1]", "42", "true"] {
            assert_eq!(reply(text).unwrap(), empty, "{text}");
        }
        assert_eq!(reply("{}").unwrap(), empty);
        assert_eq!(
            reply(r#"{"status_code":404}"#).unwrap(),
            HttpReply::json(404, b"{}".to_vec())
        );
    }

    #[test]
    fn reply_reads_both_status_spellings() {
        assert_eq!(reply(r#"{"statusCode":201}"#).unwrap().status, 201);
        assert_eq!(
            reply(r#"{"status_code":202,"statusCode":203}"#)
                .unwrap()
                .status,
            202
        );
        assert_eq!(
            reply(r#"{"status_code":null,"statusCode":203}"#)
                .unwrap()
                .status,
            203
        );
        assert_eq!(reply(r#"{"status_code":100}"#).unwrap().status, 100);
        assert_eq!(reply(r#"{"status_code":599}"#).unwrap().status, 599);
    }

    #[test]
    fn reply_refuses_a_bad_status_naming_the_field() {
        for bad in ["99", "600", "-1", "200.5", "\"200\"", "70000", "true", "{}"] {
            let err = reply(&format!(r#"{{"status_code":{bad}}}"#)).unwrap_err();
            assert!(err.contains("'status_code'"), "{err}");
            let err = reply(&format!(r#"{{"statusCode":{bad}}}"#)).unwrap_err();
            assert!(err.contains("'statusCode'"), "{err}");
        }
        // A valid camel-case status does not excuse an invalid snake-case one.
        let err = reply(r#"{"status_code":"x","statusCode":200}"#).unwrap_err();
        assert!(err.contains("'status_code'"), "{err}");
    }

    #[test]
    fn reply_headers_object_form() {
        let r =
            reply(r#"{"headers":{"X-Count":3,"x-flag":true,"x-name":"n"},"body":[1]}"#).unwrap();
        assert_eq!(header(&r, "x-count"), ["3"]);
        assert_eq!(header(&r, "x-flag"), ["true"]);
        assert_eq!(header(&r, "x-name"), ["n"]);
        assert_eq!(header(&r, "content-type"), ["application/json"]);
        assert_eq!(r.body, b"[1]");
    }

    #[test]
    fn reply_headers_list_form() {
        let r = reply(
            r#"{"headers":["Set-Cookie: a=1","Set-Cookie: b=2","X-Time:  12:30 "],"body":"hi"}"#,
        )
        .unwrap();
        assert_eq!(header(&r, "set-cookie"), ["a=1", "b=2"]);
        assert_eq!(header(&r, "x-time"), ["12:30"]);
        // No content-type from the handler: the string is sent as JSON.
        assert_eq!(r.body, b"\"hi\"");

        let err = reply(r#"{"headers":["X-Broken"]}"#).unwrap_err();
        assert!(err.contains("\"X-Broken\" has no ':'"), "{err}");
        let err = reply(r#"{"headers":[1]}"#).unwrap_err();
        assert!(err.contains("entry 1 is not"), "{err}");
        let err = reply(r#"{"headers":"X-A: 1"}"#).unwrap_err();
        assert!(err.contains("expected an object or an array"), "{err}");
        assert!(reply(r#"{"headers":null}"#).is_ok());
    }

    #[test]
    fn reply_refuses_unsendable_headers() {
        let err = reply(r#"{"headers":{"bad name":"v"}}"#).unwrap_err();
        assert!(err.contains("invalid header name \"bad name\""), "{err}");
        let err = reply(r#"{"headers":{"x-a":"v\r\nx-injected: 1"}}"#).unwrap_err();
        assert!(err.contains("invalid value for header \"x-a\""), "{err}");
        let err = reply(r#"{"headers":[": v"]}"#).unwrap_err();
        assert!(err.contains("invalid header name \"\""), "{err}");
    }

    #[test]
    fn reply_body_under_a_handler_content_type() {
        let with_ct = |body: &str| {
            reply(&format!(
                r#"{{"headers":{{"Content-Type":"text/html"}},"body":{body}}}"#
            ))
            .unwrap()
        };
        let r = with_ct(r#""<p>caf\u00e9 \"q\"</p>""#);
        assert_eq!(r.body, "<p>café \"q\"</p>".as_bytes());
        assert_eq!(
            r.headers,
            [("Content-Type".to_owned(), "text/html".to_owned())]
        );
        assert_eq!(with_ct("null").body, b"");
        assert_eq!(with_ct(r#"{"a": [1, 2]}"#).body, br#"{"a": [1, 2]}"#);
        assert_eq!(with_ct("12").body, b"12");
        assert_eq!(with_ct("false").body, b"false");
        // Missing body: the default `{}`.
        let r = reply(r#"{"headers":["content-type: text/plain"]}"#).unwrap();
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn reply_body_without_a_content_type_is_json() {
        let r = reply(r#"{"status_code":200,"body":null}"#).unwrap();
        assert_eq!(r.body, b"null");
        assert_eq!(header(&r, "content-type"), ["application/json"]);
        let r = reply(r#"{"body":"plain"}"#).unwrap();
        assert_eq!(r.body, b"\"plain\"");
        let r = reply(r#"{"body":{"nested":{"x":[true,null]}},"extra":"ignored"}"#).unwrap();
        assert_eq!(r.body, br#"{"nested":{"x":[true,null]}}"#);
    }

    #[test]
    fn error_reply_envelope() {
        let r = error_reply(404, "NOT_FOUND", "Not Found", None, &[]);
        assert_eq!(r.status, 404);
        assert_eq!(header(&r, "content-type"), ["application/json"]);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "NOT_FOUND", "message": "Not Found"}})
        );

        let r = error_reply(
            422,
            "CONDITION_NOT_MET",
            "Condition not met",
            Some("e-1"),
            &[("skipped", json!(true)), ("error", json!("hidden"))],
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({
                "error": {"code": "CONDITION_NOT_MET", "message": "Condition not met", "error_id": "e-1"},
                "skipped": true,
            })
        );
    }

    #[test]
    fn middleware_continue_and_respond() {
        let verdict = |text: &str| middleware_verdict(Some(&raw(text)));
        assert_eq!(
            verdict(r#"{"action":"continue"}"#).unwrap(),
            MiddlewareVerdict::Continue
        );
        assert_eq!(
            verdict(r#"{"action":"continue","response":{"status_code":1}}"#).unwrap(),
            MiddlewareVerdict::Continue
        );
        let MiddlewareVerdict::Respond(r) = verdict(
            r#"{"action":"respond","response":{"statusCode":401,"body":{"error":"no"},"headers":["WWW-Authenticate: Bearer"]}}"#,
        )
        .unwrap() else {
            panic!("expected respond");
        };
        assert_eq!(r.status, 401);
        assert_eq!(r.body, br#"{"error":"no"}"#);
        assert_eq!(header(&r, "www-authenticate"), ["Bearer"]);
        assert_eq!(header(&r, "content-type"), ["application/json"]);
        assert_eq!(
            verdict(r#"{"action":"respond","response":{}}"#).unwrap(),
            MiddlewareVerdict::Respond(HttpReply::json(200, b"{}".to_vec()))
        );
    }

    #[test]
    fn middleware_refuses_anything_else() {
        assert!(middleware_verdict(None)
            .unwrap_err()
            .to_string()
            .contains("no result"));
        let err = |text: &str| {
            middleware_verdict(Some(&raw(text)))
                .unwrap_err()
                .to_string()
        };
        assert!(err("null").contains("expected an object"));
        assert!(err("[]").contains("expected an object"));
        assert!(err("{}").contains("got nothing"));
        assert!(err(r#"{"action":"Continue"}"#).contains("got \"Continue\""));
        assert!(err(r#"{"action":1}"#).contains("got 1"));
        assert!(err(r#"{"action":"respond"}"#).contains("'response' object"));
        assert!(err(r#"{"action":"respond","response":null}"#).contains("'response' object"));
        assert!(err(r#"{"action":"respond","response":"x"}"#).contains("'response' object"));
        assert!(
            err(r#"{"action":"respond","response":{"status_code":700}}"#).contains("'status_code'")
        );
    }

    #[test]
    fn condition_skips_only_on_false() {
        assert!(condition_skips(Some(&raw("false"))));
        assert!(condition_skips(Some(&raw(" false "))));
        for text in ["true", "null", "0", "\"false\"", "{}", "[false]"] {
            assert!(!condition_skips(Some(&raw(text))), "{text}");
        }
        assert!(!condition_skips(None));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = format!(r#"{{"status_code":"{}"}}"#, "x".repeat(500));
        let err = reply(&long).unwrap_err();
        assert!(err.len() < 200 && err.ends_with("..."), "{err}");
    }
}
