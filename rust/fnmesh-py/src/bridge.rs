//! The bridge between tokio and one asyncio event loop (docs/architecture.md, "The hot path").
//!
//! tokio tasks never attach to Python. Work for Python goes on a channel: invocations of Python
//! handlers, and the outcomes of calls Python is awaiting. One bridge thread blocks on that
//! channel without the GIL, drains everything that is ready, takes the GIL once for the whole
//! batch and schedules one `dispatch(batch)` on the loop with `call_soon_threadsafe`. Python
//! answers an invocation through [`Invocation::succeed`] / [`Invocation::fail`], which hand the
//! outcome straight to the engine's reply slot (no asyncio round trip, no GIL needed by tokio).

use std::sync::Mutex;
use std::thread::JoinHandle;

use fnmesh_core::function::{Call, NativeFunction, Outcome, Reply};
use fnmesh_core::protocol::{ErrorBody, RawJson};
use fnmesh_core::registry::FunctionDef;
use fnmesh_core::triggers::TriggerSpec;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::errors::InvalidArgument;

/// What the bridge thread hands to Python.
pub(crate) enum Work {
    /// A call of a Python handler.
    Invoke(Call),
    /// The engine gave up on this invocation of a Python handler: its task is cancelled.
    Abandon(String),
    /// The outcome of a call Python is awaiting through `future`.
    Done { future: Py<PyAny>, outcome: Outcome },
    /// A binding for (or withdrawn from) a trigger type implemented in Python.
    Trigger(crate::triggers::TriggerEvent),
    /// A worker's registration of an external function, for Python to check.
    External(crate::external::ExternalEvent),
    /// A call of an external function, for `handler`.
    InvokeExternal {
        call: Call,
        handler: std::sync::Arc<Py<PyAny>>,
    },
    /// Ends the bridge thread.
    Stop,
}

// NOTE: docs/architecture.md, "The batching bridge", measures ~100 us p50 to wake an idle asyncio loop from another thread and
// ~6 us per `call_soon`, so the loop is woken once per batch, not once per item. The cap only
// bounds how long one dispatch can hold the loop; it is not tuned by measurement yet.
const MAX_BATCH: usize = 1024;

/// Sends work to a bridge; cloned into every Python function and trigger type registered with
/// the engine.
#[derive(Clone)]
pub(crate) struct BridgeSender(mpsc::UnboundedSender<Work>);

impl BridgeSender {
    /// Queues `work`; when the bridge is closed the work is dropped (an invocation's dropped
    /// reply fails its call, a dropped future is never completed).
    pub(crate) fn send(&self, work: Work) {
        let _ = self.0.send(work);
    }
}

/// A Python handler as seen by the engine: calls are queued to the bridge.
pub(crate) struct PyFunction(pub(crate) BridgeSender);

impl NativeFunction for PyFunction {
    fn invoke(&self, call: Call) {
        self.0.send(Work::Invoke(call));
    }

    // Queued behind the call's own `Invoke` on the same channel, so Python always sees the call
    // before its abandonment.
    fn abandon(&self, invocation_id: &str) {
        self.0.send(Work::Abandon(invocation_id.to_owned()));
    }
}

/// The bridge between the engine's tokio runtime and one asyncio loop.
#[pyclass(frozen, module = "fnmesh._native", name = "Bridge")]
pub struct Bridge {
    tx: BridgeSender,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Bridge {
    pub(crate) fn sender(&self) -> BridgeSender {
        self.tx.clone()
    }
}

#[pymethods]
impl Bridge {
    /// Starts the bridge thread. `dispatch(batch)` is scheduled on `loop` (with
    /// `call_soon_threadsafe`) for every batch: a list whose items are `Invocation`s,
    /// the ids (`str`) of invocations the engine abandoned (their handlers should stop),
    /// `TriggerEvent`s, `ExternalEvent`s, `ExternalCall`s and `(future, result, error)` tuples, `result` being JSON bytes or `None`
    /// and `error` a `(code, message, stacktrace)` tuple or `None`.
    #[new]
    fn new(event_loop: Py<PyAny>, dispatch: Py<PyAny>) -> PyResult<Bridge> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("fnmesh-bridge".into())
            .spawn(move || run(rx, event_loop, dispatch))?;
        Ok(Bridge {
            tx: BridgeSender(tx),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the bridge thread after what is already queued. Work arriving later is dropped:
    /// invocations fail, awaited calls are never completed (cancel their futures first).
    fn close(&self, py: Python<'_>) {
        self.tx.send(Work::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            py.detach(move || {
                let _ = thread.join();
            });
        }
    }

    /// True until `close()`.
    #[getter]
    fn running(&self) -> bool {
        self.thread.lock().is_ok_and(|t| t.is_some())
    }
}

fn run(mut rx: mpsc::UnboundedReceiver<Work>, event_loop: Py<PyAny>, dispatch: Py<PyAny>) {
    let mut batch: Vec<Work> = Vec::with_capacity(64);
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        let mut stop = matches!(first, Work::Stop);
        if !stop {
            batch.push(first);
        }
        while !stop && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Work::Stop) => stop = true,
                Ok(work) => batch.push(work),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            Python::attach(|py| {
                if let Err(e) = hand_over(py, &event_loop, &dispatch, &mut batch) {
                    // The loop is closed: what was in the batch is dropped, which fails the
                    // invocations; nothing else can be done from here.
                    tracing::warn!("fnmesh bridge could not reach the event loop: {e}");
                }
                batch.clear();
            });
        }
        if stop {
            return;
        }
    }
}

fn hand_over(
    py: Python<'_>,
    event_loop: &Py<PyAny>,
    dispatch: &Py<PyAny>,
    batch: &mut Vec<Work>,
) -> PyResult<()> {
    let items = PyList::empty(py);
    for work in batch.drain(..) {
        match work {
            Work::Invoke(call) => items.append(Invocation::from_call(call))?,
            Work::Abandon(invocation_id) => items.append(invocation_id)?,
            Work::Done { future, outcome } => items.append(done_tuple(py, future, outcome)?)?,
            Work::Trigger(event) => items.append(event)?,
            Work::External(event) => items.append(event)?,
            Work::InvokeExternal { call, handler } => {
                items.append(crate::external::ExternalCall::new(py, call, &handler)?)?
            }
            Work::Stop => {}
        }
    }
    event_loop.call_method1(py, "call_soon_threadsafe", (dispatch.clone_ref(py), items))?;
    Ok(())
}

fn done_tuple<'py>(
    py: Python<'py>,
    future: Py<PyAny>,
    outcome: Outcome,
) -> PyResult<Bound<'py, PyTuple>> {
    match outcome {
        Outcome::Success(result) => {
            let result = result.map(|raw| PyBytes::new(py, raw.get().as_bytes()));
            PyTuple::new(
                py,
                [
                    future.into_bound(py),
                    result.into_pyobject(py)?.into_any(),
                    py.None().into_bound(py),
                ],
            )
        }
        Outcome::Failure(e) => {
            let error = (e.code, e.message, e.stacktrace).into_pyobject(py)?;
            PyTuple::new(
                py,
                [
                    future.into_bound(py),
                    py.None().into_bound(py),
                    error.into_any(),
                ],
            )
        }
    }
}

/// Parses JSON text handed over by Python; anything else is `InvalidArgument`.
pub(crate) fn raw_json(bytes: &[u8], what: &str) -> PyResult<RawJson> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| InvalidArgument::new_err(format!("{what} is not UTF-8")))?;
    RawValue::from_string(text.to_owned())
        .map_err(|e| InvalidArgument::new_err(format!("{what} is not JSON: {e}")))
}

/// A function's description for the engine, from what Python hands over (JSON text).
pub(crate) fn function_def(
    description: Option<String>,
    request_format: Option<&str>,
    response_format: Option<&str>,
    metadata: Option<&str>,
) -> PyResult<FunctionDef> {
    let json =
        |text: Option<&str>, what: &str| text.map(|t| raw_json(t.as_bytes(), what)).transpose();
    Ok(FunctionDef {
        description,
        request_format: json(request_format, "request_format")?,
        response_format: json(response_format, "response_format")?,
        metadata: json(metadata, "metadata")?,
        ..FunctionDef::default()
    })
}

/// A binding for the engine or the client, from what Python hands over (JSON text).
pub(crate) fn trigger_spec(
    trigger_type: String,
    function_id: String,
    config: &str,
    namespace: Option<String>,
    metadata: Option<&str>,
    id: Option<String>,
) -> PyResult<TriggerSpec> {
    Ok(TriggerSpec {
        id,
        trigger_type,
        function_id,
        config: raw_json(config.as_bytes(), "the trigger config")?,
        metadata: metadata
            .map(|m| raw_json(m.as_bytes(), "metadata"))
            .transpose()?,
        namespace,
        trigger_namespace: None,
    })
}

/// One call of a Python handler, handed to Python by the bridge. Answer it exactly once with
/// `succeed` or `fail`; an invocation dropped unanswered fails its call.
#[pyclass(frozen, module = "fnmesh._native", name = "Invocation")]
pub struct Invocation {
    #[pyo3(get)]
    invocation_id: String,
    #[pyo3(get)]
    function_id: String,
    #[pyo3(get)]
    namespace: String,
    data: RawJson,
    metadata: Option<RawJson>,
    #[pyo3(get)]
    traceparent: Option<String>,
    #[pyo3(get)]
    baggage: Option<String>,
    #[pyo3(get)]
    caller_worker_id: Option<String>,
    reply: Mutex<Option<Reply>>,
}

impl Invocation {
    pub(crate) fn from_call(call: Call) -> Invocation {
        Invocation {
            invocation_id: call.invocation_id.to_string(),
            function_id: call.function_id,
            namespace: call.namespace,
            data: call.data,
            metadata: call.metadata,
            traceparent: call.traceparent,
            baggage: call.baggage,
            caller_worker_id: call.caller_worker_id.map(|id| id.to_string()),
            reply: Mutex::new(Some(call.reply)),
        }
    }

    fn answer(&self, outcome: Outcome) -> bool {
        let reply = self.reply.lock().ok().and_then(|mut r| r.take());
        match reply {
            Some(reply) => {
                reply.send(outcome);
                true
            }
            None => false,
        }
    }
}

#[pymethods]
impl Invocation {
    /// The input as raw JSON bytes (`b"null"` when the caller sent none).
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.data.get().as_bytes())
    }

    /// The caller's metadata as raw JSON bytes, or `None`.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.metadata
            .as_ref()
            .map(|m| PyBytes::new(py, m.get().as_bytes()))
    }

    /// True once answered.
    #[getter]
    fn answered(&self) -> bool {
        self.reply.lock().map_or(true, |r| r.is_none())
    }

    /// Answers with a result (JSON bytes), or with no result (`None`). Returns False when the
    /// call was already answered. Raises `InvalidArgument` when `result` is not JSON.
    #[pyo3(signature = (result=None))]
    fn succeed(&self, result: Option<&[u8]>) -> PyResult<bool> {
        let result = result.map(|r| raw_json(r, "the result")).transpose()?;
        Ok(self.answer(Outcome::Success(result)))
    }

    /// Answers many invocations with their results at once: `answers` is a list of
    /// `(invocation, result)` pairs as for `succeed`. Returns how many were answered (the
    /// others had been answered already). Raises `InvalidArgument` for a result that is not
    /// JSON; the pairs before it are answered.
    // NOTE: answering a dispatch batch's results back to back, instead of one `succeed` per
    // handler as it finished, took the worker's client thread from 38% to 32% of a core at
    // ~100k echo calls/s (benches/python_worker.py setup, C=64): fewer wakes of its writer.
    #[staticmethod]
    fn succeed_all(answers: &Bound<'_, PyList>) -> PyResult<usize> {
        let mut answered = 0;
        for item in answers.iter() {
            let (invocation, result): (PyRef<'_, Invocation>, Option<Bound<'_, PyBytes>>) =
                item.extract()?;
            if invocation.succeed(result.as_ref().map(|r| r.as_bytes()))? {
                answered += 1;
            }
        }
        Ok(answered)
    }

    /// Answers with a failure. Returns False when the call was already answered.
    #[pyo3(signature = (code, message, stacktrace=None))]
    fn fail(&self, code: String, message: String, stacktrace: Option<String>) -> bool {
        self.answer(Outcome::Failure(ErrorBody {
            code,
            message,
            stacktrace,
        }))
    }

    fn __repr__(&self) -> String {
        format!(
            "Invocation(function_id={:?}, invocation_id={:?}, answered={})",
            self.function_id,
            self.invocation_id,
            self.answered()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Bridge>()?;
    m.add_class::<Invocation>()?;
    Ok(())
}
