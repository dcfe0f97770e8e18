//! Python text renderings the official tools expose on the wire: `repr(str)`, `repr(float)` and
//! `json.dumps(obj)` with its default settings. Results must match byte for byte, so they are
//! reproduced here rather than approximated with Rust's own formatting.

use serde_json::Value;

/// Python's `repr()` of a `str`.
///
/// Quotes with `'` unless the text holds `'` and no `"`. Escapes backslash, the quote, `\t`,
/// `\n`, `\r`, and non-printable characters as `\xNN`/`\uNNNN`/`\UNNNNNNNN`. "Printable" follows
/// Python for ASCII, Latin-1 and the common separator/format characters; an unassigned code
/// point is kept as is (Python would escape it; there is no Unicode table here).
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                if n <= 0xff {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable()` for one character (see [`repr_str`] for the approximation).
fn is_printable(c: char) -> bool {
    let n = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() {
        return false;
    }
    !matches!(n,
        0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064
        | 0x2066..=0x206f | 0x3000 | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff
        | 0xd800..=0xdfff | 0xf0000..=0x10ffff | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e)
}

/// Python's `repr()` of a `float` (shortest round-trip digits; exponent form below `1e-4` and
/// from `1e16`, e.g. `0.5`, `120.0`, `1e-05`, `1e+16`).
pub fn repr_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits as `d.ddde±x`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point >= n {
            format!("{}{}.0", digits, "0".repeat((point - n) as usize))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python's `json.dumps(value)` with default arguments: separators `", "` and `": "`,
/// `ensure_ascii=True` (non-ASCII as `\uXXXX`, surrogate pairs above U+FFFF), keys in the
/// object's order, floats as Python `repr`.
pub fn json_dumps(v: &Value) -> String {
    let mut out = String::new();
    dump(v, &mut out);
    out
}

fn dump(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                match repr_float(f).as_str() {
                    "inf" => out.push_str("Infinity"),
                    "-inf" => out.push_str("-Infinity"),
                    "nan" => out.push_str("NaN"),
                    s => out.push_str(s),
                }
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => dump_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_str(k, out);
                out.push_str(": ");
                dump(item, out);
            }
            out.push('}');
        }
    }
}

fn dump_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's type name for a JSON value as decoded by `json.loads`.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_str_picks_quotes_and_escapes_like_python() {
        assert_eq!(repr_str("abc"), "'abc'");
        assert_eq!(repr_str("it's"), "\"it's\"");
        assert_eq!(repr_str("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(repr_str("a\nb\\c\u{1b}"), "'a\\nb\\\\c\\x1b'");
        assert_eq!(repr_str("héllo"), "'héllo'");
        assert_eq!(repr_str("\u{a0}\u{2028}"), "'\\xa0\\u2028'");
    }

    #[test]
    fn repr_float_matches_python() {
        for (f, s) in [
            (0.5, "0.5"),
            (120.0, "120.0"),
            (3.0, "3.0"),
            (0.001, "0.001"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (1234.5678, "1234.5678"),
            (-0.005, "-0.005"),
            (1e15, "1000000000000000.0"),
            (0.1, "0.1"),
        ] {
            assert_eq!(repr_float(f), s, "{f}");
        }
    }

    #[test]
    fn json_dumps_uses_python_default_separators_and_ascii_escapes() {
        let v: Value = serde_json::from_str(
            r#"{"type":"tool_reference","tool_name":"x","n":[1,2.5,true,null],"u":"é😀\u0001"}"#,
        )
        .unwrap();
        assert_eq!(
            json_dumps(&v),
            r#"{"type": "tool_reference", "tool_name": "x", "n": [1, 2.5, true, null], "u": "\u00e9\ud83d\ude00\u0001"}"#
        );
    }
}
