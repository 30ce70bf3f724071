//! The worker client against a real in-process [`Engine`] (and, for the wire order, a scripted
//! fake engine). Every wait is bounded: nothing here can hang.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::client::{Backoff, CallOptions, Client, ClientError, ClientState};
use fnmesh_core::engine::Engine;
use fnmesh_core::function::{async_fn, Call, Outcome};
use fnmesh_core::protocol::RawJson;
use fnmesh_core::registry::{ConflictPolicy, FunctionDef};
use fnmesh_core::triggers::TriggerSpec;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(10);

fn raw(value: Value) -> RawJson {
    serde_json::value::to_raw_value(&value).expect("serializable")
}

fn parse(raw: &Option<RawJson>) -> Value {
    raw.as_ref()
        .map(|r| serde_json::from_str(r.get()).expect("valid JSON"))
        .unwrap_or(Value::Null)
}

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress within {WAIT:?}"))
}

fn add(mut call: Call) {
    #[derive(serde::Deserialize)]
    struct Input {
        a: i64,
        b: i64,
    }
    if let Some(Input { a, b }) = call.parse() {
        call.reply.send(Outcome::json(&json!({ "sum": a + b })));
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        factor: 2.0,
        max: Duration::from_millis(400),
        jitter: 0.3,
    }
}

async fn engine() -> Engine {
    engine_with(|b| b).await
}

async fn engine_with(
    configure: impl FnOnce(fnmesh_core::engine::EngineBuilder) -> fnmesh_core::engine::EngineBuilder,
) -> Engine {
    configure(Engine::builder().addr(SocketAddr::from(([127, 0, 0, 1], 0))))
        .start()
        .await
        .expect("engine starts on port 0")
}

async fn plain_client(url: &str, name: &str) -> Client {
    bounded(
        "connect",
        Client::builder(url)
            .worker_name(name)
            .reconnect(fast_backoff())
            .connect(),
    )
    .await
    .expect("client connects")
}

async fn adder(url: &str, name: &str) -> Client {
    bounded(
        "connect",
        Client::builder(url)
            .worker_name(name)
            .reconnect(fast_backoff())
            .function("math::add", FunctionDef::default(), add)
            .connect(),
    )
    .await
    .expect("client connects")
}

async fn call(client: &Client, function_id: &str, data: Value) -> Result<Value, ClientError> {
    let options = CallOptions {
        timeout: Some(Duration::from_secs(5)),
        ..CallOptions::default()
    };
    let out = bounded("call", client.call(function_id, raw(data), options)).await?;
    Ok(parse(&out))
}

/// Calls until it succeeds (registrations land asynchronously), for at most `WAIT`.
async fn call_eventually(client: &Client, function_id: &str, data: Value) -> Value {
    bounded("call_eventually", async {
        loop {
            match call(client, function_id, data.clone()).await {
                Ok(v) => return v,
                Err(e) => {
                    tracing_free_log(&format!("retrying {function_id}: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
}

fn tracing_free_log(line: &str) {
    if std::env::var_os("CLIENT_TEST_LOG").is_some() {
        eprintln!("{line}");
    }
}

async fn wait_worker_id(client: &Client, not: Option<&str>) -> String {
    bounded("worker id", async {
        loop {
            if let Some(id) = client.worker_id() {
                if Some(id.as_str()) != not {
                    return id;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

async fn listed(client: &Client, function_id: &str) -> Value {
    bounded("listing", async {
        loop {
            let list = call(client, "engine::functions::list", json!({}))
                .await
                .expect("engine::functions::list works");
            if let Some(row) = list["functions"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["function_id"] == function_id))
            {
                return row.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 1 to 3: calls, failures, void
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_worker_serves_and_another_calls_with_discovery() {
    let engine = engine().await;
    let server = adder(&engine.url(), "orders").await;
    let caller = plain_client(&engine.url(), "caller").await;
    assert_eq!(server.state(), ClientState::Connected);
    wait_worker_id(&server, None).await;

    let row = listed(&caller, "math::add").await;
    assert_eq!(row["worker_name"], "orders", "{row}");
    assert_eq!(row["namespace"], "default");

    let out = call(&caller, "math::add", json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(out, json!({"sum": 5}));
    // A client can call its own functions through the engine too.
    let out = call(&server, "math::add", json!({"a": -1, "b": 1}))
        .await
        .unwrap();
    assert_eq!(out, json!({"sum": 0}));

    assert_eq!(server.function_ids(), vec!["math::add".to_owned()]);
    server.shutdown().await;
    caller.shutdown().await;
    assert_eq!(server.state(), ClientState::Closed);
    assert!(matches!(
        caller
            .call("math::add", raw(json!({})), CallOptions::default())
            .await,
        Err(ClientError::Shutdown)
    ));
    engine.shutdown().await;
}

#[tokio::test]
async fn failures_and_unknown_functions_come_back_as_errors() {
    let engine = engine().await;
    let server = bounded(
        "connect",
        Client::builder(engine.url())
            .worker_name("failing")
            .function("math::fail", FunctionDef::default(), |call: Call| {
                call.reply
                    .send(Outcome::Failure(fnmesh_core::protocol::ErrorBody {
                        code: "bad_input".into(),
                        message: "nope".into(),
                        stacktrace: Some("at math::fail".into()),
                    }))
            })
            .connect(),
    )
    .await
    .unwrap();
    let caller = plain_client(&engine.url(), "caller").await;
    listed(&caller, "math::fail").await;

    match call(&caller, "math::fail", json!({})).await {
        Err(ClientError::Invocation(body)) => {
            assert_eq!(body.code, "bad_input");
            assert_eq!(body.message, "nope");
            assert_eq!(body.stacktrace.as_deref(), Some("at math::fail"));
        }
        other => panic!("expected an invocation error, got {other:?}"),
    }
    let err = call(&caller, "no::such", json!({})).await.unwrap_err();
    assert_eq!(err.code(), "function_not_found", "{err}");

    // A function the client dropped at runtime answers function_not_found too.
    assert!(server.unregister_function("math::fail"));
    assert!(!server.unregister_function("math::fail"));
    bounded("unregistered", async {
        loop {
            if let Err(e) = call(&caller, "math::fail", json!({})).await {
                if e.code() == "function_not_found" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.shutdown().await;
    caller.shutdown().await;
    engine.shutdown().await;
}

#[tokio::test]
async fn void_send_reaches_the_handler() {
    let engine = engine().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let server = plain_client(&engine.url(), "audit").await;
    // Registered at runtime rather than on the builder.
    server
        .register_function("audit::log", FunctionDef::default(), move |call: Call| {
            let _ = tx.send(serde_json::from_str(call.data.get()).unwrap_or(Value::Null));
            call.reply.send(Outcome::Success(None));
        })
        .unwrap();
    let caller = plain_client(&engine.url(), "caller").await;
    listed(&caller, "audit::log").await;

    caller
        .send("audit::log", raw(json!({"event": "login"})))
        .unwrap();
    let got = bounded("void delivery", rx.recv()).await.unwrap();
    assert_eq!(got["event"], "login");
    // The engine injects the caller's identity (docs/protocol.md 4.5).
    assert_eq!(got["_caller_worker_id"], caller.worker_id().unwrap());
    assert_eq!(caller.pending_count(), 0);
    // Nothing else arrives and the caller stays usable.
    assert!(timeout(Duration::from_millis(200), rx.recv())
        .await
        .is_err());
    let list = call(&caller, "engine::functions::list", json!({}))
        .await
        .unwrap();
    assert!(list["functions"].is_array());
    server.shutdown().await;
    caller.shutdown().await;
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4: reconnect and reattach, through a TCP proxy that can be cut
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Close both sides: the engine sees the worker leave.
    Both,
    /// Close only the client's side: the engine's socket stays open (a half-dead connection).
    ClientSide,
}

struct Proxy {
    addr: SocketAddr,
    cut: broadcast::Sender<Cut>,
    accept: tokio::task::JoinHandle<()>,
    zombies: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = broadcast::channel(8);
        let zombies = Arc::new(Mutex::new(Vec::new()));
        let (cut_tx, zombies2) = (cut.clone(), zombies.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let mut rx = cut_tx.subscribe();
                let zombies = zombies2.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let order = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => None,
                        order = rx.recv() => order.ok(),
                    };
                    if let Some(Cut::ClientSide) = order {
                        zombies.lock().unwrap().push(up);
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            accept,
            zombies,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn cut(&self, how: Cut) {
        let _ = self.cut.send(how);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.zombies.lock().unwrap().clear();
    }
}

#[tokio::test]
async fn reconnects_with_backoff_and_replays_functions() {
    let engine = engine().await;
    let proxy = Proxy::start(engine.local_addr()).await;
    let server = adder(&proxy.url(), "orders").await;
    let caller = plain_client(&engine.url(), "caller").await;
    let first_id = wait_worker_id(&server, None).await;
    assert_eq!(
        call_eventually(&caller, "math::add", json!({"a": 1, "b": 2})).await,
        json!({"sum": 3})
    );
    let binding = |id: &str, expression: &str| TriggerSpec {
        id: Some(id.to_owned()),
        trigger_type: "cron".to_owned(),
        function_id: "math::add".to_owned(),
        config: raw(json!({ "expression": expression })),
        metadata: None,
        namespace: None,
        trigger_namespace: None,
    };
    assert_eq!(
        server.register_trigger(binding("t-hourly", "0 0 * * * *")),
        "t-hourly"
    );
    server.register_trigger(binding("t-bad", "* * * * *"));
    let bound = || async {
        let listed = call(&caller, "engine::registered-triggers::list", json!({}))
            .await
            .unwrap();
        listed["registered_triggers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while bound().await != ["t-hourly"] {
        assert!(std::time::Instant::now() < deadline, "binding never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refusal reaches `server` on its own connection: the listing (through `caller`) may be
    // answered first.
    let mut errors = server.trigger_errors();
    while errors.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "refusal never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        errors = server.trigger_errors();
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "t-bad");
    assert_eq!(errors[0].1.code, "trigger_registration_failed");

    proxy.cut(Cut::Both);
    let second_id = wait_worker_id(&server, Some(&first_id)).await;
    assert_ne!(first_id, second_id);
    assert!(server
        .wait_for_state(WAIT, |s| s == ClientState::Connected)
        .await
        .is_some());
    assert_eq!(
        call_eventually(&caller, "math::add", json!({"a": 20, "b": 22})).await,
        json!({"sum": 42})
    );
    let row = listed(&caller, "math::add").await;
    assert_eq!(row["worker_name"], "orders");
    // The binding died with the old connection and came back with the replay.
    let deadline = std::time::Instant::now() + WAIT;
    while bound().await != ["t-hourly"] {
        assert!(std::time::Instant::now() < deadline, "binding not replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.unregister_trigger("t-hourly"));
    assert!(!server.unregister_trigger("t-hourly"));
    // The reconnected client's own calls work too.
    let out = call(&server, "math::add", json!({"a": 1, "b": 1}))
        .await
        .unwrap();
    assert_eq!(out, json!({"sum": 2}));

    server.shutdown().await;
    caller.shutdown().await;
    engine.shutdown().await;
}

#[tokio::test]
async fn reattach_retires_a_half_dead_connection_under_reject() {
    let engine = engine_with(|b| b.function_conflict(ConflictPolicy::Reject)).await;
    let proxy = Proxy::start(engine.local_addr()).await;
    let server = adder(&proxy.url(), "orders").await;
    let caller = plain_client(&engine.url(), "caller").await;
    let first_id = wait_worker_id(&server, None).await;
    call_eventually(&caller, "math::add", json!({"a": 1, "b": 2})).await;
    assert_eq!(engine.worker_count(), 2);

    // The engine still sees the old connection open: without reattach the replayed
    // registration would be refused and calls would go to the dead socket.
    proxy.cut(Cut::ClientSide);
    wait_worker_id(&server, Some(&first_id)).await;
    let out = call_eventually(&caller, "math::add", json!({"a": 40, "b": 2})).await;
    assert_eq!(out, json!({"sum": 42}));
    for _ in 0..5 {
        let out = call(&caller, "math::add", json!({"a": 1, "b": 1}))
            .await
            .unwrap();
        assert_eq!(out, json!({"sum": 2}));
    }
    // The old connection was retired, not kept as a second worker.
    bounded("old connection retired", async {
        while engine.worker_count() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.shutdown().await;
    caller.shutdown().await;
    engine.shutdown().await;
}

#[tokio::test]
async fn calls_in_flight_fail_with_invocation_stopped_on_loss() {
    let engine = engine().await;
    let slow = bounded(
        "connect",
        Client::builder(engine.url())
            .worker_name("slow")
            .function(
                "slow::wait",
                FunctionDef::default(),
                async_fn(|_| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Outcome::Success(None)
                }),
            )
            .connect(),
    )
    .await
    .unwrap();
    let proxy = Proxy::start(engine.local_addr()).await;
    let caller = bounded(
        "connect",
        Client::builder(proxy.url())
            .reconnect(fast_backoff())
            .worker_name("caller")
            .connect(),
    )
    .await
    .unwrap();
    listed(&caller, "slow::wait").await;
    let pending = tokio::spawn({
        let caller = caller.clone();
        async move {
            caller
                .call("slow::wait", raw(json!({})), CallOptions::default())
                .await
        }
    });
    bounded("call parked", async {
        while caller.pending_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    proxy.cut(Cut::Both);
    let err = bounded("stopped", pending).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "invocation_stopped", "{err}");
    slow.shutdown().await;
    caller.shutdown().await;
    engine.shutdown().await;
}

/// Sends `dropped` when the future holding it is dropped.
struct DropSignal(mpsc::UnboundedSender<&'static str>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

#[tokio::test]
async fn handlers_running_when_the_connection_is_lost_are_abandoned() {
    let engine = engine().await;
    let proxy = Proxy::start(engine.local_addr()).await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = bounded(
        "connect",
        Client::builder(proxy.url())
            .worker_name("hanging")
            .reconnect(fast_backoff())
            .function(
                "hang::forever",
                FunctionDef::default(),
                async_fn(move |_| {
                    let events = tx.clone();
                    async move {
                        let _signal = DropSignal(events.clone());
                        let _ = events.send("started");
                        std::future::pending::<()>().await;
                        Outcome::Success(None)
                    }
                }),
            )
            .connect(),
    )
    .await
    .unwrap();
    let caller = plain_client(&engine.url(), "caller").await;
    listed(&caller, "hang::forever").await;
    let call = tokio::spawn({
        let caller = caller.clone();
        async move {
            caller
                .call("hang::forever", raw(json!({})), CallOptions::default())
                .await
        }
    });
    assert_eq!(bounded("started", events.recv()).await, Some("started"));
    proxy.cut(Cut::Both);
    // The engine stopped the invocation with the connection; the client drops the handler.
    assert_eq!(bounded("dropped", events.recv()).await, Some("dropped"));
    let err = bounded("stopped", call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "invocation_stopped", "{err}");
    server.shutdown().await;
    caller.shutdown().await;
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5 and 6: timeouts, concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn outbound_timeout_then_the_client_keeps_working() {
    let engine = engine().await;
    let server = bounded(
        "connect",
        Client::builder(engine.url())
            .worker_name("slow")
            .function("math::add", FunctionDef::default(), add)
            .function(
                "slow::sleep",
                FunctionDef::default(),
                async_fn(|_| async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Outcome::json("late")
                }),
            )
            .connect(),
    )
    .await
    .unwrap();
    let caller = plain_client(&engine.url(), "caller").await;
    listed(&caller, "slow::sleep").await;

    let started = std::time::Instant::now();
    let err = bounded(
        "timeout",
        caller.call(
            "slow::sleep",
            raw(json!({})),
            CallOptions {
                timeout: Some(Duration::from_millis(200)),
                ..CallOptions::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(200)), "{err:?}");
    assert_eq!(err.code(), "TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(caller.pending_count(), 0);

    let out = call(&caller, "math::add", json!({"a": 2, "b": 2}))
        .await
        .unwrap();
    assert_eq!(out, json!({"sum": 4}));
    assert_eq!(caller.state(), ClientState::Connected);
    server.shutdown().await;
    caller.shutdown().await;
    engine.shutdown().await;
}

#[tokio::test]
async fn two_hundred_concurrent_calls_through_two_clients() {
    let engine = engine().await;
    let server = adder(&engine.url(), "orders").await;
    let a = plain_client(&engine.url(), "caller-a").await;
    let b = plain_client(&engine.url(), "caller-b").await;
    listed(&a, "math::add").await;

    let calls = (0..200i64).map(|i| {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            let out = client
                .call(
                    "math::add",
                    raw(json!({"a": i, "b": 1000})),
                    CallOptions::default(),
                )
                .await;
            (i, out)
        }
    });
    let results = bounded("200 calls", futures_util::future::join_all(calls)).await;
    assert_eq!(results.len(), 200);
    for (i, out) in results {
        let out = parse(&out.unwrap_or_else(|e| panic!("call {i} failed: {e}")));
        assert_eq!(out, json!({"sum": i + 1000}));
    }
    assert_eq!(a.pending_count() + b.pending_count(), 0);
    server.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The wire, against a scripted fake engine
// ---------------------------------------------------------------------------------------------

type FakeSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn next_json(socket: &mut FakeSocket) -> Value {
    loop {
        let frame = bounded("frame from the client", socket.next())
            .await
            .expect("socket open")
            .expect("read ok");
        if let WsMessage::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("the client sends JSON");
        }
    }
}

async fn accept(listener: &TcpListener) -> FakeSocket {
    let (tcp, _) = bounded("accept", listener.accept()).await.unwrap();
    bounded("handshake", tokio_tungstenite::accept_async(tcp))
        .await
        .unwrap()
}

#[tokio::test]
async fn connect_order_reattach_garbage_and_json_ping() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let connecting = tokio::spawn(
        Client::builder(url)
            .worker_name("wire")
            .namespace("tenant-a")
            .reconnect(fast_backoff())
            .function("math::add", FunctionDef::default(), add)
            .connect(),
    );
    let mut socket = accept(&listener).await;
    socket
        .send(WsMessage::text(
            r#"{"type":"workerregistered","worker_id":"w-1","reattach_token":"t-1"}"#,
        ))
        .await
        .unwrap();
    let first = next_json(&mut socket).await;
    assert_eq!(first["type"], "registerfunction");
    assert_eq!(first["id"], "math::add");
    let register = next_json(&mut socket).await;
    assert_eq!(register["type"], "invokefunction");
    assert_eq!(register["function_id"], "engine::workers::register");
    assert_eq!(register["action"], json!({"type": "void"}));
    assert_eq!(register["data"]["name"], "wire");
    assert_eq!(register["data"]["runtime"], "rust");
    assert_eq!(register["data"]["namespace"], "tenant-a");
    assert!(register["data"]["pid"].is_u64());
    let client = bounded("connect", connecting).await.unwrap().unwrap();
    wait_worker_id(&client, None).await;

    // Garbage is skipped; the connection and the client survive it.
    for junk in [
        WsMessage::text("not json"),
        WsMessage::text("   "),
        WsMessage::text(r#"{"type":"invokefunction"}"#),
        WsMessage::text(r#"{"type":"nosuchtype","x":1}"#),
        WsMessage::text(r#"[1,2,3]"#),
        WsMessage::binary(vec![0xff, 0x00, 0x7b]),
        WsMessage::text(
            r#"{"type":"invocationresult","invocation_id":"unknown","function_id":"x"}"#,
        ),
    ] {
        socket.send(junk).await.unwrap();
    }
    socket
        .send(WsMessage::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!({"type": "pong"}));

    // An execute request is answered with the same id.
    socket
        .send(WsMessage::text(
            r#"{"type":"invokefunction","invocation_id":"11111111-2222-4333-8444-555555555555","function_id":"math::add","data":{"a":1,"b":2}}"#,
        ))
        .await
        .unwrap();
    let result = next_json(&mut socket).await;
    assert_eq!(result["type"], "invocationresult");
    assert_eq!(
        result["invocation_id"],
        "11111111-2222-4333-8444-555555555555"
    );
    assert_eq!(result["function_id"], "math::add");
    assert_eq!(result["result"], json!({"sum": 3}));
    socket
        .send(WsMessage::text(
            r#"{"type":"invokefunction","invocation_id":"11111111-2222-4333-8444-666666666666","function_id":"nope","data":null}"#,
        ))
        .await
        .unwrap();
    let result = next_json(&mut socket).await;
    assert_eq!(result["error"]["code"], "function_not_found");

    // A call made while offline is queued and sent after the replay, before the register call.
    drop(socket);
    assert!(client
        .wait_for_state(WAIT, |s| s == ClientState::Reconnecting)
        .await
        .is_some());
    client.send("audit::log", raw(json!({"n": 1}))).unwrap();
    let mut socket = accept(&listener).await;
    let reattach = next_json(&mut socket).await;
    assert_eq!(
        reattach,
        json!({"type": "reattach", "previous_worker_id": "w-1", "reattach_token": "t-1"})
    );
    assert_eq!(next_json(&mut socket).await["type"], "registerfunction");
    let queued = next_json(&mut socket).await;
    assert_eq!(queued["function_id"], "audit::log");
    assert_eq!(queued["namespace"], "tenant-a");
    let register = next_json(&mut socket).await;
    assert_eq!(register["function_id"], "engine::workers::register");
    assert_eq!(register["namespace"], "default");
    client.shutdown().await;
    assert_eq!(client.state(), ClientState::Closed);
}

#[tokio::test]
async fn keepalive_detects_a_silent_engine() {
    // An engine that accepts and then never answers anything, not even pings.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                held.push(ws); // never polled again: pings stay unanswered
            }
        }
    });
    let client = bounded(
        "connect",
        Client::builder(url)
            .keepalive(Duration::from_millis(100))
            .reconnect(fast_backoff())
            .connect(),
    )
    .await
    .unwrap();
    assert!(client
        .wait_for_state(Duration::from_secs(3), |s| s == ClientState::Reconnecting)
        .await
        .is_some());
    client.shutdown().await;
    silent.abort();
}

#[tokio::test]
async fn connect_fails_cleanly_when_nothing_listens() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = bounded(
        "connect",
        Client::builder(&url)
            .reconnect(fast_backoff())
            .first_connect_timeout(Duration::from_millis(300))
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let err = Client::builder("http://example.com")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_ARGUMENTS");
}

#[tokio::test]
async fn auth_token_is_sent_on_the_upgrade() {
    let engine = engine_with(|b| b.auth_token("s3cret")).await;
    let client = bounded(
        "connect",
        Client::builder(engine.url())
            .auth_token("s3cret")
            .worker_name("authed")
            .connect(),
    )
    .await
    .expect("the right token is accepted");
    let list = call(&client, "engine::functions::list", json!({}))
        .await
        .unwrap();
    assert!(list["functions"].is_array());
    client.shutdown().await;

    let err = bounded(
        "connect",
        Client::builder(engine.url())
            .auth_token("wrong")
            .reconnect(fast_backoff())
            .first_connect_timeout(Duration::from_millis(300))
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_duplicate_worker_name_is_fatal() {
    let engine = engine().await;
    let first = plain_client(&engine.url(), "billing").await;
    wait_worker_id(&first, None).await;
    // Let the first worker's name lease land before the second one asks for it.
    call(&first, "engine::functions::list", json!({}))
        .await
        .unwrap();
    let second = plain_client(&engine.url(), "billing").await;
    assert_eq!(
        second
            .wait_for_state(WAIT, |s| s == ClientState::Closed)
            .await,
        Some(ClientState::Closed)
    );
    let err = second
        .call(
            "engine::functions::list",
            raw(json!({})),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "WORKER_NAMESPACE_CONFLICT", "{err:?}");
    assert!(matches!(err, ClientError::Rejected { .. }));
    // The first worker is unaffected.
    call(&first, "engine::functions::list", json!({}))
        .await
        .unwrap();
    first.shutdown().await;
    second.shutdown().await;
    engine.shutdown().await;
}
