//! [`ClientBuilder`]: a worker client's settings and its first connection.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::backoff::Backoff;
use super::connection::{supervise, sweep};
use super::error::ClientError;
use super::handle::{Client, ClientState, StopOnDrop};
use super::inner::{FunctionEntry, Inner, Link};
use super::{
    lock, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE,
};
use crate::function::NativeFunction;
use crate::invocation::PendingTable;
use crate::registry::FunctionDef;

pub(super) struct Settings {
    pub(super) url: String,
    pub(super) worker_name: String,
    pub(super) namespace: Option<String>,
    pub(super) auth_token: Option<String>,
    pub(super) backoff: Backoff,
    pub(super) keepalive: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) first_connect_timeout: Duration,
    pub(super) call_timeout: Duration,
}

/// Configures and connects a [`Client`].
pub struct ClientBuilder {
    settings: Settings,
    functions: Vec<(String, FunctionDef, Arc<dyn NativeFunction>)>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.settings.url)
            .field("worker_name", &self.settings.worker_name)
            .field("functions", &self.functions.len())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The builder [`Client::builder`] returns.
    pub(super) fn new(url: impl Into<String>) -> ClientBuilder {
        let pid = std::process::id();
        let worker_name = std::env::var("III_WORKER_NAME").unwrap_or_else(|_| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "rust".to_owned());
            format!("{host}:{pid}")
        });
        ClientBuilder {
            settings: Settings {
                url: url.into(),
                worker_name,
                namespace: std::env::var("III_NAMESPACE").ok(),
                auth_token: None,
                backoff: Backoff::default(),
                keepalive: DEFAULT_KEEPALIVE,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                first_connect_timeout: DEFAULT_FIRST_CONNECT_TIMEOUT,
                call_timeout: DEFAULT_CALL_TIMEOUT,
            },
            functions: Vec::new(),
        }
    }

    /// The worker name reported through `engine::workers::register` (default: env
    /// `III_WORKER_NAME`, else `<hostname>:<pid>`).
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.settings.worker_name = name.into();
        self
    }

    /// The worker's namespace (default: env `III_NAMESPACE`, else none, i.e. `default`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = Some(namespace.into());
        self
    }

    /// Sends `Authorization: Bearer <token>` on the upgrade (docs/protocol.md 11.5).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.settings.auth_token = Some(token.into());
        self
    }

    /// The reconnect schedule (default [`Backoff::default`]).
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Interval between WebSocket pings; twice this without any inbound frame is a dead
    /// connection (default [`DEFAULT_KEEPALIVE`]).
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.settings.keepalive = interval.max(Duration::from_millis(10));
        self
    }

    /// Bound on one connection attempt (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long [`ClientBuilder::connect`] waits for the first connection, retrying with
    /// backoff meanwhile (default [`DEFAULT_FIRST_CONNECT_TIMEOUT`]).
    pub fn first_connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.first_connect_timeout = timeout;
        self
    }

    /// Default bound on outbound calls (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.settings.call_timeout = timeout;
        self
    }

    /// Serves a function from the first connection on.
    pub fn function(
        mut self,
        function_id: impl Into<String>,
        def: FunctionDef,
        handler: impl NativeFunction,
    ) -> Self {
        self.functions
            .push((function_id.into(), def, Arc::new(handler)));
        self
    }

    /// Starts the client and waits until the first connection is open and its registrations
    /// are sent. Fails with [`ClientError::Connect`] when that does not happen within the
    /// first-connect timeout; later losses are retried forever. Must run inside a tokio runtime.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let settings = self.settings;
        let request = settings
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| crate::Error::InvalidArgument(format!("bad engine URL: {e}")))?;
        if request.uri().scheme_str() != Some("ws") {
            return Err(crate::Error::InvalidArgument(format!(
                "only ws:// engine URLs are supported, not '{}'",
                settings.url
            ))
            .into());
        }
        let mut functions = HashMap::new();
        for (id, def, handler) in self.functions {
            let entry = FunctionEntry::new(&id, &def, handler, None)?;
            functions.insert(id, entry);
        }
        let (state_tx, mut state_rx) = watch::channel(ClientState::Connecting);
        let (stop_tx, stop_rx) = watch::channel(false);
        let first_connect_timeout = settings.first_connect_timeout;
        let inner = Arc::new(Inner {
            settings,
            link: Mutex::new(Link {
                tx: None,
                queued: VecDeque::new(),
                functions,
                triggers: HashMap::new(),
            }),
            pending: PendingTable::new(),
            inbound: DashMap::new(),
            identity: Mutex::new(None),
            state: state_tx,
            stop: stop_tx,
            last_error: Mutex::new(None),
            rejected: AtomicBool::new(false),
            trigger_errors: DashMap::new(),
        });
        let supervisor = tokio::spawn(supervise(inner.clone(), stop_rx.clone()));
        tokio::spawn(sweep(Arc::downgrade(&inner), stop_rx));
        let client = Client {
            inner: inner.clone(),
            guard: Arc::new(StopOnDrop {
                inner: Arc::downgrade(&inner),
                supervisor: Mutex::new(Some(supervisor)),
            }),
        };
        let connected = matches!(
            tokio::time::timeout(
                first_connect_timeout,
                state_rx.wait_for(|s| matches!(s, ClientState::Connected | ClientState::Closed)),
            )
            .await
            .map(|r| r.map(|state| *state)),
            Ok(Ok(ClientState::Connected))
        );
        if connected {
            return Ok(client);
        }
        let reason = lock(&inner.last_error)
            .clone()
            .unwrap_or_else(|| "timed out".to_owned());
        client.shutdown().await;
        Err(ClientError::Connect {
            url: inner.settings.url.clone(),
            reason,
        })
    }
}
