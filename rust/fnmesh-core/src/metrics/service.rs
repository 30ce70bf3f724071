//! [`MetricsService`]: serves the engine's metrics in the Prometheus text format on their own
//! listener (setting `metrics_port`), so the endpoint can be exposed apart from the worker port
//! and the HTTP triggers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::engine::{EngineRef, EngineService, ServiceError, WeakEngineRef};
use crate::meter::Exposition;

/// How long a scraper may take to send its request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The `/metrics` listener. Installed by every engine; it listens only when the engine's
/// `metrics_addr` is set.
#[derive(Default)]
pub struct MetricsService {
    addr: OnceLock<SocketAddr>,
    stop: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

impl MetricsService {
    /// Where `/metrics` is served, when metrics are on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }
}

impl EngineService for MetricsService {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let Some(addr) = engine.config().metrics_addr else {
                return Ok(());
            };
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                ServiceError::Listen(format!("cannot serve /metrics on {addr}: {e}"))
            })?;
            let local = listener
                .local_addr()
                .map_err(|e| ServiceError::Listen(e.to_string()))?;
            let _ = self.addr.set(local);
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(accept(listener, engine.downgrade(), stopped));
            *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop, task));
            info!(addr = %local, "metrics served at /metrics");
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let running = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((stop, task)) = running {
                let _ = stop.send(true);
                let _ = task.await;
            }
        })
    }
}

async fn accept(listener: TcpListener, engine: WeakEngineRef, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let engine = engine.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let engine = engine.clone();
                async move { Ok::<_, Infallible>(answer(&engine, request.uri().path()).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, "metrics connection ended: {e}");
                    }
                }
                _ = stopped.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

async fn answer(engine: &WeakEngineRef, path: &str) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (path, engine.upgrade()) {
        ("/metrics", Some(engine)) => {
            (200, Exposition::CONTENT_TYPE, engine.render_metrics().await)
        }
        ("/metrics", None) => (503, "text/plain", "the engine is stopping\n".to_owned()),
        _ => (
            404,
            "text/plain",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}
