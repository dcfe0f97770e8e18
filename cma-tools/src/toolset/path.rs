//! The file tools' path policy (docs/protocol.md §6.1), evaluated through the sandbox API only.
//!
//! A path is joined to the workdir when relative, collapsed lexically (`.`, `..`, `//`), then
//! every symlink on it is followed with `lstat`/`read_link` — including a dangling final one,
//! at most 40 hops, a loop being an error — and trailing components that do not exist yet are
//! kept as spelled. The canonical result must lie inside the workdir or an allowed root; the
//! tools then operate on that canonical path, so a symlink cannot be followed afterwards.
//!
//! The sandbox confines independently (security); this module gives the official *policy* and
//! its exact texts on top.

use cma_sandbox::{SandboxError, SandboxErrorKind};

use crate::context::ToolContext;
use crate::output::ToolError;
use crate::pyfmt::repr_str;

/// Symlink hops allowed while resolving one path (`_MAX_SYMLINK_HOPS`).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// A path the policy refuses. Displays as the official text (without the `<tool>: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The canonical path is outside the workdir (and outside every allowed root).
    #[error("path {} is outside the session's working directory{}", repr_str(.path), if *.has_allowed_roots { " and its other permitted directories" } else { "" })]
    Outside {
        /// The path as the model gave it.
        path: String,
        /// Whether the context has allowed roots (changes the text).
        has_allowed_roots: bool,
    },
    /// The path could not be resolved (a symlink loop, an unreadable component).
    #[error("path {}: {}", repr_str(.path), fs_reason(*.kind))]
    Unresolvable {
        /// The path as the model gave it.
        path: String,
        /// Why.
        kind: SandboxErrorKind,
    },
}

/// The fixed phrase of a file-system failure (`no such file or directory`, …).
pub(crate) fn fs_reason(kind: SandboxErrorKind) -> &'static str {
    match kind {
        // The sandbox refuses it; to the model this reads like any permission failure.
        SandboxErrorKind::OutsideSandbox => "permission denied",
        k => k.phrase(),
    }
}

/// `<op>: <file_path>: <phrase>` for a failed file operation.
pub(crate) fn fs_error(op: &str, file_path: &str, e: &SandboxError) -> ToolError {
    ToolError::msg(format!("{op}: {file_path}: {}", fs_reason(e.kind())))
}

/// Lexically normalised absolute path (`os.path.normpath` on an absolute path).
pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn join(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        rel.to_owned()
    } else if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// Whether `child` is `root` or inside it (both canonical).
pub(crate) fn within(child: &str, root: &str) -> bool {
    let c: Vec<&str> = child.split('/').filter(|s| !s.is_empty()).collect();
    let r: Vec<&str> = root.split('/').filter(|s| !s.is_empty()).collect();
    c.len() >= r.len() && c[..r.len()] == r[..]
}

fn is_missing(kind: SandboxErrorKind) -> bool {
    matches!(
        kind,
        SandboxErrorKind::NotFound
            | SandboxErrorKind::NotADirectory
            | SandboxErrorKind::OutsideSandbox
    )
}

/// Every component exists; all symlinks followed (`realpath(strict=True)`).
async fn realpath_strict(ctx: &ToolContext, path: &str) -> Result<String, SandboxErrorKind> {
    let sb = &ctx.sandbox;
    let mut todo: std::collections::VecDeque<String> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .map(str::to_owned)
        .collect();
    let mut cur: Vec<String> = Vec::new();
    let mut cur_is_dir = true;
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            cur.pop();
            cur_is_dir = true;
            continue;
        }
        if !cur_is_dir {
            return Err(SandboxErrorKind::NotADirectory);
        }
        cur.push(c);
        let p = format!("/{}", cur.join("/"));
        let st = match sb.lstat(&p).await {
            Ok(st) => st,
            // A directory above a mount (`/memory` for a mount at `/memory/notes`) is not part
            // of the sandbox's namespace but leads to it: walk through it as a plain directory.
            Err(e) if e.kind() == SandboxErrorKind::OutsideSandbox && !todo.is_empty() => {
                cur_is_dir = true;
                continue;
            }
            Err(e) => return Err(e.kind()),
        };
        if st.is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(SandboxErrorKind::SymlinkLoop);
            }
            let target = sb.read_link(&p).await.map_err(|e| e.kind())?;
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            for t in target
                .split('/')
                .rev()
                .filter(|s| !s.is_empty() && *s != ".")
            {
                todo.push_front(t.to_owned());
            }
            cur_is_dir = true;
        } else {
            cur_is_dir = st.is_dir();
        }
    }
    Ok(format!("/{}", cur.join("/")))
}

/// `path` collapsed and with every symlink followed; missing trailing components kept.
pub(crate) async fn canonicalize(
    ctx: &ToolContext,
    path: &str,
) -> Result<String, SandboxErrorKind> {
    let mut prefix = normalize(path);
    let mut missing_tail: Vec<String> = Vec::new();
    let mut hops = 0;
    loop {
        let unresolved = match realpath_strict(ctx, &prefix).await {
            Ok(real) => {
                let mut out = real;
                for t in missing_tail.iter().rev() {
                    out = join(&out, t);
                }
                return Ok(out);
            }
            Err(k) if is_missing(k) => k,
            Err(k) => return Err(k),
        };
        let st = match ctx.sandbox.lstat(&prefix).await {
            Ok(st) => st,
            Err(e) if is_missing(e.kind()) && prefix != "/" => {
                missing_tail.push(file_name(&prefix).to_owned());
                prefix = parent(&prefix);
                continue;
            }
            Err(e) => return Err(e.kind()),
        };
        if !st.is_symlink() {
            return Err(unresolved);
        }
        hops += 1;
        if hops > MAX_SYMLINK_HOPS {
            return Err(SandboxErrorKind::SymlinkLoop);
        }
        let dir = realpath_strict(ctx, &parent(&prefix)).await?;
        let target = ctx.sandbox.read_link(&prefix).await.map_err(|e| e.kind())?;
        let mut next = join(&dir, &target);
        for t in missing_tail.iter().rev() {
            next = join(&next, t);
        }
        prefix = normalize(&next);
        missing_tail.clear();
    }
}

/// A root as the policy compares with it: canonical when it resolves, else normalised.
pub(crate) async fn resolve_root(ctx: &ToolContext, root: &str) -> String {
    let abs = join(ctx.workdir(), root);
    match canonicalize(ctx, &abs).await {
        Ok(p) => p,
        Err(_) => normalize(&abs),
    }
}

/// The canonical workdir.
pub(crate) async fn workdir(ctx: &ToolContext) -> String {
    resolve_root(ctx, ctx.workdir()).await
}

/// Resolve `p` (relative to the workdir, or absolute) under the path policy and return the
/// canonical sandbox path the operation must use.
pub async fn resolve_path(ctx: &ToolContext, p: &str) -> Result<String, PathError> {
    let root = workdir(ctx).await;
    let full =
        canonicalize(ctx, &join(&root, p))
            .await
            .map_err(|kind| PathError::Unresolvable {
                path: p.to_owned(),
                kind,
            })?;
    if within(&full, &root) {
        return Ok(full);
    }
    for r in &ctx.allowed_roots {
        if within(&full, &resolve_root(ctx, r).await) {
            return Ok(full);
        }
    }
    Err(PathError::Outside {
        path: p.to_owned(),
        has_allowed_roots: !ctx.allowed_roots.is_empty(),
    })
}

/// Refuse `target` under a read-only root: `<op>: <file_path> is inside read-only directory <root>`.
pub(crate) async fn reject_read_only(
    ctx: &ToolContext,
    target: &str,
    op: &str,
    file_path: &str,
) -> Result<(), ToolError> {
    for root in &ctx.read_only_roots {
        if within(target, &resolve_root(ctx, root).await) {
            return Err(ToolError::msg(format!(
                "{op}: {file_path} is inside read-only directory {}",
                display_root(root)
            )));
        }
    }
    Ok(())
}

/// A configured root as Python's `str(Path(root))` shows it.
fn display_root(root: &str) -> String {
    let parts: Vec<&str> = root
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if parts.is_empty() {
        return if root.starts_with('/') {
            "/".into()
        } else {
            ".".into()
        };
    }
    let joined = parts.join("/");
    if root.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_helpers() {
        assert_eq!(normalize("/a/./b//../c/"), "/a/c");
        assert_eq!(normalize("/../.."), "/");
        assert!(within("/W/a", "/W"));
        assert!(within("/W", "/W"));
        assert!(!within("/Wx", "/W"));
        assert!(within("/anything", "/"));
        assert_eq!(display_root("/RO/"), "/RO");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b"), "/a");
    }
}
