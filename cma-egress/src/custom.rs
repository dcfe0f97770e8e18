//! Custom services: `tower::Service`s the host registers by name and `custom` rules refer to.
//!
//! A service receives an allowed request (after injections and placeholders) and either answers
//! it itself ([`CustomOutcome::Respond`]) or hands back a rewritten request for the proxy to send
//! on ([`CustomOutcome::Forward`]: method, path, headers and body may change; the destination may
//! not — a changed scheme or authority is refused; a matching `route` still decides where it
//! goes). Services are the operator's code: their rewrite is not decided again. A rule naming a
//! service that is not registered refuses its requests (fail closed).

use std::collections::HashMap;
use std::fmt;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::error::Result;
use crate::policy::validate_service_name;
use crate::proxy::body::{BoxError, EgressBody};

/// What a custom service did with a request.
#[derive(Debug)]
pub enum CustomOutcome {
    /// Send this (rewritten) request to the original destination.
    Forward(Request<EgressBody>),
    /// Answer the sandbox with this response.
    Respond(Response<EgressBody>),
}

/// A registered service, type-erased.
pub type CustomService = BoxCloneSyncService<Request<EgressBody>, CustomOutcome, BoxError>;

/// The services `custom` rules may name.
#[derive(Clone, Default)]
pub struct CustomServices {
    map: HashMap<String, CustomService>,
}

impl fmt::Debug for CustomServices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl CustomServices {
    /// No services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `service` under `name` (replacing any previous one).
    pub fn register<S>(&mut self, name: &str, service: S) -> Result<()>
    where
        S: Service<Request<EgressBody>, Response = CustomOutcome> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        validate_service_name(name)?;
        self.map.insert(
            name.to_owned(),
            BoxCloneSyncService::new(service.map_err(Into::into)),
        );
        Ok(())
    }

    /// The service registered under `name`.
    pub fn get(&self, name: &str) -> Option<CustomService> {
        self.map.get(name).cloned()
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}
