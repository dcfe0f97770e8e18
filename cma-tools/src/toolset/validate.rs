//! Input validation in the manner of the official function tools (pydantic lax mode) driven by
//! a JSON Schema: the input must be an object, unknown keys and missing required keys are
//! rejected, and each value is checked (and leniently coerced) against its property's schema.
//!
//! Coercions, as pydantic 2 does them: integer ← integral float, `true`/`false`, or a string of
//! an optionally signed decimal integer (surrounding whitespace, `_` between digits and a
//! fractional part of zeros allowed); boolean ← `0`/`1`, `0.0`/`1.0`, or one of
//! `0 off f false n no 1 on t true y yes` (any case); number ← integer, bool, numeric string.
//! A string field takes only a string.

use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

use crate::output::ToolError;
use crate::pyfmt;

/// Validate `input` against `schema`; returns the coerced object (missing optional keys filled
/// with their `default`).
pub(crate) fn validate_object(
    tool: &str,
    schema: &Value,
    input: Value,
    allow_unknown_keys: bool,
) -> Result<Map<String, Value>, ToolError> {
    let Value::Object(mut input) = input else {
        return Err(ToolError::InputNotObject {
            type_name: pyfmt::type_name(&input),
        });
    };
    let invalid = || ToolError::invalid_arguments(tool);
    let empty = Map::new();
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if !allow_unknown_keys && input.keys().any(|k| !props.contains_key(k)) {
        return Err(invalid());
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !input.contains_key(r) {
                return Err(invalid());
            }
        }
    }
    let mut out = Map::new();
    for (key, prop) in props {
        match input.remove(key) {
            Some(v) => {
                out.insert(key.clone(), coerce(prop, v).ok_or_else(invalid)?);
            }
            None => {
                if let Some(d) = prop.get("default") {
                    out.insert(key.clone(), d.clone());
                }
            }
        }
    }
    // Unknown keys that were allowed are passed on unchanged.
    out.extend(input);
    Ok(out)
}

/// Validate and deserialize into `T` (any serde failure is an invalid-arguments error).
pub(crate) fn parse<T: DeserializeOwned>(
    tool: &str,
    schema: &Value,
    input: Value,
) -> Result<T, ToolError> {
    let obj = validate_object(tool, schema, input, false)?;
    serde_json::from_value(Value::Object(obj)).map_err(|_| ToolError::invalid_arguments(tool))
}

/// `value` checked against `schema`, leniently coerced; `None` when it does not fit.
pub(crate) fn coerce(schema: &Value, value: Value) -> Option<Value> {
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        // Exact type matches win over coercions (pydantic's "smart" unions).
        if let Some(b) = branches.iter().find(|b| strict_match(b, &value)) {
            return coerce(b, value);
        }
        return branches.iter().find_map(|b| coerce(b, value.clone()));
    }
    let Some(ty) = schema.get("type") else {
        return Some(value);
    };
    if let Some(types) = ty.as_array() {
        return types
            .iter()
            .filter_map(Value::as_str)
            .find_map(|t| coerce_type(schema, t, value.clone()));
    }
    coerce_type(schema, ty.as_str()?, value)
}

fn strict_match(schema: &Value, v: &Value) -> bool {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("null") => v.is_null(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        _ => false,
    }
}

fn coerce_type(schema: &Value, ty: &str, v: Value) -> Option<Value> {
    match ty {
        "string" => v.is_string().then_some(v),
        "null" => v.is_null().then_some(v),
        "integer" => lax_int(&v).map(Value::from),
        "number" => lax_number(&v),
        "boolean" => lax_bool(&v).map(Value::Bool),
        "object" => v.is_object().then_some(v),
        "array" => {
            let Value::Array(items) = v else { return None };
            match schema.get("items") {
                Some(item_schema) => items
                    .into_iter()
                    .map(|i| coerce(item_schema, i))
                    .collect::<Option<Vec<_>>>()
                    .map(Value::Array),
                None => Some(Value::Array(items)),
            }
        }
        _ => Some(v),
    }
}

/// Largest float accepted as an integer (pydantic refuses floats beyond the i64 range).
const MAX_INT_FLOAT: f64 = 9.223_372_036_854_775e18;

fn lax_int(v: &Value) -> Option<i64> {
    match v {
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i)
            } else if n.is_u64() {
                // An integer past `i64` (Python's ints have no bound): the largest `i64` means
                // the same to every integer parameter (a line past any file's end, a timeout
                // past any clamp).
                Some(i64::MAX)
            } else {
                let f = n.as_f64()?;
                (f.is_finite() && f.fract() == 0.0 && f.abs() < MAX_INT_FLOAT).then_some(f as i64)
            }
        }
        Value::String(s) => parse_int_str(s),
        _ => None,
    }
}

fn parse_int_str(s: &str) -> Option<i64> {
    let t = s.trim();
    let (int_part, frac) = match t.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (t, None),
    };
    if let Some(frac) = frac
        && (frac.is_empty() || !frac.bytes().all(|b| b == b'0'))
    {
        return None;
    }
    let (neg, digits) = match int_part.as_bytes().first() {
        Some(b'-') => (true, &int_part[1..]),
        Some(b'+') => (false, &int_part[1..]),
        _ => (false, int_part),
    };
    // Digits with single underscores between them, as Python's int() accepts.
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    // Python's int() has no bound: past `i64` the value saturates (see `lax_int`). Parsed with
    // its sign, so `-9223372036854775808` is `i64::MIN` rather than an overflow.
    let mut clean = String::with_capacity(digits.len() + 1);
    if neg {
        clean.push('-');
    }
    clean.extend(digits.chars().filter(|c| *c != '_'));
    match clean.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) if neg => Some(i64::MIN),
        Err(_) => Some(i64::MAX),
    }
}

fn lax_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f == 0.0 {
                Some(false)
            } else if f == 1.0 {
                Some(true)
            } else {
                None
            }
        }
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            _ => None,
        },
        _ => None,
    }
}

fn lax_number(v: &Value) -> Option<Value> {
    match v {
        Value::Number(_) => Some(v.clone()),
        Value::Bool(b) => Some(Value::from(i64::from(*b))),
        Value::String(s) => {
            let f: f64 = s.trim().parse().ok()?;
            Number::from_f64(f).map(Value::Number)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lax_integers_follow_pydantic() {
        for (v, want) in [
            (json!("500"), Some(500)),
            (json!(" 500 "), Some(500)),
            (json!(5.0), Some(5)),
            (json!(true), Some(1)),
            (json!("5.0"), Some(5)),
            (json!("5.00"), Some(5)),
            (json!("1_000"), Some(1000)),
            (json!("+5"), Some(5)),
            (json!("-5"), Some(-5)),
            (json!(5.5), None),
            (json!("5."), None),
            (json!("5.50"), None),
            (json!("1e3"), None),
            (json!("0x10"), None),
            (json!(""), None),
            (json!(1e30), None),
            (json!([1]), None),
            (json!("-9223372036854775808"), Some(i64::MIN)),
            (json!("-9_223_372_036_854_775_809"), Some(i64::MIN)),
            (json!("99999999999999999999999"), Some(i64::MAX)),
            (json!(u64::MAX), Some(i64::MAX)),
            (json!(i64::MIN), Some(i64::MIN)),
        ] {
            assert_eq!(lax_int(&v), want, "{v}");
        }
    }

    #[test]
    fn lax_booleans_follow_pydantic() {
        for (v, want) in [
            (json!("yes"), Some(true)),
            (json!("TRUE"), Some(true)),
            (json!("No"), Some(false)),
            (json!(1), Some(true)),
            (json!(1.0), Some(true)),
            (json!("off"), Some(false)),
            (json!(2), None),
            (json!(0.5), None),
            (json!(" true "), None),
        ] {
            assert_eq!(lax_bool(&v), want, "{v}");
        }
    }

    #[test]
    fn objects_reject_unknown_missing_and_mistyped_keys() {
        let schema = crate::toolset::read_schema();
        let ok = validate_object(
            "read",
            &schema,
            json!({"file_path": "a", "view_range": ["1", "2"]}),
            false,
        )
        .unwrap();
        assert_eq!(ok["view_range"], json!([1, 2]));
        for bad in [
            json!({"file_path": 5}),
            json!({}),
            json!({"file_path": "a", "extra": true}),
            json!({"file_path": "a", "view_range": "12"}),
            json!({"file_path": null}),
        ] {
            let e = validate_object("read", &schema, bad, false).unwrap_err();
            assert_eq!(
                e.to_string(),
                "ValueError('Invalid arguments for function read')"
            );
        }
        let e = validate_object("read", &schema, json!([1]), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "TypeError('Input must be a dictionary, got list')"
        );
    }
}
