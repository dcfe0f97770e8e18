//! WebSocket relays: after the upgrade request was decided and the upstream answered
//! `101 Switching Protocols`, both connections are handed over and bytes are copied both ways
//! (with the idle timeout) until either side closes. The request's audit record is emitted when
//! the relay ends, with the bytes moved.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::body::AuditTicket;
use super::io::{IdleIo, splice};

/// Relay between the sandbox's side (`down`) and the upstream's (`up`) once both upgrades
/// complete.
pub(crate) fn spawn_relay(
    down: OnUpgrade,
    up: OnUpgrade,
    ticket: AuditTicket,
    idle: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let (down, up) = match tokio::join!(down, up) {
            (Ok(d), Ok(u)) => (d, u),
            // The record is emitted (without relay bytes) when `ticket` drops.
            _ => return,
        };
        let sandbox = IdleIo::new(TokioIo::new(down), idle);
        let upstream = IdleIo::new(TokioIo::new(up), idle);
        splice(
            sandbox,
            upstream,
            ticket.bytes_in.clone(),
            ticket.bytes_out.clone(),
            shutdown.cancelled_owned(),
        )
        .await;
        drop(ticket);
    });
}
