//! The iii wire codec: every message of docs/protocol.md section 2, decoded leniently and encoded
//! the way the SDKs write it.
//!
//! * **Payloads stay raw.** `data`, `result`, `config`, `metadata` and the schema fields are kept
//!   as [`RawJson`] (the exact JSON text of the value) from decode to re-encode; the codec never
//!   builds a tree just to forward a payload.
//! * **Lenient decoding** (docs/protocol.md 11.3): a missing `data`/`config` reads as `null` through the
//!   accessors; a `null` optional field reads as absent; an unknown `type` decodes to
//!   [`Message::Unknown`] holding the whole frame, so the caller can log and skip it; unknown
//!   fields of known messages are kept in `extra` and written back on encode (forward
//!   compatibility: a field a newer SDK adds survives routing). A malformed frame is an
//!   [`Error::MalformedFrame`](crate::Error::MalformedFrame) value, never a panic.
//! * **Encoding** writes compact UTF-8 JSON (non-ASCII text is not `\u`-escaped), `type` first,
//!   absent optional fields omitted.
//!
//! Decoding is a single pass over the frame: every field any message may carry is read into a
//! superset record, then the record is checked against the message's `type` (which may come
//! anywhere in the object).
//!
//! Files: `raw.rs` (payloads kept as JSON text), `messages.rs` (one struct per message type and
//! the [`Message`] enum), `decode.rs` (one frame to a [`Message`]), `encode.rs` (a [`Message`] to
//! JSON), `frame.rs` (frames that are never decoded: blank and telemetry). The wire error codes
//! are in [`codes`].

mod decode;
mod encode;
mod frame;
mod messages;
mod raw;
mod scan;
#[cfg(test)]
mod tests;

/// The table of wire error codes (it lives in [`crate::error::codes`]).
pub use crate::error::codes;
pub use crate::error::codes::{ErrorCode, UnknownErrorCode};
pub use decode::{decode, decode_limited, decode_split, decode_text, Split, SPLIT_FRAME_BYTES};
pub use encode::{splice_caller_worker_id, CALLER_WORKER_ID_KEY};
pub use frame::{is_blank, telemetry_frame, TelemetryKind};
pub use messages::{
    ErrorBody, ErrorFrame, HttpAuth, HttpInvocationRef, HttpMethod, InvocationResult,
    InvokeFunction, Keepalive, Message, Reattach, RegisterFunction, RegisterService,
    RegisterTrigger, RegisterTriggerType, RegistrationRejected, TriggerAction,
    TriggerRegistrationResult, UnknownMessage, UnregisterFunction, UnregisterTrigger,
    UnregisterTriggerType, WorkerRegistered,
};
pub use raw::{Extra, RawJson};
pub use scan::{scan_frame, Spans};

/// Default limit on the size of one frame (docs/protocol.md 11.3): 64 MiB, iii's limit, so whatever
/// an iii deployment sends passes here with the default settings.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
