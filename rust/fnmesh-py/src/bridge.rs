//! The bridge between tokio and one asyncio event loop (docs/architecture.md, "The batching
//! bridge").
//!
//! tokio tasks never attach to Python. Work for Python goes on a channel: invocations of Python
//! handlers, and the outcomes of calls Python is awaiting. The loop itself watches a wake socket
//! (`loop.add_reader`): the first item queued while no wake is pending writes one byte to it, and
//! the loop, already on its thread and holding the GIL, drains what is queued (up to a batch cap)
//! and calls `dispatch(batch)` right there. No other thread takes the GIL on the way in. Python
//! answers an invocation through [`Invocation::succeed`] / [`Invocation::fail`], which hand the
//! outcome straight to the engine's reply slot (no asyncio round trip, no GIL needed by tokio).

#[cfg(unix)]
use std::io::{ErrorKind, Read, Write};
#[cfg(unix)]
use std::os::fd::AsRawFd;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fnmesh_core::driver::Driver;
use fnmesh_core::function::{Call, NativeFunction, Outcome, Reply};
use fnmesh_core::http::LoopHost;
use fnmesh_core::protocol::{ErrorBody, RawJson};
use fnmesh_core::registry::FunctionDef;
use fnmesh_core::triggers::TriggerSpec;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::engine::EngineHandle;
use crate::errors::InvalidArgument;

/// HTTP connections served on the loop's thread at most (`host_http`); past them, the runtime
/// serves (docs/architecture.md, "Requests on the loop's thread").
// NOTE: E4's app and load (`fnmesh-loadgen http`, 3 s runs, this build and the one before it in
// alternating rounds on one 2-core VM, issue 22): hosting every connection took 1 in flight from
// 6.3-6.9k to 8.8-9.3k req/s (p50 141-160 -> 101-107 µs) but 64 in flight from 28-31k to 15-17k
// req/s, the loop's thread parsing all 64. Capped at 1 the 64-in-flight rate stayed at the
// baseline's (27.7-29.1k vs 28.0-29.5k), at 4 it lost 3-5 %, at 16 about 20 %; 2 was within the
// noise of 1 and leaves a second pooled connection on the fast path.
const LOOP_HOSTED_CONNECTIONS: usize = 2;

/// What the bridge hands to Python.
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
}

// NOTE: docs/architecture.md, "The batching bridge": ~6 us per `call_soon` and a wake of the
// loop per batch, so the loop drains everything queued in one go. The cap only bounds how long
// one dispatch can hold the loop (the rest re-arms the wake and follows on the next turn); it is
// not tuned by measurement yet.
const MAX_BATCH: usize = 1024;

// NOTE: the loop watches this wake socket itself. Before, a bridge thread blocked on the channel,
// took the GIL, built the batch and woke the loop with `call_soon_threadsafe`: two thread wakes
// and a GIL hand-off per batch. A/B on the shared 2-core machine (issue 22; old wheel and this
// one alternated, the machine loaded by others, so single rounds swing):
// - E4 at C=1 alone (`fnmesh run benches/workers/fnmesh_http.py`, `fnmesh-loadgen http` 3 s),
//   11 rounds each: p50 median 158 -> 111 us (last 6 paired rounds: 153/193/186/158/127/198
//   -> 109/156/158/111/108/109 us, 5.1-6.6k -> 6.2-8.8k req/s); the server's voluntary context
//   switches 5.5-6.4 -> 3.3-5.6 per request, its CPU 119-177 -> 90-143 us per request.
// - benches/http_trigger.py --quick, fnmesh/FastAPI req/s at C=1 (C=64), 13 rounds each: old
//   1.26 (3.61), 1.51 (3.75), 1.25 (2.86), 1.29 (2.83), 1.09 (3.41), 1.41 (3.12), 1.37 (4.58),
//   1.09 (3.50), 1.09 (2.86), 0.96 (3.20), 1.15 (3.33), 0.84 (3.37), 0.92 (3.37): medians
//   1.15 (3.37), fnmesh p50 158 us; new 1.11 (3.98), 1.10 (3.84), 0.99 (4.34), 1.22 (3.29),
//   1.13 (2.94), 1.04 (3.59), 1.25 (3.16), 0.90 (3.08), 0.86 (2.64), 0.69 (3.07), 1.38 (3.24),
//   1.09 (3.23), 1.16 (2.59): medians 1.10 (3.23), p50 150 us. Noise: the ratio is a mean
//   over 2 s, FastAPI's p50 swung 168-193 us, the worst rounds had 1.3-3.6 ms p99s (both).
// - An embedded round trip (a call from the loop to a function on the same bridge: two
//   crossings), one at a time: p50 80-113 -> 38-48 us (asyncio and uvloop).
// - E2 worker (benches/workers/fnmesh_echo.py, 3 s): C=64 51-58k -> 65-73k calls/s; C=1
//   4.4-5.4k -> 4.8-6.7k calls/s at 62-95 instead of 104-136 us of worker CPU per call.
// - Spinning the HTTP task on its reply before parking (an experiment, not kept): 100 us takes
//   E4 C=1 from 3.7-5.5 to 3.0-3.1 context switches per request but costs 10-33 us more CPU per
//   request and no latency on 2 shared cores; 30 and 60 us changed nothing measurable. None of
//   it spins when idle (0-1 tick of CPU in 2 idle s either way).
// A Python model of the wake alone (a sender thread, an idle loop, p50 from send to callback;
// asyncio / uvloop): a socketpair byte 13 / 10 us, an eventfd 10 / 11 us, a thread woken that
// then calls `call_soon_threadsafe` 49 / 27 us. The two fds cost the same, so a socketpair:
// std, no unsafe code, every Unix.
/// Wakes the loop, only when no wake is pending.
struct Wake {
    /// True from a wake until the loop starts draining.
    armed: AtomicBool,
    /// `None` once the bridge is closed, so no write can reach a reused fd.
    signal: Mutex<Option<Signal>>,
}

/// How the loop is woken.
enum Signal {
    /// A byte on the socket the loop watches (`loop.add_reader`).
    #[cfg(unix)]
    Socket(UnixStream),
    /// A thread that schedules the drain with `call_soon_threadsafe`: for loops without
    /// `add_reader` (Windows' proactor loop), as the bridge worked before (see the NOTE above).
    Thread(std::sync::mpsc::Sender<()>),
}

impl Wake {
    fn ring(&self) {
        // Release: the loop's swap that clears the flag sees what was queued before it.
        if self.armed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(signal) = self.signal.lock() {
            match signal.as_ref() {
                // A full buffer (never, with one byte per arming) still leaves the loop woken.
                #[cfg(unix)]
                Some(Signal::Socket(writer)) => {
                    let mut writer: &UnixStream = writer;
                    let _ = writer.write(&[1]);
                }
                Some(Signal::Thread(tx)) => {
                    let _ = tx.send(());
                }
                None => {}
            }
        }
    }
}

/// Sends work to a bridge; cloned into every Python function and trigger type registered with
/// the engine.
#[derive(Clone)]
pub(crate) struct BridgeSender {
    tx: mpsc::UnboundedSender<Work>,
    wake: Arc<Wake>,
}

impl BridgeSender {
    /// Queues `work`; when the bridge is closed the work is dropped (an invocation's dropped
    /// reply fails its call, a dropped future is never completed).
    pub(crate) fn send(&self, work: Work) {
        if self.tx.send(work).is_ok() {
            self.wake.ring();
        }
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

/// The loop's side of a bridge.
struct Inner {
    rx: Mutex<mpsc::UnboundedReceiver<Work>>,
    wake: Arc<Wake>,
    /// What the loop watches; `None` once closed.
    reader: Mutex<Option<Watched>>,
    event_loop: Py<PyAny>,
    dispatch: Py<PyAny>,
    closed: AtomicBool,
    /// Serves HTTP connections on the loop's thread, once `host_http` set it up.
    driver: Mutex<Option<Arc<Driver>>>,
}

impl Inner {
    fn driver(&self) -> Option<Arc<Driver>> {
        self.driver.lock().ok().and_then(|d| d.clone())
    }

    /// On the loop, when the driver's descriptor is readable: runs the hosted connections
    /// whose sockets are ready, hands the invocations they queued to Python at once (no wake
    /// socket round), then runs the connections those answers woke.
    fn hosted(&self, py: Python<'_>) -> PyResult<()> {
        let Some(driver) = self.driver() else {
            return Ok(());
        };
        let entered = driver.enter();
        if self.closed.load(Ordering::Acquire) {
            driver.turn();
            return Ok(());
        }
        // Claims the wake: invocations the turn queues do not write the wake socket, they are
        // handed over below.
        self.wake.armed.swap(true, Ordering::AcqRel);
        driver.turn();
        self.wake.armed.swap(false, Ordering::AcqRel);
        let batch = self.take(MAX_BATCH);
        if batch.len() == MAX_BATCH {
            self.wake.ring();
        }
        let result = self.hand_over(py, batch);
        driver.run();
        drop(entered);
        result
    }

    /// On the loop: hands one batch over; once closed, everything queued, then removes the
    /// reader and closes the wake socket.
    fn ready(&self, py: Python<'_>) -> PyResult<()> {
        let Some(fd) = self.drain_wake() else {
            return Ok(());
        };
        // Cleared before draining: work queued from here on rings again (no lost wake-up).
        self.wake.armed.swap(false, Ordering::AcqRel);
        if !self.closed.load(Ordering::Acquire) {
            let batch = self.take(MAX_BATCH);
            if batch.len() == MAX_BATCH {
                self.wake.ring();
            }
            let Some(driver) = self.driver() else {
                return self.hand_over(py, batch);
            };
            // Handlers that answer within the batch wake hosted connections: they write their
            // responses before the loop moves on.
            let entered = driver.enter();
            let result = self.hand_over(py, batch);
            driver.run();
            drop(entered);
            return result;
        }
        let mut result = Ok(());
        loop {
            let batch = self.take(MAX_BATCH);
            if batch.is_empty() {
                break;
            }
            if let Err(e) = self.hand_over(py, batch) {
                result = result.and(Err(e));
            }
        }
        let loop_closed = self.loop_closed(py);
        if let (Some(fd), false) = (fd, loop_closed) {
            if let Err(e) = self.event_loop.call_method1(py, "remove_reader", (fd,)) {
                result = result.and(Err(e));
            }
        }
        if let Err(e) = self.unhost(py, loop_closed) {
            result = result.and(Err(e));
        }
        self.shut();
        result
    }

    /// Empties the wake socket. `None` when closed, else the fd the loop watches, if any.
    fn drain_wake(&self) -> Option<Option<i32>> {
        let reader = self.reader.lock().ok()?;
        match reader.as_ref()? {
            #[cfg(unix)]
            Watched::Socket(socket) => {
                let mut socket = socket;
                let mut buf = [0u8; 64];
                loop {
                    match socket.read(&mut buf) {
                        Ok(n) if n == buf.len() => continue,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        _ => break,
                    }
                }
                Some(Some(socket.as_raw_fd()))
            }
            Watched::Nothing => Some(None),
        }
    }

    fn take(&self, max: usize) -> Vec<Work> {
        let mut batch = Vec::new();
        if let Ok(mut rx) = self.rx.lock() {
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(work) => batch.push(work),
                    Err(_) => break,
                }
            }
        }
        batch
    }

    fn hand_over(&self, py: Python<'_>, batch: Vec<Work>) -> PyResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Only while the loop serves connections: other invocations then carry nothing more.
        let driver = self.driver().filter(|d| d.task_count() > 0);
        let items = PyList::empty(py);
        for work in batch {
            match work {
                Work::Invoke(call) => {
                    let mut invocation = Invocation::from_call(call);
                    invocation.driver = driver.clone();
                    items.append(invocation)?
                }
                Work::Abandon(invocation_id) => items.append(invocation_id)?,
                Work::Done { future, outcome } => items.append(done_tuple(py, future, outcome)?)?,
                Work::Trigger(event) => items.append(event)?,
                Work::External(event) => items.append(event)?,
                Work::InvokeExternal { call, handler } => {
                    items.append(crate::external::ExternalCall::new(py, call, &handler)?)?
                }
            }
        }
        self.dispatch.call1(py, (items,))?;
        Ok(())
    }

    /// Stops serving HTTP connections on the loop: the engine serves new ones again, the open
    /// ones close.
    fn unhost(&self, py: Python<'_>, loop_closed: bool) -> PyResult<()> {
        let Some(driver) = self.driver.lock().ok().and_then(|mut d| d.take()) else {
            return Ok(());
        };
        let mut result = Ok(());
        #[cfg(unix)]
        if !loop_closed {
            result = self
                .event_loop
                .call_method1(py, "remove_reader", (driver.fd(),))
                .map(drop);
        }
        let _ = (py, loop_closed);
        driver.close();
        result
    }

    fn loop_closed(&self, py: Python<'_>) -> bool {
        self.event_loop
            .call_method0(py, "is_closed")
            .and_then(|closed| closed.extract::<bool>(py))
            .unwrap_or(true)
    }

    /// Closes both ends of the wake socket (the writer under its lock: no write is in flight),
    /// or ends the waking thread.
    fn shut(&self) {
        if let Ok(mut signal) = self.wake.signal.lock() {
            signal.take();
        }
        if let Ok(mut reader) = self.reader.lock() {
            reader.take();
        }
    }
}

/// The callback the loop runs when the wake socket is readable.
#[pyclass(frozen, module = "fnmesh._native", name = "_BridgeReady")]
struct Ready(Arc<Inner>);

#[pymethods]
impl Ready {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        self.0.ready(py)
    }
}

/// The callback the loop runs when the HTTP driver's descriptor is readable.
#[pyclass(frozen, module = "fnmesh._native", name = "_BridgeHosted")]
struct Hosted(Arc<Inner>);

#[pymethods]
impl Hosted {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        self.0.hosted(py)
    }
}

/// The loop's end of the [`Signal`].
enum Watched {
    #[cfg(unix)]
    Socket(UnixStream),
    Nothing,
}

/// Watches a wake socket on the loop, or, when the loop has no `add_reader`, starts a thread
/// that schedules `ready` on it.
fn watch(py: Python<'_>, event_loop: &Py<PyAny>, ready: Py<Ready>) -> PyResult<(Signal, Watched)> {
    #[cfg(unix)]
    {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        match event_loop.call_method1(py, "add_reader", (reader.as_raw_fd(), ready.clone_ref(py))) {
            Ok(_) => return Ok((Signal::Socket(writer), Watched::Socket(reader))),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyNotImplementedError>(py) => {}
            Err(e) => return Err(e),
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let event_loop = event_loop.clone_ref(py);
    std::thread::Builder::new()
        .name("fnmesh-bridge".into())
        .spawn(move || wake_by_thread(rx, event_loop, ready))?;
    Ok((Signal::Thread(tx), Watched::Nothing))
}

/// Schedules `ready` on the loop for every ring, until the bridge closes (drops the sender).
fn wake_by_thread(rx: std::sync::mpsc::Receiver<()>, event_loop: Py<PyAny>, ready: Py<Ready>) {
    while rx.recv().is_ok() {
        while rx.try_recv().is_ok() {}
        Python::attach(|py| {
            let ready = ready.clone_ref(py);
            if let Err(e) = event_loop.call_method1(py, "call_soon_threadsafe", (ready,)) {
                // The loop is closed: what is queued stays until the bridge is dropped, which
                // fails the invocations.
                tracing::warn!("fnmesh bridge could not reach the event loop: {e}");
            }
        });
    }
    Python::attach(|_| drop((event_loop, ready)));
}

/// The bridge between the engine's tokio runtime and one asyncio loop.
#[pyclass(frozen, module = "fnmesh._native", name = "Bridge")]
pub struct Bridge {
    tx: BridgeSender,
    inner: Arc<Inner>,
}

impl Bridge {
    pub(crate) fn sender(&self) -> BridgeSender {
        self.tx.clone()
    }
}

#[pymethods]
impl Bridge {
    /// Watches a wake socket on `loop` (`loop.add_reader`; call this on the loop's thread).
    /// `dispatch(batch)` is called on the loop for every batch: a list whose items are
    /// `Invocation`s, the ids (`str`) of invocations the engine abandoned (their handlers should
    /// stop), `TriggerEvent`s, `ExternalEvent`s, `ExternalCall`s and `(future, result, error)`
    /// tuples, `result` being JSON bytes or `None` and `error` a `(code, message, stacktrace)`
    /// tuple or `None`. Work queued before the loop runs is dispatched once it runs.
    #[new]
    fn new(py: Python<'_>, event_loop: Py<PyAny>, dispatch: Py<PyAny>) -> PyResult<Bridge> {
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Wake {
            armed: AtomicBool::new(false),
            signal: Mutex::new(None),
        });
        let inner = Arc::new(Inner {
            rx: Mutex::new(rx),
            wake: wake.clone(),
            reader: Mutex::new(None),
            event_loop: event_loop.clone_ref(py),
            dispatch,
            closed: AtomicBool::new(false),
            driver: Mutex::new(None),
        });
        let ready = Py::new(py, Ready(inner.clone()))?;
        // On failure `inner` is dropped here, closing what was opened.
        let (signal, watched) = watch(py, &event_loop, ready)?;
        if let (Ok(mut slot), Ok(mut reader)) = (wake.signal.lock(), inner.reader.lock()) {
            *slot = Some(signal);
            *reader = Some(watched);
        }
        Ok(Bridge {
            tx: BridgeSender { tx, wake },
            inner,
        })
    }

    /// Stops the bridge after what is already queued: on the loop's thread that work is
    /// dispatched before `close` returns, from another thread on the loop's next turn. Work
    /// arriving later is dropped: invocations fail, awaited calls are never completed (cancel
    /// their futures first). When the loop is closed, what is queued is dropped too.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Ok(mut rx) = inner.rx.lock() {
            rx.close();
        }
        // Makes `ready` run even when nothing is pending.
        inner.wake.armed.store(true, Ordering::Release);
        let asyncio = py.import("asyncio")?;
        let running = asyncio.call_method0("_get_running_loop")?;
        if running.is(inner.event_loop.bind(py)) {
            return inner.ready(py);
        }
        let ready = Py::new(py, Ready(inner.clone()))?;
        if inner
            .event_loop
            .call_method1(py, "call_soon_threadsafe", (ready,))
            .is_err()
        {
            // The loop is closed: nothing can run what is queued.
            drop(inner.take(usize::MAX));
            inner.shut();
        }
        Ok(())
    }

    /// Serves the HTTP trigger's connections of `engine` on this loop's thread from now on
    /// (docs/architecture.md, "Requests on the loop's thread"): a request for a handler on this
    /// loop then crosses no thread. Call on the loop's thread. Returns False, and changes
    /// nothing, when the loop cannot watch a descriptor (`add_reader`) or the bridge is closed.
    /// Closing the bridge hands new connections back to the engine and closes those it served.
    fn host_http(&self, py: Python<'_>, engine: PyRef<'_, EngineHandle>) -> PyResult<bool> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        let asyncio = py.import("asyncio")?;
        let running = asyncio.call_method0("_get_running_loop")?;
        if !running.is(inner.event_loop.bind(py)) {
            return Err(InvalidArgument::new_err(
                "host_http must be called on the bridge's running event loop",
            ));
        }
        if inner.driver().is_some() {
            return Ok(true);
        }
        #[cfg(unix)]
        {
            let (runtime, _) = engine.live()?;
            let driver = Arc::new(Driver::new(runtime)?);
            let hosted = Py::new(py, Hosted(inner.clone()))?;
            match inner
                .event_loop
                .call_method1(py, "add_reader", (driver.fd(), hosted))
            {
                Ok(_) => {}
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyNotImplementedError>(py) => {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            }
            if let Ok(mut slot) = inner.driver.lock() {
                *slot = Some(driver.clone());
            }
            let host = LoopHost::new(driver.spawner(), LOOP_HOSTED_CONNECTIONS);
            engine.set_http_host(Some(Arc::new(host)))?;
            Ok(true)
        }
        #[cfg(not(unix))]
        {
            let _ = engine;
            Ok(false)
        }
    }

    /// HTTP connections served on this loop's thread now (see `host_http`).
    #[getter]
    fn hosted_connections(&self) -> usize {
        self.inner.driver().map_or(0, |d| d.task_count())
    }

    /// True until `close()`.
    #[getter]
    fn running(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
    }
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
    /// The loop's HTTP driver, when the bridge hosts connections: an answer given on the loop
    /// outside a bridge batch runs the connection it woke right away.
    driver: Option<Arc<Driver>>,
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
            driver: None,
        }
    }

    fn answer(&self, outcome: Outcome) -> bool {
        let reply = self.reply.lock().ok().and_then(|mut r| r.take());
        match reply {
            Some(reply) => {
                reply.send(outcome);
                self.run_woken();
                true
            }
            None => false,
        }
    }

    /// Runs the hosted connections the answer woke (a response to write), when answered on
    /// the loop's thread: no eventfd write and no further turn of the loop for it.
    // NOTE: on Python 3.11 a handler runs in a Task after the batch that started it, so its
    // answer comes outside the bridge's turn of the driver. Without this run the answer woke the
    // connection through the eventfd: a write, a wake of the loop's selector and a poll of the
    // driver more per request (strace of E4 at 1 in flight).
    fn run_woken(&self) {
        if let Some(driver) = &self.driver {
            if driver.has_ready() && driver.is_owner_thread() {
                let entered = driver.enter();
                driver.run();
                drop(entered);
            }
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
