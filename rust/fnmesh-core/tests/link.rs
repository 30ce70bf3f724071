//! `link::Link`: the engine's handle and the worker client answer the same operations with the
//! same result type.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fnmesh_core::client::Client;
use fnmesh_core::engine::{Engine, EngineConfig};
use fnmesh_core::function::{Call, CallOptions, Outcome};
use fnmesh_core::link::{Enqueue, Link};
use fnmesh_core::protocol::RawJson;
use fnmesh_core::queue::service::{QueueBackend, QueueSettings};
use fnmesh_core::registry::FunctionDef;
use fnmesh_core::triggers::TriggerSpec;

fn raw(text: &str) -> RawJson {
    serde_json::value::RawValue::from_string(text.to_owned()).expect("valid JSON")
}

fn success(outcome: Outcome) -> String {
    match outcome {
        Outcome::Success(Some(raw)) => raw.get().to_owned(),
        other => panic!("expected a result, got {other:?}"),
    }
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than 10 s"))
}

#[tokio::test]
async fn the_engine_and_a_client_answer_through_one_trait() {
    let config = EngineConfig {
        queues: Some(QueueSettings {
            backend: QueueBackend::Memory,
            ..QueueSettings::default()
        }),
        ..EngineConfig::default()
    };
    let engine = Engine::builder()
        .config(config)
        .addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        .start()
        .await
        .expect("engine starts on port 0");
    let client = bounded(
        "connect",
        Client::builder(engine.url())
            .worker_name("linked")
            .connect(),
    )
    .await
    .expect("client connects");
    let links: [(&str, Arc<dyn Link>); 2] = [
        ("engine", Arc::new(engine.handle())),
        ("client", Arc::new(client.clone())),
    ];
    for (name, link) in links {
        let id = format!("{name}::echo");
        let echo = |call: Call| call.reply.send(Outcome::Success(Some(call.data)));
        link.register_function(None, &id, FunctionDef::default(), Arc::new(echo))
            .expect("registers");

        let out = bounded(
            "call",
            link.call(&id, raw(r#"{"n":1}"#), CallOptions::default()),
        )
        .await;
        // Over a worker connection the engine adds `_caller_worker_id` to the payload.
        let echoed = success(out);
        assert!(echoed.starts_with(r#"{"n":1"#), "{name}: {echoed}");

        let missing = bounded(
            "call",
            link.call("nobody::here", raw("1"), CallOptions::default()),
        )
        .await;
        assert!(
            matches!(&missing, Outcome::Failure(e) if e.code == "function_not_found"),
            "{name}: {missing:?}"
        );

        link.send(&id, raw("2"), CallOptions::default())
            .expect("sends");

        let message = Enqueue {
            queue: "default".into(),
            function_id: id.clone(),
            data: Some(raw("3")),
            ..Enqueue::default()
        };
        let receipt =
            success(bounded("enqueue", link.enqueue(message, CallOptions::default())).await);
        assert!(receipt.contains("messageReceiptId"), "{name}: {receipt}");

        let published = success(
            bounded(
                "publish",
                link.publish("nobody", raw("4"), CallOptions::default()),
            )
            .await,
        );
        assert!(
            published.contains("messageReceiptIds"),
            "{name}: {published}"
        );

        let refused = TriggerSpec {
            id: Some(format!("{name}-bad")),
            trigger_type: "cron".into(),
            function_id: id.clone(),
            config: raw(r#"{"expression":"not a cron expression"}"#),
            metadata: None,
            namespace: None,
            trigger_namespace: None,
        };
        let verdict = bounded("register_trigger", link.register_trigger(refused)).await;
        assert!(
            matches!(verdict, Outcome::Failure(_)),
            "{name}: {verdict:?}"
        );

        assert!(
            link.unregister_function(None, &id).expect("unregisters"),
            "{name}"
        );
        assert!(!link.unregister_trigger("never-bound"), "{name}");
    }
    let client_link: &dyn Link = &client;
    assert!(client_link
        .register_function(
            Some("elsewhere"),
            "x",
            FunctionDef::default(),
            Arc::new(|_: Call| {})
        )
        .is_err());
    client.shutdown().await;
    engine.shutdown().await;
}
