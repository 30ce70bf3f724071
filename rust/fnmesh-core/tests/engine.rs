//! The engine's dispatch loop seen from the wire (docs/protocol.md 1-4, 6.1-6.2, 7, 11): raw
//! WebSocket "workers" speaking iii JSON against an engine on a free port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fnmesh_core::engine::Engine;
use fnmesh_core::function::{async_fn, Call, CallOptions, Outcome};
use fnmesh_core::registry::{ConflictPolicy, FunctionDef};
use fnmesh_core::triggers::{TriggerAck, TriggerBinding, TriggerProvider, TriggerSpec};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

/// Top-level fields of a frame with their exact bytes.
fn raw_fields(frame: &str) -> HashMap<String, Box<RawValue>> {
    serde_json::from_str(frame)
        .unwrap_or_else(|e| panic!("frame is not a JSON object ({e}): {frame}"))
}

/// A raw iii worker: one WebSocket, JSON in text frames.
struct Worker {
    ws: WebSocketStream<TcpStream>,
    id: String,
    token: String,
}

async fn open(addr: SocketAddr, path: &str) -> Result<WebSocketStream<TcpStream>, WsError> {
    let stream = TcpStream::connect(addr).await.expect("tcp connect");
    let url = format!("ws://{addr}{path}");
    let (ws, _) = timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake within 5 s")?;
    Ok(ws)
}

impl Worker {
    /// Connects and reads the `workerregistered` the engine sends first.
    async fn connect(engine: &Engine) -> Worker {
        let ws = open(engine.local_addr(), "/").await.expect("handshake");
        let mut w = Worker {
            ws,
            id: String::new(),
            token: String::new(),
        };
        let first = w.recv().await;
        assert_eq!(first["type"], "workerregistered", "first frame: {first}");
        w.id = first["worker_id"].as_str().expect("worker_id").to_owned();
        w.token = first["reattach_token"]
            .as_str()
            .expect("reattach_token")
            .to_owned();
        assert!(uuid::Uuid::parse_str(&w.id).is_ok(), "worker_id {}", w.id);
        assert!(uuid::Uuid::parse_str(&w.token).is_ok());
        assert_ne!(w.id, w.token);
        w
    }

    async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.ws.send(Message::text(text)).await.expect("send");
    }

    async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// The next text frame, verbatim.
    async fn recv_frame(&mut self) -> String {
        loop {
            let next = timeout(WAIT, self.ws.next())
                .await
                .expect("no frame from the engine within 5 s");
            match next {
                Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        let frame = self.recv_frame().await;
        serde_json::from_str(&frame).unwrap_or_else(|e| panic!("bad JSON ({e}): {frame}"))
    }

    /// The next frame of this `type`, skipping others (and the frame text).
    async fn recv_type(&mut self, kind: &str) -> (Value, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {kind} within 5 s");
            let frame = self.recv_frame().await;
            let value: Value = serde_json::from_str(&frame).unwrap();
            if value["type"] == kind {
                return (value, frame);
            }
        }
    }

    /// Asserts the engine sends nothing for `dur`.
    async fn expect_nothing(&mut self, dur: Duration) {
        if let Ok(next) = timeout(dur, self.ws.next()).await {
            panic!("expected silence, got {next:?}");
        }
    }

    /// Waits for the engine's close frame and returns its code.
    async fn expect_close(&mut self) -> u16 {
        loop {
            match timeout(WAIT, self.ws.next())
                .await
                .expect("no close within 5 s")
            {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Registers functions, then calls `engine::workers::register` (as the SDKs do) and waits
    /// for its answer, so the registrations are in force when this returns.
    async fn register(&mut self, ids: &[&str]) {
        for id in ids {
            self.send(
                json!({"type": "registerfunction", "id": id, "description": format!("test {id}")}),
            )
            .await;
        }
        let result = self
            .call_ok(
                "engine::workers::register",
                json!({"runtime": "test", "pid": 4242}),
            )
            .await;
        assert_eq!(result, json!({"success": true}));
    }

    /// Sends a call with a fresh invocation id and returns the id.
    async fn invoke(&mut self, function_id: &str, data: Value) -> String {
        let id = new_id();
        self.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": function_id, "data": data}))
            .await;
        id
    }

    /// The `invocationresult` for `id` (other frames skipped).
    async fn result_for(&mut self, id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no result for {id} within 5 s");
            let (value, _) = self.recv_type("invocationresult").await;
            if value["invocation_id"] == id {
                return value;
            }
        }
    }

    async fn call(&mut self, function_id: &str, data: Value) -> Value {
        let id = self.invoke(function_id, data).await;
        let result = self.result_for(&id).await;
        assert_eq!(result["function_id"], function_id);
        result
    }

    async fn call_ok(&mut self, function_id: &str, data: Value) -> Value {
        let result = self.call(function_id, data).await;
        assert!(
            result.get("error").is_none(),
            "{function_id} failed: {result}"
        );
        result["result"].clone()
    }

    /// Receives the next `invokefunction` routed to this worker.
    async fn next_invoke(&mut self) -> (Value, String) {
        self.recv_type("invokefunction").await
    }

    async fn reply(&mut self, invoke: &Value, result: Value) {
        self.send(json!({
            "type": "invocationresult",
            "invocation_id": invoke["invocation_id"],
            "function_id": invoke["function_id"],
            "result": result,
        }))
        .await;
    }

    /// Drops the socket without a close handshake (a crashed or cut-off worker).
    fn cut(self) {
        drop(self.ws);
    }
}

async fn start(builder: fnmesh_core::engine::EngineBuilder) -> Engine {
    builder
        .addr(any_port())
        .start()
        .await
        .expect("engine starts")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Disconnects the remaining workers, then stops the engine. (With workers still connected,
/// `Engine::shutdown` waits out its 5 s deadline: see `engine_shutdown_closes_workers`.)
async fn finish(engine: Engine, workers: impl IntoIterator<Item = Worker>) {
    for w in workers {
        w.cut();
    }
    wait_until("all workers gone", || engine.worker_count() == 0).await;
    timeout(Duration::from_secs(2), engine.shutdown())
        .await
        .expect("shutdown with no workers left is quick");
}

fn error_code(result: &Value) -> &str {
    result["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error result, got {result}"))
}

#[derive(serde::Deserialize)]
struct AddInput {
    a: i64,
    b: i64,
}

fn add(mut call: Call) {
    if let Some(AddInput { a, b }) = call.parse() {
        call.reply.send(match a.checked_add(b) {
            Some(sum) => Outcome::json(&json!({ "sum": sum })),
            None => Outcome::failure("invalid_argument", "the sum overflows a 64-bit integer"),
        });
    }
}

fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Success(Some(raw)) => serde_json::from_str(raw.get()).unwrap(),
        Outcome::Success(None) => Value::Null,
        Outcome::Failure(e) => panic!("call failed: {} {}", e.code, e.message),
    }
}

fn failure_code(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Failure(e) => e.code.clone(),
        Outcome::Success(v) => panic!("expected a failure, got {v:?}"),
    }
}

#[tokio::test]
async fn worker_calls_a_native_rust_function() {
    let engine = start(
        Engine::builder()
            .function(
                "math::add",
                FunctionDef {
                    description: Some("Add two integers".into()),
                    ..FunctionDef::default()
                },
                add,
            )
            .function(
                "math::double",
                FunctionDef::default(),
                async_fn(|data| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let n: i64 = serde_json::from_str(data.get()).unwrap_or(0);
                    Outcome::json(&(n * 2))
                }),
            ),
    )
    .await;
    assert!(engine.url().starts_with("ws://127.0.0.1:"));
    assert_ne!(engine.local_addr().port(), 0);
    let mut w = Worker::connect(&engine).await;

    let id = w.invoke("math::add", json!({"a": 2, "b": 3})).await;
    let (reply, frame) = w.recv_type("invocationresult").await;
    assert_eq!(reply["invocation_id"], id.as_str());
    assert_eq!(reply["function_id"], "math::add");
    assert_eq!(reply["result"], json!({"sum": 5}));
    assert!(reply.get("error").is_none(), "{frame}");

    let bad = w.call("math::add", json!({"a": "two"})).await;
    assert_eq!(error_code(&bad), "deserialization_error");
    let overflow = w.call("math::add", json!({"a": i64::MAX, "b": 1})).await;
    assert_eq!(error_code(&overflow), "invalid_argument");
    assert_eq!(w.call_ok("math::double", json!(21)).await, json!(42));

    // Several calls in flight at once, answered out of order, each with its own id.
    let slow = w.invoke("math::double", json!(5)).await;
    let fast = w.invoke("math::add", json!({"a": 1, "b": 1})).await;
    let mut got = HashMap::new();
    for _ in 0..2 {
        let (r, _) = w.recv_type("invocationresult").await;
        got.insert(
            r["invocation_id"].as_str().unwrap().to_owned(),
            r["result"].clone(),
        );
    }
    assert_eq!(got[&slow], json!(10));
    assert_eq!(got[&fast], json!({"sum": 2}));

    // From Rust, too.
    let out = engine
        .call("default", "math::add", raw(r#"{"a":40,"b":2}"#), None)
        .await;
    assert_eq!(outcome_json(&out), json!({"sum": 42}));
    assert_eq!(engine.pending_count(), 0);
    finish(engine, [w]).await;
}

#[tokio::test]
async fn worker_to_worker_call_is_forwarded_verbatim() {
    let engine = start(Engine::builder()).await;
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    assert_ne!(a.id, b.id);
    a.register(&["svc::echo"]).await;

    let id = new_id();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    b.send_text(format!(
        r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"svc::echo","data":{{"z": 1,  "a":[1.50,"é", {{"n":null}}]}},"traceparent":"{traceparent}","baggage":"k=v,tenant=t%201","metadata":{{"session_id":"s_1", "n": 1.0}}}}"#
    ))
    .await;

    let (invoke, frame) = a.next_invoke().await;
    let fields = raw_fields(&frame);
    assert_eq!(invoke["invocation_id"], id.as_str(), "same id on both hops");
    assert_eq!(invoke["function_id"], "svc::echo");
    // The payload bytes pass through untouched, with the caller's id spliced in at the end.
    assert_eq!(
        fields["data"].get(),
        format!(
            r#"{{"z": 1,  "a":[1.50,"é", {{"n":null}}],"_caller_worker_id":"{}"}}"#,
            b.id
        )
    );
    assert_eq!(
        fields["metadata"].get(),
        r#"{"session_id":"s_1", "n": 1.0}"#
    );
    assert_eq!(invoke["traceparent"], traceparent);
    assert_eq!(invoke["baggage"], "k=v,tenant=t%201");
    assert!(invoke.get("action").is_none());

    a.send_text(format!(
        r#"{{"type":"invocationresult","invocation_id":"{id}","function_id":"svc::echo","result":{{"echo": [1.50, "é"]}}}}"#
    ))
    .await;
    let (reply, frame) = b.recv_type("invocationresult").await;
    assert_eq!(reply["invocation_id"], id.as_str());
    assert_eq!(reply["function_id"], "svc::echo");
    assert_eq!(
        raw_fields(&frame)["result"].get(),
        r#"{"echo": [1.50, "é"]}"#
    );
    assert!(reply.get("error").is_none());

    // A failure comes back as the worker sent it.
    let id2 = b.invoke("svc::echo", json!({"x": 1})).await;
    let (invoke, _) = a.next_invoke().await;
    assert_eq!(invoke["data"], json!({"x": 1, "_caller_worker_id": b.id}));
    a.send(
        json!({"type": "invocationresult", "invocation_id": id2, "function_id": "svc::echo",
                  "error": {"code": "invocation_failed", "message": "boom", "stacktrace": "tb"}}),
    )
    .await;
    let reply = b.result_for(&id2).await;
    assert_eq!(
        reply["error"],
        json!({"code": "invocation_failed", "message": "boom", "stacktrace": "tb"})
    );
    assert!(reply.get("result").is_none());

    // Non-object payloads are not touched; a forged `_caller_worker_id` loses to the real one.
    for (sent, expected) in [
        (r#"[1, 2.50]"#.to_owned(), r#"[1, 2.50]"#.to_owned()),
        (r#""text""#.to_owned(), r#""text""#.to_owned()),
        (
            r#"{"_caller_worker_id":"forged"}"#.to_owned(),
            format!(
                r#"{{"_caller_worker_id":"forged","_caller_worker_id":"{}"}}"#,
                b.id
            ),
        ),
        (
            " { } ".to_owned(),
            format!(r#"{{"_caller_worker_id":"{}"}}"#, b.id),
        ),
    ] {
        let id = new_id();
        b.send_text(format!(
            r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"svc::echo","data":{sent}}}"#
        ))
        .await;
        let (invoke, frame) = a.next_invoke().await;
        assert_eq!(raw_fields(&frame)["data"].get(), expected, "payload {sent}");
        assert!(invoke.get("metadata").is_none() && invoke.get("traceparent").is_none());
        a.reply(&invoke, json!(null)).await;
        let reply = b.result_for(&id).await;
        assert!(reply.get("error").is_none());
    }

    // A call without `data` at all is treated as `data: null`.
    let id = new_id();
    b.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "svc::echo"}))
        .await;
    let (invoke, frame) = a.next_invoke().await;
    assert_eq!(raw_fields(&frame)["data"].get(), "null");
    a.send(json!({"type": "invocationresult", "invocation_id": invoke["invocation_id"], "function_id": "svc::echo"}))
        .await;
    let reply = b.result_for(&id).await;
    assert!(
        reply.get("result").is_none() && reply.get("error").is_none(),
        "NoResult: {reply}"
    );
    assert_eq!(engine.pending_count(), 0);
    finish(engine, [a, b]).await;
}

/// A payload of about `len` bytes with the JSON a splitter must get right: escapes, non-ASCII
/// text, nesting, numbers, literals and odd whitespace.
fn large_payload(len: usize) -> String {
    let mut items = Vec::new();
    let mut size = 0;
    let mut n = 0;
    while size < len {
        let item = format!(
            r#"{{"n":{n}, "s":"q\"uote\\ \u00e9 é ✓ {}", "a":[1.5e3,-0,true,null,[]] }}"#,
            "x".repeat(n % 97)
        );
        size += item.len() + 2;
        items.push(item);
        n += 1;
    }
    format!(
        "{{ \"items\" : [{}] , \"end\":\"}}\" }}",
        items.join(" ,\n")
    )
}

#[tokio::test]
async fn large_payloads_stay_in_their_frame_and_arrive_exact() {
    // Frames of 40 KiB: past the size from which the decoder leaves the payload in the frame
    // (SPLIT_FRAME_BYTES), under the engine's default frame limit of 64 KiB.
    let data = large_payload(40 * 1024);
    let result = large_payload(41 * 1024);
    assert!(data.len() >= fnmesh_core::protocol::SPLIT_FRAME_BYTES);
    let engine = start(Engine::builder().function(
        "native::echo",
        FunctionDef::default(),
        async_fn(|data| async move { Outcome::Success(Some(data)) }),
    ))
    .await;
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    a.register(&["svc::echo"]).await;

    // Worker to worker: the worker reads the payload byte for byte, the caller's id spliced in.
    let id = new_id();
    b.send_text(format!(
        r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"svc::echo","data":{data},"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}"#
    ))
    .await;
    let (invoke, frame) = a.next_invoke().await;
    assert_eq!(invoke["invocation_id"], id.as_str());
    let spliced = format!(
        r#"{},"_caller_worker_id":"{}"}}"#,
        data.trim_end().strip_suffix('}').unwrap(),
        b.id
    );
    assert_eq!(raw_fields(&frame)["data"].get(), spliced);
    // The answer comes back to the calling worker as the serving worker wrote it.
    let answer = format!(
        r#"{{"type":"invocationresult","invocation_id":"{id}","function_id":"svc::echo","result":{result}}}"#
    );
    a.send_text(answer.clone()).await;
    let (_, frame) = b.recv_type("invocationresult").await;
    assert_eq!(frame, answer);

    // A worker's large payload to a function in the process: it gets the value, exact.
    let echoed = b
        .call("native::echo", serde_json::from_str(&data).unwrap())
        .await;
    let mut expected: Value = serde_json::from_str(&data).unwrap();
    expected["_caller_worker_id"] = json!(b.id);
    assert_eq!(echoed["result"], expected);

    // A worker's large answer to a caller in the process.
    let engine_ref = &engine;
    let call = engine_ref.call("default", "svc::echo", raw(r#"{"small":true}"#), None);
    let serve = async {
        let (invoke, _) = a.next_invoke().await;
        a.send_text(format!(
            r#"{{"type":"invocationresult","invocation_id":{},"function_id":"svc::echo","result":{result}}}"#,
            invoke["invocation_id"]
        ))
        .await;
    };
    let (outcome, ()) = tokio::join!(call, serve);
    match outcome {
        Outcome::Success(Some(raw)) => assert_eq!(raw.get(), result),
        other => panic!("expected the large result, got {other:?}"),
    }

    // A large frame that is not JSON (a raw control character in a string) is dropped as any
    // malformed frame is; the calls after it go through.
    let bad = new_id();
    b.send_text(format!(
        "{{\"type\":\"invokefunction\",\"invocation_id\":\"{bad}\",\"function_id\":\"svc::echo\",\"data\":\"\u{1}{}\"}}",
        "y".repeat(30 * 1024)
    ))
    .await;
    let good = b.invoke("native::echo", json!(7)).await;
    let (reply, _) = b.recv_type("invocationresult").await;
    assert_eq!(
        reply["invocation_id"],
        good.as_str(),
        "only the good call is answered"
    );
    assert_eq!(reply["result"], json!(7));
    assert_eq!(engine.pending_count(), 0);
    finish(engine, [a, b]).await;
}

#[tokio::test]
async fn void_calls_get_no_reply_and_unknown_functions_fail() {
    let engine = start(Engine::builder()).await;
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    a.register(&["svc::log"]).await;

    // `action: void` with an id, and no id at all: the target runs, the caller hears nothing.
    let void_id = new_id();
    b.send(
        json!({"type": "invokefunction", "invocation_id": void_id, "function_id": "svc::log",
                  "data": {"n": 1}, "action": {"type": "void"}}),
    )
    .await;
    b.send(json!({"type": "invokefunction", "function_id": "svc::log", "data": {"n": 2}}))
        .await;
    b.send(json!({"type": "invokefunction", "invocation_id": null, "function_id": "svc::log", "data": {"n": 3}}))
        .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (invoke, _) = a.next_invoke().await;
        let target_id = invoke["invocation_id"].as_str().expect("target gets an id");
        assert!(uuid::Uuid::parse_str(target_id).is_ok(), "{target_id}");
        // 4.3: a void call reaches its target under a fresh id, never the caller's.
        assert_ne!(target_id, void_id.as_str());
        assert_eq!(invoke["data"]["_caller_worker_id"], b.id.as_str());
        seen.push(invoke["data"]["n"].as_i64().unwrap());
        a.reply(&invoke, json!({"logged": true})).await;
    }
    assert_eq!(seen, vec![1, 2, 3]);

    // Unknown functions: `function_not_found` for a call with an id, silence for a void one.
    b.send(
        json!({"type": "invokefunction", "function_id": "nope::missing", "data": {},
                  "action": {"type": "void"}}),
    )
    .await;
    let missing = b.call("nope::missing", json!({})).await;
    assert_eq!(error_code(&missing), "function_not_found");
    assert_eq!(
        missing["error"]["message"],
        "Function nope::missing not found in namespace default."
    );
    // Frames arrive in order: had the void calls been answered, those replies would have come
    // before this one.
    b.expect_nothing(Duration::from_millis(300)).await;
    assert_eq!(engine.pending_count(), 0);

    // Undecodable and unknown frames are ignored; the connection keeps working.
    b.send_text("{not json").await;
    b.send_text("   ").await;
    b.send(json!({"type": "unregistertriggertype", "id": "x"}))
        .await;
    b.send(json!({"type": "ping"})).await;
    assert_eq!(b.recv().await, json!({"type": "pong"}));
    let missing = b.call("nope::missing", json!(null)).await;
    assert_eq!(error_code(&missing), "function_not_found");

    // A function of another namespace is named in the message.
    let mut c = Worker::connect(&engine).await;
    c.send(json!({"type": "registerfunction", "id": "svc::ns_only"}))
        .await;
    let r = c
        .call_ok("engine::workers::register", json!({"namespace": "blue"}))
        .await;
    assert_eq!(r, json!({"success": true}));
    let missing = b.call("svc::ns_only", json!({})).await;
    assert_eq!(
        missing["error"]["message"],
        "Function svc::ns_only not found in namespace default. It is registered in namespace(s): blue."
    );
    let id = new_id();
    b.send(
        json!({"type": "invokefunction", "invocation_id": id, "function_id": "svc::ns_only",
                  "data": {}, "namespace": "blue"}),
    )
    .await;
    let (invoke, _) = c.next_invoke().await;
    c.reply(&invoke, json!("blue")).await;
    assert_eq!(b.result_for(&id).await["result"], "blue");
    let id = new_id();
    b.send(
        json!({"type": "invokefunction", "invocation_id": id, "function_id": "svc::ns_only",
                  "data": {}, "namespace": "  "}),
    )
    .await;
    assert_eq!(error_code(&b.result_for(&id).await), "INVALID_NAMESPACE");
    finish(engine, [a, b, c]).await;
}

#[tokio::test]
async fn target_disconnect_stops_in_flight_calls() {
    let engine = start(Engine::builder()).await;
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    a.register(&["svc::hang"]).await;

    let first = b.invoke("svc::hang", json!({"i": 1})).await;
    let second = b.invoke("svc::hang", json!({"i": 2})).await;
    a.next_invoke().await;
    a.next_invoke().await;
    assert_eq!(engine.pending_count(), 2);

    let cut_at = Instant::now();
    a.cut();
    let mut stopped = Vec::new();
    for _ in 0..2 {
        let (r, _) = b.recv_type("invocationresult").await;
        assert_eq!(
            r["error"],
            json!({"code": "invocation_stopped", "message": "Invocation stopped"})
        );
        stopped.push(r["invocation_id"].as_str().unwrap().to_owned());
    }
    let took = cut_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "invocation_stopped after {took:?}"
    );
    stopped.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(stopped, expected);
    assert_eq!(engine.pending_count(), 0);

    // Its functions left with it (no grace period).
    let after = b.call("svc::hang", json!({})).await;
    assert_eq!(error_code(&after), "function_not_found");
    wait_until("worker_count == 1", || engine.worker_count() == 1).await;

    // A caller that leaves drops its own pending calls; the late answer goes nowhere.
    let mut c = Worker::connect(&engine).await;
    c.register(&["svc::hang"]).await;
    let id = b.invoke("svc::hang", json!({})).await;
    let (invoke, _) = c.next_invoke().await;
    assert_eq!(engine.pending_count(), 1);
    b.cut();
    wait_until("caller's pending call dropped", || {
        engine.pending_count() == 0
    })
    .await;
    assert_eq!(invoke["invocation_id"], id.as_str());
    c.reply(&invoke, json!(1)).await;
    // The target is unaffected and nothing is left pending.
    let listed = c.call_ok("engine::functions::list", json!({})).await;
    assert!(listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["function_id"] == "svc::hang"));
    assert_eq!(engine.pending_count(), 0);
    finish(engine, [c]).await;
}

#[tokio::test]
async fn engine_side_invocation_timeout() {
    let engine = start(Engine::builder().invocation_timeout(Duration::from_millis(200))).await;
    assert_eq!(
        engine.config().invocation_timeout,
        Duration::from_millis(200)
    );
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    a.register(&["svc::slow"]).await;

    let started = Instant::now();
    let id = b.invoke("svc::slow", json!({})).await;
    let (invoke, _) = a.next_invoke().await;
    let reply = b.result_for(&id).await;
    let took = started.elapsed();
    assert_eq!(reply["function_id"], "svc::slow");
    assert_eq!(error_code(&reply), "invocation_timeout");
    assert_eq!(
        reply["error"]["message"],
        "Invocation timed out after 200 ms"
    );
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
        "timed out after {took:?}"
    );
    assert_eq!(engine.pending_count(), 0);

    // The late answer is dropped: the caller hears nothing more.
    a.reply(&invoke, json!("too late")).await;
    b.expect_nothing(Duration::from_millis(300)).await;

    // A per-call timeout from Rust overrides the engine's.
    let started = Instant::now();
    let (out, _) = tokio::join!(
        engine.call(
            "default",
            "svc::slow",
            raw("{}"),
            Some(Duration::from_millis(50))
        ),
        a.next_invoke()
    );
    assert_eq!(failure_code(&out), "invocation_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
    finish(engine, [a, b]).await;
}

#[tokio::test]
async fn reject_policy_refuses_a_second_owner() {
    let engine = start(Engine::builder().function_conflict(ConflictPolicy::Reject)).await;
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    let mut c = Worker::connect(&engine).await;
    a.register(&["svc::only"]).await;

    b.send(json!({"type": "registerfunction", "id": "svc::only"}))
        .await;
    b.send(json!({"type": "registerfunction", "id": "svc::mine"}))
        .await;
    let (rejected, _) = b.recv_type("registrationrejected").await;
    assert_eq!(
        rejected,
        json!({"type": "registrationrejected", "code": "FUNCTION_NAMESPACE_CONFLICT",
               "namespace": "default", "function_id": "svc::only", "owner_worker_id": a.id})
    );
    let r = b
        .call_ok("engine::workers::register", json!({"pid": 1}))
        .await;
    assert_eq!(r, json!({"success": true}));
    // Exactly one rejection; the connection stays usable.
    b.expect_nothing(Duration::from_millis(200)).await;

    // The incumbent keeps the function; the newcomer's other function registered.
    for _ in 0..3 {
        let id = c.invoke("svc::only", json!({})).await;
        let (invoke, _) = a.next_invoke().await;
        a.reply(&invoke, json!("a")).await;
        assert_eq!(c.result_for(&id).await["result"], "a");
    }
    let id = c.invoke("svc::mine", json!({})).await;
    let (invoke, _) = b.next_invoke().await;
    b.reply(&invoke, json!("b")).await;
    assert_eq!(c.result_for(&id).await["result"], "b");

    // The same connection may re-register its own function.
    a.send(json!({"type": "registerfunction", "id": "svc::only", "description": "again"}))
        .await;
    a.expect_nothing(Duration::from_millis(200)).await;

    // Built-ins cannot be shadowed.
    b.send(json!({"type": "registerfunction", "id": "engine::functions::list"}))
        .await;
    let (rejected, _) = b.recv_type("registrationrejected").await;
    assert_eq!(rejected["code"], "FUNCTION_NAMESPACE_CONFLICT");
    assert_eq!(rejected["owner_worker_id"], "");

    // Once the owner is gone, another worker may take the id.
    a.cut();
    wait_until("owner cleaned up", || engine.worker_count() == 2).await;
    b.send(json!({"type": "registerfunction", "id": "svc::only"}))
        .await;
    b.expect_nothing(Duration::from_millis(200)).await;
    let id = c.invoke("svc::only", json!({})).await;
    let (invoke, _) = b.next_invoke().await;
    b.reply(&invoke, json!("b now")).await;
    assert_eq!(c.result_for(&id).await["result"], "b now");
    finish(engine, [b, c]).await;
}

#[tokio::test]
async fn default_policy_shares_calls_between_replicas() {
    let engine = start(Engine::builder()).await;
    assert_eq!(engine.config().function_conflict, ConflictPolicy::Replicate);
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    let mut c = Worker::connect(&engine).await;
    a.register(&["svc::rep"]).await;
    b.register(&["svc::rep"]).await;

    let listed = c
        .call_ok("engine::functions::list", json!({"prefix": "svc::rep"}))
        .await;
    let rows = listed["functions"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["replicas"], 2);

    // Two calls in flight: least-in-flight sends one to each replica.
    let first = c.invoke("svc::rep", json!({"n": 1})).await;
    let second = c.invoke("svc::rep", json!({"n": 2})).await;
    let (on_a, _) = a.next_invoke().await;
    let (on_b, _) = b.next_invoke().await;
    let mut ids = vec![
        on_a["invocation_id"].as_str().unwrap().to_owned(),
        on_b["invocation_id"].as_str().unwrap().to_owned(),
    ];
    ids.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    a.reply(&on_a, json!("from a")).await;
    b.reply(&on_b, json!("from b")).await;
    let mut answers = vec![
        c.result_for(&first).await["result"].clone(),
        c.result_for(&second).await["result"].clone(),
    ];
    answers.sort_by_key(|v| v.to_string());
    assert_eq!(answers, vec![json!("from a"), json!("from b")]);

    // Sequential calls alternate (round-robin among equally idle replicas).
    let mut served = Vec::new();
    for _ in 0..4 {
        let id = c.invoke("svc::rep", json!({})).await;
        let (worker, invoke) = tokio::select! {
            (inv, _) = a.next_invoke() => ("a", inv),
            (inv, _) = b.next_invoke() => ("b", inv),
        };
        served.push(worker);
        if worker == "a" {
            a.reply(&invoke, json!(worker)).await;
        } else {
            b.reply(&invoke, json!(worker)).await;
        }
        assert_eq!(c.result_for(&id).await["result"], worker);
    }
    assert_eq!(
        served.iter().filter(|w| **w == "a").count(),
        2,
        "{served:?}"
    );
    assert_ne!(served[0], served[1], "{served:?}");

    // A replica that leaves takes only its own in-flight call with it.
    let on_a_id = c.invoke("svc::rep", json!({})).await;
    let on_b_id = c.invoke("svc::rep", json!({})).await;
    let (inv_a, _) = a.next_invoke().await;
    let (inv_b, _) = b.next_invoke().await;
    let (on_a_id, on_b_id) = if inv_a["invocation_id"] == on_a_id.as_str() {
        (on_a_id, on_b_id)
    } else {
        (on_b_id, on_a_id)
    };
    a.cut();
    assert_eq!(
        error_code(&c.result_for(&on_a_id).await),
        "invocation_stopped"
    );
    b.reply(&inv_b, json!("survived")).await;
    assert_eq!(c.result_for(&on_b_id).await["result"], "survived");
    for _ in 0..2 {
        let id = c.invoke("svc::rep", json!({})).await;
        let (invoke, _) = b.next_invoke().await;
        b.reply(&invoke, json!("b")).await;
        assert_eq!(c.result_for(&id).await["result"], "b");
    }
    finish(engine, [b, c]).await;
}

#[tokio::test]
async fn reattach_retires_the_previous_connection() {
    // Under `reject` a replay from a new connection would collide with a live old one.
    let engine = start(Engine::builder().function_conflict(ConflictPolicy::Reject)).await;
    let mut caller = Worker::connect(&engine).await;
    let mut old = Worker::connect(&engine).await;
    old.register(&["svc::sticky"]).await;

    // The old socket is still open (its death not yet noticed) when the worker reconnects.
    let mut new = Worker::connect(&engine).await;
    new.send(
        json!({"type": "reattach", "previous_worker_id": old.id, "reattach_token": old.token}),
    )
    .await;
    new.register(&["svc::sticky"]).await;
    assert_eq!(old.expect_close().await, 1000);
    // No conflict reported, no reply to the reattach itself.
    new.expect_nothing(Duration::from_millis(200)).await;
    wait_until("old connection gone", || engine.worker_count() == 2).await;

    for i in 0..3 {
        let id = caller.invoke("svc::sticky", json!({"i": i})).await;
        let (invoke, _) = new.next_invoke().await;
        new.reply(&invoke, json!(i)).await;
        assert_eq!(caller.result_for(&id).await["result"], i);
    }
    let listed = caller
        .call_ok("engine::functions::list", json!({"prefix": "svc::sticky"}))
        .await;
    assert_eq!(listed["functions"][0]["replicas"], 1, "{listed}");

    // Dropped socket, then reconnect with reattach and replay: callable again, no conflict.
    let (prev_id, prev_token) = (new.id.clone(), new.token.clone());
    new.cut();
    let mut again = Worker::connect(&engine).await;
    again
        .send(json!({"type": "reattach", "previous_worker_id": prev_id, "reattach_token": prev_token}))
        .await;
    again.register(&["svc::sticky"]).await;
    again.expect_nothing(Duration::from_millis(200)).await;
    let id = caller.invoke("svc::sticky", json!({})).await;
    let (invoke, _) = again.next_invoke().await;
    again.reply(&invoke, json!("again")).await;
    assert_eq!(caller.result_for(&id).await["result"], "again");
    finish(engine, [caller, old, again]).await;
}

#[tokio::test]
async fn reattach_with_a_wrong_token_is_ignored() {
    let engine = start(Engine::builder().function_conflict(ConflictPolicy::Reject)).await;
    let mut caller = Worker::connect(&engine).await;
    let mut old = Worker::connect(&engine).await;
    old.register(&["svc::owned"]).await;

    let mut intruder = Worker::connect(&engine).await;
    intruder
        .send(json!({"type": "reattach", "previous_worker_id": old.id, "reattach_token": new_id()}))
        .await;
    // Someone else's (valid) token does not work for this id either.
    intruder
        .send(json!({"type": "reattach", "previous_worker_id": old.id, "reattach_token": caller.token}))
        .await;
    // Reattaching to yourself or to an unknown id is a no-op as well.
    intruder
        .send(json!({"type": "reattach", "previous_worker_id": intruder.id, "reattach_token": intruder.token}))
        .await;
    intruder
        .send(
            json!({"type": "reattach", "previous_worker_id": new_id(), "reattach_token": new_id()}),
        )
        .await;
    intruder
        .send(json!({"type": "registerfunction", "id": "svc::owned"}))
        .await;
    intruder
        .send(
            json!({"type": "invokefunction", "function_id": "engine::workers::register",
                     "data": {}, "action": {"type": "void"}}),
        )
        .await;
    let (rejected, _) = intruder.recv_type("registrationrejected").await;
    assert_eq!(rejected["code"], "FUNCTION_NAMESPACE_CONFLICT");
    assert_eq!(rejected["owner_worker_id"], old.id.as_str());
    assert_eq!(engine.worker_count(), 3);

    // The old connection was not retired and still serves.
    let id = caller.invoke("svc::owned", json!({})).await;
    let (invoke, _) = old.next_invoke().await;
    old.reply(&invoke, json!("still old")).await;
    assert_eq!(caller.result_for(&id).await["result"], "still old");
    finish(engine, [caller, old, intruder]).await;
}

#[tokio::test]
async fn reattach_under_replicate_does_not_leave_a_self_replica() {
    let engine = start(Engine::builder()).await;
    let mut caller = Worker::connect(&engine).await;
    let mut old = Worker::connect(&engine).await;
    old.register(&["svc::self"]).await;
    let mut new = Worker::connect(&engine).await;
    new.send(
        json!({"type": "reattach", "previous_worker_id": old.id, "reattach_token": old.token}),
    )
    .await;
    new.register(&["svc::self"]).await;
    assert_eq!(old.expect_close().await, 1000);
    let listed = caller
        .call_ok("engine::functions::list", json!({"prefix": "svc::self"}))
        .await;
    assert_eq!(listed["functions"][0]["replicas"], 1, "{listed}");
    for _ in 0..2 {
        let id = caller.invoke("svc::self", json!({})).await;
        let (invoke, _) = new.next_invoke().await;
        new.reply(&invoke, json!("new")).await;
        assert_eq!(caller.result_for(&id).await["result"], "new");
    }
    finish(engine, [caller, old, new]).await;
}

#[tokio::test]
async fn discovery_and_calls_from_rust() {
    let engine = start(Engine::builder().function("math::add", FunctionDef::default(), add)).await;
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    a.register(&["svc::listed", "svc::other"]).await;
    a.send(
        json!({"type": "registerfunction", "id": "svc::hidden", "metadata": {"internal": true}}),
    )
    .await;
    wait_until("worker_count == 2", || engine.worker_count() == 2).await;

    let listed = b.call_ok("engine::functions::list", json!({})).await;
    let all: Vec<&str> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function_id"].as_str().unwrap())
        .collect();
    // The queue, state, pubsub and stream functions are listed (as iii lists its modules');
    // other engine::* are not.
    for listed_id in [
        "engine::queue::enqueue",
        "iii::durable::publish",
        "state::set",
        "publish",
        "stream::set",
        "stream::list_groups",
    ] {
        assert!(all.contains(&listed_id), "{listed_id}: {listed}");
    }
    let ids: Vec<&str> = all
        .iter()
        .copied()
        .filter(|id| {
            !id.starts_with("engine::queue::")
                && !id.starts_with("iii::")
                && !id.starts_with("state::")
                && !id.starts_with("stream::")
                && *id != "publish"
        })
        .collect();
    assert_eq!(
        ids,
        vec!["math::add", "svc::listed", "svc::other"],
        "{listed}"
    );
    let row = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function_id"] == "svc::listed")
        .unwrap();
    assert_eq!(row["namespace"], "default");
    assert_eq!(row["description"], "test svc::listed");
    assert_eq!(row["worker_name"], "svc");

    let all = b
        .call_ok("engine::functions::list", json!({"include_internal": true}))
        .await;
    let all_ids: Vec<&str> = all["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function_id"].as_str().unwrap())
        .collect();
    assert!(all_ids.contains(&"svc::hidden"), "{all_ids:?}");
    assert!(all_ids.contains(&"engine::functions::list"), "{all_ids:?}");
    let prefixed = b
        .call_ok("engine::functions::list", json!({"prefix": "svc::o"}))
        .await;
    assert_eq!(prefixed["functions"].as_array().unwrap().len(), 1);
    assert_eq!(prefixed["functions"][0]["function_id"], "svc::other");
    let bad = b
        .call("engine::functions::list", json!({"prefix": 3}))
        .await;
    assert_eq!(error_code(&bad), "deserialization_error");

    // Engine::call reaches a worker's function; engine-made calls carry no caller id.
    let (out, handled) = tokio::join!(
        engine.call("default", "svc::listed", raw(r#"{"q": 1.50}"#), Some(WAIT)),
        async {
            let (invoke, frame) = a.next_invoke().await;
            assert_eq!(raw_fields(&frame)["data"].get(), r#"{"q": 1.50}"#);
            assert_eq!(invoke["function_id"], "svc::listed");
            a.send_text(format!(
                r#"{{"type":"invocationresult","invocation_id":"{}","function_id":"svc::listed","result":{{"ok": true}}}}"#,
                invoke["invocation_id"].as_str().unwrap()
            ))
            .await;
        }
    );
    let () = handled;
    match &out {
        Outcome::Success(Some(raw)) => assert_eq!(raw.get(), r#"{"ok": true}"#),
        other => panic!("unexpected outcome {other:?}"),
    }
    let (out, ()) = tokio::join!(
        engine.call("default", "svc::other", raw("null"), None),
        async {
            let (invoke, _) = a.next_invoke().await;
            a.send(
                json!({"type": "invocationresult", "invocation_id": invoke["invocation_id"],
                          "function_id": "svc::other", "error": {"code": "E1", "message": "m"}}),
            )
            .await;
        }
    );
    assert_eq!(failure_code(&out), "E1");
    let out = engine
        .call("default", "svc::nothing", raw("{}"), None)
        .await;
    assert_eq!(failure_code(&out), "function_not_found");
    let out = engine.call(" ", "svc::listed", raw("{}"), None).await;
    assert_eq!(failure_code(&out), "INVALID_NAMESPACE");
    let listed = engine
        .call(
            "default",
            "engine::functions::list",
            raw(r#"{"prefix":"math::"}"#),
            None,
        )
        .await;
    assert_eq!(
        outcome_json(&listed)["functions"][0]["function_id"],
        "math::add"
    );

    // A worker that leaves is no longer listed.
    a.cut();
    wait_until("worker_count == 1", || engine.worker_count() == 1).await;
    let listed = b
        .call_ok("engine::functions::list", json!({"prefix": "svc::"}))
        .await;
    assert_eq!(listed["functions"], json!([]), "{listed}");
    assert_eq!(engine.pending_count(), 0);
    finish(engine, [b]).await;
}

#[tokio::test]
async fn engine_token_gates_workers() {
    let engine = start(Engine::builder().auth_token("tok-123")).await;
    match open(engine.local_addr(), "/").await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    assert_eq!(engine.worker_count(), 0);
    let mut ws = open(engine.local_addr(), "/?token=tok-123")
        .await
        .expect("token accepted");
    let first = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["type"], "workerregistered");
    assert_eq!(engine.worker_count(), 1);
    drop(ws);
    wait_until("worker_count == 0", || engine.worker_count() == 0).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn engine_shutdown_closes_workers() {
    let engine = start(Engine::builder()).await;
    let mut a = Worker::connect(&engine).await;
    a.register(&["svc::x"]).await;
    let addr = engine.local_addr();
    let stop = tokio::spawn(engine.shutdown());
    assert_eq!(a.expect_close().await, 1001);
    // `Server::shutdown` gives up after 5 s whatever happens.
    timeout(Duration::from_secs(8), stop)
        .await
        .expect("shutdown returned")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err() || open(addr, "/").await.is_err());
}

/// A native function answering with the trace context and metadata its call carried.
fn trace_echo(call: Call) {
    let seen = json!({
        "traceparent": call.traceparent,
        "baggage": call.baggage,
        "metadata": call.metadata.as_ref().map(|m| serde_json::from_str::<Value>(m.get()).unwrap()),
    });
    call.reply.send(Outcome::json(&seen));
}

#[tokio::test]
async fn host_calls_carry_trace_context_to_workers_and_native_functions() {
    let engine =
        start(Engine::builder().function("trace::echo", FunctionDef::default(), trace_echo)).await;
    let handle = engine.handle();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let options = || CallOptions {
        traceparent: Some(traceparent.to_owned()),
        baggage: Some("tenant=acme".to_owned()),
        metadata: Some(raw(r#"{"k":1}"#)),
        ..CallOptions::default()
    };

    // To a native function in the same process.
    let native = handle.call_with("trace::echo", raw("{}"), options()).await;
    assert_eq!(
        outcome_json(&native),
        json!({"traceparent": traceparent, "baggage": "tenant=acme", "metadata": {"k": 1}})
    );

    // To a worker: the invokefunction frame carries both fields.
    let mut w = Worker::connect(&engine).await;
    w.register(&["svc::traced"]).await;
    let caller = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.call_with("svc::traced", raw("{}"), options()).await })
    };
    let (invoke, _) = w.next_invoke().await;
    assert_eq!(invoke["traceparent"], traceparent);
    assert_eq!(invoke["baggage"], "tenant=acme");
    assert_eq!(invoke["metadata"], json!({"k": 1}));
    w.reply(&invoke, json!({"ok": true})).await;
    assert_eq!(outcome_json(&caller.await.unwrap()), json!({"ok": true}));

    // Fire and forget too.
    handle.send_with("svc::traced", raw("{}"), options());
    let (void, _) = w.next_invoke().await;
    assert_eq!(void["traceparent"], traceparent);
    assert_eq!(void["baggage"], "tenant=acme");
    finish(engine, [w]).await;
}

/// A trigger type served in-process for the tests: records what it is given and refuses a
/// config `{"refuse": "<reason>"}`.
#[derive(Default)]
struct Recorder {
    events: std::sync::Mutex<Vec<String>>,
}

impl Recorder {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

struct RecorderProvider(std::sync::Arc<Recorder>);

impl TriggerProvider for RecorderProvider {
    fn register(&self, binding: std::sync::Arc<TriggerBinding>, ack: TriggerAck) {
        let config: Value = serde_json::from_str(binding.config.get()).unwrap();
        if let Some(reason) = config["refuse"].as_str() {
            self.0
                .events
                .lock()
                .unwrap()
                .push(format!("refused {}", binding.function_id));
            return ack.refuse(reason);
        }
        self.0
            .events
            .lock()
            .unwrap()
            .push(format!("bound {}", binding.function_id));
        ack.accept();
    }

    fn unregister(&self, binding: &TriggerBinding) {
        self.0
            .events
            .lock()
            .unwrap()
            .push(format!("unbound {}", binding.function_id));
    }
}

fn spec(trigger_type: &str, function_id: &str, config: Value) -> TriggerSpec {
    TriggerSpec {
        id: None,
        trigger_type: trigger_type.to_owned(),
        function_id: function_id.to_owned(),
        config: serde_json::value::to_raw_value(&config).unwrap(),
        metadata: None,
        namespace: None,
        trigger_namespace: None,
    }
}

#[tokio::test]
async fn native_trigger_types_take_refuse_and_drop_bindings() {
    let engine = start(Engine::builder()).await;
    let handle = engine.handle();
    let recorder = std::sync::Arc::new(Recorder::default());

    // A binding made before its type exists waits, then is delivered.
    let early = handle
        .register_trigger(spec("test.kind", "svc::early", json!({})))
        .await
        .expect("parked, not refused");
    handle
        .register_trigger_type(
            "default",
            "test.kind",
            "a test type",
            RecorderProvider(recorder.clone()),
        )
        .unwrap();
    assert_eq!(recorder.events(), vec!["bound svc::early"]);

    // The host's own bindings: accepted, or refused with the provider's reason.
    let ok = handle
        .register_trigger(spec("test.kind", "svc::ok", json!({})))
        .await
        .unwrap();
    let refused = handle
        .register_trigger(spec(
            "test.kind",
            "svc::bad",
            json!({"refuse": "no such path"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "trigger_registration_failed");
    assert_eq!(refused.message, "no such path");

    // A worker's registertrigger: a refusal comes back as triggerregistrationresult, the
    // binding is dropped; an accepted one gets no answer.
    let mut w = Worker::connect(&engine).await;
    w.register(&["svc::w"]).await;
    w.send(json!({"type": "registertrigger", "id": "t-bad", "trigger_type": "test.kind", "function_id": "svc::w", "config": {"refuse": "bad config"}})).await;
    let (ack, _) = w.recv_type("triggerregistrationresult").await;
    assert_eq!(ack["id"], "t-bad");
    assert_eq!(ack["error"]["code"], "trigger_registration_failed");
    assert_eq!(ack["error"]["message"], "bad config");
    w.send(json!({"type": "registertrigger", "id": "t-ok", "trigger_type": "test.kind", "function_id": "svc::w", "config": {}})).await;
    w.expect_nothing(Duration::from_millis(200)).await;
    let listed = w
        .call_ok("engine::registered-triggers::list", json!({}))
        .await;
    let mut ids: Vec<&str> = listed["registered_triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![early.as_str(), ok.as_str(), "t-ok"];
    expected.sort_unstable();
    assert_eq!(ids, expected, "{listed}");

    // Unbinding, and the owner leaving, reach the provider.
    assert!(handle.unregister_trigger(&ok));
    assert!(!handle.unregister_trigger(&ok));
    w.cut();
    wait_until("the worker's binding dropped", || {
        recorder.events().iter().any(|e| e == "unbound svc::w")
    })
    .await;
    assert_eq!(
        recorder.events(),
        vec![
            "bound svc::early",
            "bound svc::ok",
            "refused svc::bad",
            "refused svc::w",
            "bound svc::w",
            "unbound svc::ok",
            "unbound svc::w",
        ]
    );

    // Without its provider, the remaining binding is parked again.
    assert!(handle.unregister_trigger_type("default", "test.kind"));
    assert_eq!(recorder.events().last().unwrap(), "unbound svc::early");
    finish(engine, []).await;
}

fn listed_ids(listing: &Value) -> Vec<String> {
    listing["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn external_functions_are_served_by_the_host_and_leave_with_their_worker() {
    use fnmesh_core::external::{ExternalReady, ExternalRegistration};
    use fnmesh_core::protocol::{ErrorBody, HttpMethod};
    use std::sync::{Arc, Mutex};

    let engine = start(Engine::builder()).await;
    let mut a = Worker::connect(&engine).await;
    let mut b = Worker::connect(&engine).await;
    let external = |id: &str, url: &str| {
        json!({"type": "registerfunction", "id": id, "description": "charges a card",
               "invocation": {"url": url, "method": "PUT", "timeout_ms": 500,
                              "auth": {"type": "bearer", "token_key": "PAY_TOKEN"},
                              "retry": {"attempts": 2}}})
    };

    // No host: the registration is dropped (iii without its http-functions module).
    a.send(external("pay::none", "https://pay.example/none"))
        .await;
    a.register(&[]).await;
    let listing = b.call_ok("engine::functions::list", json!({})).await;
    assert!(
        !listed_ids(&listing).contains(&"pay::none".to_owned()),
        "{listing}"
    );

    // The host answers later, from another task, as the Python host does after its DNS check.
    let seen: Arc<Mutex<Vec<ExternalRegistration>>> = Arc::default();
    let seen_by_host = seen.clone();
    engine.handle().set_external_functions(Some(Arc::new(
        move |registration: ExternalRegistration, ready: ExternalReady| {
            seen_by_host.lock().unwrap().push(registration.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let url = registration.invocation.url.clone();
                if url.contains("internal") {
                    ready(Err(ErrorBody::new(
                        "url_validation_failed",
                        "Private IP blocked",
                    )));
                    return;
                }
                ready(Ok(Arc::new(move |call: Call| {
                    let data: Value = serde_json::from_str(call.data.get()).unwrap();
                    call.reply
                        .send(Outcome::json(&json!({"url": url, "body": data})));
                })));
            });
        },
    )));
    a.send(external("pay::charge", "https://pay.example/charge"))
        .await;
    a.send(external("pay::internal", "https://internal.example/x"))
        .await;
    wait_until("the host saw both", || seen.lock().unwrap().len() == 2).await;
    let registration = seen.lock().unwrap()[0].clone();
    assert_eq!(registration.function_id, "pay::charge");
    assert_eq!(registration.namespace, "default");
    assert_eq!(&*registration.worker_id, a.id.as_str());
    assert_eq!(registration.invocation.method, Some(HttpMethod::Put));
    assert_eq!(registration.invocation.timeout_ms, Some(500));
    let retry: Option<Value> = registration
        .invocation
        .retry
        .as_ref()
        .map(|r| serde_json::from_str(r.get()).unwrap());
    assert_eq!(retry, Some(json!({"attempts": 2})));

    let deadline = Instant::now() + WAIT;
    let listing = loop {
        let listing = b.call_ok("engine::functions::list", json!({})).await;
        if listed_ids(&listing).contains(&"pay::charge".to_owned()) {
            break listing;
        }
        assert!(
            Instant::now() < deadline,
            "pay::charge never listed: {listing}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let row = listing["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function_id"] == "pay::charge")
        .unwrap()
        .clone();
    assert_eq!(row["kind"], "http", "{row}");
    assert_eq!(row["description"], "charges a card");
    // The refused one is not registered.
    assert!(!listed_ids(&listing).contains(&"pay::internal".to_owned()));
    let out = b.call("pay::internal", json!({})).await;
    assert_eq!(error_code(&out), "function_not_found");

    // Calls run in the host (never forwarded to the registering worker), with the caller's id.
    let result = b.call_ok("pay::charge", json!({"amount": 3})).await;
    assert_eq!(result["url"], "https://pay.example/charge");
    assert_eq!(result["body"]["amount"], 3);
    assert_eq!(result["body"]["_caller_worker_id"], b.id.as_str());

    // An unregistration while the host is still checking wins over the host's late answer.
    a.send(external("pay::withdrawn", "https://pay.example/w"))
        .await;
    a.send(json!({"type": "unregisterfunction", "id": "pay::withdrawn"}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listing = b.call_ok("engine::functions::list", json!({})).await;
    assert!(
        !listed_ids(&listing).contains(&"pay::withdrawn".to_owned()),
        "{listing}"
    );

    // The function leaves with its worker, and so does one still being checked.
    a.send(external("pay::late", "https://pay.example/late"))
        .await;
    a.cut();
    wait_until("worker a gone", || engine.worker_count() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listing = b.call_ok("engine::functions::list", json!({})).await;
    let ids = listed_ids(&listing);
    assert!(!ids.contains(&"pay::charge".to_owned()), "{listing}");
    assert!(!ids.contains(&"pay::late".to_owned()), "{listing}");
    let out = b.call("pay::charge", json!({})).await;
    assert_eq!(error_code(&out), "function_not_found");
    finish(engine, [b]).await;
}

#[tokio::test]
async fn enqueued_calls_are_delivered_by_the_engine_and_retried() {
    use fnmesh_core::engine::EngineConfig;
    use fnmesh_core::queue::service::{QueueBackend, QueueSettings};
    use fnmesh_core::queue::QueueConfig;

    let mut fast = QueueConfig::new("fast");
    fast.backoff = Duration::from_millis(20);
    fast.max_retries = 1;
    let config = EngineConfig {
        queues: Some(QueueSettings {
            backend: QueueBackend::Memory,
            queues: vec![fast],
            poll_interval: Duration::from_millis(20),
            ..QueueSettings::default()
        }),
        ..EngineConfig::default()
    };
    let engine = start(Engine::builder().config(config)).await;
    let mut producer = Worker::connect(&engine).await;
    let mut consumer = Worker::connect(&engine).await;
    consumer.register(&["jobs::run"]).await;

    // `action: enqueue`: the caller gets a receipt, the function runs later.
    let id = new_id();
    producer
        .send(
            json!({"type": "invokefunction", "invocation_id": id, "function_id": "jobs::run",
                     "data": {"n": 1}, "action": {"type": "enqueue", "queue": "fast"},
                     "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
        )
        .await;
    let receipt = producer.result_for(&id).await;
    let receipt_id = receipt["result"]["messageReceiptId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(receipt_id.len(), 36, "{receipt}");

    // First attempt fails: retried after the backoff, then succeeds.
    let (first, _) = consumer.next_invoke().await;
    assert_eq!(first["function_id"], "jobs::run");
    assert_eq!(first["data"]["n"], 1);
    assert_eq!(
        first["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    consumer
        .send(
            json!({"type": "invocationresult", "invocation_id": first["invocation_id"],
                     "function_id": "jobs::run", "error": {"code": "busy", "message": "later"}}),
        )
        .await;
    let (second, _) = consumer.next_invoke().await;
    assert_eq!(second["data"]["n"], 1);
    consumer.reply(&second, json!({"ok": true})).await;

    // Out of attempts (max_retries = 1): dead-lettered with its error.
    let id = new_id();
    producer
        .send(
            json!({"type": "invokefunction", "invocation_id": id, "function_id": "jobs::run",
                     "data": {"n": 2}, "action": {"type": "enqueue", "queue": "fast"}}),
        )
        .await;
    producer.result_for(&id).await;
    for _ in 0..2 {
        let (attempt, _) = consumer.next_invoke().await;
        consumer
            .send(
                json!({"type": "invocationresult", "invocation_id": attempt["invocation_id"],
                         "function_id": "jobs::run", "error": {"code": "broken", "message": "no"}}),
            )
            .await;
    }
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let dead = producer
            .call_ok("engine::queue::dlq_messages", json!({"queue": "fast"}))
            .await;
        if !dead["messages"].as_array().unwrap().is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead["messages"][0]["attempts"], 2);
    assert_eq!(dead["messages"][0]["error"]["code"], "broken");
    assert_eq!(dead["messages"][0]["data"], json!({"n": 2}));

    // An unknown queue is an enqueue_error naming it.
    let id = new_id();
    producer
        .send(
            json!({"type": "invokefunction", "invocation_id": id, "function_id": "jobs::run",
                     "data": {}, "action": {"type": "enqueue", "queue": "nope"}}),
        )
        .await;
    let refused = producer.result_for(&id).await;
    assert_eq!(error_code(&refused), "enqueue_error");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Queue 'nope' not found"));
    finish(engine, [producer, consumer]).await;
}

#[tokio::test]
async fn enqueue_without_queues_is_an_enqueue_error() {
    use fnmesh_core::engine::EngineConfig;

    let config = EngineConfig {
        queues: None,
        ..EngineConfig::default()
    };
    let engine = start(Engine::builder().config(config)).await;
    let mut producer = Worker::connect(&engine).await;
    let id = new_id();
    producer
        .send(
            json!({"type": "invokefunction", "invocation_id": id, "function_id": "jobs::run",
                     "data": {}, "action": {"type": "enqueue", "queue": "default"}}),
        )
        .await;
    let refused = producer.result_for(&id).await;
    assert_eq!(error_code(&refused), "enqueue_error");
    assert_eq!(refused["function_id"], "jobs::run");
    let listed = producer.call_ok("engine::functions::list", json!({})).await;
    assert!(!listed.to_string().contains("engine::queue::"), "{listed}");
    finish(engine, [producer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_dropped_and_its_pending_calls_fail_at_once() {
    // Before: a worker whose link went silent (socket open, nothing read or answered) kept its
    // functions, and a call routed there waited the whole invocation timeout.
    let mut config = fnmesh_core::engine::EngineConfig::default();
    config.server.ping_interval = Duration::from_millis(50);
    config.server.peer_timeout = Duration::from_millis(300);
    config.invocation_timeout = Duration::from_secs(120);
    config.queues = None;
    let engine = start(Engine::builder().config(config)).await;
    let mut silent = Worker::connect(&engine).await;
    silent.register(&["vanish::work"]).await;
    // From here on `silent` is never polled: it reads nothing and answers no ping.
    let mut caller = Worker::connect(&engine).await;
    let started = Instant::now();
    let id = caller.invoke("vanish::work", json!({})).await;
    let result = caller.result_for(&id).await;
    assert_eq!(error_code(&result), "invocation_stopped", "{result}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    wait_until("the silent worker is gone", || engine.worker_count() == 1).await;
    let listed = caller
        .call_ok("engine::functions::list", json!({}))
        .await
        .to_string();
    assert!(!listed.contains("vanish::work"), "{listed}");
    drop(silent);
    finish(engine, [caller]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_on_one_connection_do_not_stall_the_others() {
    // Before: frames of 200k unique unknown keys took the decoder minutes each (quadratic), on
    // the runtime threads, so no other connection was served meanwhile.
    let engine = start(Engine::builder().function("math::add", FunctionDef::default(), add)).await;
    let mut hostile = Worker::connect(&engine).await;
    let mut frame = String::from(r#"{"type":"unregisterfunction","id":"nope""#);
    for i in 0..200_000 {
        frame.push_str(&format!(r#","k{i}":0"#));
    }
    frame.push('}');
    for _ in 0..3 {
        hostile.send_text(frame.clone()).await;
    }
    let mut caller = Worker::connect(&engine).await;
    for n in 0..20 {
        let result = caller.call_ok("math::add", json!({"a": n, "b": 1})).await;
        assert_eq!(result, json!({"sum": n + 1}));
    }
    // The hostile connection is still served too, in order, once its frames are decoded.
    let listed = hostile.call_ok("engine::functions::list", json!({})).await;
    assert!(listed.to_string().contains("math::add"), "{listed}");
    finish(engine, [hostile, caller]).await;
}

#[tokio::test]
async fn built_in_trigger_types_cannot_be_taken_over_by_a_worker() {
    // Before: a worker's `registertriggertype` with id `cron` replaced the engine's provider,
    // and once that worker left, `cron` was gone until a restart.
    let engine = start(Engine::builder()).await;
    let mut rogue = Worker::connect(&engine).await;
    for id in ["cron", "http", "durable:subscriber"] {
        rogue
            .send(json!({"type": "registertriggertype", "id": id, "description": "mine now"}))
            .await;
    }
    rogue.register(&[]).await;
    let mut observer = Worker::connect(&engine).await;
    for id in ["cron", "http", "durable:subscriber"] {
        let info = observer
            .call_ok("engine::triggers::info", json!({"id": id}))
            .await;
        assert_eq!(info["worker_name"], "fnmesh-engine", "{id}: {info}");
    }
    rogue.cut();
    wait_until("the rogue worker is gone", || engine.worker_count() == 1).await;
    let info = observer
        .call_ok("engine::triggers::info", json!({"id": "cron"}))
        .await;
    assert_eq!(info["worker_name"], "fnmesh-engine", "{info}");
    finish(engine, [observer]).await;
}

#[tokio::test]
async fn a_worker_cannot_shadow_a_host_function() {
    let engine = start(Engine::builder().function("math::add", FunctionDef::default(), add)).await;
    let mut rogue = Worker::connect(&engine).await;
    rogue
        .send(json!({"type": "registerfunction", "id": "math::add"}))
        .await;
    // Naming the namespace releases the buffered registration (section 3.4).
    rogue
        .invoke("engine::workers::register", json!({"runtime": "test"}))
        .await;
    let (rejected, _) = rogue.recv_type("registrationrejected").await;
    assert_eq!(
        rejected["code"], "FUNCTION_NAMESPACE_CONFLICT",
        "{rejected}"
    );
    // Every call still reaches the host's function, never the rogue worker.
    for n in 0..10 {
        let result = rogue.call_ok("math::add", json!({"a": n, "b": 1})).await;
        assert_eq!(result, json!({"sum": n + 1}));
    }
    finish(engine, [rogue]).await;
}

#[tokio::test]
async fn a_queued_call_cannot_forge_the_caller_of_engine_workers_register() {
    // Before: with no caller on the call, `engine::workers::register` trusted the payload's
    // `_caller_worker_id`, so anyone able to route a call there without a caller (an enqueued
    // message) could rename, or get closed, any connected worker.
    let engine = start(Engine::builder()).await;
    let mut victim = Worker::connect(&engine).await;
    victim.register(&[]).await;
    let forged = engine
        .call(
            "default",
            "engine::workers::register",
            raw(&json!({"_caller_worker_id": victim.id, "name": "stolen"}).to_string()),
            Some(WAIT),
        )
        .await;
    match forged {
        Outcome::Failure(e) => assert_eq!(e.code, "deserialization_error", "{e:?}"),
        Outcome::Success(r) => panic!("a caller-less register was accepted: {r:?}"),
    }
    // The victim keeps its identity and its connection.
    let listed = victim.call_ok("engine::workers::list", json!({})).await;
    assert!(!listed.to_string().contains("stolen"), "{listed}");
    assert_eq!(engine.worker_count(), 1);
    finish(engine, [victim]).await;
}

#[tokio::test]
async fn workers_change_only_the_bindings_they_made() {
    let engine = start(Engine::builder()).await;
    let mut provider = Worker::connect(&engine).await;
    provider
        .send(json!({"type": "registertriggertype", "id": "ticks", "description": "t"}))
        .await;
    provider.register(&[]).await;
    let mut owner = Worker::connect(&engine).await;
    owner.register(&["own::fn"]).await;
    owner
        .send(json!({"type": "registertrigger", "id": "b-1", "trigger_type": "ticks", "function_id": "own::fn", "config": {"n": 1}}))
        .await;
    let (delivered, _) = provider.recv_type("registertrigger").await;
    assert_eq!(delivered["id"], "b-1");

    let mut rogue = Worker::connect(&engine).await;
    rogue.register(&["rogue::fn"]).await;
    // Reusing the id of another worker's binding is refused, and the binding stays as it was.
    rogue
        .send(json!({"type": "registertrigger", "id": "b-1", "trigger_type": "ticks", "function_id": "rogue::fn", "config": {"n": 2}}))
        .await;
    let (refused, _) = rogue.recv_type("triggerregistrationresult").await;
    assert_eq!(
        refused["error"]["code"], "trigger_registration_failed",
        "{refused}"
    );
    // Unregistering it is ignored.
    rogue
        .send(json!({"type": "unregistertrigger", "id": "b-1", "trigger_type": "ticks"}))
        .await;
    let rows = rogue
        .call_ok("engine::registered-triggers::list", json!({}))
        .await;
    let row = rows["registered_triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "b-1")
        .cloned()
        .unwrap_or_else(|| panic!("b-1 is gone: {rows}"));
    assert_eq!(row["function_id"], "own::fn", "{row}");
    provider.expect_nothing(Duration::from_millis(200)).await;
    // Its owner can still change and remove it.
    owner
        .send(json!({"type": "unregistertrigger", "id": "b-1", "trigger_type": "ticks"}))
        .await;
    let (retracted, _) = provider.recv_type("unregistertrigger").await;
    assert_eq!(retracted["id"], "b-1");
    finish(engine, [provider, owner, rogue]).await;
}

#[tokio::test]
async fn an_absurd_queue_concurrency_is_refused_at_registration() {
    // Before: a durable subscriber's `concurrency` of 2^62 was accepted, and its consumer died
    // on a tokio assertion (a semaphore that large cannot exist), so the queue stopped running.
    use fnmesh_core::engine::EngineConfig;
    use fnmesh_core::queue::service::{QueueBackend, QueueSettings};

    let config = EngineConfig {
        queues: Some(QueueSettings {
            backend: QueueBackend::Memory,
            queues: Vec::new(),
            poll_interval: Duration::from_millis(20),
            ..QueueSettings::default()
        }),
        ..EngineConfig::default()
    };
    let engine = start(Engine::builder().config(config)).await;
    let spec = |concurrency: u64| TriggerSpec {
        id: None,
        trigger_type: "durable:subscriber".to_owned(),
        function_id: "jobs::run".to_owned(),
        config: raw(
            &json!({"topic": "orders", "queue_config": {"concurrency": concurrency}}).to_string(),
        ),
        metadata: None,
        namespace: None,
        trigger_namespace: None,
    };
    let refused = engine
        .handle()
        .register_trigger(spec(1 << 62))
        .await
        .expect_err("a concurrency of 2^62 is refused");
    assert_eq!(refused.code, "trigger_registration_failed", "{refused:?}");
    assert!(refused.message.contains("at most 10000"), "{refused:?}");
    engine
        .handle()
        .register_trigger(spec(10_000))
        .await
        .expect("the bound itself is accepted");
    engine.shutdown().await;
}

fn engine_config() -> fnmesh_core::engine::EngineConfig {
    fnmesh_core::engine::EngineConfig {
        queues: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn calls_in_flight_per_connection_are_capped() {
    // Before: a connection could keep any number of calls pending, each holding memory in the
    // engine until answered or timed out.
    let config = fnmesh_core::engine::EngineConfig {
        max_calls_in_flight_per_connection: 3,
        ..engine_config()
    };
    let engine = start(Engine::builder().config(config)).await;
    let mut server = Worker::connect(&engine).await;
    server.register(&["slow::work"]).await;
    let mut caller = Worker::connect(&engine).await;
    let mut held = Vec::new();
    for n in 0..3 {
        caller.invoke("slow::work", json!({ "n": n })).await;
        held.push(server.next_invoke().await.0);
    }
    // One more fails at once, and never reaches the function.
    let refused = caller.call("slow::work", json!({"n": 3})).await;
    assert_eq!(
        error_code(&refused),
        "too_many_calls_in_flight",
        "{refused}"
    );
    // Other connections have their own budget.
    let mut other = Worker::connect(&engine).await;
    let other_id = other.invoke("slow::work", json!({"n": "other"})).await;
    let (routed, _) = server.next_invoke().await;
    assert_eq!(routed["data"]["n"], "other", "{routed}");
    server.reply(&routed, json!("done")).await;
    assert_eq!(other.result_for(&other_id).await["result"], "done");
    // An answered call gives its slot back.
    let first = held.remove(0);
    server.reply(&first, json!("first")).await;
    caller.recv_type("invocationresult").await;
    let again = caller.invoke("slow::work", json!({"n": 4})).await;
    let (routed, _) = server.next_invoke().await;
    assert_eq!(routed["data"]["n"], 4, "{routed}");
    server.reply(&routed, json!("four")).await;
    assert_eq!(caller.result_for(&again).await["result"], "four");
    // So does a call failed by its target leaving.
    server.cut();
    for _ in 0..2 {
        let (stopped, _) = caller.recv_type("invocationresult").await;
        assert_eq!(error_code(&stopped), "invocation_stopped", "{stopped}");
    }
    let mut server = Worker::connect(&engine).await;
    server.register(&["slow::work"]).await;
    let ids = [
        caller.invoke("slow::work", json!({})).await,
        caller.invoke("slow::work", json!({})).await,
        caller.invoke("slow::work", json!({})).await,
    ];
    for id in ids {
        let (routed, _) = server.next_invoke().await;
        server.reply(&routed, json!("ok")).await;
        assert_eq!(caller.result_for(&id).await["result"], "ok");
    }
    finish(engine, [server, caller, other]).await;
}

#[tokio::test]
async fn registrations_waiting_for_the_namespace_are_bounded() {
    // Before: registrations sent before `engine::workers::register` were buffered without a
    // bound for the whole grace period, so one connection could hold any amount of memory.
    let config = fnmesh_core::engine::EngineConfig {
        namespace_grace: Duration::from_secs(600),
        max_buffered_registrations: 5,
        max_buffered_registration_bytes: 4096,
        ..engine_config()
    };
    let engine = start(Engine::builder().config(config)).await;
    // By count.
    let mut many = Worker::connect(&engine).await;
    for n in 0..6 {
        many.send(json!({"type": "registerfunction", "id": format!("many::f{n}")}))
            .await;
    }
    assert_eq!(many.expect_close().await, 1008);
    // By bytes.
    let mut large = Worker::connect(&engine).await;
    large
        .send(
            json!({"type": "registerfunction", "id": "large::f", "description": "x".repeat(5000)}),
        )
        .await;
    assert_eq!(large.expect_close().await, 1008);
    // Within the bounds, and after the namespace is named (nothing is buffered then), all is
    // applied.
    let mut fine = Worker::connect(&engine).await;
    let ids: Vec<String> = (0..5).map(|n| format!("fine::f{n}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    fine.register(&ids).await;
    for n in 0..20 {
        fine.send(json!({"type": "registerfunction", "id": format!("later::f{n}"), "description": "y".repeat(1000)}))
            .await;
    }
    let listed = fine
        .call_ok("engine::functions::list", json!({}))
        .await
        .to_string();
    for id in ["fine::f0", "fine::f4", "later::f0", "later::f19"] {
        assert!(listed.contains(id), "{id} missing: {listed}");
    }
    assert!(!listed.contains("many::"), "{listed}");
    wait_until("the refused workers are gone", || {
        engine.worker_count() == 1
    })
    .await;
    drop(many);
    drop(large);
    finish(engine, [fine]).await;
}

/// A GET on the HTTP trigger's listener: the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("http connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("an HTTP answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Serves the next HTTP call routed to `worker` with `body`.
async fn serve_http(worker: &mut Worker, body: &str) {
    let (call, _) = worker.next_invoke().await;
    worker
        .reply(&call, json!({"status_code": 200, "body": body}))
        .await;
}

fn http_route(id: &str, function_id: &str, path: &str) -> Value {
    json!({"type": "registertrigger", "id": id, "trigger_type": "http", "function_id": function_id,
           "config": {"api_path": path, "http_method": "GET"}})
}

async fn named(engine: &Engine, name: &str, functions: &[&str]) -> Worker {
    let mut w = Worker::connect(engine).await;
    for id in functions {
        w.send(json!({"type": "registerfunction", "id": id})).await;
    }
    let result = w
        .call_ok("engine::workers::register", json!({"name": name, "pid": 1}))
        .await;
    assert_eq!(result, json!({"success": true}));
    w
}

async fn binding_ids(w: &mut Worker) -> Vec<String> {
    let rows = w
        .call_ok("engine::registered-triggers::list", json!({}))
        .await;
    let mut ids: Vec<String> = rows["registered_triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn an_http_route_cannot_be_taken_over_by_another_worker() {
    // Before: a second worker's binding with the same method and path took the route over;
    // once that worker left, the route was gone while the first worker's binding still showed
    // as active.
    let config = fnmesh_core::engine::EngineConfig {
        http: fnmesh_core::http::HttpConfig {
            addr: any_port(),
            listen_at_start: true,
            ..Default::default()
        },
        ..engine_config()
    };
    let engine = start(Engine::builder().config(config).function(
        "host::page",
        FunctionDef::default(),
        |call: Call| {
            call.reply
                .send(Outcome::json(&json!({"status_code": 200, "body": "host"})))
        },
    ))
    .await;
    engine
        .handle()
        .register_trigger(spec(
            "http",
            "host::page",
            json!({"api_path": "/host", "http_method": "GET"}),
        ))
        .await
        .expect("the host's route");
    let addr = engine.http_addr().expect("listening");
    let mut first = named(&engine, "first", &["first::page"]).await;
    first
        .send(http_route("r-first", "first::page", "/page"))
        .await;
    // Its frames apply in order: once this answer is in, so is the route.
    first.call_ok("engine::functions::list", json!({})).await;
    let mut second = named(&engine, "second", &["second::page"]).await;
    // The first worker's route is in force once a request reaches it.
    let request = tokio::spawn(http_get(addr, "/page"));
    serve_http(&mut first, "first").await;
    assert_eq!(request.await.unwrap(), (200, "\"first\"".to_owned()));

    for (id, path) in [("r-second", "/page"), ("r-host", "host")] {
        second.send(http_route(id, "second::page", path)).await;
        let (refused, _) = second.recv_type("triggerregistrationresult").await;
        assert_eq!(refused["id"], id, "{refused}");
        assert_eq!(
            refused["error"]["code"], "trigger_registration_failed",
            "{refused}"
        );
    }
    let ids = binding_ids(&mut second).await;
    assert!(!ids.contains(&"r-second".to_owned()), "{ids:?}");
    assert_eq!(http_get(addr, "/host").await, (200, "\"host\"".to_owned()));
    // The refused worker leaving changes nothing.
    second.cut();
    wait_until("the second worker is gone", || engine.worker_count() == 1).await;
    let request = tokio::spawn(http_get(addr, "/page"));
    serve_http(&mut first, "still first").await;
    assert_eq!(request.await.unwrap(), (200, "\"still first\"".to_owned()));

    // The worker registering its own route again, under a new id, leaves no stale binding.
    first
        .send(http_route("r-first-2", "first::page", "page"))
        .await;
    first.call_ok("engine::functions::list", json!({})).await;
    let mut ids = binding_ids(&mut first).await;
    ids.retain(|id| id.starts_with("r-"));
    assert_eq!(ids, ["r-first-2"]);
    let request = tokio::spawn(http_get(addr, "/page"));
    serve_http(&mut first, "renewed").await;
    assert_eq!(request.await.unwrap(), (200, "\"renewed\"".to_owned()));
    // Its removal removes the route.
    first
        .send(json!({"type": "unregistertrigger", "id": "r-first-2", "trigger_type": "http"}))
        .await;
    first.call_ok("engine::functions::list", json!({})).await;
    assert_eq!(http_get(addr, "/page").await.0, 404);
    finish(engine, [first]).await;
}

#[tokio::test]
async fn a_restarted_worker_gets_its_name_back_when_the_old_socket_ends_after_it_registers() {
    // A worker SIGKILLed and restarted at once registers its name before the engine has read the
    // end of its old socket. Before: refused at once with WORKER_NAMESPACE_CONFLICT (the chaos
    // test's restarted consumers failed to start). Now the registration waits, bounded, for the
    // holder to close, then takes the name.
    let engine = start(Engine::builder().config(engine_config())).await;
    let mut old = Worker::connect(&engine).await;
    old.call_ok(
        "engine::workers::register",
        json!({"name": "consumer", "pid": 1}),
    )
    .await;
    let mut new = Worker::connect(&engine).await;
    let register = new
        .invoke(
            "engine::workers::register",
            json!({"name": "consumer", "pid": 2}),
        )
        .await;
    // Frames of one connection are handled in order: once this probe is answered, the
    // registration has been seen, and it has not been answered (the old code refused it before
    // handling the next frame).
    let probe = new.invoke("engine::functions::list", json!({})).await;
    let (first, _) = new.recv_type("invocationresult").await;
    assert_eq!(first["invocation_id"], probe, "{first}");
    old.cut();
    let answer = new.result_for(&register).await;
    assert!(answer.get("error").is_none(), "{answer}");
    assert_eq!(answer["result"], json!({"success": true}));
    wait_until("the old connection is cleaned up", || {
        engine.worker_count() == 1
    })
    .await;
    let workers = new.call_ok("engine::workers::list", json!({})).await;
    let pids: Vec<&Value> = workers["workers"]
        .as_array()
        .expect("a list of workers")
        .iter()
        .filter(|w| w["name"] == json!("consumer"))
        .map(|w| &w["pid"])
        .collect();
    assert_eq!(pids, [&json!(2)], "{workers}");
    finish(engine, [new]).await;
}

#[tokio::test]
async fn a_reconnecting_provider_keeps_its_bindings_when_the_old_connection_goes_late() {
    // Before: while the old connection's cleanup had not run yet, the reconnecting provider's
    // `engine::workers::register` under its own name was refused (WORKER_NAMESPACE_CONFLICT,
    // fatal to the SDKs), so its bindings were never delivered again.
    let config = fnmesh_core::engine::EngineConfig {
        cleanup_delay: Duration::from_millis(1500),
        ..engine_config()
    };
    let engine = start(Engine::builder().config(config)).await;
    let ticks = json!({"type": "registertriggertype", "id": "ticks", "description": "t"});
    let mut old = Worker::connect(&engine).await;
    old.send(ticks.clone()).await;
    old.call_ok(
        "engine::workers::register",
        json!({"name": "provider", "pid": 1}),
    )
    .await;
    let mut consumer = named(&engine, "consumer", &["consumer::fn"]).await;
    consumer
        .send(json!({"type": "registertrigger", "id": "b-1", "trigger_type": "ticks", "function_id": "consumer::fn", "config": {}}))
        .await;
    let (delivered, _) = old.recv_type("registertrigger").await;
    assert_eq!(delivered["id"], "b-1");

    old.cut();
    let mut new = Worker::connect(&engine).await;
    new.send(ticks).await;
    // The binding is delivered again as the registration applies, before the answer.
    let call = new
        .invoke(
            "engine::workers::register",
            json!({"name": "provider", "pid": 2}),
        )
        .await;
    let mut delivered = Vec::new();
    loop {
        let frame = new.recv().await;
        if frame["type"] == "registertrigger" {
            delivered.push(frame["id"].clone());
        } else if frame["invocation_id"] == call {
            assert!(frame.get("error").is_none(), "{frame}");
            break;
        }
    }
    assert_eq!(delivered, [json!("b-1")]);
    // The old connection's late cleanup (it is gone from the count once it ran) retracts
    // nothing of the new one's: nothing but the answer to this call arrives in between.
    wait_until("the old connection is cleaned up", || {
        engine.worker_count() == 2
    })
    .await;
    let probe = new.invoke("engine::functions::list", json!({})).await;
    loop {
        let frame = new.recv().await;
        assert_ne!(frame["type"], "unregistertrigger", "{frame}");
        if frame["type"] == "invocationresult" && frame["invocation_id"] == probe {
            break;
        }
    }
    let info = consumer
        .call_ok("engine::triggers::info", json!({"id": "ticks"}))
        .await;
    assert_eq!(info["worker_name"], "provider", "{info}");
    assert_eq!(binding_ids(&mut consumer).await, ["b-1"]);
    finish(engine, [new, consumer]).await;
}
