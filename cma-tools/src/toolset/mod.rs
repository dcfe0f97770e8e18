//! The built-in `agent_toolset_20260401` tools — `bash`, `read`, `write`, `edit`, `glob`,
//! `grep` — with the official definitions, input validation, limits, output formats and error
//! texts (docs/protocol.md §6), written once against `&dyn Sandbox`; plus the `execute` tool for
//! sandboxes that run JavaScript.
//!
//! Input validation follows the official tools (pydantic "lax" mode): the input must be an
//! object, every key must be a known parameter, required keys must be present, and values must
//! have the declared type after lax coercion (`"500"` for an integer, `["1","1"]` for
//! `view_range`, `"yes"` for a boolean). A failure reads
//! `ValueError('Invalid arguments for function <name>')`.

pub(crate) mod bash;
pub(crate) mod execute;
pub(crate) mod files;
pub(crate) mod glob;
pub(crate) mod lines;
pub(crate) mod path;
pub(crate) mod search;
pub(crate) mod validate;

use std::sync::Arc;

use cma_sandbox::Capabilities;
use serde_json::{Map, Value, json};

pub use bash::{BashTool, NO_SHELL, NO_SHELL_USE_EXECUTE};
pub use execute::ExecuteTool;
pub use files::{EditTool, ReadTool, WriteTool};
pub use glob::GlobTool;
pub use path::{PathError, resolve_path};
pub use search::GrepTool;

use crate::registry::{Tool, ToolRegistry};

/// The six official tools, in the official order.
pub fn agent_toolset() -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(BashTool),
        Arc::new(ReadTool),
        Arc::new(WriteTool),
        Arc::new(EditTool),
        Arc::new(GlobTool),
        Arc::new(GrepTool),
    ]
}

/// A registry with the official tools, plus `execute` when the sandbox runs JavaScript.
pub fn registry_for(capabilities: &Capabilities) -> ToolRegistry {
    let mut r = ToolRegistry::new();
    r.extend(agent_toolset());
    if capabilities.execute_js {
        r.register(Arc::new(ExecuteTool));
    }
    r
}

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_owned(), v);
    }
    Value::Object(m)
}

/// `{"anyOf":[<ty>,{"type":"null"}],"default":null,"title":<title>}`.
fn optional(ty: Value, title: &str) -> Value {
    obj(vec![
        ("anyOf", json!([ty, {"type": "null"}])),
        ("default", Value::Null),
        ("title", title.into()),
    ])
}

/// `{"title":<title>,"type":<ty>}`.
fn plain(ty: &str, title: &str) -> Value {
    obj(vec![("title", title.into()), ("type", ty.into())])
}

/// An input schema as pydantic emits it for the official input models.
fn model_schema(
    description: &str,
    properties: Vec<(&str, Value)>,
    required: &[&str],
    title: &str,
) -> Value {
    let mut pairs = vec![
        ("additionalProperties", Value::Bool(true)),
        ("description", description.into()),
        ("properties", obj(properties)),
    ];
    if !required.is_empty() {
        pairs.push(("required", json!(required)));
    }
    pairs.push(("title", title.into()));
    pairs.push(("type", "object".into()));
    obj(pairs)
}

pub(crate) fn bash_schema() -> Value {
    model_schema(
        "Input payload for the `bash` tool of the\n`agent_toolset_20260401` toolset.\n\nAll fields are optional;\na normal invocation supplies `command`, while `restart=true`\n(with no `command`) reboots the runner-side bash session.",
        vec![
            ("command", optional(json!({"type": "string"}), "Command")),
            ("restart", optional(json!({"type": "boolean"}), "Restart")),
            (
                "timeout_ms",
                optional(json!({"type": "integer"}), "Timeout Ms"),
            ),
        ],
        &[],
        "BetaManagedAgentsAgentToolset20260401BashInput",
    )
}

pub(crate) fn read_schema() -> Value {
    model_schema(
        "Input payload for the `read` tool.\n\nReads file contents\nrelative to the runner's working directory (or absolute when\nthe runner permits).",
        vec![
            ("file_path", plain("string", "File Path")),
            (
                "view_range",
                optional(
                    obj(vec![
                        ("items", json!({"type": "integer"})),
                        ("type", "array".into()),
                    ]),
                    "View Range",
                ),
            ),
        ],
        &["file_path"],
        "BetaManagedAgentsAgentToolset20260401ReadInput",
    )
}

pub(crate) fn write_schema() -> Value {
    model_schema(
        "Input payload for the `write` tool.\n\nWrites (overwriting) the\nentire file contents.",
        vec![
            ("content", plain("string", "Content")),
            ("file_path", plain("string", "File Path")),
        ],
        &["content", "file_path"],
        "BetaManagedAgentsAgentToolset20260401WriteInput",
    )
}

pub(crate) fn edit_schema() -> Value {
    model_schema(
        "Input payload for the `edit` tool.\n\nPerforms a string\nreplacement in the named file; by default `old_string` must\noccur exactly once.",
        vec![
            ("file_path", plain("string", "File Path")),
            ("new_string", plain("string", "New String")),
            ("old_string", plain("string", "Old String")),
            (
                "replace_all",
                optional(json!({"type": "boolean"}), "Replace All"),
            ),
        ],
        &["file_path", "new_string", "old_string"],
        "BetaManagedAgentsAgentToolset20260401EditInput",
    )
}

pub(crate) fn glob_schema() -> Value {
    model_schema(
        "Input payload for the `glob` tool.\n\nReturns paths matching a\ndoublestar glob pattern, newest first.",
        vec![
            ("pattern", plain("string", "Pattern")),
            ("path", optional(json!({"type": "string"}), "Path")),
        ],
        &["pattern"],
        "BetaManagedAgentsAgentToolset20260401GlobInput",
    )
}

pub(crate) fn grep_schema() -> Value {
    model_schema(
        "Input payload for the `grep` tool.\n\nSearches file contents for\na regular expression, returning matching lines.",
        vec![
            ("pattern", plain("string", "Pattern")),
            ("path", optional(json!({"type": "string"}), "Path")),
        ],
        &["pattern"],
        "BetaManagedAgentsAgentToolset20260401GrepInput",
    )
}
