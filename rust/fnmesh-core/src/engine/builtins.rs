//! The engine's built-in functions (docs/protocol.md 7): worker registration, discovery listings and
//! trigger management, plus the built-in trigger types `engine::functions-available` and
//! `engine::workers-available`. They are ordinary native functions: any worker calls them with
//! `invokefunction`. Listings are cold paths and build `serde_json::Value`s freely.

use std::sync::{Arc, Weak};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;

use super::state::lock;
use super::{
    Provider, Shared, Target, WorkerState, ENGINE_OWNER, FUNCTIONS_AVAILABLE, WORKERS_AVAILABLE,
};
use crate::error::Error;
use crate::function::{Call, Outcome};
use crate::protocol::ErrorCode;
use crate::protocol::{Message, RawJson, RegistrationRejected};
use crate::registry::{FunctionDef, FunctionInfo, FunctionKind, ListFilter, DEFAULT_NAMESPACE};
use crate::triggers::{BindingSlot, BindingState, TriggerBinding, TriggerType};
use crate::workers::{WorkerInfo, WorkerMetadata};

/// Worker name shown for the engine's own functions and trigger types.
pub const ENGINE_WORKER_NAME: &str = "fnmesh-engine";

type Builtin = fn(&Arc<Shared>, Call);

/// Registers the built-ins on a fresh engine.
pub(crate) fn install(shared: &Arc<Shared>) {
    let table: [(&str, &str, Builtin); 12] = [
        (
            "engine::workers::register",
            "Describe the calling worker (name, runtime, namespace)",
            workers_register,
        ),
        (
            "engine::functions::list",
            "List registered functions",
            functions_list,
        ),
        (
            "engine::functions::info",
            "Describe one or more functions",
            functions_info,
        ),
        (
            "engine::workers::list",
            "List connected workers",
            workers_list,
        ),
        ("engine::workers::info", "Describe one worker", workers_info),
        (
            "engine::triggers::list",
            "List trigger types",
            triggers_list,
        ),
        (
            "engine::triggers::info",
            "Describe one trigger type",
            triggers_info,
        ),
        (
            "engine::registered-triggers::list",
            "List trigger bindings",
            registered_list,
        ),
        (
            "engine::registered-triggers::info",
            "Describe one trigger binding",
            registered_info,
        ),
        (
            "engine::register_trigger",
            "Create a durable trigger binding",
            register_trigger,
        ),
        (
            "engine::unregister_trigger",
            "Remove a trigger binding",
            unregister_trigger,
        ),
        (
            "engine::channels::create",
            "Create a data channel (docs/protocol.md 1.7)",
            channels_create,
        ),
    ];
    for (id, description, f) in table {
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let native = move |call: Call| match weak.upgrade() {
            Some(shared) => f(&shared, call),
            None => call.reply.send(Outcome::failure(
                ErrorCode::InvocationStopped,
                "engine shutting down",
            )),
        };
        let def = FunctionDef {
            kind: FunctionKind::Local,
            description: Some(description.to_owned()),
            ..FunctionDef::default()
        };
        shared
            .functions
            .register(
                DEFAULT_NAMESPACE,
                id,
                ENGINE_OWNER,
                Target::Native(Arc::new(native)),
                def,
            )
            .expect("built-in ids are valid and registered once");
    }
    for (id, description) in [
        (
            FUNCTIONS_AVAILABLE,
            "Fires when the set of registered functions changes",
        ),
        (
            WORKERS_AVAILABLE,
            "Fires when a worker connects, leaves or describes itself",
        ),
    ] {
        shared
            .trigger_types
            .register(TriggerType {
                namespace: DEFAULT_NAMESPACE.to_owned(),
                id: id.to_owned(),
                description: description.to_owned(),
                trigger_request_format: None,
                call_request_format: None,
                owner: ENGINE_OWNER.into(),
                provider: Provider::Builtin,
            })
            .expect("built-in trigger types are valid");
    }
}

fn parse<T: serde::de::DeserializeOwned>(call: &mut Call) -> Option<T> {
    call.parse()
}

fn raw_value(raw: &Option<RawJson>) -> Option<Value> {
    raw.as_ref()
        .and_then(|r| serde_json::from_str(r.get()).ok())
}

fn not_found(call: Call, what: String) {
    call.reply.send(Outcome::failure(ErrorCode::NotFound, what));
}

fn first_segment(id: &str) -> &str {
    id.split("::").next().unwrap_or(id)
}

/// The name listings show for whoever owns `owner`.
fn owner_name(shared: &Shared, owner: &str, function_id: &str) -> String {
    if super::is_in_process_owner(owner) {
        return ENGINE_WORKER_NAME.to_owned();
    }
    shared
        .workers
        .get(owner)
        .and_then(|w| w.name().map(str::to_owned))
        .unwrap_or_else(|| first_segment(function_id).to_owned())
}

fn function_worker_name(shared: &Shared, f: &FunctionInfo) -> String {
    match f.owners.first() {
        Some(owner) => owner_name(shared, owner, &f.function_id),
        None => first_segment(&f.function_id).to_owned(),
    }
}

fn hidden_function(f: &FunctionInfo) -> bool {
    (f.function_id.starts_with("engine::") && !f.function_id.starts_with("engine::queue::"))
        || f.def.is_internal()
}

fn summary(shared: &Shared, f: &FunctionInfo) -> Value {
    let mut row = Map::new();
    row.insert("function_id".into(), json!(f.function_id));
    row.insert("namespace".into(), json!(f.namespace));
    row.insert("worker_name".into(), json!(function_worker_name(shared, f)));
    if let Some(d) = &f.def.description {
        row.insert("description".into(), json!(d));
    }
    if let Some(m) = raw_value(&f.def.metadata) {
        row.insert("metadata".into(), m);
    }
    row.insert("kind".into(), json!(f.def.kind.as_str()));
    row.insert("replicas".into(), json!(f.owners.len()));
    Value::Object(row)
}

/// Rows of `engine::functions::list`, also the payload of `engine::functions-available`.
pub(crate) fn function_summaries(shared: &Shared, include_internal: bool) -> Vec<Value> {
    shared
        .functions
        .list(ListFilter::default())
        .iter()
        .filter(|f| include_internal || !hidden_function(f))
        .map(|f| summary(shared, f))
        .collect()
}

fn bindings_of_function(shared: &Shared, namespace: &str, function_id: &str) -> Vec<Value> {
    shared
        .bindings
        .list()
        .into_iter()
        .filter(|s| s.binding.function_id == function_id && s.binding.namespace == namespace)
        .map(|s| {
            json!({"id": s.binding.id, "trigger_type": s.binding.trigger_type,
                   "config": serde_json::from_str::<Value>(s.binding.config.get()).unwrap_or(Value::Null)})
        })
        .collect()
}

fn function_detail(shared: &Shared, f: &FunctionInfo) -> Value {
    let mut row = Map::new();
    row.insert("function_id".into(), json!(f.function_id));
    row.insert("namespace".into(), json!(f.namespace));
    row.insert("worker_name".into(), json!(function_worker_name(shared, f)));
    if let Some(d) = &f.def.description {
        row.insert("description".into(), json!(d));
    }
    if let Some(s) = raw_value(&f.def.request_format) {
        row.insert("request_schema".into(), s);
    }
    if let Some(s) = raw_value(&f.def.response_format) {
        row.insert("response_schema".into(), s);
    }
    if let Some(m) = raw_value(&f.def.metadata) {
        row.insert("metadata".into(), m);
    }
    row.insert("kind".into(), json!(f.def.kind.as_str()));
    row.insert(
        "workers".into(),
        json!(f.owners.iter().map(|o| o.to_string()).collect::<Vec<_>>()),
    );
    row.insert(
        "registered_triggers".into(),
        json!(bindings_of_function(shared, &f.namespace, &f.function_id)),
    );
    Value::Object(row)
}

#[derive(Deserialize)]
struct RegisterInput {
    // `_caller_worker_id` in the payload is never read: only the engine says who is calling
    // (`Call::caller_worker_id`). A payload's copy could be forged, e.g. through a queue.
    name: Option<String>,
    description: Option<String>,
    runtime: Option<String>,
    version: Option<String>,
    os: Option<String>,
    pid: Option<u64>,
    isolation: Option<String>,
    namespace: Option<String>,
    telemetry: Option<Box<serde_json::value::RawValue>>,
}

fn workers_register(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<RegisterInput>(&mut call) else {
        return;
    };
    let Some(worker_id) = call.caller_worker_id.as_deref().map(str::to_owned) else {
        call.reply.send(Outcome::failure(
            ErrorCode::DeserializationError,
            "engine::workers::register must be called by a worker over its own connection \
             (not through a queue, a trigger or the host)",
        ));
        return;
    };
    let Some(ws) = shared.conns.get(worker_id.as_str()).map(|w| w.clone()) else {
        call.reply.send(Outcome::failure(
            ErrorCode::NotFound,
            format!("no connected worker {worker_id}"),
        ));
        return;
    };
    let metadata = WorkerMetadata {
        name: input.name,
        description: input.description,
        runtime: input.runtime,
        version: input.version,
        os: input.os,
        pid: input.pid,
        isolation: input.isolation,
        namespace: input.namespace,
        telemetry: input.telemetry,
    };
    let registered = register_reclaiming(shared, &worker_id, metadata.clone());
    if let Err(Error::WorkerConflict { owner, .. }) = &registered {
        let holder = shared.conns.get(owner.as_str()).map(|w| w.clone());
        if let (Some(holder), Ok(runtime)) = (holder, tokio::runtime::Handle::try_current()) {
            // The name's holder looks alive. A worker that crashed (SIGKILL, OOM) and came
            // straight back reconnects before the engine, busy on a loaded machine, has read the
            // end of its old socket: give the holder a bounded time to turn out closed before
            // the name is refused (docs/protocol.md 1.5). A live duplicate is refused after it.
            let shared = shared.clone();
            runtime.spawn(async move {
                let _ = tokio::time::timeout(NAME_RECLAIM_WAIT, holder.conn.closed()).await;
                if ws.conn.is_closed() {
                    return;
                }
                let registered = register_reclaiming(&shared, &worker_id, metadata);
                answer_registration(&shared, &ws, &worker_id, registered, call);
            });
            return;
        }
    }
    answer_registration(shared, &ws, &worker_id, registered, call);
}

/// How long a worker's registration waits for the live-looking holder of its name to close
/// before the name is refused.
// NOTE: tests/test_queue_chaos.py restarts SIGKILLed consumers at once under the same name; in
// two full runs on this 2-core machine under a helper's load, a restarted consumer was refused
// (WORKER_NAMESPACE_CONFLICT) because the engine had not yet read its old socket's end. The
// 3 s bound is not measured: it is far above any scheduling delay seen here and delays only a
// genuine duplicate's refusal.
const NAME_RECLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Registers `metadata` for `worker_id`; a name held by a connection that is closed but not yet
/// cleaned up (its teardown runs late on a loaded machine) is taken over after that cleanup, as
/// for a reattach (docs/protocol.md 1.5).
fn register_reclaiming(
    shared: &Arc<Shared>,
    worker_id: &str,
    metadata: WorkerMetadata,
) -> crate::Result<WorkerInfo> {
    let registered = shared.workers.register(worker_id, metadata.clone());
    if let Err(Error::WorkerConflict { owner, .. }) = &registered {
        let previous = shared.conns.get(owner.as_str()).map(|w| w.clone());
        if let Some(previous) = previous.filter(|p| p.conn.is_closed()) {
            info!(worker = %worker_id, previous = %owner, "worker name held by a closed connection: cleaning it up first");
            shared.cleanup(&previous);
            // Its cleanup may be running elsewhere: wait until it is over.
            drop(lock(&shared.registrations));
            return shared.workers.register(worker_id, metadata);
        }
    }
    registered
}

/// Answers `engine::workers::register`: the stored info, or the refusal of a name in use (which
/// also closes the connection, as iii does).
fn answer_registration(
    shared: &Arc<Shared>,
    ws: &Arc<WorkerState>,
    worker_id: &str,
    registered: crate::Result<WorkerInfo>,
    call: Call,
) {
    match registered {
        Ok(info) => {
            info!(
                worker = %worker_id,
                name = %info.name().unwrap_or(""),
                namespace = %info.namespace,
                runtime = %info.metadata.as_ref().and_then(|m| m.runtime.as_deref()).unwrap_or(""),
                "worker registered"
            );
            shared.resolve_namespace(ws, &info.namespace);
            shared.fire_workers_available("worker_metadata_updated", worker_id);
            call.reply.send(Outcome::json(&json!({"success": true})));
        }
        Err(Error::WorkerConflict {
            namespace,
            name,
            owner,
        }) => {
            reject_worker(ws, &namespace, &name, &owner);
            call.reply.send(Outcome::failure(
                ErrorCode::WorkerNamespaceConflict,
                format!("worker '{name}' is already connected in namespace '{namespace}'"),
            ));
        }
        Err(e) => call
            .reply
            .send(Outcome::failure(e.error_code(), e.to_string())),
    }
}

fn reject_worker(ws: &WorkerState, namespace: &str, name: &str, owner: &str) {
    info!(worker = %ws.conn.id(), name, namespace, owner, "worker name already in use: closing");
    let frame = Message::RegistrationRejected(RegistrationRejected {
        code: ErrorCode::WorkerNamespaceConflict.into(),
        namespace: namespace.to_owned(),
        worker_name: Some(name.to_owned()),
        owner_worker_id: owner.to_owned(),
        ..RegistrationRejected::default()
    });
    let _ = ws.conn.send(frame.encode());
    ws.conn.close(1008, "worker name already in use");
}

#[derive(Deserialize, Default)]
struct FunctionsListInput {
    search: Option<String>,
    prefix: Option<String>,
    worker: Option<String>,
    workers: Option<Vec<String>>,
    #[serde(default)]
    include_internal: bool,
}

fn matches_worker(shared: &Shared, f: &FunctionInfo, wanted: &[String]) -> bool {
    let name = function_worker_name(shared, f);
    wanted
        .iter()
        .any(|w| *w == name || f.owners.iter().any(|o| **o == **w))
}

fn functions_list(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<FunctionsListInput>(&mut call) else {
        return;
    };
    let mut wanted: Vec<String> = input.workers.unwrap_or_default();
    wanted.extend(input.worker);
    // A restricted connection sees what it may call, nothing more (docs/access-control.md).
    let viewer = shared.session_of(call.caller_worker_id.as_deref());
    let rows: Vec<Value> = shared
        .functions
        .list(ListFilter {
            prefix: input.prefix.as_deref(),
            search: input.search.as_deref(),
            ..ListFilter::default()
        })
        .iter()
        .filter(|f| input.include_internal || !hidden_function(f))
        .filter(|f| wanted.is_empty() || matches_worker(shared, f, &wanted))
        .filter(|f| viewer.as_ref().is_none_or(|s| shared.may_see(s, f)))
        .map(|f| summary(shared, f))
        .collect();
    call.reply
        .send(Outcome::json(&json!({ "functions": rows })));
}

#[derive(Deserialize)]
struct FunctionsInfoInput {
    function_id: Option<String>,
    function_ids: Option<Vec<String>>,
    namespace: Option<String>,
}

fn functions_info(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<FunctionsInfoInput>(&mut call) else {
        return;
    };
    let ns = input.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let viewer = shared.session_of(call.caller_worker_id.as_deref());
    // A function a restricted connection may not call is, to it, not there.
    let lookup = |id: &str| {
        shared
            .functions
            .lookup(ns, id)
            .filter(|f| viewer.as_ref().is_none_or(|s| shared.may_see(s, f)))
    };
    match (input.function_id, input.function_ids) {
        (Some(id), None) => match lookup(&id) {
            Some(f) => call.reply.send(Outcome::json(&function_detail(shared, &f))),
            None => not_found(call, format!("function {id} not found in namespace {ns}")),
        },
        (None, Some(ids)) if !ids.is_empty() && ids.len() <= 32 => {
            let rows: Vec<Value> = ids
                .iter()
                .map(|id| match lookup(id) {
                    Some(f) => function_detail(shared, &f),
                    None => json!({"function_id": id, "error": "not_found"}),
                })
                .collect();
            call.reply
                .send(Outcome::json(&json!({ "functions": rows })));
        }
        _ => call.reply.send(Outcome::failure(
            ErrorCode::InvalidArguments,
            "give either function_id or function_ids (1 to 32 ids)",
        )),
    }
}

fn worker_summary(shared: &Shared, w: &WorkerInfo) -> Value {
    let m = w.metadata.clone().unwrap_or_default();
    let function_count = shared
        .functions
        .list(ListFilter::default())
        .iter()
        .filter(|f| f.owners.contains(&w.id))
        .count();
    json!({
        "id": w.id.to_string(),
        "name": w.name().map(str::to_owned).unwrap_or_else(|| w.id.to_string()),
        "description": m.description,
        "version": m.version,
        "namespace": w.namespace,
        "runtime": m.runtime,
        "os": m.os,
        "pid": m.pid,
        "status": "connected",
        "function_count": function_count,
        "connected_at_ms": w.connected_at_ms,
        "active_invocations": shared.pending_for_worker(&w.id),
        "isolation": m.isolation,
        "ip_address": w.remote_addr.as_deref().map(|a| a.rsplit_once(':').map_or(a, |(ip, _)| ip)),
        "telemetry": raw_value(&m.telemetry),
    })
}

fn engine_row(shared: &Shared) -> Value {
    let function_count = shared
        .functions
        .list(ListFilter::default())
        .iter()
        .filter(|f| f.owners.iter().any(|o| super::is_in_process_owner(o)))
        .count();
    json!({
        "id": ENGINE_OWNER,
        "name": ENGINE_WORKER_NAME,
        "description": "fnmesh built-in functions",
        "version": env!("CARGO_PKG_VERSION"),
        "namespace": DEFAULT_NAMESPACE,
        "runtime": "engine",
        "os": std::env::consts::OS,
        "status": "available",
        "function_count": function_count,
        "connected_at_ms": 0,
        "active_invocations": 0,
        "isolation": "in-process",
        "ip_address": null,
    })
}

#[derive(Deserialize, Default)]
struct WorkersListInput {
    search: Option<String>,
    runtime: Option<String>,
    status: Option<String>,
}

fn workers_list(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<WorkersListInput>(&mut call) else {
        return;
    };
    let mut rows: Vec<Value> = shared
        .workers
        .list()
        .iter()
        .filter(|w| w.metadata.as_ref().is_some_and(|m| m.pid.is_some()))
        .map(|w| worker_summary(shared, w))
        .collect();
    rows.push(engine_row(shared));
    let field = |row: &Value, key: &str| row[key].as_str().unwrap_or("").to_owned();
    rows.retain(|row| {
        input
            .runtime
            .as_deref()
            .is_none_or(|r| field(row, "runtime") == r)
            && input
                .status
                .as_deref()
                .is_none_or(|s| field(row, "status") == s)
            && input.search.as_deref().is_none_or(|s| {
                let s = s.to_lowercase();
                field(row, "name").to_lowercase().contains(&s) || field(row, "id").contains(&s)
            })
    });
    rows.sort_by(|a, b| {
        (field(a, "name"), field(a, "id")).cmp(&(field(b, "name"), field(b, "id")))
    });
    call.reply.send(Outcome::json(&json!({ "workers": rows })));
}

#[derive(Deserialize)]
struct WorkersInfoInput {
    name: String,
    namespace: Option<String>,
}

fn workers_info(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<WorkersInfoInput>(&mut call) else {
        return;
    };
    let found: Vec<WorkerInfo> = shared
        .workers
        .list()
        .into_iter()
        .filter(|w| w.name() == Some(&input.name) || *w.id == *input.name)
        .filter(|w| {
            input
                .namespace
                .as_deref()
                .is_none_or(|ns| w.namespace == ns)
        })
        .collect();
    let [w] = found.as_slice() else {
        let why = if found.is_empty() {
            "not found"
        } else {
            "ambiguous: give a namespace"
        };
        return not_found(call, format!("worker {}: {why}", input.name));
    };
    let mut worker = worker_summary(shared, w);
    worker["internal"] = json!(false);
    let functions: Vec<Value> = shared
        .functions
        .list(ListFilter::default())
        .iter()
        .filter(|f| f.owners.contains(&w.id))
        .map(|f| summary(shared, f))
        .collect();
    let trigger_types: Vec<Value> = shared
        .trigger_types
        .list()
        .iter()
        .filter(|t| t.owner == w.id)
        .map(|t| trigger_summary(shared, t))
        .collect();
    let registered: Vec<Value> = shared
        .bindings
        .list()
        .iter()
        .filter(|s| s.binding.owner.as_ref() == Some(&w.id))
        .map(|s| binding_row(shared, s))
        .collect();
    call.reply.send(Outcome::json(&json!({
        "worker": worker, "functions": functions, "trigger_types": trigger_types,
        "registered_triggers": registered,
    })));
}

fn trigger_worker_name(shared: &Shared, t: &TriggerType<Provider>) -> String {
    if &*t.owner == ENGINE_OWNER {
        return ENGINE_WORKER_NAME.to_owned();
    }
    owner_name(shared, &t.owner, &t.id)
}

fn trigger_summary(shared: &Shared, t: &TriggerType<Provider>) -> Value {
    json!({"id": t.id, "namespace": t.namespace, "worker_name": trigger_worker_name(shared, t),
           "description": t.description})
}

fn trigger_detail(shared: &Shared, t: &TriggerType<Provider>) -> Value {
    let instances = shared.bindings.active_for(&t.namespace, &t.id).len();
    let mut row = trigger_summary(shared, t);
    if let Some(s) = raw_value(&t.trigger_request_format) {
        row["configuration_schema"] = s;
    }
    if let Some(s) = raw_value(&t.call_request_format) {
        row["request_schema"] = s;
    }
    row["instance_count"] = json!(instances);
    row
}

#[derive(Deserialize, Default)]
struct TriggersListInput {
    search: Option<String>,
    prefix: Option<String>,
    worker: Option<String>,
    #[serde(default)]
    include_internal: bool,
}

fn triggers_list(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<TriggersListInput>(&mut call) else {
        return;
    };
    let rows: Vec<Value> = shared
        .trigger_types
        .list()
        .iter()
        .filter(|t| input.include_internal || !t.id.starts_with("engine::"))
        .filter(|t| input.prefix.as_deref().is_none_or(|p| t.id.starts_with(p)))
        .filter(|t| {
            input.search.as_deref().is_none_or(|s| {
                let s = s.to_lowercase();
                t.id.to_lowercase().contains(&s) || t.description.to_lowercase().contains(&s)
            })
        })
        .filter(|t| {
            input
                .worker
                .as_deref()
                .is_none_or(|w| trigger_worker_name(shared, t) == w || &*t.owner == w)
        })
        .map(|t| trigger_summary(shared, t))
        .collect();
    call.reply.send(Outcome::json(&json!({ "triggers": rows })));
}

#[derive(Deserialize)]
struct IdInput {
    id: String,
    namespace: Option<String>,
}

fn triggers_info(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<IdInput>(&mut call) else {
        return;
    };
    let ns = input.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    match shared.trigger_types.get(ns, &input.id) {
        Some(t) => call.reply.send(Outcome::json(&trigger_detail(shared, &t))),
        None => not_found(
            call,
            format!("trigger type {} not found in namespace {ns}", input.id),
        ),
    }
}

fn config_summary(config: &Value) -> String {
    match config {
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_object() && !v.is_array() && !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn binding_worker_name(shared: &Shared, b: &TriggerBinding) -> String {
    match &b.owner {
        Some(owner) => owner_name(shared, owner, &b.function_id),
        None => ENGINE_WORKER_NAME.to_owned(),
    }
}

fn binding_row(shared: &Shared, slot: &BindingSlot) -> Value {
    let b = &slot.binding;
    let config: Value = serde_json::from_str(b.config.get()).unwrap_or(Value::Null);
    json!({"id": b.id, "trigger_type": b.trigger_type, "function_id": b.function_id,
           "namespace": b.namespace, "worker_name": binding_worker_name(shared, b),
           "config_summary": config_summary(&config), "config": config,
           "status": if slot.state == BindingState::Pending { "pending" } else { "active" }})
}

#[derive(Deserialize, Default)]
struct RegisteredListInput {
    search: Option<String>,
    trigger_type: Option<String>,
    function_id: Option<String>,
    worker: Option<String>,
    #[serde(default)]
    include_internal: bool,
}

fn registered_list(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<RegisteredListInput>(&mut call) else {
        return;
    };
    let rows: Vec<Value> = shared
        .bindings
        .list()
        .iter()
        .filter(|s| s.state != BindingState::Pending)
        .filter(|s| input.include_internal || !s.binding.function_id.starts_with("engine::"))
        .filter(|s| {
            input
                .trigger_type
                .as_deref()
                .is_none_or(|t| s.binding.trigger_type == t)
        })
        .filter(|s| {
            input
                .function_id
                .as_deref()
                .is_none_or(|f| s.binding.function_id == f)
        })
        .filter(|s| {
            input.worker.as_deref().is_none_or(|w| {
                binding_worker_name(shared, &s.binding) == w
                    || s.binding.owner.as_deref() == Some(w)
            })
        })
        .filter(|s| {
            input.search.as_deref().is_none_or(|q| {
                let q = q.to_lowercase();
                s.binding.id.to_lowercase().contains(&q)
                    || s.binding.function_id.to_lowercase().contains(&q)
                    || s.binding.trigger_type.to_lowercase().contains(&q)
            })
        })
        .map(|s| binding_row(shared, s))
        .collect();
    call.reply
        .send(Outcome::json(&json!({ "registered_triggers": rows })));
}

fn registered_info(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<IdInput>(&mut call) else {
        return;
    };
    let Some(slot) = shared.bindings.get(&input.id) else {
        return not_found(call, format!("trigger {} not found", input.id));
    };
    let b = &slot.binding;
    let mut row = binding_row(shared, &slot);
    if let Some(m) = raw_value(&b.metadata) {
        row["metadata"] = m;
    }
    let provider_ns = match &slot.state {
        BindingState::Active { provider_namespace } => provider_namespace.as_str(),
        BindingState::Pending => b.trigger_namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
    };
    row["trigger"] = shared
        .trigger_types
        .get(provider_ns, &b.trigger_type)
        .map_or(Value::Null, |t| trigger_detail(shared, &t));
    row["function"] = shared
        .functions
        .lookup(&b.namespace, &b.function_id)
        .map_or(Value::Null, |f| function_detail(shared, &f));
    call.reply.send(Outcome::json(&row));
}

#[derive(Deserialize)]
struct RegisterTriggerInput {
    trigger_type: String,
    function_id: String,
    config: Option<Box<serde_json::value::RawValue>>,
    metadata: Option<Box<serde_json::value::RawValue>>,
    trigger_namespace: Option<String>,
}

fn register_trigger(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<RegisterTriggerInput>(&mut call) else {
        return;
    };
    let binding = TriggerBinding {
        id: uuid::Uuid::new_v4().to_string(),
        trigger_type: input.trigger_type,
        function_id: input.function_id,
        namespace: DEFAULT_NAMESPACE.to_owned(),
        trigger_namespace: input.trigger_namespace,
        config: input
            .config
            .unwrap_or_else(|| serde_json::value::RawValue::NULL.to_owned()),
        metadata: input.metadata,
        owner: None,
        origin_namespace: DEFAULT_NAMESPACE.to_owned(),
    };
    let shared = shared.clone();
    // The provider may take its time to accept (a worker, up to `trigger_ack_timeout`).
    tokio::spawn(async move {
        match shared.bind(binding).await {
            Ok(id) => call.reply.send(Outcome::json(&json!({ "id": id }))),
            Err(e) => call.reply.send(Outcome::Failure(e)),
        }
    });
}

#[derive(Deserialize)]
struct UnregisterTriggerInput {
    id: String,
}

fn unregister_trigger(shared: &Arc<Shared>, mut call: Call) {
    let Some(input) = parse::<UnregisterTriggerInput>(&mut call) else {
        return;
    };
    let removed = shared.unbind(&input.id);
    call.reply
        .send(Outcome::json(&json!({ "removed": removed })));
}

/// `engine::channels::create` `{"buffer_size"?: n}`: a channel owned by the calling worker (it
/// goes when the worker leaves), `{"writer": ref, "reader": ref}`.
fn channels_create(shared: &Arc<Shared>, mut call: Call) {
    #[derive(Deserialize, Default)]
    struct Input {
        buffer_size: Option<usize>,
    }
    let input = if call.data.get() == "null" {
        Input::default()
    } else {
        match call.parse::<Input>() {
            Some(input) => input,
            None => return,
        }
    };
    let size = input
        .buffer_size
        .unwrap_or(crate::channels::DEFAULT_BUFFER_ITEMS);
    let outcome = match shared.channels.create(size, call.caller_worker_id.clone()) {
        Ok((writer, reader)) => Outcome::json(&json!({"writer": writer, "reader": reader})),
        Err(e) => Outcome::failure(ErrorCode::InvocationFailed, e.to_string()),
    };
    call.reply.send(outcome);
}
