//! The console's check of a call's input against the function's `request_format`: the subset
//! of JSON Schema that pydantic models and iii workers' formats use (`type`, `properties`,
//! `required`, `additionalProperties: false`, `items`, `enum`, `const`, `anyOf`/`oneOf`/`allOf`,
//! numeric and length bounds, local `$ref`s into `$defs`/`definitions`). Anything else passes:
//! the function's own validation stays the final word. `console.js` checks the same subset in
//! the page, before the form sends.

use serde_json::Value;

/// Nesting followed at most (a `$ref` cycle ends here instead of overflowing the stack).
const MAX_DEPTH: usize = 64;

/// `Ok` when `value` satisfies `schema`, else the first problem with its JSON path.
pub(crate) fn check(schema: &Value, value: &Value) -> Result<(), String> {
    walk(schema, schema, value, "$", 0)
}

fn walk(root: &Value, schema: &Value, value: &Value, at: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let Some(s) = schema.as_object() else {
        return match schema {
            Value::Bool(false) => Err(format!("{at}: no value is allowed here")),
            _ => Ok(()),
        };
    };
    if let Some(reference) = s.get("$ref").and_then(Value::as_str) {
        if let Some(target) = resolve(root, reference) {
            walk(root, target, value, at, depth + 1)?;
        }
    }
    if let Some(types) = s.get("type") {
        let names: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !names.is_empty() && !names.iter().any(|t| is_type(value, t)) {
            return Err(format!(
                "{at}: expected {}, got {}",
                names.join(" or "),
                type_of(value)
            ));
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return Err(format!(
                "{at}: must be one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(constant) = s.get("const") {
        if constant != value {
            return Err(format!("{at}: must be {constant}"));
        }
    }
    for (key, all) in [("anyOf", false), ("oneOf", false), ("allOf", true)] {
        let Some(subs) = s.get(key).and_then(Value::as_array) else {
            continue;
        };
        let mut results = subs.iter().map(|sub| walk(root, sub, value, at, depth + 1));
        if all {
            results.try_for_each(|r| r)?;
        } else if !subs.is_empty() && !results.any(|r| r.is_ok()) {
            return Err(format!("{at}: matches none of the {key} alternatives"));
        }
    }
    match value {
        Value::Object(map) => {
            let properties = s.get("properties").and_then(Value::as_object);
            for name in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = name.as_str() {
                    if !map.contains_key(name) {
                        return Err(format!("{at}: missing required property {name:?}"));
                    }
                }
            }
            for (name, item) in map {
                let path = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(sub) => walk(root, sub, item, &path, depth + 1)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{at}: unexpected property {name:?}"))
                        }
                        Some(sub @ Value::Object(_)) => walk(root, sub, item, &path, depth + 1)?,
                        _ => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(root, sub, item, &format!("{at}[{i}]"), depth + 1)?;
                }
            }
            bound(s, "minItems", "maxItems", items.len() as f64, at, "items")?;
        }
        Value::String(text) => {
            bound(
                s,
                "minLength",
                "maxLength",
                text.chars().count() as f64,
                at,
                "characters",
            )?;
        }
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(0.0);
            bound(s, "minimum", "maximum", n, at, "")?;
            if s.get("exclusiveMinimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n <= m)
            {
                return Err(format!(
                    "{at}: must be greater than {}",
                    s["exclusiveMinimum"]
                ));
            }
            if s.get("exclusiveMaximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n >= m)
            {
                return Err(format!("{at}: must be less than {}", s["exclusiveMaximum"]));
            }
        }
        _ => {}
    }
    Ok(())
}

fn bound(
    s: &serde_json::Map<String, Value>,
    low: &str,
    high: &str,
    n: f64,
    at: &str,
    unit: &str,
) -> Result<(), String> {
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    if let Some(min) = s.get(low).and_then(Value::as_f64) {
        if n < min {
            return Err(format!("{at}: at least {min}{unit}"));
        }
    }
    if let Some(max) = s.get(high).and_then(Value::as_f64) {
        if n > max {
            return Err(format!("{at}: at most {max}{unit}"));
        }
    }
    Ok(())
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

fn is_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.as_i64().is_some()
                || value.as_u64().is_some()
                || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        Value::Number(_) => "number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subset_pydantic_uses() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
            },
            "required": ["a"],
            "additionalProperties": false,
            "$defs": {"Tag": {"type": "string", "maxLength": 3}},
        });
        assert!(check(&schema, &json!({"a": 1, "tags": ["x"]})).is_ok());
        assert!(check(&schema, &json!({"a": 1.0})).is_ok());
        let err = check(&schema, &json!({"a": "1"})).unwrap_err();
        assert!(err.contains("$.a: expected integer, got string"), "{err}");
        assert!(check(&schema, &json!({}))
            .unwrap_err()
            .contains("missing required property \"a\""));
        assert!(check(&schema, &json!({"a": -1})).is_err());
        assert!(check(&schema, &json!({"a": 1, "b": 2}))
            .unwrap_err()
            .contains("unexpected"));
        assert!(check(&schema, &json!({"a": 1, "tags": ["long"]}))
            .unwrap_err()
            .contains("$.tags[0]"));
        assert!(check(
            &json!({"anyOf": [{"type": "string"}, {"type": "null"}]}),
            &json!(3)
        )
        .is_err());
        assert!(check(&json!({"enum": ["x", "y"]}), &json!("y")).is_ok());
    }

    #[test]
    fn a_cycle_ends() {
        let schema = json!({"$ref": "#", "type": "object"});
        assert!(check(&schema, &json!({})).is_ok());
    }
}
