//! Calls the engine gives up on are abandoned: the native function serving them is told
//! ([`NativeFunction::abandon`]) and an [`async_fn`]'s future is dropped, whether the engine timed
//! the call out, its caller left, or the engine shut down (docs/architecture.md, "Abandoned
//! calls"). Every wait is bounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::engine::Engine;
use fnmesh_core::function::{async_fn, Call, NativeFunction, Outcome};
use fnmesh_core::registry::FunctionDef;
use futures_util::SinkExt;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

/// Sends `dropped` when the future holding it is dropped.
struct Guard(mpsc::UnboundedSender<&'static str>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

/// An async function that never finishes: reports `started` when it runs and `dropped` when
/// its future is dropped.
fn hang(events: mpsc::UnboundedSender<&'static str>) -> impl NativeFunction {
    async_fn(move |_| {
        let events = events.clone();
        async move {
            let _guard = Guard(events.clone());
            let _ = events.send("started");
            std::future::pending::<()>().await;
            Outcome::Success(None)
        }
    })
}

async fn next(events: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    timeout(WAIT, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no event from the handler within {WAIT:?}"))
        .expect("the handler's channel is open")
}

async fn engine_with(timeout_after: Duration, function: impl NativeFunction) -> Engine {
    Engine::builder()
        .addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        .invocation_timeout(timeout_after)
        .function("svc::hang", FunctionDef::default(), function)
        .start()
        .await
        .expect("engine starts")
}

/// Calls `svc::hang` from a task, as an in-process caller does.
fn spawn_hanging_call(engine: &Engine) -> tokio::task::JoinHandle<Outcome> {
    let handle = engine.handle();
    tokio::spawn(async move {
        handle
            .call("default", "svc::hang", raw("{}"), None, None)
            .await
    })
}

fn failure_code(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failure(e) => &e.code,
        Outcome::Success(v) => panic!("expected a failure, got {v:?}"),
    }
}

#[tokio::test]
async fn a_timed_out_call_drops_the_handlers_future() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let engine = engine_with(Duration::from_millis(200), hang(tx)).await;
    let out = timeout(WAIT, engine.call("default", "svc::hang", raw("{}"), None))
        .await
        .expect("the engine's timeout answers the call");
    assert_eq!(failure_code(&out), "invocation_timeout");
    assert_eq!(next(&mut events).await, "started");
    assert_eq!(next(&mut events).await, "dropped");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_worker_caller_that_disconnects_drops_the_handlers_future() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let engine = engine_with(Duration::from_secs(300), hang(tx)).await;
    let tcp = tokio::net::TcpStream::connect(engine.local_addr())
        .await
        .expect("tcp connect");
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::client_async(engine.url(), tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let invoke = json!({"type": "invokefunction", "invocation_id": "c-1", "function_id": "svc::hang", "data": {}});
    ws.send(Message::text(invoke.to_string()))
        .await
        .expect("send");
    assert_eq!(next(&mut events).await, "started");
    drop(ws);
    assert_eq!(next(&mut events).await, "dropped");
    assert_eq!(engine.pending_count(), 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn an_in_process_caller_that_stops_waiting_drops_the_handlers_future() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let engine = engine_with(Duration::from_secs(300), hang(tx)).await;
    let call = spawn_hanging_call(&engine);
    assert_eq!(next(&mut events).await, "started");
    call.abort();
    assert_eq!(next(&mut events).await, "dropped");
    assert_eq!(engine.pending_count(), 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_drops_the_handlers_future() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let engine = engine_with(Duration::from_secs(300), hang(tx)).await;
    let call = spawn_hanging_call(&engine);
    assert_eq!(next(&mut events).await, "started");
    timeout(WAIT, engine.shutdown())
        .await
        .expect("shutdown with no workers is quick");
    assert_eq!(next(&mut events).await, "dropped");
    let out = timeout(WAIT, call).await.expect("call answered").unwrap();
    assert_eq!(failure_code(&out), "invocation_stopped");
}

/// Keeps every call unanswered until told, and records what the engine abandons.
#[derive(Default, Clone)]
struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    abandoned: Arc<Mutex<Vec<String>>>,
}

impl NativeFunction for Recorder {
    fn invoke(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn abandon(&self, invocation_id: &str) {
        self.abandoned
            .lock()
            .unwrap()
            .push(invocation_id.to_owned());
    }
}

#[tokio::test]
async fn only_unanswered_calls_are_abandoned_once_each() {
    let recorder = Recorder::default();
    let engine = engine_with(Duration::from_millis(300), recorder.clone()).await;
    let handle = engine.handle();
    let answered = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .call("default", "svc::hang", raw("1"), None, None)
                .await
        }
    });
    let expired = tokio::spawn(async move {
        handle
            .call("default", "svc::hang", raw("2"), None, None)
            .await
    });
    // Both calls reach the function; the first is answered at once, the second never.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .position(|c| c.data.get() == "1");
        if let Some(i) = found {
            let call = recorder.calls.lock().unwrap().remove(i);
            call.reply.send(Outcome::json("done"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first call never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = timeout(WAIT, answered).await.expect("answered").unwrap();
    assert!(matches!(out, Outcome::Success(Some(_))), "{out:?}");
    let out = timeout(WAIT, expired).await.expect("timed out").unwrap();
    assert_eq!(failure_code(&out), "invocation_timeout");
    let second_id = recorder
        .calls
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.data.get() == "2")
        .map(|c| c.invocation_id.to_string())
        .expect("the second call arrived");
    assert_eq!(*recorder.abandoned.lock().unwrap(), vec![second_id]);
    engine.shutdown().await;
    // Shutdown abandons nothing more: the expired call is no longer pending.
    assert_eq!(recorder.abandoned.lock().unwrap().len(), 1);
}
