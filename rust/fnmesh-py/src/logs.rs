//! The engine's log lines (Rust `tracing`), installed once per process by `init_logging`
//! (docs/observability.md, "Logs"), in one of three ways:
//! - `python` (an embedded engine): each line becomes a `logging.LogRecord` of a logger under
//!   `fnmesh` (`fnmesh_core::engine::session` -> `fnmesh.core.engine.session`), so the
//!   application configures them like any library's; the SDK gives `fnmesh` a `NullHandler`, so
//!   they are quiet until it does;
//! - `text` (`fnmesh serve`): readable lines on stderr;
//! - `json` (`fnmesh serve --log-format json`): one JSON object per line on stderr.
//!
//! No engine thread ever calls into Python: a line that passes the `log_level` filter (checked
//! by `tracing` at the call site, before anything is formatted) is formatted and queued on a
//! bounded channel; one forwarding thread takes the GIL once per batch, asks each logger
//! `isEnabledFor` and hands it the records that pass. A full queue drops lines (counted, and
//! reported with the next batch that gets through) rather than block the engine.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::errors::InvalidArgument;

/// Lines waiting for the forwarding thread; past it, lines are dropped.
const QUEUE_LINES: usize = 8192;
/// Lines handed to Python per GIL acquisition at most.
const BATCH_LINES: usize = 256;

/// Registers `init_logging` on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    Ok(())
}

/// Installs the engine's logger, filtered by `level` (an `env_logger`-style filter such as
/// `"info"` or `"fnmesh_core=debug"`), writing `format`: `python`, `text` or `json`. Only the
/// first call in a process installs it; later calls return False.
#[pyfunction]
#[pyo3(signature = (level = "info", format = "text"))]
fn init_logging(level: &str, format: &str) -> PyResult<bool> {
    let filter = EnvFilter::try_new(level)
        .map_err(|e| InvalidArgument::new_err(format!("bad log filter {level:?}: {e}")))?;
    let installed = match format {
        "text" => {
            // Colours only on a terminal: piped into a file or a collector, lines stay plain.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_target(false)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init()
                .is_ok()
        }
        "json" => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLines)
            .try_init()
            .is_ok(),
        "python" => {
            let (tx, rx) = sync_channel(QUEUE_LINES);
            let dropped = Arc::new(AtomicU64::new(0));
            let layer = ToPython {
                tx,
                dropped: dropped.clone(),
            };
            let installed = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init()
                .is_ok();
            if installed {
                std::thread::Builder::new()
                    .name("fnmesh-logs".into())
                    .spawn(move || forward(rx, dropped))
                    .map_err(|e| {
                        InvalidArgument::new_err(format!("cannot start the log thread: {e}"))
                    })?;
            }
            installed
        }
        other => {
            return Err(InvalidArgument::new_err(format!(
                "log format must be \"python\", \"text\" or \"json\", not {other:?}"
            )))
        }
    };
    Ok(installed)
}

/// One log line, formatted on the thread that logged it.
struct Line {
    level: Level,
    target: &'static str,
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Line {
    fn of(event: &Event<'_>) -> Line {
        let meta = event.metadata();
        let mut line = Line {
            level: *meta.level(),
            target: meta.target(),
            message: String::new(),
            fields: Vec::new(),
        };
        event.record(&mut line);
        line
    }

    /// The message followed by its fields as `key=value`, as the text format writes them.
    fn text(&self) -> String {
        let mut text = self.message.clone();
        for (key, value) in &self.fields {
            let _ = write!(text, " {key}={value}");
        }
        text
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && self.message.is_empty() {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && self.message.is_empty() {
            self.message = format!("{value:?}");
        } else {
            self.fields.push((field.name(), format!("{value:?}")));
        }
    }
}

/// `logging`'s number for a `tracing` level.
fn levelno(level: Level) -> u8 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// The `fnmesh` logger a target logs under: `fnmesh_core::queue::service` ->
/// `fnmesh.core.queue.service`; the binding's own lines under `fnmesh.native`; a dependency's
/// (`hyper::proto`) under `fnmesh.deps.hyper.proto`.
fn logger_name(target: &str) -> String {
    let (head, rest) = target.split_once("::").unwrap_or((target, ""));
    let mut name = match head {
        "fnmesh_core" => "fnmesh.core".to_owned(),
        "_native" | "fnmesh_py" => "fnmesh.native".to_owned(),
        other => format!("fnmesh.deps.{other}"),
    };
    for part in rest.split("::").filter(|p| !p.is_empty()) {
        name.push('.');
        name.push_str(part);
    }
    name
}

struct ToPython {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

impl<S: Subscriber> Layer<S> for ToPython {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        match self.tx.try_send(Line::of(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The forwarding thread: batches of lines to Python `logging`.
fn forward(rx: Receiver<Line>, dropped: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH_LINES);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH_LINES {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        Python::attach(|py| {
            if let Err(e) = hand_over(py, &mut batch, lost) {
                // Logging itself failed (a handler raised): nothing better to tell than stderr.
                e.print(py);
            }
        });
        batch.clear();
    }
}

fn hand_over(py: Python<'_>, batch: &mut Vec<Line>, lost: u64) -> PyResult<()> {
    let logging = py.import("logging")?;
    let get_logger = logging.getattr("getLogger")?;
    if lost > 0 {
        let logger = get_logger.call1(("fnmesh.native",))?;
        logger.call_method1(
            "warning",
            (format!(
                "{lost} engine log line(s) dropped: the log queue was full"
            ),),
        )?;
    }
    for line in batch.drain(..) {
        let name = logger_name(line.target);
        let logger = get_logger.call1((name.as_str(),))?;
        let level = levelno(line.level);
        if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            continue;
        }
        let fields = PyDict::new(py);
        for (key, value) in &line.fields {
            fields.set_item(*key, value)?;
        }
        let extra = PyDict::new(py);
        extra.set_item("fnmesh", fields)?;
        let record = logger.call_method1(
            "makeRecord",
            (
                name.as_str(),
                level,
                line.target,
                0,
                line.text(),
                PyTuple::empty(py),
                py.None(),
                py.None(),
                extra,
            ),
        )?;
        logger.call_method1("handle", (record,))?;
    }
    Ok(())
}

/// `--log-format json`: one object per line on stderr, `{"ts", "level", "target", "message",
/// ...fields}` (`ts` in seconds since the Unix epoch).
struct JsonLines;

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let line = Line::of(event);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut object = serde_json::Map::new();
        object.insert("ts".into(), serde_json::json!(ts));
        object.insert("level".into(), line.level.as_str().into());
        object.insert("target".into(), line.target.into());
        object.insert("message".into(), line.message.into());
        for (key, value) in line.fields {
            object.insert(key.into(), value.into());
        }
        let mut text = serde_json::Value::Object(object).to_string();
        text.push('\n');
        // One write per line, so lines from several threads never interleave.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}
