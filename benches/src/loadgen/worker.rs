//! `worker` mode: registers `bench.echo` (returns its input) and `bench.sleep` (`{"ms": N}`:
//! answers `{}` after N ms without holding up other calls) and serves them until killed.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

use super::wire::{self, fatal, Frame};

/// The functions this worker serves.
pub const FUNCTIONS: [&str; 2] = ["bench.echo", "bench.sleep"];

const NOT_FOUND: &str = r#"{"code":"function_not_found","message":"fnmesh-loadgen serves only bench.echo and bench.sleep"}"#;
const BAD_SLEEP: &str =
    r#"{"code":"invalid_argument","message":"bench.sleep expects {\"ms\": <integer>}"}"#;

#[derive(Deserialize)]
struct SleepInput {
    ms: u64,
}

#[derive(Deserialize)]
struct FunctionsList {
    functions: Vec<FunctionRow>,
}

#[derive(Deserialize)]
struct FunctionRow {
    function_id: String,
}

/// Connects `connections` workers to `url`, prints `ready` once the engine lists both functions
/// on every connection, then serves until SIGINT/SIGTERM (exit 0). Connection loss exits with 2.
pub async fn run(url: &str, connections: usize) {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let run = wire::run_id();
    for c in 0..connections.max(1) {
        let ws = wire::connect(url).await.unwrap_or_else(|e| fatal(&e));
        let ready = ready_tx.clone();
        tokio::spawn(serve(ws, run, c as u16, ready));
    }
    for _ in 0..connections.max(1) {
        match tokio::time::timeout(Duration::from_secs(15), ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => fatal("the engine did not list bench.echo and bench.sleep within 15 s"),
        }
    }
    println!("ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    std::process::exit(0);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).unwrap_or_else(|e| fatal(&e.to_string()));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve(ws: wire::Ws, run: u32, conn: u16, ready: UnboundedSender<()>) {
    let (sink, mut read) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        if let Err(e) = wire::write_loop(sink, rx).await {
            fatal(&e);
        }
    });

    // Control calls use their own id group (0xffff minus the connection) so they are never
    // mistaken for anything else.
    let prefix = wire::id_prefix(run, 0xffff - conn);
    let control_id = |n: u64| {
        let mut id = prefix.clone();
        wire::push_hex(&mut id, n, 12);
        id
    };
    let (register_id, list_id) = (control_id(1), control_id(2));
    for id in FUNCTIONS {
        let description = match id {
            "bench.echo" => "fnmesh-loadgen: returns its input",
            _ => "fnmesh-loadgen: answers {} after {\"ms\": N} milliseconds",
        };
        let frame = json!({"type": "registerfunction", "id": id, "description": description});
        let _ = tx.send(Message::text(frame.to_string()));
    }
    // Releases the registrations at once instead of after the engine's namespace grace
    // (docs/protocol.md 3.4); the name must be unique per live connection.
    let register = json!({
        "type": "invokefunction", "invocation_id": register_id,
        "function_id": "engine::workers::register",
        "data": {
            "name": format!("fnmesh-loadgen-{}-{conn}", std::process::id()),
            "runtime": "rust", "version": env!("CARGO_PKG_VERSION"),
            "os": std::env::consts::OS, "pid": std::process::id(),
        },
    });
    let list = json!({
        "type": "invokefunction", "invocation_id": list_id,
        "function_id": "engine::functions::list", "data": {},
    })
    .to_string();
    let _ = tx.send(Message::text(register.to_string()));
    let _ = tx.send(Message::text(list.clone()));

    let mut is_ready = false;
    while let Some(msg) = read.next().await {
        let msg = match msg {
            Ok(Message::Close(frame)) => {
                fatal(&format!("the engine closed the connection: {frame:?}"))
            }
            Ok(msg) => msg,
            Err(e) => fatal(&format!("connection lost: {e}")),
        };
        let Some(frame) = Frame::decode(&msg) else {
            continue;
        };
        match &*frame.kind {
            "invokefunction" => invoke(&frame, &tx),
            "invocationresult" => {
                let id = frame.invocation_id.as_deref().unwrap_or("");
                if id == register_id {
                    if let Some(err) = frame.error {
                        eprintln!("fnmesh-loadgen: engine::workers::register failed: {err}");
                    }
                } else if id == list_id && !is_ready {
                    if lists_all(frame.result) {
                        is_ready = true;
                        let _ = ready.send(());
                    } else {
                        let (tx, list) = (tx.clone(), list.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = tx.send(Message::text(list));
                        });
                    }
                }
            }
            "registrationrejected" => eprintln!("fnmesh-loadgen: registration rejected: {msg}"),
            "ping" => {
                let _ = tx.send(Message::text(wire::PONG));
            }
            "error" => fatal(&format!("the engine refused the connection: {msg}")),
            _ => {}
        }
    }
    fatal("the engine closed the connection");
}

fn lists_all(result: Option<&serde_json::value::RawValue>) -> bool {
    let Some(list) = result.and_then(|r| serde_json::from_str::<FunctionsList>(r.get()).ok())
    else {
        return false;
    };
    FUNCTIONS
        .iter()
        .all(|f| list.functions.iter().any(|row| row.function_id == *f))
}

fn invoke(frame: &Frame<'_>, tx: &UnboundedSender<Message>) {
    // Without an id nobody waits for the answer (the engine always sends one, docs/protocol.md 2.4).
    let Some(id) = frame.invocation_id.as_deref() else {
        return;
    };
    let function_id = frame.function_id.as_deref().unwrap_or("");
    let data = frame.data.map_or("null", |d| d.get());
    match function_id {
        // The input comes back verbatim, including the engine-injected `_caller_worker_id`
        // (what an SDK handler returning its argument would send); no parse, no tree.
        "bench.echo" => {
            let reply = wire::invocation_result(id, function_id, Ok(data));
            let _ = tx.send(Message::text(reply));
        }
        "bench.sleep" => match serde_json::from_str::<SleepInput>(data) {
            Ok(SleepInput { ms }) => {
                let reply = wire::invocation_result(id, function_id, Ok("{}"));
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _ = tx.send(Message::text(reply));
                });
            }
            Err(_) => {
                let reply = wire::invocation_result(id, function_id, Err(BAD_SLEEP));
                let _ = tx.send(Message::text(reply));
            }
        },
        _ => {
            let reply = wire::invocation_result(id, function_id, Err(NOT_FOUND));
            let _ = tx.send(Message::text(reply));
        }
    }
}
