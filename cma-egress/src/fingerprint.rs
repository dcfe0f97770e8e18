//! Policy fingerprints: a stable digest of a policy's canonical form.
//!
//! The canonical form is the policy re-serialised from its validated shape: fields in a fixed
//! order, hosts normalised (case, trailing dots, IDNA), methods sorted, defaults omitted. So key
//! order, spelling variants and whitespace in the source JSON do not change the fingerprint, and
//! any change of meaning does. Secret *names* are part of it; secret *values* never are (a policy
//! does not contain them), so rotating a secret keeps the fingerprint. The control plane records
//! the fingerprint with the session (and the StateStore's policy table), and audit records carry
//! it, so one can tell which version of a policy decided a request.

use std::fmt;

use sha2::{Digest, Sha256};

/// Version tag of the canonical form; bumped if the form ever changes.
const PREFIX: &str = "fp1-";

/// A policy fingerprint: `fp1-` and 32 hex digits (the first 128 bits of SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub(crate) fn of(canonical: &impl serde::Serialize) -> Self {
        let bytes = serde_json::to_vec(canonical).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        let mut s = String::with_capacity(PREFIX.len() + 32);
        s.push_str(PREFIX);
        for b in &digest[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        Fingerprint(s)
    }

    pub(crate) fn placeholder() -> Self {
        Fingerprint(String::new())
    }

    /// The fingerprint text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
