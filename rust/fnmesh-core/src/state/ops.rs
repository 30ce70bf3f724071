//! The operations of `state::update` (docs/protocol.md 6.8), with the shapes iii's SDKs send:
//! `{"type": "set"|"increment"|"decrement"|"append"|"remove"|"merge", "path"?, "value"?, "by"?}`.
//!
//! [`apply`] runs a list of them on a value, in order. An operation that cannot apply (a bad
//! path, a number expected, an object expected) is refused with an [`UpdateOpError`] naming it
//! by index, and leaves the value as it was; the others still apply.
//!
//! Paths: `set`, `increment`, `decrement` and `remove` take one first-level key (`""` is the
//! root). `append` and `merge` also take a list of literal segments (`["a", "b"]` is `a` then
//! `b`; a dot is never a separator), missing or non-object intermediates becoming `{}`.
//! Bounds, as iii's: at most 32 segments of at most 256 bytes, none empty nor one of
//! `__proto__`, `constructor`, `prototype`; a merged object has at most 1,024 top-level keys, is
//! nested at most 16 deep and has no such key.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// The most segments a path may have.
pub const MAX_PATH_DEPTH: usize = 32;
/// The longest segment, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 256;
/// The deepest nesting of a merged object.
pub const MAX_MERGE_DEPTH: usize = 16;
/// The most top-level keys of a merged object.
pub const MAX_MERGE_KEYS: usize = 1024;
/// Keys refused in paths and merged objects (JavaScript prototype pollution).
const FORBIDDEN_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// A path of `append` or `merge`: one first-level key, or literal segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OpPath {
    /// One first-level key (`""`: the root).
    Key(String),
    /// Literal segments (`[]`: the root).
    Segments(Vec<String>),
}

/// One operation of `state::update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpdateOp {
    /// Sets the key `path` (the whole value when `""`) to `value`.
    Set {
        /// The key.
        #[serde(default)]
        path: String,
        /// The value (`null` when absent).
        #[serde(default)]
        value: Value,
    },
    /// Adds `by` to the number at `path` (a missing one counts as 0).
    Increment {
        /// The key.
        #[serde(default)]
        path: String,
        /// The amount.
        by: Number,
    },
    /// Subtracts `by` from the number at `path` (a missing one counts as 0).
    Decrement {
        /// The key.
        #[serde(default)]
        path: String,
        /// The amount.
        by: Number,
    },
    /// Pushes `value` onto the array at `path`, or concatenates it to the string there; a
    /// missing or `null` target becomes `value` (a string) or `[value]`.
    Append {
        /// The target (absent: the root).
        #[serde(default)]
        path: Option<OpPath>,
        /// The element or string.
        value: Value,
    },
    /// Removes the key `path` (the whole value becomes `null` when `""`).
    Remove {
        /// The key.
        #[serde(default)]
        path: String,
    },
    /// Copies the top-level keys of the object `value` into the object at `path`.
    Merge {
        /// The target (absent: the root).
        #[serde(default)]
        path: Option<OpPath>,
        /// The object merged.
        value: Value,
    },
}

/// An operation [`apply`] refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOpError {
    /// Its index in the list.
    pub op_index: usize,
    /// A stable code, `<op>.<reason>` (`append.type_mismatch`, `merge.path.too_deep`, ...).
    pub code: String,
    /// What was wrong.
    pub message: String,
}

type Refusal = (String, String);

/// Applies `ops` in order to `old` (`None`: the key has no value, and the operations start from
/// `{}`). Answers the new value and the refused operations.
pub fn apply(old: Option<&Value>, ops: &[UpdateOp]) -> (Value, Vec<UpdateOpError>) {
    let mut missing = old.is_none();
    let mut value = old.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let mut errors = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        match apply_one(&mut value, missing, op) {
            Ok(()) => missing = false,
            Err((code, message)) => errors.push(UpdateOpError {
                op_index,
                code,
                message,
            }),
        }
    }
    (value, errors)
}

fn apply_one(value: &mut Value, missing: bool, op: &UpdateOp) -> Result<(), Refusal> {
    match op {
        UpdateOp::Set { path, value: new } => {
            check_path("set", key_segments(path))?;
            if path.is_empty() {
                *value = new.clone();
                Ok(())
            } else {
                object_at("set", path, value)?.insert(path.clone(), new.clone());
                Ok(())
            }
        }
        UpdateOp::Increment { path, by } => add("increment", value, missing, path, by, false),
        UpdateOp::Decrement { path, by } => add("decrement", value, missing, path, by, true),
        UpdateOp::Append { path, value: item } => {
            let segments = op_segments(path.as_ref());
            check_path("append", segments)?;
            match segments {
                [] => {
                    if missing {
                        *value = Value::Null;
                    }
                    append_to(value, item, "root")
                }
                [key] => {
                    let map = object_at("append", key, value)?;
                    match map.get_mut(key) {
                        Some(target) => append_to(target, item, key),
                        None => {
                            map.insert(key.clone(), first_append(item));
                            Ok(())
                        }
                    }
                }
                [parents @ .., leaf] => {
                    if !value.is_object() {
                        return Err(not_object("append", &segments.join("."), value));
                    }
                    let map = walk_creating(value, parents);
                    match map.get_mut(leaf) {
                        Some(target) => append_to(target, item, leaf),
                        None => {
                            // Nested: a missing leaf is always an array.
                            map.insert(leaf.clone(), Value::Array(vec![item.clone()]));
                            Ok(())
                        }
                    }
                }
            }
        }
        UpdateOp::Remove { path } => {
            check_path("remove", key_segments(path))?;
            if path.is_empty() {
                *value = Value::Null;
            } else {
                object_at("remove", path, value)?.remove(path);
            }
            Ok(())
        }
        UpdateOp::Merge { path, value: patch } => {
            let segments = op_segments(path.as_ref());
            check_path("merge", segments)?;
            let patch = check_merge_value(patch)?;
            let target = walk_creating(value, segments);
            for (k, v) in patch {
                target.insert(k.clone(), v.clone());
            }
            Ok(())
        }
    }
}

fn key_segments(path: &String) -> &[String] {
    if path.is_empty() {
        &[]
    } else {
        std::slice::from_ref(path)
    }
}

fn op_segments(path: Option<&OpPath>) -> &[String] {
    match path {
        None => &[],
        Some(OpPath::Key(key)) => key_segments(key),
        Some(OpPath::Segments(segments)) => segments,
    }
}

fn check_path(op: &str, segments: &[String]) -> Result<(), Refusal> {
    let refuse = |reason: &str, message: String| Err((format!("{op}.path.{reason}"), message));
    if segments.len() > MAX_PATH_DEPTH {
        return refuse(
            "too_deep",
            format!(
                "path has {} segments, more than {MAX_PATH_DEPTH}",
                segments.len()
            ),
        );
    }
    for segment in segments {
        if segment.is_empty() {
            return refuse("empty_segment", "path has an empty segment".into());
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return refuse(
                "segment_too_long",
                format!(
                    "a path segment of {} bytes is longer than {MAX_SEGMENT_BYTES}",
                    segment.len()
                ),
            );
        }
        if FORBIDDEN_KEYS.contains(&segment.as_str()) {
            return refuse(
                "proto_polluted",
                format!("path segment {segment:?} is not allowed"),
            );
        }
    }
    Ok(())
}

fn check_merge_value(patch: &Value) -> Result<&Map<String, Value>, Refusal> {
    let refuse = |reason: &str, message: String| Err((format!("merge.value.{reason}"), message));
    let Value::Object(map) = patch else {
        return refuse(
            "not_an_object",
            format!("merge value must be an object, not {}", type_name(patch)),
        );
    };
    if map.len() > MAX_MERGE_KEYS {
        return refuse(
            "too_many_keys",
            format!(
                "merge value has {} keys, more than {MAX_MERGE_KEYS}",
                map.len()
            ),
        );
    }
    if let Some(key) = map.keys().find(|k| FORBIDDEN_KEYS.contains(&k.as_str())) {
        return refuse(
            "proto_polluted",
            format!("merge key {key:?} is not allowed"),
        );
    }
    let depth = depth(patch);
    if depth > MAX_MERGE_DEPTH {
        return refuse(
            "too_deep",
            format!("merge value is nested {depth} deep, more than {MAX_MERGE_DEPTH}"),
        );
    }
    Ok(map)
}

/// Nesting depth (a scalar is 0). Recursion is bounded by the JSON parser's own depth limit.
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The object `value` must be for an operation on its key `key`.
fn object_at<'v>(
    op: &str,
    key: &str,
    value: &'v mut Value,
) -> Result<&'v mut Map<String, Value>, Refusal> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(not_object(op, key, other)),
    }
}

fn not_object(op: &str, path: &str, value: &Value) -> Refusal {
    (
        format!("{op}.target_not_object"),
        format!(
            "cannot {op} at {path:?}: the value is {}, not an object",
            type_name(value)
        ),
    )
}

/// The object at `segments` under `value`, replacing `value` and any intermediate that is not
/// an object by `{}`.
fn walk_creating<'v>(value: &'v mut Value, segments: &[String]) -> &'v mut Map<String, Value> {
    let mut node = value;
    for segment in segments {
        let map = ensure_object(node);
        node = map
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    ensure_object(node)
}

fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        // Made an object just above.
        _ => unreachable!("value was just made an object"),
    }
}

fn append_to(target: &mut Value, item: &Value, path: &str) -> Result<(), Refusal> {
    match (&mut *target, item) {
        (Value::Array(items), _) => {
            items.push(item.clone());
            Ok(())
        }
        (Value::String(text), Value::String(more)) => {
            text.push_str(more);
            Ok(())
        }
        (Value::Null, _) => {
            *target = first_append(item);
            Ok(())
        }
        (Value::String(_), _) => Err((
            "append.type_mismatch".into(),
            format!(
                "cannot append {} to the string at {path:?}",
                type_name(item)
            ),
        )),
        (other, _) => Err((
            "append.type_mismatch".into(),
            format!(
                "cannot append at {path:?}: the value is {}, not an array, a string or null",
                type_name(other)
            ),
        )),
    }
}

/// What an append to nothing makes: the string itself, or a one-element array.
fn first_append(item: &Value) -> Value {
    if item.is_string() {
        item.clone()
    } else {
        Value::Array(vec![item.clone()])
    }
}

fn add(
    op: &str,
    value: &mut Value,
    missing: bool,
    path: &String,
    by: &Number,
    negate: bool,
) -> Result<(), Refusal> {
    check_path(op, key_segments(path))?;
    let zero = Value::from(0);
    let not_number = |found: &Value| {
        (
            format!("{op}.not_number"),
            format!(
                "cannot {op} at {:?}: the value is {}, not a number",
                if path.is_empty() { "root" } else { path },
                type_name(found)
            ),
        )
    };
    if path.is_empty() {
        let base = if missing { &zero } else { &*value };
        *value = sum(base, by, negate).ok_or_else(|| not_number(base))?;
        return Ok(());
    }
    let map = object_at(op, path, value)?;
    let base = map.get(path).unwrap_or(&zero);
    let result = sum(base, by, negate).ok_or_else(|| not_number(base))?;
    map.insert(path.clone(), result);
    Ok(())
}

/// `base ± by`: exact on integers (while they fit an i64), else in f64. `None` when `base` is
/// not a number or the result is not finite.
fn sum(base: &Value, by: &Number, negate: bool) -> Option<Value> {
    let Value::Number(base) = base else {
        return None;
    };
    if let (Some(a), Some(b)) = (base.as_i64(), by.as_i64()) {
        let exact = if negate {
            a.checked_sub(b)
        } else {
            a.checked_add(b)
        };
        if let Some(n) = exact {
            return Some(Value::from(n));
        }
    }
    let (a, b) = (base.as_f64()?, by.as_f64()?);
    Number::from_f64(if negate { a - b } else { a + b }).map(Value::Number)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ops(value: Value) -> Vec<UpdateOp> {
        serde_json::from_value(value).expect("valid ops")
    }

    fn run(old: Option<Value>, list: Value) -> (Value, Vec<String>) {
        let (value, errors) = apply(old.as_ref(), &ops(list));
        (value, errors.into_iter().map(|e| e.code).collect())
    }

    #[test]
    fn set_keeps_the_other_fields() {
        let (v, e) = run(
            Some(json!({"count": 0, "name": "initial"})),
            json!([{"type": "set", "path": "count", "value": 5}]),
        );
        assert_eq!(v, json!({"count": 5, "name": "initial"}));
        assert!(e.is_empty());
    }

    #[test]
    fn append_pushes_onto_arrays_and_concatenates_strings() {
        let (v, e) = run(
            Some(json!({"events": [], "transcript": "hello"})),
            json!([
                {"type": "append", "path": "events", "value": {"kind": "chunk"}},
                {"type": "append", "path": "transcript", "value": " world"},
                {"type": "append", "path": "new_text", "value": "a"},
                {"type": "append", "path": "new_list", "value": 1},
                {"type": "append", "path": ["deep", "list"], "value": "x"},
            ]),
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            v,
            json!({"events": [{"kind": "chunk"}], "transcript": "hello world",
                   "new_text": "a", "new_list": [1], "deep": {"list": ["x"]}})
        );
    }

    #[test]
    fn refused_operations_leave_the_value_and_the_others_apply() {
        let (v, e) = run(
            Some(json!({"text": "a", "obj": {}, "n": "x"})),
            json!([
                {"type": "append", "path": "text", "value": 1},
                {"type": "append", "path": "obj", "value": 1},
                {"type": "increment", "path": "n", "by": 1},
                {"type": "merge", "value": [1]},
                {"type": "merge", "path": ["__proto__"], "value": {}},
                {"type": "set", "path": "ok", "value": true},
            ]),
        );
        assert_eq!(v, json!({"text": "a", "obj": {}, "n": "x", "ok": true}));
        assert_eq!(
            e,
            [
                "append.type_mismatch",
                "append.type_mismatch",
                "increment.not_number",
                "merge.value.not_an_object",
                "merge.path.proto_polluted"
            ]
        );
    }

    #[test]
    fn numbers_add_exactly_and_start_from_zero() {
        let (v, e) = run(
            Some(json!({"a": 2, "f": 1.5})),
            json!([
                {"type": "increment", "path": "a", "by": 3},
                {"type": "decrement", "path": "missing", "by": 4},
                {"type": "increment", "path": "f", "by": 1},
                {"type": "increment", "path": "big", "by": i64::MAX},
                {"type": "increment", "path": "big", "by": 1},
            ]),
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(v["a"], json!(5));
        assert_eq!(v["missing"], json!(-4));
        assert_eq!(v["f"], json!(2.5));
        assert!(v["big"].is_f64(), "an overflow goes to f64: {v}");
        // A missing value incremented at the root is the amount itself.
        assert_eq!(
            run(None, json!([{"type": "increment", "path": "", "by": 7}])).0,
            json!(7)
        );
    }

    #[test]
    fn merge_creates_nested_objects_and_remove_drops_keys() {
        let (v, e) = run(
            None,
            json!([
                {"type": "merge", "value": {"a": 1, "b": 2}},
                {"type": "merge", "path": ["x", "y"], "value": {"z": true}},
                {"type": "remove", "path": "b"},
            ]),
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(v, json!({"a": 1, "x": {"y": {"z": true}}}));
    }

    #[test]
    fn bounds_are_enforced() {
        let long = "k".repeat(MAX_SEGMENT_BYTES + 1);
        let deep: Vec<String> = (0..=MAX_PATH_DEPTH).map(|i| i.to_string()).collect();
        let mut nested = json!(1);
        for _ in 0..=MAX_MERGE_DEPTH {
            nested = json!({ "n": nested });
        }
        let (v, e) = run(
            Some(json!({})),
            json!([
                {"type": "set", "path": long, "value": 1},
                {"type": "merge", "path": deep, "value": {}},
                {"type": "merge", "value": nested},
                {"type": "append", "path": ["a", ""], "value": 1},
            ]),
        );
        assert_eq!(v, json!({}));
        assert_eq!(
            e,
            [
                "set.path.segment_too_long",
                "merge.path.too_deep",
                "merge.value.too_deep",
                "append.path.empty_segment"
            ]
        );
    }

    #[test]
    fn unknown_operations_do_not_parse() {
        assert!(serde_json::from_value::<Vec<UpdateOp>>(json!([{"type": "explode"}])).is_err());
    }
}
