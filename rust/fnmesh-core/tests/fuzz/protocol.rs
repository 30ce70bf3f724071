//! Target `protocol`: the frame decoder and encoder (`decode`, `decode_limited`,
//! `Message::encode`).
//!
//! Properties, for any bytes: nothing panics; `decode_limited` agrees with `decode` under the
//! limit and refuses above it; whatever decodes re-encodes to a JSON object (or the frame itself
//! for an unknown type) that decodes again to the same message, byte for byte; and for a known
//! type, every top-level field of the frame survives the round trip (the wire-vector rule: a
//! non-payload field that is `null` may disappear). The large-frame path too: `scan_frame` accepts
//! nothing serde_json refuses and finds the `data` and `result` serde_json reads, and
//! `decode_split` (the frame padded past its size threshold) reads the message `decode_text`
//! reads, errors included.

use std::collections::BTreeMap;

use fnmesh_core::protocol::{
    decode, decode_limited, decode_split, decode_text, is_blank, scan_frame, telemetry_frame,
    Message, SPLIT_FRAME_BYTES,
};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::gen::{
    self, frame_corpus, json_string, json_value, mutate, random_bytes, FIELDS, KINDS,
};
use super::runner::{ensure, Finding, Rng, Target};

pub const TARGET: Target = Target {
    name: "protocol",
    generate,
    check,
};

/// Payload fields kept exactly, `null` included (as in `tests/wire_vectors.rs`).
const PAYLOAD_FIELDS: &[&str] = &[
    "data",
    "result",
    "config",
    "metadata",
    "request_format",
    "response_format",
    "trigger_request_format",
    "call_request_format",
];

/// Fields the decoder reads into a type and writes back normalised (`action`, `invocation`,
/// `error`), or fills in (`owner_worker_id` of `registrationrejected` defaults to `""`).
const NORMALISED_FIELDS: &[&str] = &["action", "invocation", "error", "owner_worker_id"];

fn generate(rng: &mut Rng) -> Vec<u8> {
    let corpus = frame_corpus();
    match rng.below(20) {
        0..=2 => random_bytes(rng, 512),
        3..=9 if !corpus.is_empty() => {
            let seed = rng.pick(corpus).clone();
            mutate(rng, &seed, corpus)
        }
        10..=12 => {
            let frame = frame(rng);
            mutate(rng, &frame, corpus)
        }
        _ => frame(rng),
    }
}

/// A frame object. Half of them are well-typed: a known `type` with its required fields as
/// strings, optional fields of the right type, unknown fields. The others have a `type` known or
/// not (anywhere in the object, sometimes twice or missing) and any field with any value.
fn frame(rng: &mut Rng) -> Vec<u8> {
    let well_typed = rng.one_in(2);
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let kind = *rng.pick(if well_typed { &KINDS[..16] } else { KINDS });
    if !well_typed && rng.one_in(20) {
        // No `type` at all.
    } else {
        fields.push(format!("\"type\":\"{kind}\"").into_bytes());
    }
    if well_typed {
        for name in required_fields(kind) {
            fields.push(pair(rng, name, true));
        }
    }
    for _ in 0..rng.below(if well_typed { 4 } else { 10 }) {
        if rng.one_in(3) {
            // An unknown field, kept verbatim by the codec.
            let mut p = Vec::new();
            json_string(rng, well_typed, &mut p);
            p.push(b':');
            json_value(rng, well_typed, 3, &mut p);
            fields.push(p);
        } else {
            // `FIELDS[0]` is `type`: a well-typed frame keeps its own.
            let name = *rng.pick(if well_typed { &FIELDS[1..] } else { FIELDS });
            fields.push(pair(rng, name, well_typed));
        }
    }
    // Any order, so `type` is not always first.
    for i in (1..fields.len()).rev() {
        let j = rng.below(i + 1);
        fields.swap(i, j);
    }
    let mut out = Vec::new();
    if rng.one_in(10) {
        out.extend_from_slice(b" \n");
    }
    out.push(b'{');
    out.extend_from_slice(&fields.join(&b","[..]));
    out.push(b'}');
    out
}

/// The fields a message type cannot do without.
fn required_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "invokefunction" => &["function_id"],
        "invocationresult" => &["invocation_id", "function_id"],
        "registertrigger" | "triggerregistrationresult" => &["id", "trigger_type", "function_id"],
        "reattach" => &["previous_worker_id", "reattach_token"],
        "workerregistered" => &["worker_id"],
        "registrationrejected" => &["code", "namespace"],
        "error" => &["error"],
        "ping" | "pong" => &[],
        _ => &["id"],
    }
}

/// `"name":value`, the value shaped after the field (always, when `well_typed`; else most of
/// the time).
fn pair(rng: &mut Rng, name: &str, well_typed: bool) -> Vec<u8> {
    let mut out = format!("\"{name}\":").into_bytes();
    if !well_typed && rng.one_in(4) {
        json_value(rng, false, 3, &mut out);
        return out;
    }
    let shaped: &[&str] = match name {
        "action" => &[
            r#"{"type":"void"}"#,
            r#"{"type":"enqueue","queue":"q"}"#,
            r#"{"type":"enqueue"}"#,
            r#"{"type":"other"}"#,
            r#"{"queue":"q","type":"enqueue","extra":1}"#,
            "null",
        ],
        "invocation" => &[
            r#"{"url":"http://h/x"}"#,
            r#"{"url":"u","method":"GET","timeout_ms":18446744073709551615}"#,
            r#"{"url":"u","method":"get"}"#,
            r#"{"url":"u","timeout_ms":-1}"#,
            r#"{"url":"u","headers":{"a":"b"},"auth":{"type":"bearer","token_key":"T"}}"#,
            r#"{"url":"u","auth":{"type":"hmac"}}"#,
            r#"{"url":"u","retry":{"max":1e999}}"#,
            r#"{"url":"u","retry":[1.0000000000000002,-0.0,1e300]}"#,
        ],
        "error" => &[
            r#"{"code":"c","message":"m"}"#,
            r#"{"code":"c","message":"m","stacktrace":"s"}"#,
            r#"{"code":1,"message":"m"}"#,
            r#"{"message":null}"#,
            r#""boom""#,
            "[1]",
            "{}",
        ],
        n if PAYLOAD_FIELDS.contains(&n) => &[],
        _ => {
            // A string field: a string, or null.
            if rng.one_in(8) {
                out.extend_from_slice(b"null");
            } else {
                json_string(rng, well_typed, &mut out);
            }
            return out;
        }
    };
    if shaped.is_empty() {
        let strict = well_typed || rng.one_in(2);
        json_value(rng, strict, 4, &mut out);
    } else {
        out.extend_from_slice(rng.pick(shaped).as_bytes());
    }
    out
}

fn check(frame: &[u8]) -> Result<bool, Finding> {
    let _ = telemetry_frame(frame);
    let _ = is_blank(frame);
    if let Ok(text) = std::str::from_utf8(frame) {
        scan_agrees(text)?;
        split_agrees(text)?;
    }
    let decoded = decode(frame);

    // `decode_limited` agrees with `decode` at and above the frame's size, refuses below it.
    let limited = decode_limited(frame, frame.len());
    ensure(same_outcome(&decoded, &limited), || {
        format!("decode_limited at the frame's size differs: {decoded:?} vs {limited:?}")
    })?;
    if !frame.is_empty() {
        let refused = decode_limited(frame, frame.len() - 1);
        ensure(
            matches!(refused, Err(fnmesh_core::Error::FrameTooLarge { .. })),
            || format!("decode_limited below the frame's size: {refused:?}"),
        )?;
    }

    let Ok(message) = decoded else {
        return Ok(false);
    };
    let encoded = message.encode();
    ensure(message.to_text().as_bytes() == encoded, || {
        "to_text differs from encode".to_owned()
    })?;
    ensure(
        serde_json::from_slice::<IgnoredAny>(&encoded).is_ok(),
        || {
            format!(
                "the encoding is not JSON: {}",
                String::from_utf8_lossy(&encoded)
            )
        },
    )?;
    let again = decode(&encoded).map_err(|e| {
        Finding::Property(format!(
            "the encoding does not decode: {e}; encoding: {}",
            String::from_utf8_lossy(&encoded)
        ))
    })?;
    ensure(again.kind() == message.kind(), || {
        format!("kind changed: {} -> {}", message.kind(), again.kind())
    })?;
    let reencoded = again.encode();
    ensure(reencoded == encoded, || {
        format!(
            "decode(encode(m)) != m:\n  first:  {}\n  second: {}",
            String::from_utf8_lossy(&encoded),
            String::from_utf8_lossy(&reencoded)
        )
    })?;
    if matches!(message, Message::Unknown(_)) {
        return Ok(false);
    }
    fields_survive(frame, &encoded)?;
    Ok(true)
}

/// What `scan_frame` accepts, serde_json reads as an object of well-formed values, whose last
/// `data` and `result` are the values the scan found.
fn scan_agrees(text: &str) -> Result<(), Finding> {
    let Some(spans) = scan_frame(text) else {
        return Ok(());
    };
    let map = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(text).map_err(|e| {
        Finding::Property(format!("scan_frame accepted what serde_json refuses: {e}"))
    })?;
    for (name, span) in [("data", spans.data), ("result", spans.result)] {
        let found = span.map(|r| &text[r]);
        let read = map.get(name).map(|v| v.get());
        ensure(found == read, || {
            format!("scan_frame found {name} {found:?}, serde_json reads {read:?}")
        })?;
    }
    Ok(())
}

/// `decode_split` of the frame padded with trailing whitespace past `SPLIT_FRAME_BYTES` (the
/// same JSON), its payload put back, is what `decode_text` reads.
fn split_agrees(text: &str) -> Result<(), Finding> {
    let padded = format!("{text}{}", " ".repeat(SPLIT_FRAME_BYTES));
    let whole = decode_text(&padded);
    let split = decode_split(&padded).and_then(|split| split.into_whole(&padded));
    ensure(same_outcome(&whole, &split), || {
        format!("decode_split differs from decode_text: {split:?} vs {whole:?}")
    })
}

fn same_outcome(a: &fnmesh_core::Result<Message>, b: &fnmesh_core::Result<Message>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a.encode() == b.encode(),
        (Err(a), Err(b)) => a.to_string() == b.to_string(),
        _ => false,
    }
}

/// Every top-level field of a known message's frame is in the encoding with an equal value,
/// bar the normalised ones and `null` protocol fields that are not payloads (unknown fields
/// are kept verbatim, `null` included). Only frames that parse as strict JSON
/// (no lone surrogates) are compared.
fn fields_survive(frame: &[u8], encoded: &[u8]) -> Result<(), Finding> {
    let (Ok(Value::Object(original)), Ok(Value::Object(reencoded))) = (
        serde_json::from_slice::<Value>(frame),
        serde_json::from_slice::<Value>(encoded),
    ) else {
        return Ok(());
    };
    let expected: Map<String, Value> = original
        .into_iter()
        .filter(|(k, _)| !NORMALISED_FIELDS.contains(&k.as_str()))
        .filter(|(k, v)| {
            !v.is_null() || !FIELDS.contains(&k.as_str()) || PAYLOAD_FIELDS.contains(&k.as_str())
        })
        .collect();
    let got: Map<String, Value> = reencoded
        .into_iter()
        .filter(|(k, _)| !NORMALISED_FIELDS.contains(&k.as_str()))
        .collect();
    ensure(expected == got, || {
        format!(
            "fields changed in the round trip:\n  frame:    {}\n  encoding: {}",
            Value::Object(expected.clone()),
            Value::Object(got.clone())
        )
    })
}

/// The seeds of this target, for the corpus test.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    ["wire/sdk", "wire/engine", "fuzz/frames"]
        .iter()
        .flat_map(|dir| gen::files(dir, "json"))
        .collect()
}
