//! Every golden wire vector under `tests/fixtures/wire/` (recorded from the real `iii-sdk`, plus
//! hand-written engine-to-worker messages) must decode and re-encode to equivalent JSON.
//!
//! "Equivalent": equal as JSON values, except that a top-level non-payload field whose value
//! was `null` may be absent after re-encoding (the protocol reads a null optional field as
//! absent, and the SDKs omit such fields). Payload fields (`data`, `result`, `config`,
//! `metadata`, schemas) must survive exactly, `null` included.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use fnmesh_core::protocol::{decode, Message};
use serde_json::Value;

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

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wire")
}

fn vectors(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(fixtures().join(dir))
        .unwrap_or_else(|e| panic!("fixture folder {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn normalise(original: &Value) -> Value {
    let mut v = original.clone();
    if let Value::Object(map) = &mut v {
        map.retain(|k, val| !val.is_null() || PAYLOAD_FIELDS.contains(&k.as_str()));
    }
    v
}

/// Decodes, re-encodes and compares; returns the message kind.
fn check(name: &str, bytes: &[u8]) -> String {
    let msg = decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let original: Value = serde_json::from_slice(bytes).unwrap();
    let reencoded: Value = serde_json::from_slice(&msg.encode()).unwrap();
    assert_eq!(
        normalise(&original),
        reencoded,
        "{name}: re-encoding changed the message"
    );
    // Re-encoding is stable: the canonical form decodes and encodes to itself byte for byte.
    let again = decode(&msg.encode()).unwrap().encode();
    assert_eq!(again, msg.encode(), "{name}: canonical form is not stable");
    // The file name carries the type: NNN-<type>-<label>.json.
    let kind = original["type"].as_str().unwrap();
    assert!(
        name.contains(&format!("-{kind}-")) || name.contains(&format!("-{kind}.")),
        "{name}: file name does not name its type {kind}"
    );
    assert_eq!(msg.kind(), kind);
    kind.to_owned()
}

#[test]
fn sdk_vectors_round_trip() {
    let vectors = vectors("sdk");
    assert!(vectors.len() >= 20, "only {} sdk vectors", vectors.len());
    let mut kinds = BTreeSet::new();
    for (name, bytes) in &vectors {
        let kind = check(name, bytes);
        let msg = decode(bytes).unwrap();
        assert!(
            msg.is_known(),
            "{name}: the SDK sent a type the codec does not know"
        );
        kinds.insert(kind);
    }
    for expected in [
        "registerfunction",
        "unregisterfunction",
        "invokefunction",
        "invocationresult",
        "registertriggertype",
        "registertrigger",
        "unregistertrigger",
        "triggerregistrationresult",
        "reattach",
    ] {
        assert!(kinds.contains(expected), "no recorded {expected} vector");
    }
}

#[test]
fn engine_vectors_round_trip() {
    let vectors = vectors("engine");
    assert!(vectors.len() >= 10, "only {} engine vectors", vectors.len());
    let mut kinds = BTreeSet::new();
    for (name, bytes) in &vectors {
        kinds.insert(check(name, bytes));
    }
    for expected in [
        "workerregistered",
        "registrationrejected",
        "invokefunction",
        "invocationresult",
        "registertrigger",
        "unregistertrigger",
        "triggerregistrationresult",
        "ping",
        "pong",
        "error",
    ] {
        assert!(kinds.contains(expected), "no engine {expected} vector");
    }
}

#[test]
fn recorded_payloads_are_carried_as_raw_text() {
    // Pick every recorded call with a payload and check the payload bytes are the very bytes
    // of the frame, not a re-serialisation.
    let mut seen = 0;
    for (name, bytes) in vectors("sdk") {
        if let Ok(Message::InvokeFunction(call)) = decode(&bytes) {
            if let Some(data) = &call.data {
                let text = std::str::from_utf8(&bytes).unwrap();
                assert!(
                    text.contains(data.get()),
                    "{name}: data is not the frame's own text"
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 0, "no recorded invokefunction carries data");
}
