//! The bridge from the runner to `cma-tools`: a [`ToolExecutor`] over a session's
//! [`SessionTools`], and the [`ExecutorFactory`] that builds one per placed session with the
//! official toolset (plus `execute` where the sandbox runs JavaScript) and the host's custom tools.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cma_core::control::tools::ToolsetFactory;
//! # fn lookup_tool() -> Arc<dyn cma_tools::Tool> { unimplemented!() }
//! let factory = ToolsetFactory::new().with_tool(lookup_tool());
//! # let _ = factory;
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cma_sandbox::{Mount, Sandbox};
use cma_tools::{PostedResult, SessionTools, Tool, ToolContext, ToolRegistry};

use crate::control::host::ExecutorFactory;
use crate::protocol::{ContentBlock, Session, Work};
use crate::runner::memory::memory_mounts;
use crate::runner::session::{HostError, ToolExecutor, ToolOutcome};
use crate::runner::state::ToolCall;

/// Runs a session's tool calls with its [`SessionTools`].
#[derive(Debug, Clone)]
pub struct ToolsExecutor {
    tools: SessionTools,
}

impl ToolsExecutor {
    /// Wrap one session's tools.
    pub fn new(tools: SessionTools) -> Self {
        Self { tools }
    }

    /// The wrapped tools.
    pub fn tools(&self) -> &SessionTools {
        &self.tools
    }
}

/// The runner's outcome for a posted result: the same `is_error` and content blocks.
pub fn outcome_from_posted(posted: PostedResult) -> ToolOutcome {
    let content: Vec<ContentBlock> = posted
        .content
        .into_iter()
        .map(|block| serde_json::from_value(block.clone()).unwrap_or(ContentBlock::Other(block)))
        .collect();
    if content.is_empty() {
        // Never post an empty list (§5.5); PostedResult already guarantees this.
        return if posted.is_error {
            ToolOutcome::error("")
        } else {
            ToolOutcome::text("")
        };
    }
    ToolOutcome {
        is_error: posted.is_error,
        content,
    }
}

#[async_trait]
impl ToolExecutor for ToolsExecutor {
    fn tool_names(&self) -> Vec<String> {
        self.tools.names()
    }

    async fn execute(&self, call: &ToolCall) -> ToolOutcome {
        let name = call.event.name.as_str();
        match self.tools.call(name, call.event.input.clone()).await {
            Some(posted) => outcome_from_posted(posted),
            // Only reachable when the session's context was cancelled (the runner never asks
            // for a name outside `tool_names`): answer rather than leave the call pending.
            None => ToolOutcome::error(format!("tool {name} was cancelled")),
        }
    }

    async fn close(&self) {
        self.tools.close().await;
    }

    fn sandbox(&self) -> Option<Arc<dyn Sandbox>> {
        Some(self.tools.context.sandbox.clone())
    }
}

type Configure = dyn Fn(ToolContext, &Work, &Session) -> ToolContext + Send + Sync;

/// Builds each placed session's executor: the official toolset for the sandbox's capabilities
/// (`cma_tools::registry_for`), the host's custom tools, and a [`ToolContext`] carrying the
/// session and work ids, the extra roots of [`ToolsetFactory::with_mounts`], and the folders of
/// the session's memory stores (allowed roots; read-only stores also read-only roots, as the
/// official worker does, docs/protocol.md §6.1).
#[derive(Clone, Default)]
pub struct ToolsetFactory {
    custom: Vec<Arc<dyn Tool>>,
    mounts: Vec<Mount>,
    configure: Option<Arc<Configure>>,
}

impl fmt::Debug for ToolsetFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolsetFactory")
            .field(
                "custom",
                &self.custom.iter().map(|t| t.name()).collect::<Vec<_>>(),
            )
            .field("mounts", &self.mounts)
            .field("configure", &self.configure.is_some())
            .finish()
    }
}

impl ToolsetFactory {
    /// The official toolset only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also offer `tool` (a custom tool, dispatched for `agent.custom_tool_use`, or a
    /// replacement of a built-in of the same name).
    #[must_use]
    pub fn with_tool(mut self, tool: Arc<dyn Tool>) -> Self {
        self.custom.push(tool);
        self
    }

    /// Also offer the `call_service` tool: named private services through each session's
    /// egress policy (see [`call_service`](crate::control::call_service)).
    #[cfg(feature = "egress")]
    #[must_use]
    pub fn with_call_service(self, egress: Arc<crate::control::egress::SessionEgress>) -> Self {
        self.with_tool(crate::control::call_service::call_service_tool(egress))
    }

    /// Let the file tools reach these mounts (read-only ones refuse `write`/`edit`). Use the
    /// same list as the sandbox spec's `mounts`.
    #[must_use]
    pub fn with_mounts(mut self, mounts: Vec<Mount>) -> Self {
        self.mounts = mounts;
        self
    }

    /// Adjust every session's context (limits, shell launcher, environment) before use.
    #[must_use]
    pub fn configure(
        mut self,
        f: impl Fn(ToolContext, &Work, &Session) -> ToolContext + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// The registry a sandbox with these capabilities gets.
    pub fn registry(&self, sandbox: &dyn Sandbox) -> ToolRegistry {
        let mut registry = cma_tools::toolset::registry_for(&sandbox.capabilities());
        registry.extend(self.custom.iter().cloned());
        registry
    }

    /// The session's tools in `sandbox`.
    pub fn session_tools(
        &self,
        sandbox: Arc<dyn Sandbox>,
        work: &Work,
        session: &Session,
    ) -> SessionTools {
        let registry = Arc::new(self.registry(sandbox.as_ref()));
        let memory = memory_mounts(session, sandbox.workdir()).unwrap_or_default();
        let mut context = ToolContext::new(sandbox)
            .with_ids(session.id.as_str(), work.id.as_str())
            .with_mounts(&self.mounts)
            .with_allowed_roots(memory.iter().map(|m| m.root.clone()))
            .with_read_only_roots(
                memory
                    .iter()
                    .filter(|m| m.read_only)
                    .map(|m| m.root.clone()),
            );
        if let Some(configure) = &self.configure {
            context = configure(context, work, session);
        }
        SessionTools::new(registry, context)
    }
}

#[async_trait]
impl ExecutorFactory for ToolsetFactory {
    async fn executor(
        &self,
        sandbox: Arc<dyn Sandbox>,
        work: &Work,
        session: &Session,
    ) -> Result<Arc<dyn ToolExecutor>, HostError> {
        Ok(Arc::new(ToolsExecutor::new(
            self.session_tools(sandbox, work, session),
        )))
    }
}
