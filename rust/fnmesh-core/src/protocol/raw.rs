//! Payloads kept as their exact JSON text.

use serde::Serialize;
use serde_json::value::RawValue;

/// A JSON value kept as its exact text.
pub type RawJson = Box<RawValue>;

/// Unknown fields of a known message, in arrival order, kept so a re-encode writes them back.
pub type Extra = Vec<(String, RawJson)>;

pub(super) fn or_null(value: &Option<RawJson>) -> &RawValue {
    match value {
        Some(raw) => raw,
        None => RawValue::NULL,
    }
}

pub(super) fn raw_of<T: Serialize>(value: &T) -> RawJson {
    serde_json::value::to_raw_value(value).expect("strings always serialize")
}
