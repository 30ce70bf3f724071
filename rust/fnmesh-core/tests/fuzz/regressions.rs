//! One test per finding of the harness, named after what broke, so a regression fails with a
//! readable name (the inputs are also in `tests/fixtures/fuzz/found/`).

use fnmesh_core::http::mapping::{request_input, RequestParts};
use fnmesh_core::protocol::{decode, InvokeFunction, Message};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde_json::value::RawValue;

use super::mapping::JsonText;

/// `protocol`: a float in `registerfunction.invocation.retry` (then kept as a
/// `serde_json::Value`) changed on every decode and encode (`1.0008000000000002` ->
/// `1.0008000000000001` -> `1.0008`): serde_json's default float parsing is not correctly
/// rounded. The field is now kept raw, as sent.
#[test]
fn floats_in_typed_fields_survive_round_trips() {
    for number in [
        "1.0008000000000002",
        "0.30000000000000004",
        "1e300",
        "2.2250738585072014e-308",
    ] {
        let frame = format!(
            r#"{{"type":"registerfunction","id":"f","invocation":{{"url":"u","retry":{{"n":{number}}}}}}}"#
        );
        let first = decode(frame.as_bytes()).unwrap().encode();
        let second = decode(&first).unwrap().encode();
        assert_eq!(
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&second),
            "{number}"
        );
    }
}

/// `mapping`: a JSON request body nested 127 levels deep was accepted, and the function input
/// that wraps it, and the `invokefunction` frame that carries the input, were then too deep for
/// serde_json's limit of 128: the worker could not decode the call. A body nested deeper than
/// `MAX_BODY_DEPTH` now reads as `null`, like invalid JSON.
#[test]
fn deep_json_bodies_still_make_a_decodable_call() {
    use fnmesh_core::http::mapping::MAX_BODY_DEPTH;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for depth in [1, MAX_BODY_DEPTH, MAX_BODY_DEPTH + 1, 127, 128] {
        let body = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let parts = RequestParts {
            method: "POST",
            template: "deep",
            path_params: &[],
            query: None,
            headers: &headers,
            body: body.as_bytes(),
        };
        let input = request_input(&parts).json_text();
        let call = Message::InvokeFunction(InvokeFunction {
            function_id: "f".to_owned(),
            data: Some(RawValue::from_string(input.clone()).unwrap()),
            ..InvokeFunction::default()
        });
        let decoded = decode(&call.encode()).unwrap_or_else(|e| panic!("depth {depth}: {e}"));
        let Message::InvokeFunction(decoded) = decoded else {
            panic!("depth {depth}: not a call");
        };
        assert_eq!(decoded.data_or_null().get(), input, "depth {depth}");
        let value: serde_json::Value = serde_json::from_str(&input).unwrap();
        if depth <= MAX_BODY_DEPTH {
            assert!(value["body"].is_array(), "depth {depth}: body dropped");
        } else {
            assert!(value["body"].is_null(), "depth {depth}: body kept");
        }
    }
}
