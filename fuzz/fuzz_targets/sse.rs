//! The incremental SSE parser (`cma_core::sse`): arbitrary bytes fed in arbitrary chunkings
//! (empty chunks included), with default and with tiny limits.
//!
//! Differential: whatever the chunking, the parser yields the same frames and ends in the same
//! state (the same error, or none) as when the bytes arrive in one piece. Frames respect the
//! limits, and `classify` accepts every frame.
#![no_main]

use cma_core::sse::{SseError, SseFrame, SseLimits, SseParser, classify};
use libfuzzer_sys::fuzz_target;

/// Input layout (plain bytes, so seeds are easy to write by hand): `flags`, then when
/// `flags & 1` two limit bytes (line, frame), then `n` and `n` chunk sizes (cycled; 0 is an
/// empty chunk; none means byte by byte), then the stream.
struct Input<'a> {
    data: &'a [u8],
    cuts: &'a [u8],
    small_limits: Option<(u8, u8)>,
}

impl<'a> Input<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (&flags, mut rest) = bytes.split_first()?;
        let mut small_limits = None;
        if flags & 1 != 0 {
            let (l, r) = rest.split_first_chunk::<2>()?;
            small_limits = Some((l[0], l[1]));
            rest = r;
        }
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n % 17).min(rest.len());
        let (cuts, data) = rest.split_at(n);
        Some(Input {
            data,
            cuts,
            small_limits,
        })
    }
}

fn run(limits: SseLimits, pieces: &[&[u8]]) -> (Vec<SseFrame>, Option<SseError>) {
    let mut p = SseParser::with_limits(limits);
    let mut out = Vec::new();
    let mut err = None;
    for piece in pieces {
        if let Err(e) = p.feed_into(piece, &mut out) {
            err = Some(e);
            break;
        }
    }
    // A failed parser stays failed with the same error.
    if let Some(e) = &err {
        assert_eq!(
            p.feed(b"\n\n").as_ref(),
            Err(e),
            "a failed parser recovered"
        );
    }
    (out, err)
}

fuzz_target!(|bytes: &[u8]| {
    let Some(input) = Input::parse(bytes) else {
        return;
    };
    let limits = match input.small_limits {
        Some((line, frame)) => SseLimits {
            max_line_bytes: usize::from(line),
            max_frame_bytes: usize::from(frame),
        },
        None => SseLimits::default(),
    };
    let (whole_frames, whole_err) = run(limits, &[input.data]);
    for f in &whole_frames {
        let _ = classify(f);
        assert!(
            f.data.len() <= limits.max_frame_bytes,
            "frame data of {} bytes over the {}-byte limit",
            f.data.len(),
            limits.max_frame_bytes
        );
    }

    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = input.data;
    let mut cuts = input.cuts.iter().cycle();
    if input.cuts.iter().all(|&c| c == 0) {
        // Byte by byte, with an empty chunk after each byte when asked for.
        for b in rest.chunks(1) {
            pieces.push(b);
            if !input.cuts.is_empty() {
                pieces.push(&[]);
            }
        }
    } else {
        while !rest.is_empty() {
            let n = usize::from(*cuts.next().unwrap_or(&1)).min(rest.len());
            let (a, b) = rest.split_at(n);
            pieces.push(a);
            rest = b;
        }
    }
    let (frames, err) = run(limits, &pieces);
    assert_eq!(err, whole_err, "chunking changed the error");
    assert_eq!(frames, whole_frames, "chunking changed the frames");
});
