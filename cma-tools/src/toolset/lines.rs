//! The line ranges of `read` (docs/protocol.md §6.3) and the size of an `edit`'s result (§6.4),
//! computed from untrusted numbers without overflow and without building anything first.
//!
//! `view_range [start, end]` selects Python's `lines[max(0, start - 1) : (end if end > 0 else
//! len(lines))]`. Python's integers have no bounds; here every value of an `i64` maps to the
//! same selection: a start at or below 1 is the first line, an end at or below 0 is the end of
//! the file, and huge values simply select nothing or everything.

/// The 0-based half-open line span a `view_range` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineSpan {
    /// First line selected (0-based).
    pub start: u64,
    /// One past the last line selected; `None`: to the end of the file.
    pub end: Option<u64>,
}

impl LineSpan {
    /// The span of `view_range [start_line, end_line]`.
    pub fn new(start_line: i64, end_line: i64) -> Self {
        // `max(0, start_line - 1)` without overflow at `i64::MIN`.
        let start = u64::try_from(start_line.saturating_sub(1)).unwrap_or(0);
        let end = u64::try_from(end_line).ok().filter(|e| *e > 0);
        Self { start, end }
    }

    /// One past the last line, `u64::MAX` for "to the end".
    pub fn end_or_max(self) -> u64 {
        self.end.unwrap_or(u64::MAX)
    }

    /// Whether nothing can be selected whatever the file holds.
    pub fn is_empty(self) -> bool {
        self.end.is_some_and(|e| e <= self.start)
    }
}

/// `"\n".join(text.split("\n")[span])` as a slice of `text`: the selected lines are contiguous
/// in `text`, so nothing is split, collected or joined (a file of newlines costs no more than
/// any other).
pub(crate) fn select_lines(text: &str, span: LineSpan) -> &str {
    if span.is_empty() {
        return "";
    }
    // Byte offset where line `k` starts, or `None` past the last line.
    let mut starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1));
    let Some(from) = usize::try_from(span.start).ok().and_then(|k| starts.nth(k)) else {
        return "";
    };
    // The selection ends just before line `end` starts (without its `\n`), or at the end.
    let to = match span.end {
        None => text.len(),
        Some(end) => {
            // `starts` is now positioned after line `start`: line `end` is `end - start - 1`
            // further.
            let ahead = end - span.start - 1;
            match usize::try_from(ahead).ok().and_then(|k| starts.nth(k)) {
                Some(next) => next - 1,
                None => text.len(),
            }
        }
    };
    &text[from..to]
}

/// The size in bytes of `text` after replacing `count` non-overlapping occurrences of a
/// `old_len`-byte string by a `new_len`-byte one, computed exactly (no `u64` can overflow in
/// `u128`: `count` and both lengths are below 2⁶⁴). `count × old_len` never exceeds `len`.
pub(crate) fn replaced_len(len: usize, count: usize, old_len: usize, new_len: usize) -> u128 {
    let (len, count) = (len as u128, count as u128);
    (len + count * new_len as u128).saturating_sub(count * old_len as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: Python's split/slice/join with unbounded integers.
    fn python(text: &str, start_line: i128, end_line: i128) -> String {
        let lines: Vec<&str> = text.split('\n').collect();
        let n = lines.len() as i128;
        let start = (start_line - 1).max(0).min(n);
        let end = if end_line > 0 { end_line.min(n) } else { n };
        if end <= start {
            return String::new();
        }
        lines[start as usize..end as usize].join("\n")
    }

    #[test]
    fn selections_match_python_for_every_kind_of_bound() {
        let texts = [
            "",
            "\n",
            "a",
            "a\n",
            "a\nb",
            "a\r\nb\r\nc",
            "a\nb\n",
            "\n\n\n",
            "x\n\ny\n",
        ];
        let bounds = [
            i64::MIN,
            i64::MIN + 1,
            -5,
            -1,
            0,
            1,
            2,
            3,
            4,
            5,
            i64::MAX - 1,
            i64::MAX,
        ];
        for text in texts {
            for s in bounds {
                for e in bounds {
                    assert_eq!(
                        select_lines(text, LineSpan::new(s, e)),
                        python(text, s.into(), e.into()),
                        "{text:?} [{s}, {e}]"
                    );
                }
            }
        }
    }

    #[test]
    fn spans_saturate_instead_of_overflowing() {
        assert_eq!(
            LineSpan::new(i64::MIN, 1),
            LineSpan {
                start: 0,
                end: Some(1)
            }
        );
        assert_eq!(LineSpan::new(i64::MAX, i64::MIN).end, None);
        assert_eq!(LineSpan::new(i64::MAX, 0).start, i64::MAX as u64 - 1);
        assert!(LineSpan::new(5, 3).is_empty());
        assert!(!LineSpan::new(5, 0).is_empty());
        assert_eq!(LineSpan::new(1, -1).end_or_max(), u64::MAX);
    }

    #[test]
    fn replaced_lengths_are_exact_far_past_u64() {
        assert_eq!(replaced_len(10, 2, 3, 1), 6);
        assert_eq!(replaced_len(10, 0, 3, 100), 10);
        // A 256 KiB file of one-byte matches, each replaced by 100 kB: 26 GB, computed.
        assert_eq!(
            replaced_len(262_144, 262_144, 1, 100_000),
            262_144u128 * 100_000
        );
        assert_eq!(
            replaced_len(usize::MAX, usize::MAX, 0, usize::MAX),
            usize::MAX as u128 + usize::MAX as u128 * usize::MAX as u128
        );
    }
}
