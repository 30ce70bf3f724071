//! The HTTP/1.1 listener of the HTTP trigger (hyper): keep-alive, `TCP_NODELAY`, CORS, a
//! graceful stop, and the bounds that keep slow or hostile clients from starving the routes:
//! a header-read timeout, a body idle timeout (408), a body size limit (413), a cap on open
//! connections, a budget for body bytes buffered at once, and slots for requests in flight that
//! a request takes only once its body is in.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::flush::{Flushes, Watched};
use super::hosted::{HostedConnection, HttpHost};
use super::mapping::{error_reply, HttpReply};
use super::stream::{full, BodySource, Reply, ResponseBody, Streaming};
use super::trigger::{CorsConfig, HttpConfig, HttpTrigger};
use crate::protocol::ErrorCode;

/// One request as the trigger sees it.
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: BodySource,
}

/// A bound listener and the task accepting on it.
pub(crate) struct Listening {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Listening {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; open connections finish their current request and close.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

const ALL_METHODS: &str = "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS";

/// Binds `config.addr` (synchronously, so a taken port refuses the route that asked for it)
/// and serves requests to `trigger` until stopped. Must run inside a tokio runtime.
pub(crate) fn listen(
    config: &HttpConfig,
    trigger: Weak<HttpTrigger>,
) -> std::io::Result<Listening> {
    let std_listener = std::net::TcpListener::bind(config.addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let limits = Arc::new(Limits {
        slots: Semaphore::new(config.max_in_flight.max(1)),
        body_budget: Arc::new(Semaphore::new(budget_units(config))),
        body_limit: config.body_limit,
        body_read_timeout: config.body_read_timeout,
    });
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let header_read_timeout = config.header_read_timeout;
    let task = tokio::spawn(accept(
        listener,
        trigger,
        limits,
        connections,
        header_read_timeout,
        stopped,
    ));
    Ok(Listening { addr, stop, task })
}

/// The bounds every request of one listener shares.
struct Limits {
    /// Requests past their body and not yet answered.
    slots: Semaphore,
    /// Body bytes buffered at once, in [`BUDGET_UNIT`]s.
    body_budget: Arc<Semaphore>,
    body_limit: usize,
    body_read_timeout: Duration,
}

/// Granularity of the body budget: a permit per KiB keeps the count within `u32` for any
/// budget up to 4 TiB.
const BUDGET_UNIT: usize = 1024;

fn budget_units(config: &HttpConfig) -> usize {
    // A body within the limit must always fit in the budget, or it could never complete.
    config
        .body_buffer_bytes
        .max(config.body_limit)
        .div_ceil(BUDGET_UNIT)
        .max(1)
}

async fn accept(
    listener: TcpListener,
    trigger: Weak<HttpTrigger>,
    limits: Arc<Limits>,
    connections: Arc<Semaphore>,
    header_read_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        // At the cap, stop accepting: further clients wait in the kernel's backlog until an
        // open connection ends (header and body timeouts make sure idle ones do).
        let permit = tokio::select! {
            _ = stopped.changed() => return,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            trigger: trigger.clone(),
            limits: limits.clone(),
            header_read_timeout,
            permit,
            stopped: stopped.clone(),
        };
        // A host (the app's event loop) serves the connection on its own thread when it can.
        let host = trigger.upgrade().and_then(|t| t.host());
        let Some((stream, connection)) = offer(host, stream, connection) else {
            continue;
        };
        tokio::spawn(connection.serve(stream));
    }
}

/// Offers an accepted connection to `host`. Hands it back, to be served on the runtime, when
/// there is no host or the host declines; `None` when the host took it (or it was lost on the
/// way, logged).
fn offer(
    host: Option<Arc<dyn HttpHost>>,
    stream: TcpStream,
    connection: Connection,
) -> Option<(TcpStream, Connection)> {
    let Some(host) = host else {
        return Some((stream, connection));
    };
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            warn!("HTTP connection could not be handed to its host: {e}");
            return None;
        }
    };
    let back = host.host(HostedConnection { stream, connection }).err()?;
    match TcpStream::from_std(back.stream) {
        Ok(stream) => Some((stream, back.connection)),
        Err(e) => {
            warn!("HTTP connection lost on its way back from the host: {e}");
            None
        }
    }
}

/// An accepted connection and what serving it needs, on whichever thread serves it.
pub(crate) struct Connection {
    peer: SocketAddr,
    trigger: Weak<HttpTrigger>,
    limits: Arc<Limits>,
    header_read_timeout: Duration,
    /// One of the listener's connection slots, held until the connection ends.
    permit: OwnedSemaphorePermit,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    /// Serves HTTP/1.1 requests on `socket` until the client leaves or the listener stops
    /// (then the request in flight finishes first).
    pub(crate) async fn serve<S>(self, socket: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            trigger,
            limits,
            header_read_timeout,
            permit,
            mut stopped,
        } = self;
        let _permit = permit;
        let flushes = Arc::new(Flushes::default());
        let socket = Watched::new(socket, flushes.clone());
        let service = service_fn(move |request| {
            let trigger = trigger.clone();
            let limits = limits.clone();
            let flushes = flushes.clone();
            async move { Ok::<_, Infallible>(respond(trigger, &limits, &flushes, request).await) }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(socket), service);
        tokio::pin!(connection);
        if *stopped.borrow_and_update() {
            connection.as_mut().graceful_shutdown();
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, "HTTP connection ended: {e}");
                }
            }
            _ = stopped.changed() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

async fn respond(
    trigger: Weak<HttpTrigger>,
    limits: &Limits,
    flushes: &Arc<Flushes>,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let stopping = || {
        to_response(
            error_reply(
                503,
                ErrorCode::Stopped.as_str(),
                "the engine is stopping",
                None,
                &[],
            ),
            None,
        )
    };
    let Some(trigger) = trigger.upgrade() else {
        return stopping();
    };
    let config = trigger.config();
    let origin = request.headers().get(http::header::ORIGIN).cloned();
    let cors = Cors::new(config.cors.as_ref(), origin.as_ref());
    if is_preflight(&request) && !trigger.has_route("OPTIONS", request.uri().path()) {
        return cors.preflight(request.headers());
    }
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        let message = format!("the request body exceeds {} bytes", config.body_limit);
        to_response(
            error_reply(
                413,
                ErrorCode::PayloadTooLarge.as_str(),
                &message,
                None,
                &[],
            ),
            cors.allow(),
        )
    };
    if declared.is_some_and(|n| n > limits.body_limit as u64) {
        return too_large();
    }
    if !is_json(&parts.headers) {
        // Not JSON: `body` is null for the function (docs/protocol.md 6.3) and the bytes stream
        // into its `request_body` channel as they arrive, never buffered whole here; the limit
        // and the idle timeout still apply, as the channel's feeder reads.
        let Ok(_slot) = limits.slots.acquire().await else {
            return stopping();
        };
        let request = Request {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body: BodySource::Incoming {
                body,
                limit: limits.body_limit,
                idle: limits.body_read_timeout,
            },
        };
        return match trigger.handle(request).await {
            Reply::Buffered(reply) => to_response(reply, cors.allow()),
            Reply::Streaming(streaming) => stream_response(streaming, flushes, cors.allow()),
        };
    }
    let (body, _budget) = match read_body(body, limits).await {
        Ok(read) => read,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Idle) => {
            let message = format!(
                "no request body bytes arrived for {} ms",
                limits.body_read_timeout.as_millis()
            );
            let mut response = to_response(
                error_reply(408, ErrorCode::RequestTimeout.as_str(), &message, None, &[]),
                cors.allow(),
            );
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        Err(BodyError::Stopped) => return stopping(),
        Err(BodyError::Read(e)) => {
            let message = format!("could not read the request body: {e}");
            return to_response(
                error_reply(400, ErrorCode::BadRequest.as_str(), &message, None, &[]),
                cors.allow(),
            );
        }
    };
    // The slot is taken once the body is in: a client that sends its body slowly holds a
    // connection (capped) and budget bytes (bounded), never one of the slots.
    let Ok(_slot) = limits.slots.acquire().await else {
        return stopping();
    };
    let request = Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: BodySource::Buffered(body),
    };
    match trigger.handle(request).await {
        Reply::Buffered(reply) => to_response(reply, cors.allow()),
        Reply::Streaming(streaming) => stream_response(streaming, flushes, cors.allow()),
    }
}

/// Whether the request's content-type (its last one, as the function sees it) is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .next_back()
        .is_some_and(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .to_ascii_lowercase()
                .contains("application/json")
        })
}

fn stream_response(
    streaming: Streaming,
    flushes: &Arc<Flushes>,
    extra: Option<Vec<(HeaderName, HeaderValue)>>,
) -> hyper::Response<ResponseBody> {
    let head = HttpReply {
        status: streaming.status,
        headers: streaming.headers.clone(),
        body: Vec::new(),
    };
    let mut response = to_response(head, extra);
    *response.body_mut() = streaming.into_body(flushes.clone());
    response
}

enum BodyError {
    TooLarge,
    Idle,
    Stopped,
    Read(hyper::Error),
}

/// Reads a whole request body within the limits: at most `body_limit` bytes, no gap longer than
/// `body_read_timeout` between two chunks, and every buffered byte counted against the shared
/// body budget (held by the returned permit until the request is answered).
async fn read_body(
    mut body: Incoming,
    limits: &Limits,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout(limits.body_read_timeout, body.frame()).await {
            Err(_) => return Err(BodyError::Idle),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        len += data.len();
        if len > limits.body_limit {
            return Err(BodyError::TooLarge);
        }
        let units = u32::try_from(data.len().div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
        let wait = limits.body_budget.clone().acquire_many_owned(units);
        let permit = match tokio::time::timeout(limits.body_read_timeout, wait).await {
            Err(_) => return Err(BodyError::Idle),
            Ok(Err(_)) => return Err(BodyError::Stopped),
            Ok(Ok(permit)) => permit,
        };
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        chunks.push(data);
    }
    let body = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut whole = Vec::with_capacity(len);
            for chunk in &chunks {
                whole.extend_from_slice(chunk);
            }
            Bytes::from(whole)
        }
    };
    Ok((body, held))
}

fn is_preflight<B>(request: &hyper::Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The CORS answer for one request's origin.
struct Cors<'a> {
    config: Option<&'a CorsConfig>,
    origin: Option<HeaderValue>,
}

impl<'a> Cors<'a> {
    fn new(config: Option<&'a CorsConfig>, origin: Option<&HeaderValue>) -> Self {
        let allowed = origin.filter(|origin| match config {
            None => true,
            Some(c) => c
                .allowed_origins
                .iter()
                .any(|o| o == "*" || origin.as_bytes() == o.as_bytes()),
        });
        Cors {
            config,
            origin: allowed.cloned(),
        }
    }

    /// The headers every response to an allowed origin carries.
    fn allow(&self) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let origin = self.origin.as_ref()?;
        let credentials = self.config.is_some_and(|c| c.allow_credentials);
        let mut headers = Vec::new();
        if self.config.is_none() {
            headers.push((
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ));
        } else {
            headers.push((http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            headers.push((http::header::VARY, HeaderValue::from_static("Origin")));
        }
        if credentials {
            headers.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        Some(headers)
    }

    fn preflight(&self, request_headers: &HeaderMap) -> hyper::Response<ResponseBody> {
        let mut headers = self.allow().unwrap_or_default();
        if !headers.is_empty() {
            let methods = self
                .config
                .filter(|c| !c.allowed_methods.is_empty())
                .map_or_else(|| ALL_METHODS.to_owned(), |c| c.allowed_methods.join(", "));
            if let Ok(v) = HeaderValue::from_str(&methods) {
                headers.push((http::header::ACCESS_CONTROL_ALLOW_METHODS, v));
            }
            let asked = request_headers.get(http::header::ACCESS_CONTROL_REQUEST_HEADERS);
            let allowed = match self.config.filter(|c| !c.allowed_headers.is_empty()) {
                Some(c) => HeaderValue::from_str(&c.allowed_headers.join(", ")).ok(),
                None => asked.cloned(),
            };
            if let Some(v) = allowed {
                headers.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, v));
            }
            if let Some(age) = self.config.and_then(|c| c.max_age) {
                headers.push((http::header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age)));
            }
        }
        let reply = HttpReply {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        };
        to_response(reply, Some(headers))
    }
}

fn to_response(
    reply: HttpReply,
    extra: Option<Vec<(HeaderName, HeaderValue)>>,
) -> hyper::Response<ResponseBody> {
    let mut response = hyper::Response::new(full(reply.body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => debug!(header = %name, "invalid response header dropped"),
        }
    }
    for (name, value) in extra.unwrap_or_default() {
        headers.insert(name, value);
    }
    response
}
