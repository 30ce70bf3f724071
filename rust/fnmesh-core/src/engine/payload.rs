//! [`Payload`]: a call's input, either owned raw JSON or a slice of the frame it arrived in
//! (docs/architecture.md, "Large frames").
//!
//! A large `invokefunction` is decoded with its `data` left in the frame
//! ([`crate::protocol::decode_split`]); when a worker serves the call the engine writes that
//! slice straight into the frame it sends, so the payload is copied once on its way through
//! instead of three times. Whatever needs the payload as a value (a native function, the queue)
//! takes it with [`Payload::into_raw`], at the cost of the copy the split saved; the
//! access-control middleware reads its [`Payload::text`]. A worker's large answer is left in its
//! frame the same way and goes through [`Payload::into_raw`] only when it is not forwarded as
//! it came.

use std::ops::Range;

use serde_json::value::RawValue;

use crate::protocol::RawJson;
use crate::server::Frame;

/// A call's input.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Raw JSON owned by the call.
    Owned(RawJson),
    /// Well-formed JSON at `range` of `frame` (checked by the decoder's scan).
    Framed { frame: Frame, range: Range<usize> },
}

impl Payload {
    /// The payload's JSON text.
    pub(crate) fn text(&self) -> &str {
        match self {
            Payload::Owned(raw) => raw.get(),
            Payload::Framed { frame, range } => &frame.as_str()[range.clone()],
        }
    }

    /// The payload as owned raw JSON. A framed payload is read once more and copied.
    ///
    /// The error cannot happen for a payload the decoder's scan checked (its tests hold it to
    /// accept nothing serde_json refuses); it is passed on rather than trusted.
    pub(crate) fn into_raw(self) -> Result<RawJson, serde_json::Error> {
        match self {
            Payload::Owned(raw) => Ok(raw),
            Payload::Framed { .. } => RawValue::from_string(self.text().to_owned()),
        }
    }
}

impl From<RawJson> for Payload {
    fn from(raw: RawJson) -> Payload {
        Payload::Owned(raw)
    }
}
