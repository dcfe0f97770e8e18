//! Who this process is to the API: the `Anthropic-Worker-ID` its polls carry.
//!
//! The official worker always sends a worker id on `work/poll` — by default `<hostname>-` and the
//! first 12 hex digits of a random UUID v4, one per process (docs/protocol.md §1.2) — and the API counts
//! `workers_polling` in `work/stats` from it. A poll without it is served, but the worker does
//! not show up as connected. [`default_worker_id`] builds the same shape once per process.

use std::sync::OnceLock;

/// Longest host name part kept in a worker id (a DNS name is at most 253 bytes).
const MAX_HOST_NAME: usize = 253;

/// This process's default `Anthropic-Worker-ID`: `<hostname>-<12 hex digits of a uuid4>`, the
/// official worker's format. Generated on first use and the same for the rest of the process's
/// life, so the API sees one worker per process however many planes or polls it runs.
pub fn default_worker_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}", host_name(), &suffix[..12])
    })
}

/// The machine's host name as `gethostname(2)` reports it (Linux: the kernel's `hostname`),
/// else `$HOSTNAME`, else `localhost`; only visible ASCII is kept, so the result is always a
/// valid header value.
pub fn host_name() -> String {
    let candidates = [
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        std::env::var("HOSTNAME").ok(),
        std::env::var("COMPUTERNAME").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|h| sanitize(&h))
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Keep the visible ASCII of `raw` (trimmed), at most [`MAX_HOST_NAME`] bytes.
fn sanitize(raw: &str) -> String {
    raw.trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_HOST_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_worker_id_has_the_sdk_shape_and_is_stable() {
        let id = default_worker_id();
        let (host, suffix) = id.rsplit_once('-').expect("host-suffix");
        assert_eq!(host, host_name());
        assert_eq!(suffix.len(), 12);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(default_worker_id(), id, "one id per process");
        assert!(http::HeaderValue::from_str(id).is_ok());
    }

    #[test]
    fn host_names_are_reduced_to_header_safe_text() {
        assert_eq!(sanitize(" box-1.local\n"), "box-1.local");
        assert_eq!(sanitize("h\u{e9}te\u{0}x y"), "htexy");
        assert_eq!(sanitize(&"a".repeat(400)).len(), MAX_HOST_NAME);
        assert_eq!(sanitize("\n"), "");
    }
}
