//! What the HTTP trigger's tests share: an engine serving one native function at one route.

use std::net::SocketAddr;

use fnmesh_core::engine::{Engine, EngineConfig};
use fnmesh_core::function::NativeFunction;
use fnmesh_core::http::HttpConfig;
use fnmesh_core::registry::FunctionDef;
use fnmesh_core::triggers::TriggerSpec;
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// An engine, HTTP listener on a free loopback port with `http`'s other settings, serving
/// `function` as `function_id` at `route` (the trigger's config, e.g.
/// `{"api_path":"echo","http_method":"POST"}`).
pub async fn serve_route(
    http: HttpConfig,
    function_id: &str,
    function: impl NativeFunction,
    route: &str,
) -> (Engine, SocketAddr) {
    let mut config = EngineConfig {
        http: HttpConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            listen_at_start: true,
            ..http
        },
        queues: None,
        ..EngineConfig::default()
    };
    config.server.addr = "127.0.0.1:0".parse().unwrap();
    let engine = Engine::builder()
        .config(config)
        .function(function_id, FunctionDef::default(), function)
        .start()
        .await
        .expect("engine starts");
    engine
        .handle()
        .register_trigger(TriggerSpec {
            id: None,
            trigger_type: "http".to_owned(),
            function_id: function_id.to_owned(),
            config: RawValue::from_string(route.to_owned()).unwrap(),
            metadata: None,
            namespace: None,
            trigger_namespace: None,
        })
        .await
        .expect("route registered");
    let addr = engine.http_addr().expect("the HTTP listener is open");
    (engine, addr)
}

/// Reads until the server closes the connection (or it fails); what it sent on the way.
pub async fn until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}
