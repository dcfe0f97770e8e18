//! `read`, `write` and `edit` (docs/protocol.md §6.3, §6.4).

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use cma_sandbox::SandboxErrorKind;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::lines::{LineSpan, replaced_len, select_lines};
use super::path::{fs_error, reject_read_only, resolve_path};
use super::validate::parse;
use crate::context::{
    ByteLimit, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_BASE64_BYTES, DEFAULT_MAX_PDF_BYTES,
    ToolContext,
};
use crate::output::{ToolError, ToolOutput};
use crate::registry::Tool;

/// Chunk size of a streamed ranged read.
const READ_STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// Extension → media type of files `read` returns as base64 blocks.
fn binary_media_type(path: &str) -> Option<&'static str> {
    let suffix = suffix(path).to_ascii_lowercase();
    Some(match suffix.as_str() {
        ".png" => "image/png",
        ".jpg" | ".jpeg" => "image/jpeg",
        ".gif" => "image/gif",
        ".webp" => "image/webp",
        ".pdf" => "application/pdf",
        _ => return None,
    })
}

/// Python's `PurePath.suffix`: the final name's last `.xxx`, unless the dot is its first or last
/// character.
fn suffix(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or("");
    match name.rfind('.') {
        Some(i) if i > 0 && i < name.len() - 1 => &name[i..],
        _ => "",
    }
}

/// The official `read` tool.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadTool;

#[derive(Deserialize)]
struct ReadInput {
    file_path: String,
    view_range: Option<Vec<i64>>,
}

#[async_trait]
impl Tool for ReadTool {
    fn name(&self) -> &str {
        "read"
    }
    fn description(&self) -> &str {
        "Read a file rooted at the working directory."
    }
    fn input_schema(&self) -> Value {
        super::read_schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let ReadInput {
            file_path,
            view_range,
        } = parse("read", &super::read_schema(), input)?;
        let target = resolve_path(ctx, &file_path)
            .await
            .map_err(|e| ToolError::msg(format!("read: {e}")))?;
        // An empty list counts as "no range", as in the official tool.
        let view_range = view_range.filter(|v| !v.is_empty());
        if let Some(v) = &view_range
            && v.len() != 2
        {
            return Err(ToolError::msg(
                "read: view_range must be [start_line, end_line]",
            ));
        }
        let st = ctx
            .sandbox
            .stat(&target)
            .await
            .map_err(|e| fs_error("read", &file_path, &e))?;
        if !st.is_file() {
            return Err(ToolError::msg(format!(
                "read: {file_path}: not a regular file"
            )));
        }
        if let Some(media_type) = binary_media_type(&target) {
            if view_range.is_some() {
                return Err(ToolError::msg(
                    "read: view_range is not supported for image/PDF files",
                ));
            }
            return read_binary(ctx, &target, &file_path, st.size, media_type).await;
        }
        let limit = ctx.max_file_bytes.resolve(DEFAULT_MAX_FILE_BYTES);
        let not_utf8 = || {
            ToolError::msg(format!(
                "read: {file_path}: not valid UTF-8 text (binary files are only supported for image/PDF extensions)"
            ))
        };
        if let Some(limit) = limit
            && st.size > limit
        {
            let Some(range) = view_range else {
                return Err(too_big_for_read(&file_path, st.size, limit));
            };
            let bytes = read_line_range(ctx, &target, &file_path, range, limit).await?;
            let text = String::from_utf8(bytes).map_err(|_| not_utf8())?;
            return Ok(ToolOutput::Text(text));
        }
        let data = ctx.sandbox.read_file(&target, limit).await.map_err(|e| {
            match (e.kind(), e.size(), limit) {
                (SandboxErrorKind::TooLarge, Some(size), Some(limit)) => {
                    too_big_for_read(&file_path, size, limit)
                }
                _ => fs_error("read", &file_path, &e),
            }
        })?;
        let text = String::from_utf8(data.to_vec()).map_err(|_| not_utf8())?;
        let Some(range) = view_range else {
            return Ok(ToolOutput::Text(text));
        };
        let span = LineSpan::new(range[0], range[1]);
        Ok(ToolOutput::Text(select_lines(&text, span).to_owned()))
    }
}

fn too_big_for_read(file_path: &str, size: u64, limit: u64) -> ToolError {
    ToolError::msg(format!(
        "read: {file_path} is {size} bytes, exceeds {limit}-byte limit. Use the view_range parameter to read specific line ranges, e.g. view_range: [1, 500]."
    ))
}

/// Lines `[start_line, end_line]` of a large file, streamed; the selection is capped at `limit`.
async fn read_line_range(
    ctx: &ToolContext,
    target: &str,
    file_path: &str,
    range: Vec<i64>,
    limit: u64,
) -> Result<Vec<u8>, ToolError> {
    let (start_line, end_line) = (range[0], range[1]);
    let span = LineSpan::new(start_line, end_line);
    if span.is_empty() {
        return Ok(Vec::new());
    }
    let (start, end) = (span.start, span.end_or_max());
    let over = || {
        if end - start == 1 {
            ToolError::msg(format!(
                "read: line {} of {file_path} alone exceeds {limit}-byte limit. The read tool cannot return part of a line, so view_range cannot narrow this further.",
                start + 1
            ))
        } else {
            ToolError::msg(format!(
                "read: view_range [{start_line}, {end_line}] of {file_path} exceeds {limit}-byte limit. Narrow the view_range to read a smaller portion."
            ))
        }
    };
    let mut reader = ctx
        .sandbox
        .open_read(target)
        .await
        .map_err(|e| fs_error("read", file_path, &e))?;
    let mut chunk = vec![0u8; READ_STREAM_CHUNK_BYTES];
    let mut line: u64 = 0;
    let mut out = Vec::new();
    while line < end {
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|_| ToolError::msg(format!("read: {file_path}: input/output error")))?;
        if n == 0 {
            break;
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() && line < end {
            let nl = rest.iter().position(|b| *b == b'\n');
            let piece = &rest[..nl.unwrap_or(rest.len())];
            if line >= start {
                let newline = nl.is_some() && line + 1 < end;
                // Checked before it grows: the selection never holds more than `limit` bytes.
                let grown = (out.len() + piece.len() + usize::from(newline)) as u64;
                if grown > limit {
                    return Err(over());
                }
                out.extend_from_slice(piece);
                if newline {
                    out.push(b'\n');
                }
            }
            match nl {
                Some(i) => {
                    line += 1;
                    rest = &rest[i + 1..];
                }
                None => break,
            }
        }
    }
    Ok(out)
}

async fn read_binary(
    ctx: &ToolContext,
    target: &str,
    file_path: &str,
    size: u64,
    media_type: &str,
) -> Result<ToolOutput, ToolError> {
    let is_pdf = media_type == "application/pdf";
    let mut limit = if is_pdf {
        ctx.max_pdf_bytes.resolve(DEFAULT_MAX_PDF_BYTES)
    } else {
        // The image cap is on the encoded form: n raw bytes → 4·ceil(n/3) base64 bytes.
        ctx.max_image_base64_bytes
            .resolve(DEFAULT_MAX_IMAGE_BASE64_BYTES)
            .map(|b64| b64 / 4 * 3)
    };
    if let ByteLimit::Bytes(explicit) = ctx.max_file_bytes {
        limit = Some(limit.map_or(explicit, |l| l.min(explicit)));
    }
    let too_big = |size: u64, limit: u64| {
        ToolError::msg(format!(
            "read: {file_path} is {size} bytes, exceeds {limit}-byte limit for image/PDF files."
        ))
    };
    if let Some(limit) = limit
        && size > limit
    {
        return Err(too_big(size, limit));
    }
    let data = ctx.sandbox.read_file(target, limit).await.map_err(|e| {
        match (e.kind(), e.size(), limit) {
            (SandboxErrorKind::TooLarge, Some(size), Some(limit)) => too_big(size, limit),
            _ => fs_error("read", file_path, &e),
        }
    })?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    Ok(if is_pdf {
        ToolOutput::document_base64(media_type, b64)
    } else {
        ToolOutput::image_base64(media_type, b64)
    })
}

/// The official `write` tool.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteTool;

#[derive(Deserialize)]
struct WriteInput {
    file_path: String,
    content: String,
}

#[async_trait]
impl Tool for WriteTool {
    fn name(&self) -> &str {
        "write"
    }
    fn description(&self) -> &str {
        "Write a file, creating parent directories as needed."
    }
    fn input_schema(&self) -> Value {
        super::write_schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let WriteInput { file_path, content } = parse("write", &super::write_schema(), input)?;
        let target = resolve_path(ctx, &file_path)
            .await
            .map_err(|e| ToolError::msg(format!("write: {e}")))?;
        reject_read_only(ctx, &target, "write", &file_path).await?;
        let parent = match target.rfind('/') {
            Some(0) | None => "/".to_owned(),
            Some(i) => target[..i].to_owned(),
        };
        // `mkdir(parents=True, exist_ok=True)` on an existing non-directory: "file already exists".
        if let Ok(st) = ctx.sandbox.stat(&parent).await
            && !st.is_dir()
        {
            return Err(ToolError::msg(format!(
                "write: {file_path}: file already exists"
            )));
        }
        ctx.sandbox
            .create_dir_all(&parent)
            .await
            .map_err(|e| fs_error("write", &file_path, &e))?;
        let chars = content.chars().count();
        ctx.sandbox
            .write_file(&target, Bytes::from(content.into_bytes()))
            .await
            .map_err(|e| fs_error("write", &file_path, &e))?;
        // The official text counts characters, not bytes.
        Ok(ToolOutput::Text(format!(
            "wrote {chars} bytes to {file_path}"
        )))
    }
}

/// The official `edit` tool.
#[derive(Debug, Clone, Copy, Default)]
pub struct EditTool;

#[derive(Deserialize)]
struct EditInput {
    file_path: String,
    old_string: String,
    new_string: String,
    replace_all: Option<bool>,
}

#[async_trait]
impl Tool for EditTool {
    fn name(&self) -> &str {
        "edit"
    }
    fn description(&self) -> &str {
        "Replace text in a file by exact string match."
    }
    fn input_schema(&self) -> Value {
        super::edit_schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let EditInput {
            file_path,
            old_string,
            new_string,
            replace_all,
        } = parse("edit", &super::edit_schema(), input)?;
        let replace_all = replace_all.unwrap_or(false);
        let target = resolve_path(ctx, &file_path)
            .await
            .map_err(|e| ToolError::msg(format!("edit: {e}")))?;
        reject_read_only(ctx, &target, "edit", &file_path).await?;
        let st = ctx
            .sandbox
            .stat(&target)
            .await
            .map_err(|e| fs_error("edit", &file_path, &e))?;
        if !st.is_file() {
            return Err(ToolError::msg(format!(
                "edit: {file_path}: not a regular file"
            )));
        }
        let limit = ctx.max_file_bytes.resolve(DEFAULT_MAX_FILE_BYTES);
        let too_big = |size: u64, limit: u64| {
            ToolError::msg(format!(
                "edit: {file_path} is {size} bytes, exceeds {limit}-byte limit. The edit tool loads the whole file and cannot modify a file this large."
            ))
        };
        if let Some(limit) = limit
            && st.size > limit
        {
            return Err(too_big(st.size, limit));
        }
        let data = ctx.sandbox.read_file(&target, limit).await.map_err(|e| {
            match (e.kind(), e.size(), limit) {
                (SandboxErrorKind::TooLarge, Some(size), Some(limit)) => too_big(size, limit),
                _ => fs_error("edit", &file_path, &e),
            }
        })?;
        let text = String::from_utf8(data.to_vec()).map_err(|_| {
            ToolError::msg(format!(
                "edit: {file_path}: not valid UTF-8 text (cannot edit binary files)"
            ))
        })?;
        // Non-overlapping occurrences; an empty needle matches len+1 times, as str.count("").
        let count = text.matches(old_string.as_str()).count();
        if count == 0 {
            return Err(ToolError::msg(format!(
                "edit: old_string not found in {file_path}"
            )));
        }
        if !replace_all && count > 1 {
            return Err(ToolError::msg(format!(
                "edit: old_string appears {count} times in {file_path} (must be unique)"
            )));
        }
        let k = if replace_all { count } else { 1 };
        // The result's size, before building it: `replace_all` multiplies `new_string`.
        let size = replaced_len(text.len(), k, old_string.len(), new_string.len());
        let grows_by_one_new_string = size <= (text.len() as u128) + new_string.len() as u128;
        let cap = ctx.max_edit_result_bytes;
        if size > u128::from(cap) && !grows_by_one_new_string {
            return Err(ToolError::msg(format!(
                "edit: {file_path} would be {size} bytes after the edit, exceeds {cap}-byte limit. Replace fewer occurrences or use a shorter new_string."
            )));
        }
        let updated = if replace_all {
            text.replace(old_string.as_str(), &new_string)
        } else {
            text.replacen(old_string.as_str(), &new_string, 1)
        };
        ctx.sandbox
            .write_file(&target, Bytes::from(updated.into_bytes()))
            .await
            .map_err(|e| fs_error("edit", &file_path, &e))?;
        Ok(ToolOutput::Text(format!(
            "edited {file_path} ({k} replacement(s))"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_and_line_selection_follow_python() {
        assert_eq!(suffix("/W/dot.png"), ".png");
        assert_eq!(suffix("/W/.png"), "");
        assert_eq!(suffix("/W/a."), "");
        assert_eq!(suffix("/W/a.tar.GZ"), ".GZ");
        assert_eq!(binary_media_type("/W/A.JPEG"), Some("image/jpeg"));
        let sel = |t, s, e| select_lines(t, LineSpan::new(s, e));
        assert_eq!(sel("a\r\nb\r\nc", 0, 1), "a\r");
        assert_eq!(sel("a\nb\n", 1, 0), "a\nb\n");
        assert_eq!(sel("a\nb", 3, 1), "");
        assert_eq!(sel("a\nb", -5, 99), "a\nb");
    }
}
