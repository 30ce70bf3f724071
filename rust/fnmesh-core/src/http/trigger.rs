//! The `http` trigger type (docs/protocol.md 6.3): bindings become routes, requests become calls.
//!
//! [`HttpTrigger`] is the [`TriggerProvider`] the engine installs for the type `http`. It checks
//! each binding's config, adds its route (refusing one that conflicts with a route already
//! served) and starts the HTTP listener the first time a route appears, so an engine nobody
//! binds HTTP routes on never opens the port. [`HttpTrigger::handle`] serves one request:
//! route, per-route middleware, condition, the call with its timeout, and the response mapping.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use serde::Deserialize;
use tracing::{info, warn};

use super::hosted::HttpHost;
use super::mapping::{
    condition_skips, error_reply, middleware_verdict, reply_from_result, request_input,
    request_summary, HttpReply, MiddlewareVerdict, RequestParts,
};
use super::route::{RouteError, RoutePattern, Router};
use super::server::{self, Request};
use super::stream::{answer, feed, BodySource, Cleanup, Reply, HTTP_CHANNEL_ITEMS};
use crate::channels::ChannelRef;
pub use crate::config::{CorsConfig, HttpConfig};
use crate::engine::WeakEngineRef;
use crate::function::{CallOptions, Outcome};
use crate::meter::{self, Exposition, MetricsSource, RouteStats, OTHER};
use crate::protocol::{ErrorCode, RawJson};
use crate::telemetry::spans::{self, Tracer};
use crate::triggers::{TriggerAck, TriggerBinding, TriggerProvider};

/// A binding's config (docs/protocol.md 6.3); other keys are kept in listings and ignored here.
#[derive(Deserialize)]
struct RouteConfig {
    api_path: Option<String>,
    http_method: Option<String>,
    condition_function_id: Option<String>,
    #[serde(default)]
    middleware_function_ids: Vec<String>,
}

/// What a route calls.
#[derive(Clone)]
pub(crate) struct Route {
    binding: Arc<TriggerBinding>,
    condition: Option<String>,
    middleware: Vec<String>,
    // The route's meters when metrics are on (docs/observability.md).
    stats: Option<Arc<RouteStats>>,
}

/// A request's route, with its template and the path parameters it captured.
type Found = (Route, String, Vec<(String, String)>);

/// One route as listed by [`HttpTrigger::served_routes`].
pub(crate) struct ServedRoute {
    /// Upper-case.
    pub(crate) method: &'static str,
    /// No leading `/`; parameters as `:name`.
    pub(crate) template: String,
    pub(crate) param_names: Vec<String>,
    pub(crate) binding: Arc<TriggerBinding>,
}

/// The `http` trigger type: routes and the listener serving them.
pub struct HttpTrigger {
    engine: WeakEngineRef,
    config: HttpConfig,
    routes: RwLock<Router<Route>>,
    listener: Mutex<Option<server::Listening>>,
    // Serves accepted connections instead of the runtime, when set (`hosted`).
    host: RwLock<Option<Arc<dyn HttpHost>>>,
    // Requests no route matched, under one label; `Some` when metrics are on.
    unmatched: Option<Arc<RouteStats>>,
    // The engine's tracer: each request is a SERVER span while tracing records.
    tracer: Tracer,
}

impl HttpTrigger {
    pub(crate) fn new(
        engine: WeakEngineRef,
        config: HttpConfig,
        metered: bool,
        tracer: Tracer,
    ) -> Arc<HttpTrigger> {
        Arc::new(HttpTrigger {
            engine,
            config,
            routes: RwLock::new(Router::new()),
            listener: Mutex::new(None),
            host: RwLock::new(None),
            unmatched: metered.then(|| Arc::new(RouteStats::new())),
            tracer,
        })
    }

    /// Offers every connection accepted from now on to `host` (`None`: the runtime serves them
    /// all). Connections already open stay where they are.
    pub fn set_host(&self, host: Option<Arc<dyn HttpHost>>) {
        *self.host.write().unwrap_or_else(|e| e.into_inner()) = host;
    }

    pub(crate) fn host(&self) -> Option<Arc<dyn HttpHost>> {
        self.host.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the listener is bound, once a route has opened it.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.listener).as_ref().map(|l| l.local_addr())
    }

    /// Stops the listener (engine shutdown); in-flight requests finish first.
    pub(crate) async fn shutdown(&self) {
        let listening = lock(&self.listener).take();
        if let Some(listening) = listening {
            listening.shutdown().await;
        }
    }

    /// Opens the listener unless it is open.
    pub(crate) fn ensure_listening(self: &Arc<Self>) -> Result<(), ListenError> {
        let mut listener = lock(&self.listener);
        if listener.is_some() {
            return Ok(());
        }
        let me = Arc::downgrade(self);
        let listening = server::listen(&self.config, me).map_err(|source| ListenError {
            addr: self.config.addr,
            source,
        })?;
        info!(addr = %listening.local_addr(), "HTTP triggers served");
        *listener = Some(listening);
        Ok(())
    }

    /// True when a route answers `method` on `path` (a preflight `OPTIONS` is answered by the
    /// server only when none does).
    pub(crate) fn has_route(&self, method: &str, path: &str) -> bool {
        read(&self.routes).find(method, path).is_some()
    }

    pub(crate) fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// The routes served now, with their bindings (for the OpenAPI document).
    pub(crate) fn served_routes(&self) -> Vec<ServedRoute> {
        read(&self.routes)
            .entries()
            .into_iter()
            .map(|e| ServedRoute {
                method: e.method,
                template: e.template.to_owned(),
                param_names: e.param_names.to_vec(),
                binding: e.value.binding.clone(),
            })
            .collect()
    }

    /// The engine, while it runs.
    pub(crate) fn engine(&self) -> Option<crate::engine::EngineRef> {
        self.engine.upgrade()
    }

    /// Serves one request (body already read within the limit), recording it in its route's
    /// meters when metrics are on.
    pub(crate) async fn handle(&self, mut request: Request) -> Reply {
        let found = {
            let routes = read(&self.routes);
            routes
                .find(&request.method, &request.path)
                .map(|m| (m.value.clone(), m.template.to_owned(), m.params.clone()))
        };
        let stats = match &found {
            Some((route, _, _)) => route.stats.clone(),
            None => self.unmatched.clone(),
        };
        let template = found.as_ref().map(|(_, template, _)| template.as_str());
        let span = spans::start_http(
            &self.tracer,
            &request.method,
            template,
            &mut request.headers,
        );
        if stats.is_none() && span.is_none() {
            return self.route(request, found).await;
        }
        let started = std::time::Instant::now();
        let reply = self.route(request, found).await;
        let status = match &reply {
            Reply::Buffered(reply) => reply.status,
            Reply::Streaming(streaming) => streaming.status,
        };
        if let Some(stats) = stats {
            stats.record(status, started.elapsed());
        }
        spans::end_http(span, status);
        reply
    }

    async fn route(&self, request: Request, found: Option<Found>) -> Reply {
        let Some((route, template, params)) = found else {
            // A route of the user's wins over the engine's own pages.
            if let Some(reply) = super::console::answer(self, &request).await {
                return reply.into();
            }
            if let Some(reply) = super::openapi::answer(self, &request.method, &request.path).await
            {
                return reply.into();
            }
            return error_reply(404, ErrorCode::NotFound.as_str(), "Not Found", None, &[]).into();
        };
        let (buffered, source) = match request.body {
            BodySource::Buffered(bytes) => (bytes.clone(), BodySource::Buffered(bytes)),
            streaming => (bytes::Bytes::new(), streaming),
        };
        let parts = RequestParts {
            method: &request.method,
            template: &template,
            path_params: &params,
            query: request.query.as_deref(),
            headers: &request.headers,
            body: &buffered,
        };
        let work = self.serve(&route, &parts, source);
        match tokio::time::timeout(self.config.timeout, work).await {
            Ok(reply) => reply,
            Err(_) => timed_out().into(),
        }
    }

    async fn serve(&self, route: &Route, parts: &RequestParts<'_>, body: BodySource) -> Reply {
        let binding = &route.binding;
        if !route.middleware.is_empty() {
            let input = serde_json::json!({
                "phase": "preHandler",
                "request": request_summary(parts),
                "context": {},
            });
            let input = match serde_json::value::to_raw_value(&input) {
                Ok(input) => input,
                Err(e) => {
                    return failure(&binding.function_id, "serialization_error", &e.to_string())
                        .into()
                }
            };
            for function_id in &route.middleware {
                match self.call(binding, function_id, input.clone(), parts).await {
                    Outcome::Success(result) => match middleware_verdict(result.as_deref()) {
                        Ok(MiddlewareVerdict::Continue) => {}
                        Ok(MiddlewareVerdict::Respond(reply)) => return reply.into(),
                        Err(error) => {
                            return failure(
                                function_id,
                                ErrorCode::InvalidMiddlewareResult.as_str(),
                                &error.to_string(),
                            )
                            .into()
                        }
                    },
                    Outcome::Failure(e) => return failed(function_id, &e).into(),
                }
            }
        }
        let input = request_input(parts);
        if let Some(condition) = &route.condition {
            match self.call(binding, condition, input.clone(), parts).await {
                Outcome::Success(result) if condition_skips(result.as_deref()) => {
                    return error_reply(
                        422,
                        ErrorCode::ConditionNotMet.as_str(),
                        "the trigger's condition was not met",
                        None,
                        &[("skipped", serde_json::Value::Bool(true))],
                    )
                    .into();
                }
                Outcome::Success(_) => {}
                Outcome::Failure(e) => return failed(condition, &e).into(),
            }
        }
        let Some(engine) = self.engine.upgrade() else {
            return map_outcome(
                &binding.function_id,
                Outcome::failure(ErrorCode::InvocationStopped, "the engine has stopped"),
            )
            .into();
        };
        // The request's channels (docs/protocol.md 6.3): the engine keeps the body's write end
        // and the response's read end; the function gets the other two in its input.
        let hub = engine.channels().clone();
        let channels = hub
            .create_for_reading(HTTP_CHANNEL_ITEMS)
            .and_then(|(body_ref, writer)| {
                let (response_ref, reader) = hub.create_for_writing(HTTP_CHANNEL_ITEMS)?;
                Ok((body_ref, writer, response_ref, reader))
            });
        let (body_ref, writer, response_ref, reader) = match channels {
            Ok(made) => made,
            Err(e) => {
                return failure(
                    &binding.function_id,
                    ErrorCode::InvocationFailed.as_str(),
                    &e.to_string(),
                )
                .into()
            }
        };
        let cleanup = Cleanup::new(
            hub,
            [body_ref.channel_id.clone(), response_ref.channel_id.clone()],
        );
        let feeder = feed(body, writer);
        let input = with_channels(input, &body_ref, &response_ref);
        let call = self.call(binding, &binding.function_id, input, parts);
        let function_id = binding.function_id.clone();
        answer(
            call,
            reader,
            &response_ref.channel_id,
            (feeder, cleanup),
            |outcome| map_outcome(&function_id, outcome),
        )
        .await
    }
    async fn call(
        &self,
        binding: &TriggerBinding,
        function_id: &str,
        data: RawJson,
        parts: &RequestParts<'_>,
    ) -> Outcome {
        let options = CallOptions {
            // The request's trace context (the engine's span when it records one).
            traceparent: spans::header(parts.headers, "traceparent"),
            baggage: spans::header(parts.headers, "baggage"),
            namespace: Some(binding.namespace.clone()),
            metadata: binding.metadata.clone(),
            // The request's own timeout bounds the whole exchange.
            timeout: Some(self.config.timeout),
        };
        match self.engine.upgrade() {
            Some(engine) => engine.call_with(function_id, data, options).await,
            None => Outcome::failure(ErrorCode::InvocationStopped, "the engine has stopped"),
        }
    }
}

/// The reply to a failed call: 504 when the engine timed the call out (its timeout is the
/// request's, so it races the request's own deadline: both must answer the same), else a 500.
fn failed(function_id: &str, e: &crate::protocol::ErrorBody) -> HttpReply {
    if e.code == ErrorCode::InvocationTimeout {
        return timed_out();
    }
    failure(function_id, &e.code, &e.message)
}

fn timed_out() -> HttpReply {
    HttpReply {
        status: 504,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// A 500 with the error envelope and a fresh `error_id` that the log line carries too.
fn failure(function_id: &str, code: &str, message: &str) -> HttpReply {
    let error_id = uuid::Uuid::new_v4().to_string();
    warn!(
        function_id,
        code, error_id, "HTTP trigger call failed: {message}"
    );
    error_reply(500, code, message, Some(&error_id), &[])
}

impl TriggerProvider for Arc<HttpTrigger> {
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck) {
        match self.add_route(binding) {
            Ok(()) => ack.accept(),
            Err(reason) => ack.refuse(reason.to_string()),
        }
    }

    fn unregister(&self, binding: &TriggerBinding) {
        let Ok((pattern, _)) = parse_config(&binding.config) else {
            return;
        };
        let removed = write(&self.routes).remove(pattern.method(), pattern.template(), &binding.id);
        if removed.is_some() {
            info!(route = %pattern.key(), trigger_id = %binding.id, "HTTP route removed");
        }
    }
}

impl HttpTrigger {
    fn add_route(self: &Arc<Self>, binding: Arc<TriggerBinding>) -> Result<(), RouteRefusal> {
        let (pattern, config) = parse_config(&binding.config)?;
        // The listener first: a port that cannot be opened refuses the route untouched.
        self.ensure_listening()?;
        let key = pattern.key();
        let route = Route {
            condition: config.condition_function_id,
            middleware: config.middleware_function_ids,
            binding: binding.clone(),
            stats: self
                .unmatched
                .is_some()
                .then(|| Arc::new(RouteStats::new())),
        };
        // The same method and path served for another binding: taken over only from an earlier
        // binding of the same worker (or of a connection that is gone), never from another live
        // worker, the host or the engine (docs/protocol.md 6.3).
        let engine = self.engine.upgrade();
        let mut taken_from = None;
        write(&self.routes).insert_if(pattern, &binding.id, route, |current| {
            let allowed = engine
                .as_ref()
                .is_some_and(|e| e.may_take_over_binding(current, &binding));
            if allowed {
                taken_from = Some(current.to_owned());
            }
            allowed
        })?;
        info!(route = %key, function_id = %binding.function_id, trigger_id = %binding.id, "HTTP route added");
        if let (Some(engine), Some(previous)) = (engine, taken_from) {
            // The binding that had the route no longer serves anything: it goes, so that no
            // stale binding stays listed as active (and no later removal touches the route).
            info!(route = %key, trigger_id = %binding.id, previous = %previous, "HTTP route taken over from an earlier binding of the same worker");
            engine.drop_replaced_binding(&previous);
        }
        Ok(())
    }
}

/// Why a binding's route is refused (the registrant's `trigger_registration_failed` message).
#[derive(Debug, thiserror::Error)]
enum RouteRefusal {
    /// The config is not an object of the expected shape.
    #[error("invalid http trigger config: {0}")]
    InvalidConfig(String),
    /// The config has no `api_path`.
    #[error("invalid http trigger config: api_path is required")]
    MissingPath,
    /// The method or path does not parse, or the route conflicts with another.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The listener could not be opened.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// The HTTP triggers' listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP triggers on {addr}: {source}")]
pub(crate) struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// `fnmesh_http_requests_total` and its duration histogram: one row per route served now
/// (`METHOD /template`) and one for requests no route matched.
impl MetricsSource for HttpTrigger {
    fn collect<'a>(&'a self, out: &'a mut Exposition) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut rows: Vec<(String, Arc<RouteStats>)> = read(&self.routes)
                .entries()
                .into_iter()
                .filter_map(|e| {
                    let stats = e.value.stats.clone()?;
                    Some((format!("{} /{}", e.method, e.template), stats))
                })
                .collect();
            if let Some(unmatched) = &self.unmatched {
                rows.push((OTHER.to_owned(), unmatched.clone()));
            }
            meter::write_http(
                out,
                rows.iter().map(|(route, stats)| (route.as_str(), &**stats)),
            );
        })
    }
}

fn parse_config(config: &RawJson) -> Result<(RoutePattern, RouteConfig), RouteRefusal> {
    let config: RouteConfig = serde_json::from_str(config.get())
        .map_err(|e| RouteRefusal::InvalidConfig(e.to_string()))?;
    let path = config
        .api_path
        .as_deref()
        .ok_or(RouteRefusal::MissingPath)?;
    let pattern = RoutePattern::parse(config.http_method.as_deref(), path)?;
    Ok((pattern, config))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The function's answer as a response (docs/protocol.md 6.3).
fn map_outcome(function_id: &str, outcome: Outcome) -> HttpReply {
    match outcome {
        Outcome::Success(result) => reply_from_result(result.as_deref()).unwrap_or_else(|error| {
            failure(
                function_id,
                ErrorCode::InvalidHttpResponse.as_str(),
                &error.to_string(),
            )
        }),
        // The route's function went away: so did the route.
        Outcome::Failure(e) if e.code == ErrorCode::FunctionNotFound => {
            error_reply(404, ErrorCode::NotFound.as_str(), "Not Found", None, &[])
        }
        Outcome::Failure(e) => failed(function_id, &e),
    }
}

/// The input with the request's channel refs added: `request_body` and `response`.
fn with_channels(input: RawJson, body: &ChannelRef, response: &ChannelRef) -> RawJson {
    let refs = serde_json::json!({"request_body": body, "response": response}).to_string();
    let text = input.get();
    // Both are non-empty objects: splice the refs' members in before the input's closing `}`.
    let mut spliced = String::with_capacity(text.len() + refs.len());
    spliced.push_str(&text[..text.len() - 1]);
    spliced.push(',');
    spliced.push_str(&refs[1..]);
    serde_json::value::RawValue::from_string(spliced).unwrap_or(input)
}
