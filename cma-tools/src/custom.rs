//! Typed custom tools: a host's async function over a serde-deserializable input, with a
//! hand-written JSON Schema, becomes a [`Tool`] (docs/protocol.md §6.6).
//!
//! The input is validated like the official function tools before the function runs: it must be
//! an object, unknown keys are refused (unless [`CustomTool::allow_unknown_keys`]), required keys
//! must be present and values are leniently coerced to their schema types (`"5"` for an
//! integer); then it is deserialized into the input type. Any failure reads
//! `ValueError('Invalid arguments for function <name>')`.
//!
//! ```
//! use cma_tools::{custom_tool, ToolError, ToolOutput};
//! use serde::Deserialize;
//! use serde_json::json;
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! let tool = custom_tool(
//!     "add",
//!     "Add two integers.",
//!     json!({"type": "object",
//!            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
//!            "required": ["a", "b"]}),
//!     |_ctx, input: Add| async move { Ok::<_, ToolError>((input.a + input.b).to_string()) },
//! )
//! .unwrap();
//! # let _ = tool;
//! ```

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::ToolContext;
use crate::output::{ToolError, ToolOutput};
use crate::registry::Tool;
use crate::toolset::validate::validate_object;

/// Longest custom tool name (§6.6).
pub const MAX_TOOL_NAME_LEN: usize = 128;

/// A custom tool could not be defined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CustomToolError {
    /// The name is not 1–128 characters of `[A-Za-z0-9_-]`.
    #[error("invalid tool name {0:?}: expected 1-128 characters of [A-Za-z0-9_-]")]
    InvalidName(String),
    /// The input schema is not a JSON object.
    #[error("the input schema of tool {0:?} must be a JSON object")]
    InvalidSchema(String),
}

/// A custom tool made by [`custom_tool`].
pub struct CustomTool<I, F> {
    name: String,
    description: String,
    schema: Value,
    allow_unknown_keys: bool,
    handler: F,
    _input: PhantomData<fn(I)>,
}

impl<I, F> std::fmt::Debug for CustomTool<I, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomTool")
            .field("name", &self.name)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl<I, F> CustomTool<I, F> {
    /// Accept (and pass on) keys the schema does not list, instead of refusing the call.
    #[must_use]
    pub fn allow_unknown_keys(mut self, allow: bool) -> Self {
        self.allow_unknown_keys = allow;
        self
    }
}

/// Define a tool from an async function `handler(ctx, input)`.
///
/// `handler` gets a clone of the call's [`ToolContext`] and the validated input; it returns
/// anything convertible to [`ToolOutput`] (a `String`, `&str`, blocks) or an error convertible
/// to [`ToolError`] (`ToolError::msg("…")` is posted verbatim with `is_error: true`).
pub fn custom_tool<I, O, E, F, Fut>(
    name: &str,
    description: &str,
    input_schema: Value,
    handler: F,
) -> Result<CustomTool<I, F>, CustomToolError>
where
    I: DeserializeOwned + Send + 'static,
    O: Into<ToolOutput>,
    E: Into<ToolError>,
    F: Fn(ToolContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
{
    let valid = !name.is_empty()
        && name.chars().count() <= MAX_TOOL_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(CustomToolError::InvalidName(name.to_owned()));
    }
    if !input_schema.is_object() {
        return Err(CustomToolError::InvalidSchema(name.to_owned()));
    }
    Ok(CustomTool {
        name: name.to_owned(),
        description: description.to_owned(),
        schema: input_schema,
        allow_unknown_keys: false,
        handler,
        _input: PhantomData,
    })
}

#[async_trait]
impl<I, O, E, F, Fut> Tool for CustomTool<I, F>
where
    I: DeserializeOwned + Send + 'static,
    O: Into<ToolOutput>,
    E: Into<ToolError>,
    F: Fn(ToolContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn input_schema(&self) -> Value {
        self.schema.clone()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let obj = validate_object(&self.name, &self.schema, input, self.allow_unknown_keys)?;
        let typed: I = serde_json::from_value(Value::Object(obj))
            .map_err(|_| ToolError::invalid_arguments(&self.name))?;
        (self.handler)(ctx.clone(), typed)
            .await
            .map(Into::into)
            .map_err(Into::into)
    }
}

impl From<String> for ToolError {
    fn from(s: String) -> Self {
        ToolError::msg(s)
    }
}

impl From<&str> for ToolError {
    fn from(s: &str) -> Self {
        ToolError::msg(s)
    }
}
