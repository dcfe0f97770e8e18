//! [`SandboxHostBuilder`]: assembles a [`SandboxHost`] from backends, a placement rule, the
//! tools and the host's settings, taking each by value so a host never writes `Arc<dyn …>`
//! itself.
//!
//! ```
//! # #[cfg(feature = "isolate")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cma_core::control::host::SandboxHost;
//! use cma_core::sandbox::isolate::IsolateBackend;
//!
//! let root = tempfile::tempdir()?;
//! // One backend: every session goes there, with the official toolset.
//! let host = SandboxHost::builder()
//!     .backend(IsolateBackend::new(root.path())?)
//!     .build()?;
//! assert_eq!(host.backend_names(), ["isolate"]);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "isolate"))]
//! # fn main() {}
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use cma_sandbox::SandboxBackend;

use super::host::{ExecutorFactory, SandboxHost, SandboxHostConfig};
use super::select::{BackendSelector, Placement, SandboxProfile};
use super::snapshots::WorkspaceSnapshots;
use super::tools::ToolsetFactory;
use crate::runner::session::HostError;

/// Builds a [`SandboxHost`]; start with [`SandboxHost::builder`].
#[must_use]
pub struct SandboxHostBuilder {
    backends: Vec<Arc<dyn SandboxBackend>>,
    selector: Option<Arc<dyn BackendSelector>>,
    factory: Option<Arc<dyn ExecutorFactory>>,
    config: SandboxHostConfig,
    snapshots: Option<Arc<dyn WorkspaceSnapshots>>,
    #[cfg(feature = "store")]
    state: Option<Arc<dyn cma_store::state::StateStore>>,
    #[cfg(feature = "egress")]
    egress: Option<Arc<super::egress::SessionEgress>>,
}

impl std::fmt::Debug for SandboxHostBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHostBuilder")
            .field(
                "backends",
                &self.backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
            )
            .field("selector", &self.selector.is_some())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SandboxHostBuilder {
    pub(super) fn new() -> Self {
        Self {
            backends: Vec::new(),
            selector: None,
            factory: None,
            config: SandboxHostConfig::default(),
            snapshots: None,
            #[cfg(feature = "store")]
            state: None,
            #[cfg(feature = "egress")]
            egress: None,
        }
    }

    /// Add a backend, registered under its [`SandboxBackend::name`].
    pub fn backend(self, backend: impl SandboxBackend + 'static) -> Self {
        self.shared_backend(Arc::new(backend))
    }

    /// Add a backend the caller also keeps a handle on (for example to fill a Docker warm pool).
    pub fn shared_backend(mut self, backend: Arc<dyn SandboxBackend>) -> Self {
        self.backends.push(backend);
        self
    }

    /// Which backend and profile each session gets: a [`RuleSelector`](super::select::RuleSelector),
    /// [`PlacementRules`](super::rules::PlacementRules) or a closure. Optional with a single
    /// backend (every session goes there); required with several.
    pub fn selector(mut self, selector: impl BackendSelector) -> Self {
        self.selector = Some(Arc::new(selector));
        self
    }

    /// What runs inside each sandbox. Default: [`ToolsetFactory::new`], the official toolset.
    pub fn tools(mut self, factory: impl ExecutorFactory + 'static) -> Self {
        self.factory = Some(Arc::new(factory));
        self
    }

    /// Keep-warm time, the sandbox template and the other host settings.
    pub fn config(mut self, config: SandboxHostConfig) -> Self {
        self.config = config;
        self
    }

    /// Snapshot each session's workspace when its item ends and restore it into the session's
    /// next fresh sandbox (see [`SandboxHost::with_snapshots`]).
    pub fn snapshots(mut self, snapshots: impl WorkspaceSnapshots + 'static) -> Self {
        self.snapshots = Some(Arc::new(snapshots));
        self
    }

    /// Record sandboxes and session transitions (see [`SandboxHost::state_store`]); give the
    /// control plane the same store.
    #[cfg(feature = "store")]
    pub fn state_store(mut self, store: Arc<dyn cma_store::state::StateStore>) -> Self {
        self.state = Some(store);
        self
    }

    /// Wire each session's sandbox to an egress proxy (see [`SandboxHost::with_egress`]).
    #[cfg(feature = "egress")]
    pub fn egress(mut self, egress: Arc<super::egress::SessionEgress>) -> Self {
        self.egress = Some(egress);
        self
    }

    /// The host. Fails without a backend, with two backends of the same name, or with several
    /// backends and no selector.
    pub fn build(self) -> Result<SandboxHost, HostError> {
        let mut seen = HashMap::new();
        for b in &self.backends {
            if seen.insert(b.name().to_owned(), ()).is_some() {
                return Err(HostError::new(format!(
                    "two sandbox backends are named {:?}; each backend needs its own name",
                    b.name()
                )));
            }
        }
        let selector = match (self.selector, self.backends.as_slice()) {
            (_, []) => return Err(HostError::new("a sandbox host needs at least one backend")),
            (Some(selector), _) => selector,
            (None, [only]) => Arc::new(OnlyBackend(only.name().to_owned())),
            (None, _) => {
                return Err(HostError::new(
                    "several sandbox backends need a selector that says which one a session gets",
                ));
            }
        };
        let factory = self
            .factory
            .unwrap_or_else(|| Arc::new(ToolsetFactory::new()));
        let mut host = SandboxHost::from_parts(self.backends, selector, factory, self.config);
        if let Some(snapshots) = self.snapshots {
            host = host.with_snapshots(snapshots);
        }
        #[cfg(feature = "store")]
        if let Some(state) = self.state {
            host = host.state_store(state);
        }
        #[cfg(feature = "egress")]
        if let Some(egress) = self.egress {
            host = host.with_egress(egress);
        }
        Ok(host)
    }
}

/// The selector of a host with a single backend.
struct OnlyBackend(String);

impl BackendSelector for OnlyBackend {
    fn select(&self, _: &Placement<'_>) -> SandboxProfile {
        SandboxProfile::backend(self.0.clone())
    }
}
