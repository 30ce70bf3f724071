//! Round trips of the codec: decode, then encode.

use super::*;
use crate::error::Error;
use serde_json::value::RawValue;
use serde_json::Value;

fn roundtrip(frame: &str) -> (Message, Value) {
    let msg = decode(frame.as_bytes()).expect("decodes");
    let again: Value = serde_json::from_slice(&msg.encode()).unwrap();
    (msg, again)
}

#[test]
fn invoke_keeps_payload_text_exactly() {
    let frame = r#"{"type":"invokefunction","invocation_id":"9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11","function_id":"a::b","data":{"z": 1,  "a":[1.50,"é"]}}"#;
    let msg = decode(frame.as_bytes()).unwrap();
    let Message::InvokeFunction(m) = &msg else {
        panic!()
    };
    // Whitespace, key order and number spelling survive: the payload was never parsed into a tree.
    assert_eq!(m.data_or_null().get(), r#"{"z": 1,  "a":[1.50,"é"]}"#);
    assert!(msg
        .to_text()
        .contains(r#""data":{"z": 1,  "a":[1.50,"é"]}"#));
}

#[test]
fn missing_data_reads_as_null_and_stays_absent() {
    let (msg, again) = roundtrip(r#"{"type":"invokefunction","function_id":"f"}"#);
    let Message::InvokeFunction(m) = msg else {
        panic!()
    };
    assert_eq!(m.data_or_null().get(), "null");
    assert!(again.get("data").is_none());
    let (msg, again) = roundtrip(r#"{"type":"invokefunction","function_id":"f","data":null}"#);
    let Message::InvokeFunction(m) = msg else {
        panic!()
    };
    assert_eq!(m.data.as_deref().map(RawValue::get), Some("null"));
    assert_eq!(again["data"], Value::Null);
}

#[test]
fn missing_config_reads_as_null() {
    let Message::RegisterTrigger(t) =
        decode(br#"{"type":"registertrigger","id":"t1","trigger_type":"cron","function_id":"f"}"#)
            .unwrap()
    else {
        panic!()
    };
    assert_eq!(t.config_or_null().get(), "null");
}

#[test]
fn type_may_come_last() {
    let (msg, _) = roundtrip(r#"{"id":"x","type":"unregisterfunction"}"#);
    assert_eq!(msg.kind(), "unregisterfunction");
}

#[test]
fn unknown_type_is_a_value_not_an_error() {
    let frame = br#" {"type":"observe","id":5,"weird":[1,2]} "#;
    let msg = decode(frame).unwrap();
    assert!(!msg.is_known());
    assert_eq!(msg.kind(), "observe");
    assert_eq!(msg.to_text(), r#"{"type":"observe","id":5,"weird":[1,2]}"#);
}

#[test]
fn unknown_fields_survive_a_round_trip() {
    let frame = r#"{"type":"invokefunction","function_id":"f","data":1,"caller":{"function_id":"g"},"observe_depth":2}"#;
    let (_, again) = roundtrip(frame);
    assert_eq!(again, serde_json::from_str::<Value>(frame).unwrap());
}

#[test]
fn fields_of_other_messages_are_kept_too() {
    let frame = r#"{"type":"unregisterfunction","id":"f","data":{"x":1},"description":"d"}"#;
    let (_, again) = roundtrip(frame);
    assert_eq!(again, serde_json::from_str::<Value>(frame).unwrap());
}

#[test]
fn malformed_frames_are_errors() {
    for bad in [
        &b"not json"[..],
        b"[1,2]",
        b"{}",
        b"{\"type\":5}",
        b"{\"type\":\"invokefunction\"}",
        b"{\"type\":\"invokefunction\",\"function_id\":7}",
        b"{\"type\":\"invokefunction\",\"function_id\":\"f\",\"action\":{\"type\":\"teleport\"}}",
        b"{\"type\":\"invocationresult\",\"function_id\":\"f\"}",
        b"{\"type\":\"reattach\",\"previous_worker_id\":\"a\"}",
        b"{\"type\":\"ping\"} trailing",
        b"\xff\xfe",
        b"",
    ] {
        match decode(bad) {
            Err(Error::MalformedFrame(msg)) => assert!(!msg.is_empty()),
            other => panic!("{:?} decoded to {other:?}", String::from_utf8_lossy(bad)),
        }
    }
}

#[test]
fn deep_nesting_never_overflows_the_stack() {
    // Payloads are skipped, not parsed, so even absurd nesting is carried as raw text
    // without recursion; the typed fields still refuse it (serde_json's recursion limit).
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let frame = format!(r#"{{"type":"invokefunction","function_id":"f","data":{nested}}}"#);
    let Message::InvokeFunction(m) = decode(frame.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(m.data_or_null().get().len(), 2 * depth);
    let frame = format!(r#"{{"type":"invokefunction","function_id":"f","action":{nested}}}"#);
    assert!(matches!(
        decode(frame.as_bytes()),
        Err(Error::MalformedFrame(_))
    ));
    let frame = format!(r#"{{"type":"mystery","x":{nested}}}"#);
    assert_eq!(decode(frame.as_bytes()).unwrap().kind(), "mystery");
}

#[test]
fn size_limit() {
    let frame = br#"{"type":"ping"}"#;
    assert!(decode_limited(frame, frame.len()).is_ok());
    assert_eq!(
        decode_limited(frame, 4).unwrap_err(),
        Error::FrameTooLarge {
            size: frame.len(),
            limit: 4
        }
    );
}

#[test]
fn encoding_is_raw_utf8_and_omits_absent_fields() {
    let msg = Message::InvocationResult(InvocationResult {
        invocation_id: "i".into(),
        function_id: "größe::計算".into(),
        error: Some(ErrorBody::new("invocation_failed", "échec 💥")),
        ..Default::default()
    });
    assert_eq!(
        msg.to_text(),
        r#"{"type":"invocationresult","invocation_id":"i","function_id":"größe::計算","error":{"code":"invocation_failed","message":"échec 💥"}}"#
    );
}

#[test]
fn null_optional_strings_read_as_absent() {
    let (msg, again) = roundtrip(
        r#"{"type":"invokefunction","invocation_id":null,"function_id":"f","traceparent":null}"#,
    );
    let Message::InvokeFunction(m) = msg else {
        panic!()
    };
    assert!(m.invocation_id.is_none() && m.traceparent.is_none());
    assert!(again.get("invocation_id").is_none());
}

#[test]
fn lenient_error_bodies() {
    let Message::InvocationResult(r) = decode(
        br#"{"type":"invocationresult","invocation_id":"i","function_id":"f","error":"boom"}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(r.error, Some(ErrorBody::new("UNKNOWN", "boom")));
    let Message::InvocationResult(r) =
        decode(br#"{"type":"invocationresult","invocation_id":"i","function_id":"f","error":null,"result":3}"#)
            .unwrap()
    else {
        panic!()
    };
    assert!(r.error.is_none());
    assert_eq!(r.result.as_deref().map(RawValue::get), Some("3"));
}

#[test]
fn actions_and_http_refs() {
    let Message::InvokeFunction(m) = decode(
        br#"{"type":"invokefunction","function_id":"f","data":{},"action":{"type":"enqueue","queue":"payments"}}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        m.action,
        Some(TriggerAction::Enqueue {
            queue: "payments".into()
        })
    );
    let Message::RegisterFunction(r) = decode(
        br#"{"type":"registerfunction","id":"x","invocation":{"url":"https://e.x/a","method":"PUT","auth":{"type":"api_key","header":"X-K","value_key":"K"}}}"#,
    )
    .unwrap() else {
        panic!()
    };
    let inv = r.invocation.unwrap();
    assert_eq!(inv.method, Some(HttpMethod::Put));
    assert_eq!(
        inv.auth,
        Some(HttpAuth::ApiKey {
            header: "X-K".into(),
            value_key: "K".into()
        })
    );
}

#[test]
fn repeated_keys_last_wins() {
    let Message::UnregisterFunction(m) =
        decode(br#"{"type":"unregisterfunction","id":"a","id":"b"}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(m.id, "b");
}

#[test]
fn repeated_unknown_keys_last_wins_in_the_order_of_last_occurrence() {
    let Message::UnregisterFunction(m) =
        decode(br#"{"type":"unregisterfunction","id":"a","x":1,"y":2,"x":3,"z":4,"y":5}"#).unwrap()
    else {
        panic!()
    };
    let extra: Vec<(&str, &str)> = m.extra.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
    assert_eq!(extra, [("x", "3"), ("z", "4"), ("y", "5")]);
    assert_eq!(
        String::from_utf8(Message::UnregisterFunction(m).encode()).unwrap(),
        r#"{"type":"unregisterfunction","id":"a","x":3,"z":4,"y":5}"#
    );
}

#[test]
fn many_unique_unknown_keys_decode_in_linear_time() {
    // 200k unknown keys (about 3 MB): linear handling takes well under a second even in a debug
    // build; the old retain-per-key handling took minutes (2e10 key comparisons), so the wide
    // deadline below only catches that.
    let mut frame = String::from(r#"{"type":"unregisterfunction","id":"a""#);
    for i in 0..200_000 {
        frame.push_str(&format!(r#","k{i}":0"#));
    }
    frame.push('}');
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(decode(frame.as_bytes()).map(|m| match m {
            Message::UnregisterFunction(m) => m.extra.len(),
            _ => 0,
        }));
    });
    let decoded = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a frame of 200k unknown keys decodes within a minute");
    assert_eq!(decoded.unwrap(), 200_000);
}

#[test]
fn text_and_byte_decoding_agree() {
    // `decode_text` (the engine's reader: frames already checked as UTF-8) and `decode` must
    // read every frame alike, errors included.
    let frames = [
        r#"{"type":"invokefunction","invocation_id":"i-1","function_id":"a.b","data":{"x":"é✓","y":[1,2]}}"#,
        r#"{"type":"invocationresult","invocation_id":"i-1","function_id":"a.b","result":{"ok":true},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#,
        r#"{"type":"invocationresult","invocation_id":"i","function_id":"f","error":{"code":"x","message":"m"}}"#,
        r#"{"type":"invoke\u0066unction","function_id":"f"}"#,
        r#"{"function_id":"f","type":"invokefunction"}"#,
        r#"{"type":"registerfunction","id":"f","description":"d","metadata":{"k":1},"future_field":[1]}"#,
        r#"{"type":"unregisterfunction","id":"a","id":"b","x":1,"x":2}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"mystery","a":1}"#,
        r#"{"type":null,"id":"a"}"#,
        r#"{"type":5}"#,
        r#"{"id":"a"}"#,
        r#"{"type":"invokefunction"}"#,
        r#"{"type":"invokefunction","function_id":"f","data":}"#,
        r#"[1,2]"#,
        r#"{"type":"error","error":{"code":"c","message":"m"}}"#,
        "  {\"type\":\"pong\"}  ",
    ];
    for frame in frames {
        assert_eq!(
            format!("{:?}", decode(frame.as_bytes())),
            format!("{:?}", super::decode_text(frame)),
            "{frame}"
        );
    }
    assert!(matches!(
        super::decode_text(r#"{"type":"invoke\u0066unction","function_id":"f"}"#),
        Ok(Message::InvokeFunction(_))
    ));
    assert!(super::decode_text(r#"{"type":5}"#).is_err());
}

fn raw(text: &str) -> RawJson {
    RawValue::from_string(text.to_owned()).unwrap()
}

/// `invokefunction` frames covering every field, strings that need escapes and strings that do
/// not, absent fields, and unknown fields.
fn invoke_samples() -> Vec<InvokeFunction> {
    let odd = [
        "plain",
        "quo\"te",
        "back\\slash",
        "new\nline",
        "tab\t",
        "\u{1}",
        "é✓ ü",
        "",
    ];
    let mut samples = vec![InvokeFunction::default()];
    for (i, text) in odd.iter().enumerate() {
        samples.push(InvokeFunction {
            invocation_id: Some(format!("{text}-{i}")),
            function_id: format!("fn::{text}"),
            data: Some(raw(&format!(
                r#"{{"k": {}, "n": [1, 2.50]}}"#,
                Value::from(*text)
            ))),
            traceparent: Some(text.to_string()),
            baggage: (i % 2 == 0).then(|| format!("b={text}")),
            action: match i % 3 {
                0 => None,
                1 => Some(TriggerAction::Void),
                _ => Some(TriggerAction::Enqueue {
                    queue: text.to_string(),
                }),
            },
            metadata: (i % 2 == 1).then(|| raw(r#"{"m":"é"}"#)),
            namespace: (i % 2 == 0).then(|| format!("ns{text}")),
            extra: vec![(format!("x{text}"), raw("[true, null]"))],
        });
    }
    for data in [
        "null",
        "3",
        "\"{}\"",
        "[1,{}]",
        " { } ",
        "{}",
        "\t{\"a\":{\"b\":\"}\"}}\n",
    ] {
        samples.push(InvokeFunction {
            function_id: "f".to_owned(),
            data: Some(raw(data)),
            ..InvokeFunction::default()
        });
    }
    samples
}

#[test]
fn the_invoke_encoder_writes_the_bytes_the_serde_path_writes() {
    for m in invoke_samples() {
        let without_caller = m.encode_with_caller(None);
        let message = Message::InvokeFunction(m);
        let reference = serde_json::to_vec(&message).unwrap();
        assert_eq!(without_caller, reference);
        assert_eq!(
            String::from_utf8(message.encode()).unwrap(),
            String::from_utf8(reference).unwrap()
        );
    }
}

#[test]
fn encoding_with_the_caller_splices_its_id_into_object_payloads_only() {
    for m in invoke_samples() {
        for caller in ["worker-1", "we\"ird\\id\n"] {
            let mut edited = m.clone();
            if let Some(data) = &m.data {
                let mut spliced = String::new();
                if splice_caller_worker_id(data.get(), caller, &mut spliced) {
                    edited.data = Some(raw(&spliced));
                }
            }
            let expected = serde_json::to_vec(&Message::InvokeFunction(edited)).unwrap();
            let written = m.encode_with_caller(Some(caller));
            assert_eq!(
                String::from_utf8(written.clone()).unwrap(),
                String::from_utf8(expected).unwrap()
            );
            // What a worker reads: the engine's id in an object payload, anything else as sent.
            let Message::InvokeFunction(read) = decode(&written).unwrap() else {
                panic!("not an invokefunction")
            };
            let sent: Option<Value> = m
                .data
                .as_ref()
                .map(|d| serde_json::from_str(d.get()).unwrap());
            let got: Option<Value> = read
                .data
                .as_ref()
                .map(|d| serde_json::from_str(d.get()).unwrap());
            match (sent, got) {
                (Some(Value::Object(mut sent)), Some(got)) => {
                    sent.insert(CALLER_WORKER_ID_KEY.to_owned(), Value::from(caller));
                    assert_eq!(Value::Object(sent), got);
                }
                (sent, got) => assert_eq!(sent, got),
            }
        }
    }
}

/// `decode_split` with its payload put back reads every frame as `decode_text` does, errors
/// included; the large `invokefunction` and `invocationresult` frames keep their payload in the
/// frame.
#[test]
fn split_and_whole_decoding_agree() {
    let big = format!(
        r#"{{"pad":"{}","n":[1,2.5,-3e2,true,null]}}"#,
        "x".repeat(SPLIT_FRAME_BYTES)
    );
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let split_expected = [
        format!(
            r#"{{"type":"invokefunction","invocation_id":"i-1","function_id":"a.b","data":{big},"traceparent":"t","later":[1]}}"#
        ),
        format!(r#"{{"data":{big},"function_id":"a.b","type":"invokefunction"}}"#),
        format!(r#" {{ "type" : "invokefunction" , "function_id" : "f" , "data" : {deep} }} "#),
        format!(r#"{{"type":"invokefunction","function_id":"f","data":1,"data":{big}}}"#),
        format!(
            r#"{{"type":"invocationresult","invocation_id":"i","function_id":"f","result":{big}}}"#
        ),
        format!(
            r#"{{"type":"invocationresult","invocation_id":"i","function_id":"f","result":"{}","error":null}}"#,
            "y".repeat(SPLIT_FRAME_BYTES)
        ),
    ];
    let whole_expected = [
        // No payload key, or the other one too: decoded whole.
        format!(
            r#"{{"type":"invocationresult","invocation_id":"i","function_id":"f","error":{{"code":"c","message":"{}"}}}}"#,
            "m".repeat(SPLIT_FRAME_BYTES)
        ),
        format!(r#"{{"type":"invokefunction","function_id":"f","data":{big},"result":2}}"#),
        format!(r#"{{"type":"registerfunction","id":"f","metadata":{big}}}"#),
        format!(r#"{{"type":"mystery","data":{big}}}"#),
        // An escaped key: the scan gives up.
        format!(r#"{{"type":"invokefunction","function_id":"f","d\u0061ta":{big}}}"#),
        // Errors, worded by the ordinary decoder.
        format!(r#"{{"type":"invokefunction","data":{big}}}"#),
        format!(r#"{{"type":"invocationresult","function_id":"f","result":{big}}}"#),
        format!("{{\"type\":\"invokefunction\",\"function_id\":\"f\",\"data\":\"a\u{1}{big}\"}}"),
        format!(r#"{{"type":"invokefunction","function_id":"f","data":{big}"#),
        format!(r#"{{"type":"invokefunction","function_id":"f","data":{big}}} trailing"#),
        format!(r#"{{"type":"invokefunction","function_id":"f","data":[{big},]}}"#),
    ];
    let rebuilt = |frame: &str| {
        decode_split(frame).and_then(|split| {
            let was_split = split.payload.is_some();
            split.into_whole(frame).map(|message| (message, was_split))
        })
    };
    for (frames, split) in [(&split_expected[..], true), (&whole_expected[..], false)] {
        for frame in frames {
            let short = &frame[..frame.len().min(120)];
            assert!(frame.len() >= SPLIT_FRAME_BYTES, "{short}");
            let got = rebuilt(frame);
            assert_eq!(
                format!("{:?}", got.as_ref().map(|(m, _)| m)),
                format!("{:?}", super::decode_text(frame)),
                "{short}"
            );
            if let Ok((_, was_split)) = got {
                assert_eq!(was_split, split, "{short}");
            }
        }
    }
    // Small frames are decoded whole.
    let small = r#"{"type":"invokefunction","function_id":"f","data":{"a":1}}"#;
    assert!(decode_split(small).unwrap().payload.is_none());
}
