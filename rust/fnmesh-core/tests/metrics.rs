//! The metrics service: calls recorded per function and outcome, rendered in the Prometheus
//! text format, and nothing recorded (no listener either) when metrics are off.

use std::time::Duration;

use fnmesh_core::engine::{Engine, EngineConfig};
use fnmesh_core::function::{async_fn, Outcome};
use fnmesh_core::protocol::{ErrorCode, RawJson};
use fnmesh_core::registry::FunctionDef;

fn raw(text: &str) -> RawJson {
    serde_json::value::RawValue::from_string(text.to_owned()).expect("valid JSON")
}

async fn engine(metrics: bool) -> Engine {
    let config = EngineConfig {
        queues: None,
        state: None,
        metrics_addr: metrics.then(|| "127.0.0.1:0".parse().expect("address")),
        ..EngineConfig::default()
    };
    Engine::builder()
        .config(config)
        .addr("127.0.0.1:0".parse().expect("address"))
        .function(
            "math::half",
            FunctionDef::default(),
            async_fn(|data| async move {
                let n: i64 = serde_json::from_str(data.get()).unwrap_or(1);
                if n % 2 == 0 {
                    Outcome::json(&(n / 2))
                } else {
                    Outcome::failure(ErrorCode::InvalidArguments, "odd")
                }
            }),
        )
        .start()
        .await
        .expect("engine starts")
}

async fn traffic(engine: &Engine) {
    let timeout = Some(Duration::from_secs(5));
    for n in ["2", "4", "3"] {
        engine.call("default", "math::half", raw(n), timeout).await;
    }
    engine
        .call("default", "nobody::home", raw("1"), timeout)
        .await;
}

#[tokio::test]
async fn calls_are_counted_by_function_and_outcome() {
    let engine = engine(true).await;
    assert!(engine.metrics_addr().is_some());
    traffic(&engine).await;
    let text = engine.handle().render_metrics().await;
    let half = "namespace=\"default\",function_id=\"math::half\"";
    for expected in [
        format!("fnmesh_invocations_total{{{half},outcome=\"success\"}} 2\n"),
        format!("fnmesh_invocations_total{{{half},outcome=\"error\"}} 1\n"),
        format!("fnmesh_invocation_duration_seconds_count{{{half}}} 3\n"),
        "fnmesh_invocations_total{namespace=\"_other\",function_id=\"_other\",outcome=\"error\"} 1\n"
            .to_owned(),
        "fnmesh_invocations_in_flight 0\n".to_owned(),
        "fnmesh_workers_connected 0\n".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected} not in:\n{text}");
    }
    assert!(!text.contains("nobody::home"), "{text}");
    engine.shutdown().await;
}

#[tokio::test]
async fn nothing_is_recorded_with_metrics_off() {
    let engine = engine(false).await;
    assert!(engine.metrics_addr().is_none());
    traffic(&engine).await;
    let text = engine.handle().render_metrics().await;
    assert!(
        text.contains("fnmesh_invocations_total{namespace=\"default\",function_id=\"math::half\",outcome=\"success\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("outcome=\"error\"} 0\n"), "{text}");
    engine.shutdown().await;
}
