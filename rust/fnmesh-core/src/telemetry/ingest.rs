//! Decoding what workers send on `/otel` (docs/protocol.md 1.6): a binary (or text) WebSocket
//! message made of a 4-byte prefix, `OTLP` (traces), `LOGS` or `MTRC` (metrics), then an OTLP
//! export request in OTLP/JSON, which becomes one [`Batch`] from [`Origin::Worker`] submitted
//! to the hub.
//!
//! A message that is not that (unknown prefix, not JSON, JSON nested deeper than serde_json's
//! limit of 128, not the request its prefix names) is counted ([`Telemetry::note_rejected`]),
//! logged at debug and dropped; the connection stays open. The frame size limit
//! (`max_frame_bytes`) applies before any of this.

use std::sync::Arc;

use serde_json::Value;
use tracing::debug;

use super::{Batch, Origin, Signal, Telemetry};
use crate::protocol::{telemetry_frame, TelemetryKind};

/// Why a `/otel` message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// It does not start with `OTLP`, `LOGS` or `MTRC`.
    #[error("not a telemetry message: unknown prefix")]
    UnknownPrefix,
    /// Its body is not JSON (or is nested too deep).
    #[error("not OTLP/JSON: {0}")]
    NotJson(String),
    /// Its body is JSON but not the export request its prefix names.
    #[error("not an OTLP export request: {0}")]
    WrongShape(&'static str),
}

/// Decodes one `/otel` message from `peer` into a batch.
pub fn decode(message: &[u8], peer: &str) -> Result<Batch, Rejected> {
    let (kind, body) = telemetry_frame(message).ok_or(Rejected::UnknownPrefix)?;
    let (signal, key) = match kind {
        TelemetryKind::Spans => (Signal::Traces, "resourceSpans"),
        TelemetryKind::Logs => (Signal::Logs, "resourceLogs"),
        TelemetryKind::Metrics => (Signal::Metrics, "resourceMetrics"),
    };
    let request: Value =
        serde_json::from_slice(body).map_err(|e| Rejected::NotJson(e.to_string()))?;
    let Some(object) = request.as_object() else {
        return Err(Rejected::WrongShape("the request is not a JSON object"));
    };
    match object.get(key) {
        Some(Value::Array(_)) | None => {}
        Some(_) => return Err(Rejected::WrongShape("its resource list is not an array")),
    }
    Ok(Batch {
        signal,
        origin: Origin::Worker(peer.to_owned()),
        request: Arc::new(request),
    })
}

/// Decodes one `/otel` message from `peer` and submits it to `hub`; a message that does not
/// decode is counted and dropped. Nothing is decoded while the hub has no sink.
pub fn ingest(hub: &Telemetry, peer: &str, message: &[u8]) {
    if !hub.has_sinks() {
        return;
    }
    match decode(message, peer) {
        Ok(batch) => hub.submit(batch),
        Err(e) => {
            hub.note_rejected();
            debug!(%peer, bytes = message.len(), "telemetry message dropped: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TelemetrySink;
    use std::sync::Mutex;

    #[test]
    fn the_three_prefixes_decode_into_their_signals() {
        let b = decode(br#"OTLP{"resourceSpans":[]}"#, "1.2.3.4:5").unwrap();
        assert_eq!(b.signal, Signal::Traces);
        assert_eq!(b.origin, Origin::Worker("1.2.3.4:5".into()));
        assert_eq!(
            decode(br#"LOGS{"resourceLogs":[]}"#, "p").unwrap().signal,
            Signal::Logs
        );
        assert_eq!(
            decode(br#"MTRC{"resourceMetrics":[]}"#, "p")
                .unwrap()
                .signal,
            Signal::Metrics
        );
        // An empty request is a valid (empty) export request.
        assert!(decode(b"LOGS{}", "p").is_ok());
    }

    #[test]
    fn malformed_messages_are_rejected_never_a_panic() {
        assert_eq!(decode(b"", "p").unwrap_err(), Rejected::UnknownPrefix);
        assert_eq!(decode(b"OTL", "p").unwrap_err(), Rejected::UnknownPrefix);
        assert_eq!(decode(b"XXXX{}", "p").unwrap_err(), Rejected::UnknownPrefix);
        assert!(matches!(decode(b"OTLP", "p"), Err(Rejected::NotJson(_))));
        assert!(matches!(
            decode(b"OTLP{\"resourceSpans\":[", "p"),
            Err(Rejected::NotJson(_))
        ));
        assert!(matches!(
            decode(b"OTLP\xff\xfe", "p"),
            Err(Rejected::NotJson(_))
        ));
        assert!(matches!(
            decode(b"LOGS[1,2]", "p"),
            Err(Rejected::WrongShape(_))
        ));
        assert!(matches!(
            decode(br#"MTRC{"resourceMetrics":{}}"#, "p"),
            Err(Rejected::WrongShape(_))
        ));
        // Nested past serde_json's limit: refused, not a stack overflow.
        let deep = format!("OTLP{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            decode(deep.as_bytes(), "p"),
            Err(Rejected::NotJson(_))
        ));
    }

    struct Count(Mutex<Vec<Signal>>);
    impl TelemetrySink for Count {
        fn name(&self) -> &str {
            "count"
        }
        fn accept(&self, batch: &Batch) {
            self.0.lock().unwrap().push(batch.signal);
        }
    }

    #[test]
    fn ingest_submits_good_messages_and_counts_the_rest() {
        let hub = Telemetry::default();
        ingest(&hub, "p", b"junk"); // no sink: not even decoded
        assert_eq!(hub.rejected(), 0);
        let sink = Arc::new(Count(Mutex::new(Vec::new())));
        hub.add_sink(sink.clone());
        ingest(&hub, "p", br#"LOGS{"resourceLogs":[]}"#);
        ingest(&hub, "p", b"junk");
        ingest(&hub, "p", b"MTRCnot json");
        assert_eq!(*sink.0.lock().unwrap(), [Signal::Logs]);
        assert_eq!(hub.rejected(), 2);
    }
}
