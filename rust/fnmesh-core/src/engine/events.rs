//! Events: the engine's own trigger types, `engine::functions-available` (fired when the set of
//! functions changes, at most once per `functions_available_interval`) and
//! `engine::workers-available` (fired when workers connect, leave or describe themselves).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::state::{lock, Shared};
use super::{FUNCTIONS_AVAILABLE, WORKERS_AVAILABLE};
use crate::function::CallOptions;
use crate::registry::DEFAULT_NAMESPACE;

impl Shared {
    /// Fires `engine::workers-available` with `event` (`worker_connected`, ...) for `worker_id`.
    pub(crate) fn fire_workers_available(&self, event: &str, worker_id: &str) {
        self.fire_builtin_type(
            WORKERS_AVAILABLE,
            || serde_json::json!({"event": event, "worker_id": worker_id}),
        );
    }

    /// Invokes every function bound to one of the engine's own trigger types with `payload`
    /// (built only when something is bound).
    fn fire_builtin_type(&self, trigger_type: &str, payload: impl FnOnce() -> serde_json::Value) {
        let slots = self.bindings.active_for(DEFAULT_NAMESPACE, trigger_type);
        if slots.is_empty() {
            return;
        }
        let Ok(payload) = serde_json::value::to_raw_value(&payload()) else {
            return;
        };
        for slot in slots {
            let b = &slot.binding;
            let options = CallOptions {
                namespace: Some(b.namespace.clone()),
                metadata: b.metadata.clone(),
                ..CallOptions::default()
            };
            self.fire(&b.function_id, payload.clone(), options);
        }
    }

    /// The set of functions changed: fires `engine::functions-available`, at most once per
    /// `functions_available_interval` (changes in between are folded into the next fire).
    pub(super) fn functions_changed(&self) {
        if self.fn_change_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let interval = self.config.functions_available_interval;
        let wait = lock(&self.fn_last_fire).map_or(Duration::ZERO, |last| {
            interval.saturating_sub(last.elapsed())
        });
        let me = self.me.clone();
        let fire = move || {
            if let Some(shared) = me.upgrade() {
                shared.fn_change_scheduled.store(false, Ordering::Release);
                *lock(&shared.fn_last_fire) = Some(Instant::now());
                shared.fire_functions_available();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(wait).await;
                    fire();
                });
            }
            Err(_) => fire(),
        }
    }

    fn fire_functions_available(&self) {
        self.fire_builtin_type(FUNCTIONS_AVAILABLE, || {
            let functions = super::builtins::function_summaries(self, true);
            serde_json::json!({"event": "functions_changed", "functions": functions})
        });
    }
}
