//! The small text file (`<root>/<id>/sandbox.meta`) that lets the isolate backend list and resume
//! a sandbox: creation time, session/environment ids, labels and mounts. One record per line,
//! fields separated by spaces, every value percent-escaped so no value can break the format.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::{Mount, SandboxSpec};

const MAGIC: &str = "cma-isolate-sandbox 1";
/// Largest metadata file read back, in bytes.
pub(crate) const MAX_META_BYTES: u64 = 1024 * 1024;

/// What is persisted about one sandbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Meta {
    pub created: Option<SystemTime>,
    pub session_id: Option<String>,
    pub environment_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    /// Heap cap for `execute` (from `SandboxSpec::memory_bytes`).
    pub memory_bytes: Option<u64>,
    /// Workspace quota (from `SandboxSpec::disk_bytes`).
    pub disk_bytes: Option<u64>,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
        out.push('-');
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    if s == "%-" {
        return Some(String::new());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Meta {
    pub fn from_spec(spec: &SandboxSpec, mounts: Vec<Mount>) -> Self {
        Self {
            created: Some(SystemTime::now()),
            session_id: spec.session_id.clone(),
            environment_id: spec.environment_id.clone(),
            labels: spec.labels.clone(),
            mounts,
            memory_bytes: spec.memory_bytes,
            disk_bytes: spec.disk_bytes,
        }
    }

    pub fn encode(&self) -> Result<String> {
        let mut out = String::from(MAGIC);
        out.push('\n');
        if let Some(t) = self.created {
            let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            out.push_str(&format!("created {secs}\n"));
        }
        if let Some(s) = &self.session_id {
            out.push_str(&format!("session {}\n", escape(s)));
        }
        if let Some(s) = &self.environment_id {
            out.push_str(&format!("environment {}\n", escape(s)));
        }
        if let Some(m) = self.memory_bytes {
            out.push_str(&format!("memory {m}\n"));
        }
        if let Some(d) = self.disk_bytes {
            out.push_str(&format!("disk {d}\n"));
        }
        for (k, v) in &self.labels {
            out.push_str(&format!("label {} {}\n", escape(k), escape(v)));
        }
        for m in &self.mounts {
            let host = m.host_path.to_str().ok_or_else(|| {
                SandboxError::new(
                    SandboxErrorKind::InvalidInput,
                    format!("mount {}: host path is not UTF-8", m.sandbox_path),
                )
            })?;
            let mode = if m.read_only { "ro" } else { "rw" };
            out.push_str(&format!(
                "mount {mode} {} {}\n",
                escape(&m.sandbox_path),
                escape(host)
            ));
        }
        Ok(out)
    }

    pub fn decode(text: &str) -> Result<Self> {
        let bad = || SandboxError::new(SandboxErrorKind::Backend, "corrupt sandbox metadata");
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad());
        }
        let mut meta = Meta::default();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["created", secs] => {
                    let secs: u64 = secs.parse().map_err(|_| bad())?;
                    meta.created = UNIX_EPOCH.checked_add(Duration::from_secs(secs));
                }
                ["memory", n] => meta.memory_bytes = Some(n.parse().map_err(|_| bad())?),
                ["disk", n] => meta.disk_bytes = Some(n.parse().map_err(|_| bad())?),
                ["session", v] => meta.session_id = Some(unescape(v).ok_or_else(bad)?),
                ["environment", v] => meta.environment_id = Some(unescape(v).ok_or_else(bad)?),
                ["label", k, v] => {
                    meta.labels
                        .insert(unescape(k).ok_or_else(bad)?, unescape(v).ok_or_else(bad)?);
                }
                ["mount", mode, sp, host] => meta.mounts.push(Mount {
                    sandbox_path: unescape(sp).ok_or_else(bad)?,
                    host_path: PathBuf::from(unescape(host).ok_or_else(bad)?),
                    read_only: match *mode {
                        "ro" => true,
                        "rw" => false,
                        _ => return Err(bad()),
                    },
                }),
                [""] => {}
                _ => return Err(bad()),
            }
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_values_with_spaces_newlines_and_percent() {
        let mut labels = BTreeMap::new();
        labels.insert("a b".to_string(), "x\ny%z".to_string());
        labels.insert("empty".to_string(), String::new());
        let meta = Meta {
            created: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            session_id: Some("sesn_1 two".into()),
            environment_id: None,
            labels,
            mounts: vec![Mount::read_only("/memory/notes", "/srv/mem ory/é")],
            memory_bytes: Some(1 << 20),
            disk_bytes: Some(5 << 20),
        };
        let back = Meta::decode(&meta.encode().unwrap()).unwrap();
        assert_eq!(back, meta);
    }

    #[test]
    fn corrupt_meta_is_a_typed_error() {
        assert!(Meta::decode("nope").is_err());
        assert!(Meta::decode(&format!("{MAGIC}\nmount xx a b\n")).is_err());
        assert!(Meta::decode(&format!("{MAGIC}\nsession %zz\n")).is_err());
    }
}
