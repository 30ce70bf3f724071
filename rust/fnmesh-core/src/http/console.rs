//! The console: a page on the HTTP port (under `console_path`, default `/_console`) showing the
//! engine live (functions with their schemas, workers, trigger bindings, queues and their dead
//! letters, recent calls) and invoking any function from a form (docs/cli-and-console.md).
//!
//! The page and its assets (`console/`, compiled in) carry no data. Everything it shows comes
//! from a small JSON API beside them, which the page polls:
//! - `POST <path>/api/call` `{function_id, namespace?, data?}`: calls a function and answers
//!   `{ok: true, result}` or `{ok: false, error: {code, message}}`. The page lists the engine
//!   through the discovery functions (docs/protocol.md 7), the queues through
//!   `engine::queue::*`, redrives and discards through `iii::queue::*`, all by this one call; a
//!   call's `data` is first checked against the function's `request_format` (the same subset of
//!   JSON Schema the page checks: `schema.rs`), so a bad input never reaches the function;
//! - `GET <path>/api/recent`: the last calls ([`crate::engine::recent`]); each look keeps
//!   recording on for a while;
//! - `POST <path>/api/login` `{token}`: sets the token cookie.
//!
//! Access: served only when the listener is on a loopback address or a token is configured
//! (`console_token`); with a token, every API request must carry it, in the `HttpOnly`,
//! `SameSite=Strict` cookie the login form sets or in the `x-fnmesh-console-token` header, and it
//! is compared in constant time. The token never travels in a URL. Without a token, the API
//! answers only requests whose `Host` is a loopback name (a DNS-rebinding page cannot use it);
//! always, a request whose `Origin` is not this host is refused (another site's page cannot
//! drive it, whatever CORS allows for the routes), and the pages carry a strict
//! Content-Security-Policy (only the engine's own script and style sheet; no inline code).

use std::time::Duration;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

use super::mapping::{error_reply, HttpReply};
use super::server::Request;
use super::stream::BodySource;
use super::trigger::HttpTrigger;
use crate::function::{CallOptions, Outcome};
use crate::protocol::ErrorCode;
use crate::registry::DEFAULT_NAMESPACE;

mod schema;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The cookie the login form sets.
const COOKIE: &str = "fnmesh_console";
/// The header a script may present the token in instead.
const TOKEN_HEADER: &str = "x-fnmesh-console-token";
/// The policy of every console response: the engine's own script and style sheet, fetches to
/// itself, nothing else (no inline script or style, no frames, no form posts elsewhere).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether the console is served by a listener with `config`.
pub(crate) fn enabled(config: &super::HttpConfig) -> bool {
    config.console_enabled && (config.addr.ip().is_loopback() || config.console_token.is_some())
}

/// The console's answer for `request`, or `None` when it is not one of its paths.
pub(crate) async fn answer(trigger: &HttpTrigger, request: &Request) -> Option<HttpReply> {
    let config = trigger.config();
    if !enabled(config) {
        return None;
    }
    let base = config.console_path.trim_end_matches('/');
    let rest = request.path.strip_prefix(base)?;
    let method = request.method.as_str();
    match (method, rest) {
        // The page's assets and API are relative to it, so it is served under a final `/`.
        ("GET", "") => Some(secure(HttpReply {
            status: 308,
            headers: vec![("location".to_owned(), format!("{base}/"))],
            body: Vec::new(),
        })),
        ("GET", "/") => Some(page("text/html; charset=utf-8", INDEX_HTML)),
        ("GET", "/console.js") => Some(page("text/javascript; charset=utf-8", CONSOLE_JS)),
        ("GET", "/console.css") => Some(page("text/css; charset=utf-8", CONSOLE_CSS)),
        (_, api) if api.starts_with("/api/") => {
            Some(secure(api_answer(trigger, request, base, api).await))
        }
        _ => None,
    }
}

async fn api_answer(trigger: &HttpTrigger, request: &Request, base: &str, api: &str) -> HttpReply {
    let config = trigger.config();
    if !same_origin(&request.headers) {
        return refuse(403, "the console's API answers its own page only");
    }
    let token = config.console_token.as_deref();
    if token.is_none() && !loopback_host(&request.headers) {
        return refuse(
            403,
            "without console_token the console answers loopback hosts only",
        );
    }
    if api == "/api/login" && request.method == "POST" {
        return login(token, request, base);
    }
    if let Some(token) = token {
        if !presented(&request.headers).is_some_and(|given| same_secret(given, token)) {
            return refuse(401, "the console needs its token");
        }
    }
    let Some(engine) = trigger.engine() else {
        return error_reply(
            503,
            ErrorCode::Stopped.as_str(),
            "the engine is stopping",
            None,
            &[],
        );
    };
    match (request.method.as_str(), api) {
        ("GET", "/api/recent") => {
            engine.watch_invocations();
            json_reply(200, &json!({"invocations": engine.recent_invocations()}))
        }
        ("POST", "/api/call") => {
            let Some(body) = json_body(request) else {
                return refuse(415, "send the call as application/json");
            };
            call(&engine, body, config.timeout).await
        }
        _ => error_reply(404, ErrorCode::NotFound.as_str(), "Not Found", None, &[]),
    }
}

#[derive(Deserialize)]
struct CallInput {
    function_id: String,
    namespace: Option<String>,
    data: Option<Box<RawValue>>,
}

async fn call(engine: &crate::engine::EngineRef, body: &[u8], timeout: Duration) -> HttpReply {
    let input: CallInput = match serde_json::from_slice(body) {
        Ok(input) => input,
        Err(e) => return refuse(400, &format!("invalid call: {e}")),
    };
    let namespace = input
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let data = input.data.unwrap_or_else(|| RawValue::NULL.to_owned());
    // The engine's own check of the form's input, against the function's declared schema.
    if let Some(schema) = request_schema(engine, &namespace, &input.function_id).await {
        let value: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
        if let Err(problem) = schema::check(&schema, &value) {
            return json_reply(
                200,
                &json!({"ok": false, "error": {"code": ErrorCode::ValidationFailed.as_str(),
                        "message": format!("the input does not match the function's schema: {problem}")}}),
            );
        }
    }
    let options = CallOptions {
        namespace: Some(namespace),
        timeout: Some(timeout),
        ..CallOptions::default()
    };
    let outcome = engine.call_with(&input.function_id, data, options).await;
    let answer = match outcome {
        Outcome::Success(result) => {
            let result: Value = result
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .unwrap_or(Value::Null);
            json!({"ok": true, "result": result})
        }
        Outcome::Failure(e) => {
            json!({"ok": false, "error": {"code": e.code, "message": e.message}})
        }
    };
    json_reply(200, &answer)
}

/// The function's `request_format`, if it declares one.
async fn request_schema(
    engine: &crate::engine::EngineRef,
    namespace: &str,
    function_id: &str,
) -> Option<Value> {
    let request = json!({"function_id": function_id, "namespace": namespace});
    let data = serde_json::value::to_raw_value(&request).ok()?;
    let options = CallOptions {
        namespace: Some(DEFAULT_NAMESPACE.to_owned()),
        ..CallOptions::default()
    };
    let Outcome::Success(Some(answer)) = engine
        .call_with("engine::functions::info", data, options)
        .await
    else {
        return None;
    };
    let mut detail: Value = serde_json::from_str(answer.get()).ok()?;
    match detail.get_mut("request_schema").map(Value::take) {
        Some(Value::Null) | None => None,
        Some(schema) => Some(schema),
    }
}

#[derive(Deserialize)]
struct LoginInput {
    token: String,
}

fn login(token: Option<&str>, request: &Request, base: &str) -> HttpReply {
    let Some(expected) = token else {
        return json_reply(200, &json!({"ok": true}));
    };
    let Some(body) = json_body(request) else {
        return refuse(415, "send the token as application/json");
    };
    let given = serde_json::from_slice::<LoginInput>(body).map(|l| l.token);
    if !given.is_ok_and(|given| same_secret(&given, expected)) {
        return refuse(401, "wrong token");
    }
    let path = if base.is_empty() { "/" } else { base };
    let mut reply = json_reply(200, &json!({"ok": true}));
    reply.headers.push((
        "set-cookie".to_owned(),
        format!("{COOKIE}={expected}; Path={path}; HttpOnly; SameSite=Strict"),
    ));
    reply
}

/// The token a request presents: the header, else the cookie.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(value);
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// Compares two secrets in time that depends on their lengths only, not on where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, expected) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ expected;
    }
    std::hint::black_box(diff) == 0
}

/// The `Host` header's name without its port.
fn host_name(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    Some(match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    })
}

fn loopback_host(headers: &HeaderMap) -> bool {
    match host_name(headers) {
        Some(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// No `Origin` (a same-origin GET, a script outside a browser) or one naming this very host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

fn json_body(request: &Request) -> Option<&[u8]> {
    match &request.body {
        BodySource::Buffered(bytes) => Some(bytes),
        _ => None,
    }
}

fn json_reply(status: u16, value: &Value) -> HttpReply {
    HttpReply::json(status, value.to_string().into_bytes())
}

fn refuse(status: u16, message: &str) -> HttpReply {
    let code = match status {
        401 | 403 => ErrorCode::Unauthorized,
        415 | 400 => ErrorCode::BadRequest,
        _ => ErrorCode::InvalidArgument,
    };
    error_reply(status, code.as_str(), message, None, &[])
}

/// The headers every console answer carries.
fn secure(mut reply: HttpReply) -> HttpReply {
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        reply.headers.push((name.to_owned(), value.to_owned()));
    }
    reply
}

fn page(content_type: &str, body: &str) -> HttpReply {
    secure(HttpReply {
        status: 200,
        headers: vec![("content-type".to_owned(), content_type.to_owned())],
        body: body.as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("s3cretX", "s3cret"));
        assert!(!same_secret("", "s3cret"));
        assert!(!same_secret("S3cret", "s3cret"));
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let h = headers(&[("cookie", "a=b; fnmesh_console=tok; c=d")]);
        assert_eq!(presented(&h), Some("tok"));
        let h = headers(&[
            ("x-fnmesh-console-token", "hdr"),
            ("cookie", "fnmesh_console=tok"),
        ]);
        assert_eq!(presented(&h), Some("hdr"));
        assert_eq!(presented(&headers(&[("cookie", "other=1")])), None);
    }

    #[test]
    fn hosts_and_origins() {
        assert!(loopback_host(&headers(&[("host", "127.0.0.1:3111")])));
        assert!(loopback_host(&headers(&[("host", "localhost:3111")])));
        assert!(loopback_host(&headers(&[("host", "[::1]:3111")])));
        assert!(!loopback_host(&headers(&[("host", "evil.example:3111")])));
        assert!(!loopback_host(&headers(&[])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:3111")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:3111"),
            ("origin", "http://127.0.0.1:3111")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:3111"),
            ("origin", "http://evil.example")
        ])));
    }
}
