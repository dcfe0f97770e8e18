//! The Claude Managed Agents (CMA) self-hosted environment protocol, in Rust.
//!
//! `cma-core` speaks the wire protocol of the official `anthropic` SDK 2.10.0 (see `docs/protocol.md`):
//!
//! * [`protocol`]: typed objects (work items, heartbeats, sessions, session events, environments);
//!   unknown fields and unknown event types are preserved, never rejected.
//! * [`client`]: the HTTP clients (work queue, environments, sessions, event stream).
//! * [`retry`]: the SDK's retry and backoff arithmetic, as pure functions.
//! * [`sse`]: the incremental Server-Sent Events parser.
//! * [`webhook`]: Standard Webhooks signing and verification of CMA event deliveries, the typed
//!   event envelope, and a tower `VerifyLayer` for receivers.
//! * `emulator` (feature `emulator`): a local CMA server with scripted agents, for tests and demos.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod control;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod protocol;
pub mod retry;
pub mod runner;
pub mod sse;
pub mod webhook;
