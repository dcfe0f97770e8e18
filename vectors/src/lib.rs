//! The official `anthropic` SDK 2.10.0's test vectors, as the tests of this workspace read them.
//!
//! `vectors/sdk-test-vectors.json` (next to this crate's manifest) holds what the SDK did for a
//! set of inputs: the requests its client sent, what it made of responses, its retry waits, the
//! requests of its environment worker, its event-stream decoding, its webhook signatures and
//! verdicts, and the results its tools posted. `scripts/vectors/generate.py` writes the file by
//! running the installed SDK; `scripts/vectors/check.sh` fails when the committed file differs
//! from a fresh run. The file's `about` fields say what each section holds.
//!
//! The file is compiled into this crate, so a test needs nothing outside the repository. The
//! `CMA_VECTORS` environment variable, when set, names another copy to read instead (to try a
//! regenerated file without rebuilding).
//!
//! ```no_run
//! use cma_vectors::{Field as _, Vectors};
//!
//! let v = Vectors::load();
//! let s1 = v.case("webhooks", "signing", "S1");
//! println!("{} -> {}", s1.req_str("webhook_id"), s1.req_str("signature"));
//! ```
//!
//! This is a test-support crate: a missing section or field panics with the path it looked
//! for, because a test without its vectors must fail loudly.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use serde_json::Value;

/// File name of the vectors document.
pub const FILE_NAME: &str = "sdk-test-vectors.json";

/// Environment variable naming a vectors file to read instead of the compiled-in copy.
pub const ENV_VAR: &str = "CMA_VECTORS";

/// The vectors as committed, compiled in.
const COMPILED_IN: &str = include_str!("../sdk-test-vectors.json");

/// The whole vectors document.
#[derive(Debug, Clone)]
pub struct Vectors {
    root: Value,
    path: PathBuf,
}

impl Vectors {
    /// The vectors (read once per process): the file named by `CMA_VECTORS` if set, else the
    /// compiled-in copy of `vectors/sdk-test-vectors.json`. Panics if the override cannot be
    /// read or either is not valid JSON.
    pub fn load() -> &'static Self {
        static LOADED: OnceLock<Vectors> = OnceLock::new();
        LOADED.get_or_init(|| match std::env::var_os(ENV_VAR) {
            Some(p) => {
                let path = PathBuf::from(p);
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{ENV_VAR}={}: cannot read: {e}", path.display()));
                Self::parse(&text, path)
            }
            None => Self::parse(COMPILED_IN, Self::compiled_in_path()),
        })
    }

    /// Parse vectors from JSON text (for tests of this crate); panics on invalid JSON.
    pub fn from_json(text: &str) -> Self {
        Self::parse(text, PathBuf::new())
    }

    fn parse(text: &str, path: PathBuf) -> Self {
        let root = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{}: not valid JSON: {e}", path.display()));
        Self { root, path }
    }

    /// Where the compiled-in copy came from (this crate's `sdk-test-vectors.json`).
    pub fn compiled_in_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE_NAME)
    }

    /// Where the vectors were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole document.
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// A top-level section (`"requests"`, `"webhooks"`, ...); panics if there is none.
    pub fn section(&self, name: &str) -> &Value {
        self.root.req(name)
    }

    /// The entries of `section`'s list `list` (e.g. `("webhooks", "signing")`).
    pub fn list(&self, section: &str, list: &str) -> &[Value] {
        self.section(section).req_array(list)
    }

    /// The entry of `section`'s list `list` whose `id` is `id`; panics if there is none.
    pub fn case(&self, section: &str, list: &str, id: &str) -> &Value {
        find(self.list(section, list), id)
            .unwrap_or_else(|| panic!("no case {id:?} in {section}.{list}"))
    }
}

/// The entry of `cases` whose `id` is `id`.
pub fn find<'a>(cases: &'a [Value], id: &str) -> Option<&'a Value> {
    cases
        .iter()
        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
}

/// Required-field access on a vectors value: each panics with the field's name when the field
/// is missing or has another type.
pub trait Field {
    /// The field `key` (of any type, `null` included).
    fn req(&self, key: &str) -> &Value;
    /// The string field `key`.
    fn req_str(&self, key: &str) -> &str;
    /// The integer field `key`.
    fn req_i64(&self, key: &str) -> i64;
    /// The non-negative integer field `key`.
    fn req_u64(&self, key: &str) -> u64;
    /// The number field `key`.
    fn req_f64(&self, key: &str) -> f64;
    /// The boolean field `key`.
    fn req_bool(&self, key: &str) -> bool;
    /// The array field `key`.
    fn req_array(&self, key: &str) -> &[Value];
    /// The string field `key`, or `None` when it is `null` or absent.
    fn opt_str(&self, key: &str) -> Option<&str>;
    /// The `id` field.
    fn id(&self) -> &str {
        self.req_str("id")
    }
}

impl Field for Value {
    fn req(&self, key: &str) -> &Value {
        self.get(key)
            .unwrap_or_else(|| panic!("vectors: no field {key:?} in {}", brief(self)))
    }

    fn req_str(&self, key: &str) -> &str {
        self.req(key)
            .as_str()
            .unwrap_or_else(|| panic!("vectors: field {key:?} is not a string in {}", brief(self)))
    }

    fn req_i64(&self, key: &str) -> i64 {
        self.req(key).as_i64().unwrap_or_else(|| {
            panic!(
                "vectors: field {key:?} is not an integer in {}",
                brief(self)
            )
        })
    }

    fn req_u64(&self, key: &str) -> u64 {
        self.req(key).as_u64().unwrap_or_else(|| {
            panic!(
                "vectors: field {key:?} is not a non-negative integer in {}",
                brief(self)
            )
        })
    }

    fn req_f64(&self, key: &str) -> f64 {
        self.req(key)
            .as_f64()
            .unwrap_or_else(|| panic!("vectors: field {key:?} is not a number in {}", brief(self)))
    }

    fn req_bool(&self, key: &str) -> bool {
        self.req(key)
            .as_bool()
            .unwrap_or_else(|| panic!("vectors: field {key:?} is not a boolean in {}", brief(self)))
    }

    fn req_array(&self, key: &str) -> &[Value] {
        self.req(key)
            .as_array()
            .unwrap_or_else(|| panic!("vectors: field {key:?} is not an array in {}", brief(self)))
    }

    fn opt_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().unwrap_or_else(|| {
                panic!("vectors: field {key:?} is not a string in {}", brief(self))
            })),
        }
    }
}

/// A short rendering of `v` for panic messages.
fn brief(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// `text` with the path placeholder `placeholder` (e.g. `/W`) replaced by `real` wherever it
/// starts a path: followed by `/`, by a character that cannot continue a name, or the end.
pub fn expand_placeholder(text: &str, placeholder: &str, real: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(placeholder) {
        let after = &rest[i + placeholder.len()..];
        let starts_path = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric());
        let ends_name = !after.starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '.');
        out.push_str(&rest[..i]);
        out.push_str(if starts_path && ends_name {
            real
        } else {
            placeholder
        });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `value` with every string passed through [`expand_placeholder`].
pub fn expand_placeholders(value: &Value, placeholder: &str, real: &str) -> Value {
    match value {
        Value::String(s) => Value::String(expand_placeholder(s, placeholder, real)),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| expand_placeholders(v, placeholder, real))
                .collect(),
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), expand_placeholders(v, placeholder, real)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cases_and_panics_name_what_is_missing() {
        let v = Vectors::from_json(
            r#"{"s":{"cases":[{"id":"A1","n":3,"t":"x","b":true,"f":0.5,"z":null}]}}"#,
        );
        let a1 = v.case("s", "cases", "A1");
        assert_eq!(
            (
                a1.req_i64("n"),
                a1.req_u64("n"),
                a1.req_str("t"),
                a1.req_bool("b")
            ),
            (3, 3, "x", true)
        );
        assert_eq!(a1.req_f64("f"), 0.5);
        assert_eq!(a1.opt_str("z"), None);
        assert_eq!(a1.opt_str("absent"), None);
        assert_eq!(a1.opt_str("t"), Some("x"));
        assert!(find(v.list("s", "cases"), "A2").is_none());
        let err = std::panic::catch_unwind(|| a1.req_str("missing").len()).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("\"missing\""), "{msg}");
    }

    #[test]
    fn placeholders_expand_only_where_a_path_starts() {
        let w = "/tmp/x";
        assert_eq!(expand_placeholder("/W", "/W", w), "/tmp/x");
        assert_eq!(
            expand_placeholder("/W/a.txt:2:/W\n/W/b", "/W", w),
            "/tmp/x/a.txt:2:/tmp/x\n/tmp/x/b"
        );
        assert_eq!(expand_placeholder("/Wx /aW/ a/W", "/W", w), "/Wx /aW/ a/W");
        let v: Value = serde_json::json!([{"text": "/W/n"}, 1]);
        assert_eq!(
            expand_placeholders(&v, "/W", w),
            serde_json::json!([{"text": "/tmp/x/n"}, 1])
        );
    }

    #[test]
    fn the_compiled_in_file_has_every_section_and_names_the_sdk() {
        let v = Vectors::from_json(COMPILED_IN);
        for name in [
            "requests",
            "decoding",
            "retry",
            "worker",
            "sse",
            "secret",
            "webhooks",
            "tool_definitions",
            "tool_results",
        ] {
            assert!(v.section(name).is_object(), "{name}");
        }
        assert_eq!(
            v.section("generated").req_str("sdk"),
            "anthropic 2.10.0",
            "regenerate with scripts/vectors/generate.py"
        );
        assert_eq!(
            v.case("webhooks", "signing", "S1").req_str("webhook_id"),
            "msg_01"
        );
    }
}
