//! External HTTP functions (docs/protocol.md section 5): a worker registers a function with an
//! `invocation` object (a URL, a method, headers, auth), and every call of that function becomes
//! one HTTP request made by the engine's process.
//!
//! The engine makes no HTTP requests itself. A host installs an [`ExternalFunctions`] (the
//! Python binding's uses one pooled httpx client) with
//! [`crate::engine::EngineRef::set_external_functions`]; for each registration the host checks
//! the URL and the secrets and answers with the [`NativeFunction`] that serves the calls, or with
//! a refusal. The function then belongs to the registering worker like any of its own: it is
//! listed with kind `http` and leaves with the worker. Without a host such registrations are
//! dropped with a log line, as iii drops them without its `iii-http-functions` module.

use std::sync::Arc;

use crate::function::NativeFunction;
use crate::protocol::{ErrorBody, HttpInvocationRef};

/// One worker's registration of an external function, as the host receives it.
#[derive(Debug, Clone)]
pub struct ExternalRegistration {
    /// The namespace the function is registered in.
    pub namespace: String,
    /// The function id.
    pub function_id: String,
    /// The registering worker (its connection id).
    pub worker_id: Arc<str>,
    /// What to call and how.
    pub invocation: HttpInvocationRef,
}

/// The host's answer to one registration: the function that serves its calls, or why it is
/// refused (code `url_validation_failed` for a refused URL, for instance). Call it once, from
/// any thread; a registration whose worker left in the meantime is dropped.
pub type ExternalReady = Box<dyn FnOnce(Result<Arc<dyn NativeFunction>, ErrorBody>) + Send>;

/// Serves the external HTTP functions that workers register. Implemented by the host.
pub trait ExternalFunctions: Send + Sync + 'static {
    /// Checks `registration` and answers through `ready`, now or later. Called on the engine's
    /// runtime: it must not block (hand slow checks such as DNS to another task or thread).
    fn prepare(&self, registration: ExternalRegistration, ready: ExternalReady);
}

impl<F> ExternalFunctions for F
where
    F: Fn(ExternalRegistration, ExternalReady) + Send + Sync + 'static,
{
    fn prepare(&self, registration: ExternalRegistration, ready: ExternalReady) {
        self(registration, ready)
    }
}
