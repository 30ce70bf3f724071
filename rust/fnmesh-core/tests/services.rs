//! The engine-service seam: the standard services an engine starts with, an engine with none,
//! and a custom service installed in list order and shut down in reverse order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fnmesh_core::cron::CronService;
use fnmesh_core::engine::{Engine, EngineBuilder, EngineRef, EngineService, ServiceError};
use fnmesh_core::function::{async_fn, Outcome};
use fnmesh_core::http::HttpService;
use fnmesh_core::queue::QueuesService;
use fnmesh_core::registry::{FunctionDef, DEFAULT_NAMESPACE};
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

/// The ids of the trigger types the engine lists.
async fn trigger_types(engine: &Engine) -> Vec<String> {
    let outcome = engine
        .call(DEFAULT_NAMESPACE, "engine::triggers::list", raw("{}"), None)
        .await;
    let Outcome::Success(Some(result)) = outcome else {
        panic!("engine::triggers::list failed: {outcome:?}");
    };
    let value: serde_json::Value = serde_json::from_str(result.get()).expect("JSON");
    let mut ids: Vec<String> = value["triggers"]
        .as_array()
        .expect("a triggers array")
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn the_default_builder_runs_the_standard_services() {
    let engine = Engine::builder().addr(any_port()).start().await.unwrap();
    assert!(engine.service::<HttpService>().is_some());
    assert!(engine.service::<CronService>().is_some());
    assert!(engine.service::<QueuesService>().is_some());
    let types = trigger_types(&engine).await;
    for id in ["http", "cron", "durable:subscriber"] {
        assert!(types.iter().any(|t| t == id), "{id} missing from {types:?}");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn a_bare_engine_runs_no_service() {
    let engine = EngineBuilder::new().addr(any_port()).start().await.unwrap();
    assert!(engine.service::<HttpService>().is_none());
    assert!(engine.http_addr().is_none());
    let types = trigger_types(&engine).await;
    for id in ["http", "cron", "durable:subscriber"] {
        assert!(!types.iter().any(|t| t == id), "{id} listed in {types:?}");
    }
    let outcome = engine
        .call(DEFAULT_NAMESPACE, "engine::queue::enqueue", raw("{}"), None)
        .await;
    assert!(
        matches!(&outcome, Outcome::Failure(e) if e.code == "function_not_found"),
        "{outcome:?}"
    );
    engine.shutdown().await;
}

/// A service that writes what happens to it into a shared log, and registers one function.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    refuse: bool,
}

impl Recorder {
    fn note(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{what} {}", self.name));
    }
}

impl EngineService for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            self.note("install");
            if self.refuse {
                return Err(ServiceError::InvalidConfig(format!(
                    "{}: a bad setting",
                    self.name
                )));
            }
            let name = self.name;
            engine.register_engine_function(
                DEFAULT_NAMESPACE,
                &format!("{name}::ping"),
                FunctionDef::default(),
                async_fn(move |_| async move { Outcome::json(name) }),
            )?;
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.note("shutdown") })
    }
}

fn recorder(name: &'static str, log: &Arc<Mutex<Vec<String>>>, refuse: bool) -> Recorder {
    Recorder {
        name,
        log: log.clone(),
        refuse,
    }
}

#[tokio::test]
async fn services_install_in_order_and_shut_down_in_reverse() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let engine = EngineBuilder::new()
        .addr(any_port())
        .service(recorder("first", &log, false))
        .service(recorder("second", &log, false))
        .start()
        .await
        .unwrap();
    let outcome = engine
        .call(DEFAULT_NAMESPACE, "second::ping", raw("null"), None)
        .await;
    assert!(
        matches!(&outcome, Outcome::Success(Some(r)) if r.get() == r#""second""#),
        "{outcome:?}"
    );
    assert_eq!(engine.service::<Recorder>().map(|r| r.name), Some("first"));
    engine.shutdown().await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            "install first",
            "install second",
            "shutdown second",
            "shutdown first"
        ]
    );
}

#[tokio::test]
async fn a_service_that_fails_to_install_stops_the_start() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let started = Engine::builder()
        .addr(any_port())
        .service(recorder("first", &log, false))
        .service(recorder("second", &log, true))
        .service(recorder("third", &log, false))
        .start()
        .await;
    let Err(error) = started else {
        panic!("the start should fail");
    };
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(error.to_string(), "second: a bad setting");
    assert_eq!(
        *log.lock().unwrap(),
        ["install first", "install second", "shutdown first"]
    );
}
