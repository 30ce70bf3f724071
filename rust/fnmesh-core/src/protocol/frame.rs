//! Frames the codec never decodes: blank ones and binary telemetry.

/// What a binary frame prefixed with `OTLP`, `MTRC` or `LOGS` carries (docs/protocol.md 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryKind {
    /// `OTLP`: spans.
    Spans,
    /// `MTRC`: metrics.
    Metrics,
    /// `LOGS`: logs.
    Logs,
}

/// Classifies a binary frame: `Some((kind, body))` for OTLP-JSON telemetry, `None` for a binary
/// frame that carries a protocol message.
pub fn telemetry_frame(frame: &[u8]) -> Option<(TelemetryKind, &[u8])> {
    let (prefix, body) = frame.split_at_checked(4)?;
    let kind = match prefix {
        b"OTLP" => TelemetryKind::Spans,
        b"MTRC" => TelemetryKind::Metrics,
        b"LOGS" => TelemetryKind::Logs,
        _ => return None,
    };
    Some((kind, body))
}

/// Whether a frame is empty or only whitespace (such frames are skipped, not decoded).
pub fn is_blank(frame: &[u8]) -> bool {
    frame.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_prefixes() {
        assert_eq!(
            telemetry_frame(b"OTLP{}"),
            Some((TelemetryKind::Spans, &b"{}"[..]))
        );
        assert_eq!(
            telemetry_frame(b"MTRC"),
            Some((TelemetryKind::Metrics, &b""[..]))
        );
        assert_eq!(
            telemetry_frame(b"LOGSx"),
            Some((TelemetryKind::Logs, &b"x"[..]))
        );
        assert_eq!(telemetry_frame(b"{\"type\":\"ping\"}"), None);
        assert_eq!(telemetry_frame(b"OTL"), None);
        assert!(is_blank(b" \n\t") && is_blank(b"") && !is_blank(b" {} "));
    }
}
