//! The [`Tool`] trait and the [`ToolRegistry`] a runner dispatches calls through.
//!
//! The registry is keyed by name; registering a tool whose name is already present replaces the
//! earlier one (a custom tool may shadow a built-in, docs/protocol.md §6.6). A call for a name that is
//! not registered is *not* answered ([`DispatchError::UnknownTool`]): another client owns it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::context::ToolContext;
use crate::output::{PostedResult, ToolError, ToolOutput};

/// Outer bound on one tool call when the context sets no deadline (§5.4 `TOOL_TIMEOUT`).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(150);

/// A tool's advertised definition: `{"name", "description", "input_schema"}` in that order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolDefinition {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its input object.
    pub input_schema: Value,
}

/// Something the agent can call. Dyn-safe; held as `Arc<dyn Tool>`.
#[async_trait]
pub trait Tool: Send + Sync {
    /// The name the agent calls it by.
    fn name(&self) -> &str;

    /// Its description.
    fn description(&self) -> &str;

    /// JSON Schema of its input.
    fn input_schema(&self) -> Value;

    /// Its full definition.
    fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: self.name().to_owned(),
            description: self.description().to_owned(),
            input_schema: self.input_schema(),
        }
    }

    /// Run one call. `input` is the call's raw JSON input; the tool validates it.
    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError>;
}

/// Why a call produced no result to post.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// No tool of that name is registered: leave the call for another client.
    #[error("no tool named {0:?} is registered here")]
    UnknownTool(String),
    /// The call was cancelled before it finished: nothing is posted.
    #[error("tool {0:?} was cancelled")]
    Cancelled(String),
}

/// Tools by name, in registration order.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Vec<Arc<dyn Tool>>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a tool; one with the same name registered earlier is replaced (shadowed).
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> &mut Self {
        let name = tool.name().to_owned();
        match self.index.get(&name) {
            Some(&i) => self.tools[i] = tool,
            None => {
                self.index.insert(name, self.tools.len());
                self.tools.push(tool);
            }
        }
        self
    }

    /// Register every tool of `tools` in order.
    pub fn extend<I: IntoIterator<Item = Arc<dyn Tool>>>(&mut self, tools: I) -> &mut Self {
        for t in tools {
            self.register(t);
        }
        self
    }

    /// Builder form of [`ToolRegistry::register`].
    #[must_use]
    pub fn with(mut self, tool: Arc<dyn Tool>) -> Self {
        self.register(tool);
        self
    }

    /// Remove a tool by name.
    pub fn remove(&mut self, name: &str) -> Option<Arc<dyn Tool>> {
        let i = self.index.remove(name)?;
        let tool = self.tools.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        Some(tool)
    }

    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.index.get(name).map(|&i| &self.tools[i])
    }

    /// Whether a tool called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Registered names, in registration order.
    pub fn names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.name().to_owned()).collect()
    }

    /// Definitions to advertise, in registration order.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.tools.iter().map(|t| t.definition()).collect()
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Run the call `name(input)` and build the result to post (§5.5): bounded by the context's
    /// deadline, or [`TOOL_TIMEOUT`] from now when it has none (a miss reads
    /// `tool '<name>' timed out`); cancelled through the context's token.
    pub async fn dispatch(
        &self,
        ctx: &ToolContext,
        name: &str,
        input: Value,
    ) -> Result<PostedResult, DispatchError> {
        let tool = self
            .get(name)
            .ok_or_else(|| DispatchError::UnknownTool(name.to_owned()))?;
        run_bounded(tool.as_ref(), ctx, input).await
    }
}

/// Run one tool call under the context's deadline (or [`TOOL_TIMEOUT`]) and cancellation, and
/// convert its result.
pub async fn run_bounded(
    tool: &dyn Tool,
    ctx: &ToolContext,
    input: Value,
) -> Result<PostedResult, DispatchError> {
    let deadline = ctx
        .deadline
        .unwrap_or_else(|| Instant::now() + TOOL_TIMEOUT);
    let call_ctx = ctx.for_call(Some(deadline));
    let cancel = call_ctx.cancel.clone();
    tokio::select! {
        r = tokio::time::timeout_at(deadline, tool.call(&call_ctx, input)) => match r {
            Ok(result) => Ok(PostedResult::from_result(result)),
            Err(_) => {
                // Let a tool that holds session state (the shell) see the call was abandoned.
                call_ctx.cancel.cancel();
                Ok(PostedResult::timed_out(tool.name()))
            }
        },
        () = cancel.cancelled() => Err(DispatchError::Cancelled(tool.name().to_owned())),
    }
}

/// One session's tools: a registry plus the session's context. This is what a runner's tool
/// executor wraps: [`SessionTools::names`] are the calls it owns, [`SessionTools::call`] answers
/// one, [`SessionTools::close`] ends the session (kills the shell).
#[derive(Debug, Clone)]
pub struct SessionTools {
    /// The tools.
    pub registry: Arc<ToolRegistry>,
    /// The session's context (shared state lives in it).
    pub context: ToolContext,
}

impl SessionTools {
    /// Bundle a registry and a session context.
    pub fn new(registry: Arc<ToolRegistry>, context: ToolContext) -> Self {
        Self { registry, context }
    }

    /// Names of the tools that run here.
    pub fn names(&self) -> Vec<String> {
        self.registry.names()
    }

    /// Run one call (bounded by [`TOOL_TIMEOUT`] unless the context sets a deadline). `None`
    /// when the tool is not registered here or the call was cancelled: post nothing.
    pub async fn call(&self, name: &str, input: Value) -> Option<PostedResult> {
        self.registry
            .dispatch(&self.context, name, input)
            .await
            .ok()
    }

    /// End the session: kill the persistent shell, if any.
    pub async fn close(&self) {
        self.context.close().await;
    }
}
