//! Incremental Server-Sent Events parser with the official SDK's framing rules (docs/protocol.md §4.1).
//!
//! [`SseParser`] is fed raw byte chunks as they arrive (chunk boundaries may fall anywhere, even
//! inside a `\r\n` pair or a UTF-8 sequence) and returns the complete frames. Lines end at `\r`,
//! `\n` or `\r\n`; a blank line ends a frame. Comment lines (`:` first) are skipped; `event`,
//! `data` (several lines joined with `\n`), `id` and `retry` are the recognised fields, with one
//! leading space after the colon stripped. A frame is only dispatched when it carries something
//! (an event name, data, an id or a retry), and an unterminated frame at end of input is dropped.
//!
//! The *interpretation* of frames (`ping` ignored, no `event:` ⇒ dropped, `event: error` ⇒ error,
//! empty data ⇒ ignored) is [`classify`]'s job, so both layers can be tested on their own.
//!
//! Memory is bounded: a line longer than [`SseLimits::max_line_bytes`] or a frame whose data grows
//! past [`SseLimits::max_frame_bytes`] is a typed [`SseError`], never an unbounded buffer.

use std::fmt;
use std::sync::Arc;

/// Default cap on one line and on one frame's accumulated data: 16 MiB.
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Size limits of an [`SseParser`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseLimits {
    /// Longest accepted line, in bytes (without its terminator).
    pub max_line_bytes: usize,
    /// Largest accepted frame (sum of its data lines plus field names), in bytes.
    pub max_frame_bytes: usize,
}

impl Default for SseLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_BYTES,
            max_frame_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Why a byte stream is not an acceptable event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line exceeded the configured limit.
    #[error("event-stream line longer than {limit} bytes")]
    LineTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A frame exceeded the configured limit.
    #[error("event-stream frame larger than {limit} bytes")]
    FrameTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A line is not valid UTF-8 (the SDK decodes every line as strict UTF-8).
    #[error("event-stream line is not valid UTF-8 (byte offset {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix of the offending line.
        valid_up_to: usize,
    },
}

/// One dispatched frame, before interpretation.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SseFrame {
    /// The `event:` field, if the frame had one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen on the stream so far (it is not reset between frames, as in the SDK).
    /// Shared, not copied, between the frames that carry it: a long id followed by many tiny
    /// frames must not multiply memory.
    pub id: Option<Arc<str>>,
    /// The `retry:` field, if the frame had a valid one.
    pub retry: Option<u64>,
}

impl fmt::Debug for SseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Data may be large; show its size and a short prefix only.
        let prefix: String = self.data.chars().take(80).collect();
        f.debug_struct("SseFrame")
            .field("event", &self.event)
            .field("data_len", &self.data.len())
            .field("data_prefix", &prefix)
            .field("id", &self.id)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Incremental SSE parser (see the module docs).
#[derive(Debug, Clone)]
pub struct SseParser {
    limits: SseLimits,
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next one is its pair.
    pending_cr: bool,
    event: Option<String>,
    /// The frame's data lines so far, joined with `\n` (one buffer: many short lines must not
    /// cost an allocation each).
    data: String,
    /// Whether the frame has a data line yet (an empty one counts).
    has_data: bool,
    data_bytes: usize,
    last_id: Option<Arc<str>>,
    retry: Option<u64>,
    /// Set after an error: the parser refuses further input with the same error.
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default limits (16 MiB per line and per frame).
    pub fn new() -> Self {
        Self::with_limits(SseLimits::default())
    }

    /// A parser with explicit limits.
    pub fn with_limits(limits: SseLimits) -> Self {
        Self {
            limits,
            line: Vec::new(),
            pending_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            data_bytes: 0,
            last_id: None,
            retry: None,
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> SseLimits {
        self.limits
    }

    /// Feed one chunk; returns the frames it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseFrame>, SseError> {
        let mut out = Vec::new();
        self.feed_into(chunk, &mut out)?;
        Ok(out)
    }

    /// Feed one chunk, appending completed frames to `out`.
    ///
    /// After an error the parser stays failed and every later call returns the same kind of error.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<SseFrame>) -> Result<(), SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut rest = chunk;
        // An empty chunk must not end a pending `\r\n` pair: only the next byte can.
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if let Some((&b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.extend_line(rest)?;
                    break;
                }
                Some(i) => {
                    self.extend_line(&rest[..i])?;
                    let term = rest[i];
                    rest = &rest[i + 1..];
                    if term == b'\r' {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            Some(_) => {}
                            None => self.pending_cr = true,
                        }
                    }
                    let line = std::mem::take(&mut self.line);
                    if let Some(frame) = self.process_line(&line)? {
                        out.push(frame);
                    }
                }
            }
        }
        Ok(())
    }

    /// Signal end of input. An unterminated trailing frame is dropped, as the SDK does; the line
    /// in progress is still processed for its fields (which then go nowhere).
    pub fn finish(&mut self) {
        self.line.clear();
        self.pending_cr = false;
        self.event = None;
        self.data.clear();
        self.has_data = false;
        self.data_bytes = 0;
        self.retry = None;
    }

    fn fail<T>(&mut self, e: SseError) -> Result<T, SseError> {
        self.failed = Some(e.clone());
        self.line = Vec::new();
        self.data = String::new();
        Err(e)
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limits.max_line_bytes {
            let limit = self.limits.max_line_bytes;
            return self.fail(SseError::LineTooLong { limit });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, raw: &[u8]) -> Result<Option<SseFrame>, SseError> {
        if raw.is_empty() {
            return Ok(self.dispatch());
        }
        let line = match std::str::from_utf8(raw) {
            Ok(s) => s,
            Err(e) => {
                let valid_up_to = e.valid_up_to();
                return self.fail(SseError::InvalidUtf8 { valid_up_to });
            }
        };
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                self.data_bytes += value.len() + 1;
                if self.data_bytes > self.limits.max_frame_bytes {
                    let limit = self.limits.max_frame_bytes;
                    return self.fail(SseError::FrameTooLarge { limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(Arc::from(value)),
            "retry" => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseFrame> {
        let has_event = self.event.as_deref().is_some_and(|e| !e.is_empty());
        let has_id = self.last_id.as_deref().is_some_and(|i| !i.is_empty());
        if !has_event && !self.has_data && !has_id && self.retry.is_none() {
            return None;
        }
        let frame = SseFrame {
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
            retry: self.retry.take(),
        };
        self.has_data = false;
        self.data_bytes = 0;
        Some(frame)
    }
}

/// What a consumer does with a frame (docs/protocol.md §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameKind<'a> {
    /// Drop it: no `event:` field, `event: ping`, or empty data.
    Skip,
    /// `event: error`: the stream reports an error; the payload is the (possibly empty) data.
    Error(&'a str),
    /// An event whose data is one JSON value.
    Data(&'a str),
}

/// Classify a frame with the SDK's rules, in the SDK's order: `ping` skipped, a frame without an
/// `event:` field skipped, `error` surfaced (even with empty data), empty data skipped.
pub fn classify(frame: &SseFrame) -> FrameKind<'_> {
    match frame.event.as_deref() {
        Some("ping") | None => FrameKind::Skip,
        Some("error") => FrameKind::Error(&frame.data),
        Some(_) if frame.data.is_empty() => FrameKind::Skip,
        Some(_) => FrameKind::Data(&frame.data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<SseFrame> {
        SseParser::new().feed(input).unwrap()
    }

    #[test]
    fn lf_cr_and_crlf_terminators_are_equivalent() {
        for sep in ["\n", "\r", "\r\n"] {
            let text = format!("event: a{sep}data: 1{sep}data: 2{sep}{sep}");
            let frames = all(text.as_bytes());
            assert_eq!(frames.len(), 1, "{sep:?}");
            assert_eq!(frames[0].event.as_deref(), Some("a"));
            assert_eq!(frames[0].data, "1\n2");
        }
    }

    #[test]
    fn crlf_split_across_chunks_is_one_terminator() {
        let mut p = SseParser::new();
        assert!(p.feed(b"event: a\r").unwrap().is_empty());
        assert!(p.feed(b"\ndata: x\r").unwrap().is_empty());
        let f = p.feed(b"\n\r\n").unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data, "x");
    }

    // Fuzz finding (sse, differential): an empty chunk between a chunk ending in `\r` and one
    // starting with `\n` made them two line ends, splitting the frame in two.
    #[test]
    fn an_empty_chunk_between_cr_and_lf_changes_nothing() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for chunk in [&b"data: x\r"[..], b"", b"\ndata: y\n\n"] {
            p.feed_into(chunk, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "x\ny");
    }

    #[test]
    fn only_one_leading_space_is_stripped_and_fieldless_lines_work() {
        let f = all(b"event:x\ndata:  two\ndata\n\n");
        assert_eq!(f[0].event.as_deref(), Some("x"));
        assert_eq!(f[0].data, " two\n");
    }

    #[test]
    fn comments_and_blank_lines_dispatch_nothing() {
        assert!(all(b": hi\n\n\n\n").is_empty());
    }

    #[test]
    fn unterminated_trailing_frame_is_dropped() {
        let mut p = SseParser::new();
        assert!(p.feed(b"event: a\ndata: 1\n").unwrap().is_empty());
        p.finish();
        assert!(p.feed(b"\n").unwrap().is_empty());
    }

    #[test]
    fn limits_are_enforced_with_typed_errors() {
        let limits = SseLimits {
            max_line_bytes: 8,
            max_frame_bytes: 12,
        };
        let mut p = SseParser::with_limits(limits);
        assert_eq!(
            p.feed(b"data: 123456789"),
            Err(SseError::LineTooLong { limit: 8 })
        );
        let mut p = SseParser::with_limits(SseLimits {
            max_line_bytes: 16,
            ..limits
        });
        let err = p.feed(b"data:12345\ndata:12345\ndata:1\n").unwrap_err();
        assert_eq!(err, SseError::FrameTooLarge { limit: 12 });
        assert!(p.feed(b"\n").is_err());
    }

    #[test]
    fn frames_share_the_stream_id_and_data_lines_share_one_buffer() {
        let mut input = format!("id: {}\n", "i".repeat(4096)).into_bytes();
        input.extend(b"event: a\n\nevent: b\n\n".repeat(2));
        input.extend(b"event: c\n");
        input.extend(b"data\n".repeat(1000));
        input.extend(b"\n");
        let f = all(&input);
        assert_eq!(f.len(), 5);
        // One id allocation, shared by every frame that carries it.
        let first = f[0].id.clone().unwrap();
        assert!(
            f.iter()
                .all(|x| Arc::ptr_eq(x.id.as_ref().unwrap(), &first))
        );
        // A thousand empty data lines are a thousand-line data field (999 separators).
        assert_eq!(f[4].data, "\n".repeat(999));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert!(matches!(
            SseParser::new().feed(b"data: \xff\n\n"),
            Err(SseError::InvalidUtf8 { .. })
        ));
    }

    #[test]
    fn classify_follows_sdk_order() {
        let f = |event: Option<&str>, data: &str| SseFrame {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            ..SseFrame::default()
        };
        assert_eq!(classify(&f(Some("ping"), "{}")), FrameKind::Skip);
        assert_eq!(classify(&f(None, "{}")), FrameKind::Skip);
        assert_eq!(classify(&f(Some("error"), "")), FrameKind::Error(""));
        assert_eq!(classify(&f(Some("x"), "")), FrameKind::Skip);
        assert_eq!(classify(&f(Some("x"), "{}")), FrameKind::Data("{}"));
    }
}
