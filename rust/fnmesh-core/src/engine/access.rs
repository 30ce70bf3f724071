//! Access control applied (docs/access-control.md): a restricted listener's admission of a
//! connection (its auth function), the gate on each call it makes (`expose_functions`, its
//! grants, the middleware), on each registration it sends (its grants, the registration hooks,
//! its prefix), and on what discovery shows it. The rules themselves are [`crate::access`].
//!
//! Everything fails closed: an auth function that is missing, fails, times out or answers
//! something that is not an `AuthResult` refuses the connection before any of its frames is
//! read; a hook that does the same denies the registration.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::payload::Payload;
use super::state::{lock, send_msg, Shared, WorkerState};
use super::ENGINE_OWNER;
use crate::access::{AccessConfig, FunctionFilter, Grants};
use crate::function::{Call, CallOptions, Outcome};
use crate::protocol::{
    ErrorBody, ErrorCode, Message, RawJson, TriggerAction, TriggerRegistrationResult,
};
use crate::registry::{FunctionDef, FunctionInfo, FunctionKind, DEFAULT_NAMESPACE};
use crate::server::{percent_decode, Connection};

/// One admitted connection of a restricted listener: what it was granted, its listener's
/// settings, and the queue its registrations wait in while hooks are asked (in order).
pub(crate) struct Session {
    pub(super) grants: Grants,
    pub(super) config: Arc<AccessConfig>,
    registrations: mpsc::Sender<(String, Message)>,
    needs_metadata: bool,
}

/// A gated call: what to dispatch instead of what the worker sent.
pub(super) struct Gated {
    pub(super) function_id: String,
    pub(super) data: Option<Payload>,
    pub(super) action: Option<TriggerAction>,
    pub(super) namespace: String,
}

fn raw(value: &Value) -> Option<RawJson> {
    serde_json::value::to_raw_value(value).ok()
}

fn parsed(raw: &Option<RawJson>) -> Value {
    raw.as_ref()
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null)
}

impl Shared {
    /// Runs the listener's auth function for a connection whose upgrade succeeded: its grants,
    /// or `None` to refuse it.
    pub(super) async fn authenticate(
        &self,
        config: &AccessConfig,
        conn: &Connection,
    ) -> Option<Grants> {
        let Some(auth) = &config.auth_function_id else {
            return Some(Grants::permissive());
        };
        let mut query: Map<String, Value> = Map::new();
        for (k, v) in conn
            .query()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
        {
            let values = query
                .entry(percent_decode(k))
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(values) = values {
                values.push(Value::String(percent_decode(v)));
            }
        }
        let input = json!({
            "headers": conn.headers(),
            "query_params": query,
            "ip_address": conn.remote_addr().ip().to_string(),
        });
        match self.ask(auth, &input, config).await {
            Ok(answer) => match Grants::from_answer(&answer) {
                Ok(grants) => Some(grants),
                Err(e) => {
                    warn!(peer = %conn.remote_addr(), auth_function_id = %auth, "connection refused: the auth function's answer is not an AuthResult: {e}");
                    None
                }
            },
            Err(e) => {
                warn!(peer = %conn.remote_addr(), auth_function_id = %auth, "connection refused: {e}");
                None
            }
        }
    }

    /// Calls a policy function (auth, hook) bounded by the listener's hook timeout: its answer
    /// as JSON text, or why there is none.
    async fn ask(
        &self,
        function_id: &str,
        input: &Value,
        config: &AccessConfig,
    ) -> Result<String, String> {
        let data = raw(input).ok_or("input not serializable")?;
        let options = CallOptions {
            namespace: Some(DEFAULT_NAMESPACE.to_owned()),
            timeout: Some(config.hook_timeout),
            ..CallOptions::default()
        };
        let call = self.call(function_id, data, options);
        // The engine's bound is the hook timeout; this one only guards a call that never
        // reaches the pending table.
        match tokio::time::timeout(config.hook_timeout * 2, call).await {
            Ok(Outcome::Success(Some(answer))) => Ok(answer.get().to_owned()),
            Ok(Outcome::Success(None)) => Err(format!("{function_id} returned no result")),
            Ok(Outcome::Failure(e)) => {
                Err(format!("{function_id} failed: {}: {}", e.code, e.message))
            }
            Err(_) => Err(format!("{function_id} timed out")),
        }
    }

    /// A hook's answer as an object; anything else denies.
    async fn ask_hook(
        &self,
        hook: &str,
        input: Value,
        session: &Session,
    ) -> Result<Map<String, Value>, String> {
        let answer = self.ask(hook, &input, &session.config).await?;
        match serde_json::from_str(&answer) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(format!("{hook} answered something that is not an object")),
        }
    }

    /// A new connection's session, with the task that applies its registrations in order.
    pub(super) fn open_session(
        &self,
        conn: &Connection,
        grants: Grants,
        config: Arc<AccessConfig>,
    ) -> (Arc<Session>, mpsc::Receiver<(String, Message)>) {
        if let Some(prefix) = grants.function_registration_prefix.as_deref() {
            if !prefix.is_empty() {
                conn.set_registration_prefix(prefix);
            }
        }
        let (tx, rx) = mpsc::channel(self.config.max_buffered_registrations.max(1));
        let needs_metadata = config
            .expose_functions
            .iter()
            .any(|f| matches!(f, FunctionFilter::Metadata { .. }));
        let session = Session {
            grants,
            config,
            registrations: tx,
            needs_metadata,
        };
        (Arc::new(session), rx)
    }

    /// Applies a restricted connection's registrations one at a time, each after its gate.
    pub(super) async fn run_registrations(
        me: Weak<Shared>,
        ws: Weak<WorkerState>,
        mut rx: mpsc::Receiver<(String, Message)>,
    ) {
        while let Some((ns, message)) = rx.recv().await {
            let (Some(shared), Some(ws)) = (me.upgrade(), ws.upgrade()) else {
                break;
            };
            let Some(session) = ws.access.clone() else {
                break;
            };
            let Some(message) = shared.gate_registration(&ws, &session, &ns, message).await else {
                continue;
            };
            let _registering = lock(&shared.registrations);
            if ws.cleaned.load(Ordering::Acquire) {
                break; // gone while a hook was asked: nothing of it registers
            }
            shared.apply_registration(&ws, &ns, message);
        }
    }

    /// Queues a restricted connection's registration for its gate; too many waiting closes it.
    pub(super) fn queue_gated(
        &self,
        ws: &WorkerState,
        session: &Session,
        ns: &str,
        message: Message,
    ) {
        if session
            .registrations
            .try_send((ns.to_owned(), message))
            .is_err()
        {
            warn!(worker = %ws.conn.id(), "too many registrations waiting for their hooks: closing with 1008");
            ws.conn.close(1008, "too many registrations waiting");
        }
    }

    fn function_metadata(&self, session: &Session, f: Option<&FunctionInfo>) -> Value {
        if !session.needs_metadata {
            return Value::Null;
        }
        f.map_or(Value::Null, |f| parsed(&f.def.metadata))
    }

    /// Whether `session` may call `function_id` in `namespace`.
    pub(super) fn may_call(&self, session: &Session, function_id: &str, namespace: &str) -> bool {
        let info = self.functions.lookup(namespace, function_id);
        let metadata = self.function_metadata(session, info.as_ref());
        session.grants.may_call(
            &session.config.expose_functions,
            function_id,
            namespace,
            Some(&metadata).filter(|m| !m.is_null()),
        )
    }

    /// Whether discovery shows `f` to `session`: only what it may call.
    pub(super) fn may_see(&self, session: &Session, f: &FunctionInfo) -> bool {
        let metadata = self.function_metadata(session, Some(f));
        session.grants.may_call(
            &session.config.expose_functions,
            &f.function_id,
            &f.namespace,
            Some(&metadata).filter(|m| !m.is_null()),
        )
    }

    /// The session of the connection `worker`, if it came through a restricted listener.
    pub(super) fn session_of(&self, worker: Option<&str>) -> Option<Arc<Session>> {
        self.conns.get(worker?)?.access.clone()
    }

    /// The gate on one call of a restricted connection: the call to dispatch (the middleware's,
    /// when the listener has one and the function is not the engine's), or the `FORBIDDEN`
    /// message.
    pub(super) fn gate_call(
        &self,
        session: &Session,
        function_id: String,
        namespace: String,
        data: Option<Payload>,
        action: Option<TriggerAction>,
    ) -> Result<Gated, (String, String)> {
        if !self.may_call(session, &function_id, &namespace) {
            let message = session.grants.forbidden_message(&function_id);
            return Err((function_id, message));
        }
        let engine_owned = self
            .functions
            .lookup(&namespace, &function_id)
            .is_some_and(|f| f.owners.iter().any(|o| &**o == ENGINE_OWNER));
        match &session.config.middleware_function_id {
            Some(middleware) if !engine_owned => {
                let payload = data
                    .as_ref()
                    .and_then(|d| serde_json::from_str::<Value>(d.text()).ok())
                    .filter(|v| !v.is_null())
                    .unwrap_or_else(|| json!({}));
                let input = json!({
                    "function_id": function_id,
                    "payload": payload,
                    "action": action,
                    "context": session.grants.context,
                    "namespace": namespace,
                });
                Ok(Gated {
                    function_id: middleware.clone(),
                    data: raw(&input).map(Payload::Owned),
                    action: None,
                    namespace: DEFAULT_NAMESPACE.to_owned(),
                })
            }
            _ => Ok(Gated {
                function_id,
                data,
                action,
                namespace,
            }),
        }
    }

    /// The gate on one registration of a restricted connection: the registration to apply
    /// (mapped by its hook, prefixed), or `None` when it is denied.
    async fn gate_registration(
        &self,
        ws: &WorkerState,
        session: &Session,
        ns: &str,
        message: Message,
    ) -> Option<Message> {
        let grants = &session.grants;
        let config = &session.config;
        let conn = &ws.conn;
        match message {
            Message::RegisterFunction(mut f) => {
                if !grants.allow_function_registration {
                    warn!(worker = %conn.id(), function_id = %f.id, "function registration denied: the connection may not register functions");
                    return None;
                }
                if let Some(hook) = &config.on_function_registration_function_id {
                    let input = json!({
                        "function_id": f.id,
                        "description": f.description,
                        "metadata": parsed(&f.metadata),
                        "namespace": ns,
                        "context": grants.context,
                    });
                    let answer = match self.ask_hook(hook, input, session).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            warn!(worker = %conn.id(), function_id = %f.id, "function registration denied by its hook: {e}");
                            return None;
                        }
                    };
                    if let Some(id) = answer.get("function_id").and_then(Value::as_str) {
                        f.id = id.to_owned();
                    }
                    if let Some(d) = answer.get("description").and_then(Value::as_str) {
                        f.description = Some(d.to_owned());
                    }
                    if let Some(m) = answer.get("metadata").filter(|m| !m.is_null()) {
                        f.metadata = raw(m);
                    }
                }
                f.id = grants.registered_id(&f.id);
                Some(Message::RegisterFunction(f))
            }
            Message::UnregisterFunction(mut f) => {
                f.id = grants.registered_id(&f.id);
                Some(Message::UnregisterFunction(f))
            }
            Message::RegisterTriggerType(mut t) => {
                if !grants.allow_trigger_type_registration {
                    warn!(worker = %conn.id(), trigger_type = %t.id, "trigger type registration denied: the connection may not register trigger types");
                    return None;
                }
                if let Some(hook) = &config.on_trigger_type_registration_function_id {
                    let input = json!({
                        "trigger_type_id": t.id,
                        "description": t.description.clone().unwrap_or_default(),
                        "context": grants.context,
                    });
                    let answer = match self.ask_hook(hook, input, session).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            warn!(worker = %conn.id(), trigger_type = %t.id, "trigger type registration denied by its hook: {e}");
                            return None;
                        }
                    };
                    if let Some(id) = answer.get("trigger_type_id").and_then(Value::as_str) {
                        t.id = id.to_owned();
                    }
                    if let Some(d) = answer.get("description").and_then(Value::as_str) {
                        t.description = Some(d.to_owned());
                    }
                }
                Some(Message::RegisterTriggerType(t))
            }
            Message::RegisterTrigger(mut t) => {
                let deny = |t: &crate::protocol::RegisterTrigger, message: String| {
                    warn!(worker = %conn.id(), trigger_id = %t.id, "trigger registration denied: {message}");
                    send_msg(
                        conn,
                        &Message::TriggerRegistrationResult(TriggerRegistrationResult {
                            id: t.id.clone(),
                            trigger_type: t.trigger_type.clone(),
                            function_id: t.function_id.clone(),
                            error: Some(ErrorBody::new(ErrorCode::RegistrationDenied, message)),
                            ..TriggerRegistrationResult::default()
                        }),
                    );
                };
                if let Some(types) = &grants.allowed_trigger_types {
                    if !types.contains(&t.trigger_type) {
                        let message = format!("trigger type '{}' not allowed", t.trigger_type);
                        deny(&t, message);
                        return None;
                    }
                }
                let target_ns = t
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
                if let Some(hook) = &config.on_trigger_registration_function_id {
                    let input = json!({
                        "trigger_id": t.id,
                        "trigger_type": t.trigger_type,
                        "function_id": t.function_id,
                        "config": parsed(&t.config),
                        "metadata": parsed(&t.metadata),
                        "namespace": target_ns,
                        "context": grants.context,
                    });
                    match self.ask_hook(hook, input, session).await {
                        Ok(answer) => {
                            if let Some(v) = answer.get("trigger_id").and_then(Value::as_str) {
                                t.id = v.to_owned();
                            }
                            if let Some(v) = answer.get("trigger_type").and_then(Value::as_str) {
                                t.trigger_type = v.to_owned();
                            }
                            if let Some(v) = answer.get("function_id").and_then(Value::as_str) {
                                t.function_id = v.to_owned();
                            }
                            if let Some(v) = answer.get("config").filter(|v| !v.is_null()) {
                                t.config = raw(v);
                            }
                        }
                        Err(e) => {
                            deny(
                                &t,
                                format!("denied by on_trigger_registration_function_id: {e}"),
                            );
                            return None;
                        }
                    }
                }
                // Binding a trigger makes the engine call its function later, past the call
                // gate: the connection must be allowed to call it, or own it.
                let own = grants.registered_id(&t.function_id);
                let owned = self
                    .functions
                    .lookup(&target_ns, &own)
                    .is_some_and(|f| f.owners.iter().any(|o| o == conn.id()));
                if owned {
                    t.function_id = own;
                } else if !self.may_call(session, &t.function_id, &target_ns) {
                    let message = grants.forbidden_message(&t.function_id);
                    deny(&t, message);
                    return None;
                }
                Some(Message::RegisterTrigger(t))
            }
            other => Some(other),
        }
    }
}

/// `engine::log::*`: a worker's log line, written to the engine's log. Part of the
/// infrastructure every connection may call (docs/access-control.md), so a restricted worker's
/// SDK logger keeps working.
pub(super) fn install_log_builtins(shared: &Arc<Shared>) {
    for level in ["info", "warn", "error", "debug", "trace"] {
        let id = format!("engine::log::{level}");
        let log = move |call: Call| {
            let line: Value = serde_json::from_str(call.data.get()).unwrap_or(Value::Null);
            let message = line.get("message").and_then(Value::as_str).unwrap_or("");
            let worker = call.caller_worker_id.as_deref().unwrap_or("");
            match level {
                "error" => tracing::error!(worker, "{message}"),
                "warn" => warn!(worker, "{message}"),
                "debug" => debug!(worker, "{message}"),
                "trace" => tracing::trace!(worker, "{message}"),
                _ => tracing::info!(worker, "{message}"),
            }
            call.reply.send(Outcome::Success(None));
        };
        let def = FunctionDef {
            kind: FunctionKind::Local,
            description: Some(format!("Write a worker's log line at level {level}")),
            ..FunctionDef::default()
        };
        if let Err(e) = shared.functions.register(
            DEFAULT_NAMESPACE,
            &id,
            ENGINE_OWNER,
            super::state::Target::Native(Arc::new(log)),
            def,
        ) {
            warn!(function_id = %id, "built-in not registered: {e}");
        }
    }
}
