//! What a tool returns ([`ToolOutput`]), how it fails ([`ToolError`]) and the content the worker
//! posts for it ([`PostedResult`], docs/protocol.md §5.5).
//!
//! The conversion rules are the official session runner's: an empty result reads `(no output)`,
//! `text`/`image`/`document`/`search_result` blocks pass through, any other block is turned into
//! a text block holding its Python `json.dumps` rendering, an unexpected failure reads like
//! Python's `repr(exc)` cut to [`ERROR_TEXT_MAX_CHARS`] characters, and a call past its deadline
//! reads `tool '<name>' timed out`.

use serde_json::{Map, Value};

use crate::pyfmt;

/// The placeholder text of an empty result.
pub const NO_OUTPUT: &str = "(no output)";

/// How much of an unexpected failure's `repr` text is posted, in characters (the SDK's
/// `FIELD_MAX`, §5.5).
pub const ERROR_TEXT_MAX_CHARS: usize = 4096;

/// Block types passed through unchanged; any other non-text block is JSON-stringified (§5.5).
const PASS_THROUGH: [&str; 3] = ["image", "document", "search_result"];

/// A successful tool result, before conversion to posted content.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutput {
    /// Nothing (Python `None`): posted as `(no output)`.
    None,
    /// Plain text; empty text is posted as `(no output)`.
    Text(String),
    /// Content blocks (`{"type":"text",…}`, `{"type":"image",…}`, …).
    Blocks(Vec<Value>),
}

impl ToolOutput {
    /// A text result.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// A single `image` block with base64 data.
    pub fn image_base64(media_type: &str, data: impl Into<String>) -> Self {
        Self::Blocks(vec![base64_block("image", media_type, data.into())])
    }

    /// A single `document` block with base64 data (e.g. `application/pdf`).
    pub fn document_base64(media_type: &str, data: impl Into<String>) -> Self {
        Self::Blocks(vec![base64_block("document", media_type, data.into())])
    }
}

impl From<String> for ToolOutput {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&str> for ToolOutput {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

fn base64_block(kind: &str, media_type: &str, data: String) -> Value {
    let mut source = Map::new();
    source.insert("type".into(), "base64".into());
    source.insert("media_type".into(), media_type.into());
    source.insert("data".into(), data.into());
    let mut block = Map::new();
    block.insert("type".into(), kind.into());
    block.insert("source".into(), Value::Object(source));
    Value::Object(block)
}

/// A failed tool call.
///
/// [`ToolError::Message`] is the official `ToolError`: its content is posted verbatim with
/// `is_error: true`. The other variants are failures that the official runner reports as
/// `repr(exception)`; their display text is exactly what is posted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The tool's own error content (text or blocks), posted as is.
    #[error("{}", message_text(.0))]
    Message(ToolOutput),
    /// The input did not validate against the tool's parameters:
    /// `ValueError('Invalid arguments for function <name>')`.
    #[error("ValueError({})", pyfmt::repr_str(&format!("Invalid arguments for function {tool}")))]
    InvalidArguments {
        /// The tool's name.
        tool: String,
    },
    /// The input was not a JSON object: `TypeError('Input must be a dictionary, got <type>')`.
    #[error("TypeError({})", pyfmt::repr_str(&format!("Input must be a dictionary, got {type_name}")))]
    InputNotObject {
        /// The Python type name of what was given (`list`, `str`, `int`, …).
        type_name: &'static str,
    },
    /// Any other failure, rendered like Python's `repr(exc)`: `<type_name>('<message>')`.
    #[error("{type_name}({})", pyfmt::repr_str(message))]
    Exception {
        /// Exception type name, e.g. `RuntimeError`.
        type_name: String,
        /// Its message.
        message: String,
    },
}

fn message_text(content: &ToolOutput) -> String {
    match content {
        ToolOutput::None => String::new(),
        ToolOutput::Text(t) => t.clone(),
        ToolOutput::Blocks(blocks) => blocks
            .iter()
            .map(|b| match b.get("text") {
                Some(Value::String(t)) => t.clone(),
                Some(other) => other.to_string(),
                None => format!(
                    "[{}]",
                    b.get("type").and_then(Value::as_str).unwrap_or("unknown")
                ),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl ToolError {
    /// A text error posted verbatim (the official `ToolError("…")`).
    pub fn msg(text: impl Into<String>) -> Self {
        Self::Message(ToolOutput::Text(text.into()))
    }

    /// An error rendered as `RuntimeError('<message>')`.
    pub fn runtime(message: impl Into<String>) -> Self {
        Self::Exception {
            type_name: "RuntimeError".into(),
            message: message.into(),
        }
    }

    /// `ValueError('Invalid arguments for function <tool>')`.
    pub fn invalid_arguments(tool: impl Into<String>) -> Self {
        Self::InvalidArguments { tool: tool.into() }
    }
}

/// The content the worker posts for one call: `is_error` and a non-empty list of content blocks
/// (the `content` of a `user.tool_result` / `user.custom_tool_result` event).
#[derive(Debug, Clone, PartialEq)]
pub struct PostedResult {
    /// Whether the call failed.
    pub is_error: bool,
    /// The content blocks, never empty.
    pub content: Vec<Value>,
}

impl PostedResult {
    /// Convert a tool's result per §5.5.
    pub fn from_result(result: Result<ToolOutput, ToolError>) -> Self {
        match result {
            Ok(out) => Self::from_output(out),
            Err(e) => Self::from_error(&e),
        }
    }

    /// A successful result.
    pub fn from_output(out: ToolOutput) -> Self {
        Self {
            is_error: false,
            content: session_content(out),
        }
    }

    /// A failed result: a [`ToolError::Message`]'s content verbatim, anything else as its
    /// `repr` text cut to [`ERROR_TEXT_MAX_CHARS`] characters.
    pub fn from_error(e: &ToolError) -> Self {
        let content = match e {
            ToolError::Message(out) => session_content(out.clone()),
            other => {
                let text: String = other
                    .to_string()
                    .chars()
                    .take(ERROR_TEXT_MAX_CHARS)
                    .collect();
                session_content(ToolOutput::Text(text))
            }
        };
        Self {
            is_error: true,
            content,
        }
    }

    /// The result of a call that ran past its deadline: `tool '<name>' timed out`.
    pub fn timed_out(tool: &str) -> Self {
        Self {
            is_error: true,
            content: vec![text_block(format!(
                "tool {} timed out",
                pyfmt::repr_str(tool)
            ))],
        }
    }

    /// The text of the first block when it is a text block.
    pub fn text(&self) -> Option<&str> {
        self.content
            .first()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .and_then(|b| b.get("text"))
            .and_then(Value::as_str)
    }
}

fn text_block(text: String) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "text".into());
    m.insert("text".into(), text.into());
    Value::Object(m)
}

/// Session content of a result (the SDK's `_to_session_content`).
fn session_content(out: ToolOutput) -> Vec<Value> {
    let blocks = match out {
        ToolOutput::None => return vec![text_block(NO_OUTPUT.into())],
        ToolOutput::Text(t) if t.is_empty() => return vec![text_block(NO_OUTPUT.into())],
        ToolOutput::Text(t) => return vec![text_block(t)],
        ToolOutput::Blocks(b) => b,
    };
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let kind = block.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => {
                let text = match block.get("text") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    // Python: `block.get("text") or "(no output)"`; a non-string truthy value is
                    // passed on as it is.
                    Some(v) if is_truthy(v) => {
                        let mut m = Map::new();
                        m.insert("type".into(), "text".into());
                        m.insert("text".into(), v.clone());
                        out.push(Value::Object(m));
                        continue;
                    }
                    _ => NO_OUTPUT.to_owned(),
                };
                out.push(text_block(text));
            }
            Some(k) if PASS_THROUGH.contains(&k) => out.push(block),
            _ => out.push(text_block(pyfmt::json_dumps(&block))),
        }
    }
    if out.is_empty() {
        out.push(text_block(NO_OUTPUT.into()));
    }
    out
}

fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Text decoded from UTF-16 code units with every unpaired surrogate replaced by U+FFFD (the
/// SDK's `well_formed`). A Rust `String` can never hold a lone surrogate, so text produced in
/// Rust is always well formed; this is for text arriving as UTF-16 (e.g. from a JS engine).
pub fn well_formed_utf16(units: &[u16]) -> String {
    String::from_utf16_lossy(units)
}
