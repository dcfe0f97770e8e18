//! The names a host composing a control plane uses, in one import:
//! `use cma_core::prelude::*;` (see the [crate root](crate) for the composition).
//!
//! Backends and stores appear with their features: [`IsolateBackend`] (`isolate`),
//! [`DockerBackend`] (`docker`), [`SnapshotStore`] and the state stores (`store`).

pub use crate::client::{Client, ClientConfig, Credential};
pub use crate::control::host::{ExecutorFactory, SandboxHost, SandboxHostConfig};
pub use crate::control::host_builder::SandboxHostBuilder;
pub use crate::control::plane::{ClaimMode, ControlPlane, ControlPlaneConfig, WebhookAction};
pub use crate::control::rules::PlacementRules;
pub use crate::control::select::{BackendSelector, RuleSelector, SandboxProfile};
pub use crate::control::snapshots::{SnapshotRetention, WorkspaceSnapshots};
pub use crate::control::tools::ToolsetFactory;
pub use crate::listener::{Listener, ListenerLimits};
pub use crate::protocol::{EnvironmentId, SessionId, WorkId};
pub use crate::runner::session::RunnerConfig;
pub use crate::webhook::{Verifier, VerifyLayer, WebhookEvent, WebhookId, WebhookSecret};
pub use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
pub use cma_tools::{CustomTool, Tool, ToolRegistry, custom_tool};

#[cfg(feature = "docker")]
pub use cma_sandbox::docker::{DockerBackend, DockerConfig};
#[cfg(feature = "isolate")]
pub use cma_sandbox::isolate::IsolateBackend;
#[cfg(feature = "store")]
pub use cma_store::state::{MemoryStateStore, SqliteStateStore, StateStore};
#[cfg(feature = "postgres")]
pub use cma_store::state::{PostgresOptions, PostgresStateStore};
#[cfg(feature = "store")]
pub use cma_store::{SnapshotConfig, SnapshotStore};
