//! The wire between the backend and a worker process: length-prefixed frames over the worker's
//! socket, and the messages they carry.
//!
//! A frame is a little-endian `u32` payload length followed by the payload. Readers check the
//! announced length against a cap *before* reading, and grow their buffer only as bytes arrive,
//! so a peer announcing 4 GiB costs nothing until it actually sends them (and is cut off at the
//! cap). Payloads are a tag byte and fields: integers little-endian, strings and byte strings as
//! a `u32` length and the bytes. Decoding checks every length against what is left and refuses
//! trailing bytes, invalid UTF-8 and unknown tags; the backend treats any such frame from a
//! worker as a protocol violation and kills the worker.

use std::io::{self, Read, Write};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Version both sides must speak; the worker announces it in [`Hello`].
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// Slack on top of the largest payload field, for tags and the other fields of a frame.
pub(crate) const FRAME_OVERHEAD: usize = 64 * 1024;
/// Largest frame either side sends or accepts: a 64 MiB file or script plus slack. The backend
/// lowers it per script (see `serve`).
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024 + FRAME_OVERHEAD;
/// Largest chunk a reader reserves ahead of the bytes that actually arrived.
const READ_CHUNK: usize = 64 * 1024;

/// A malformed frame or message.
#[derive(Debug, thiserror::Error)]
#[error("worker protocol: {0}")]
pub(crate) struct ProtocolError(pub &'static str);

impl From<ProtocolError> for io::Error {
    fn from(e: ProtocolError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// One script to run (backend → worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub code: String,
    pub timeout: Duration,
    pub memory_limit: u64,
    pub max_output_bytes: u64,
}

/// What a script asks of its sandbox (worker → backend); answered by a [`Reply`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    ReadFile {
        path: String,
    },
    WriteFile {
        path: String,
        text: String,
    },
    ReadDir {
        path: String,
    },
    Exists {
        path: String,
    },
    Stat {
        path: String,
        follow: bool,
    },
    Mkdir {
        path: String,
    },
    Remove {
        path: String,
        recursive: bool,
    },
    Symlink {
        target: String,
        path: String,
    },
    ReadLink {
        path: String,
    },
    Fetch {
        url: String,
        method: String,
        body: Option<String>,
        headers: Vec<(String, String)>,
    },
}

/// A file's metadata as a script sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatReply {
    /// `file`, `dir`, `symlink` or `other`, as a small code (see [`KIND_NAMES`]).
    pub kind: u8,
    pub size: u64,
    pub mtime_ms: Option<f64>,
}

/// Names of [`StatReply::kind`] codes.
pub(crate) const KIND_NAMES: [&str; 4] = ["file", "dir", "symlink", "other"];

/// The answer to a [`Call`] (backend → worker).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// The call failed; the script sees this message as a thrown error.
    Error(String),
    Unit,
    Bool(bool),
    Text(String),
    Names(Vec<String>),
    Stat(StatReply),
    Fetch {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

/// How a script ended (worker → backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Finished {
        exit_code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        truncated: bool,
    },
    Timeout,
    OutOfMemory,
    /// The engine itself failed (not the script); the text is for logs.
    Engine(String),
}

/// The worker's first frame: it is up, confined, and ready for a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub version: u32,
    /// Its virtual address space size, with a runtime prepared: the base for its address-space
    /// limit.
    pub vm_bytes: u64,
    /// Why the system-call filter could not be installed, if it could not.
    pub unconfined: Option<String>,
}

/// Backend → worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToWorker {
    Run(Job),
    Reply(Reply),
}

/// Worker → backend.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FromWorker {
    Hello(Hello),
    Call(Call),
    Done(Outcome),
}

/// Builds one frame: a length placeholder, then fields.
pub(crate) struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0; 4]);
        v.push(tag);
        Self(v)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Lengths past u32 cannot be framed; `finish` refuses the frame (it is over the cap).
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(s) => self.u8(1).str(s),
        }
    }
    fn pairs(&mut self, v: &[(String, String)]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        for (k, val) in v {
            self.str(k).str(val);
        }
        self
    }
    /// The finished frame, or an error when it exceeds `max` payload bytes.
    fn finish(mut self, max: usize) -> Result<Vec<u8>, ProtocolError> {
        let len = self.0.len() - 4;
        if len > max {
            return Err(ProtocolError("message too large"));
        }
        let len = u32::try_from(len).map_err(|_| ProtocolError("message too large"))?;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        Ok(self.0)
    }
}

/// Reads the fields of one payload, checking every length against what is left.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.0.len() {
            return Err(ProtocolError("truncated message"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtocolError("bad boolean")),
        }
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.u32()?).map_err(|_| ProtocolError("bad length"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let n = self.len()?;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, ProtocolError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| ProtocolError("invalid UTF-8"))
    }
    fn opt_string(&mut self) -> Result<Option<String>, ProtocolError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(ProtocolError("bad option")),
        }
    }
    /// A count of items each at least `min_item` bytes long: never more than the bytes left
    /// could hold, so a hostile count cannot make the reader reserve memory.
    fn count(&mut self, min_item: usize) -> Result<usize, ProtocolError> {
        let n = self.len()?;
        if n > self.0.len() / min_item {
            return Err(ProtocolError("bad count"));
        }
        Ok(n)
    }
    fn strings(&mut self) -> Result<Vec<String>, ProtocolError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.string()).collect()
    }
    fn pairs(&mut self) -> Result<Vec<(String, String)>, ProtocolError> {
        let n = self.count(8)?;
        (0..n)
            .map(|_| Ok((self.string()?, self.string()?)))
            .collect()
    }
    fn end(self) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError("trailing bytes"))
        }
    }
}

impl ToWorker {
    /// Encode as a frame of at most `max` payload bytes.
    pub(crate) fn encode(&self, max: usize) -> Result<Vec<u8>, ProtocolError> {
        let e = match self {
            ToWorker::Run(job) => {
                let mut e = Enc::new(0);
                let nanos = u64::try_from(job.timeout.as_nanos()).unwrap_or(u64::MAX);
                e.str(&job.code)
                    .u64(nanos)
                    .u64(job.memory_limit)
                    .u64(job.max_output_bytes);
                e
            }
            ToWorker::Reply(reply) => {
                let mut e = Enc::new(1);
                encode_reply(&mut e, reply);
                e
            }
        };
        e.finish(max)
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            0 => ToWorker::Run(Job {
                code: d.string()?,
                timeout: Duration::from_nanos(d.u64()?),
                memory_limit: d.u64()?,
                max_output_bytes: d.u64()?,
            }),
            1 => ToWorker::Reply(decode_reply(&mut d)?),
            _ => return Err(ProtocolError("unknown message")),
        };
        d.end()?;
        Ok(msg)
    }
}

fn encode_reply(e: &mut Enc, reply: &Reply) {
    match reply {
        Reply::Error(m) => e.u8(0).str(m),
        Reply::Unit => e.u8(1),
        Reply::Bool(b) => e.u8(2).bool(*b),
        Reply::Text(t) => e.u8(3).str(t),
        Reply::Names(names) => {
            e.u8(4).u32(u32::try_from(names.len()).unwrap_or(u32::MAX));
            for n in names {
                e.str(n);
            }
            e
        }
        Reply::Stat(s) => {
            e.u8(5).u8(s.kind).u64(s.size);
            match s.mtime_ms {
                None => e.u8(0),
                Some(m) => e.u8(1).u64(m.to_bits()),
            }
        }
        Reply::Fetch {
            status,
            headers,
            body,
        } => e.u8(6).u32(u32::from(*status)).pairs(headers).str(body),
    };
}

fn decode_reply(d: &mut Dec<'_>) -> Result<Reply, ProtocolError> {
    Ok(match d.u8()? {
        0 => Reply::Error(d.string()?),
        1 => Reply::Unit,
        2 => Reply::Bool(d.bool()?),
        3 => Reply::Text(d.string()?),
        4 => Reply::Names(d.strings()?),
        5 => {
            let kind = d.u8()?;
            if usize::from(kind) >= KIND_NAMES.len() {
                return Err(ProtocolError("bad file kind"));
            }
            let size = d.u64()?;
            let mtime_ms = match d.u8()? {
                0 => None,
                1 => Some(f64::from_bits(d.u64()?)),
                _ => return Err(ProtocolError("bad option")),
            };
            Reply::Stat(StatReply {
                kind,
                size,
                mtime_ms,
            })
        }
        6 => Reply::Fetch {
            status: u16::try_from(d.u32()?).map_err(|_| ProtocolError("bad status"))?,
            headers: d.pairs()?,
            body: d.string()?,
        },
        _ => return Err(ProtocolError("unknown reply")),
    })
}

impl FromWorker {
    /// Encode as a frame of at most `max` payload bytes.
    pub(crate) fn encode(&self, max: usize) -> Result<Vec<u8>, ProtocolError> {
        let mut e;
        match self {
            FromWorker::Hello(h) => {
                e = Enc::new(0);
                e.u32(h.version)
                    .u64(h.vm_bytes)
                    .opt_str(h.unconfined.as_deref());
            }
            FromWorker::Call(call) => {
                e = Enc::new(1);
                match call {
                    Call::ReadFile { path } => e.u8(0).str(path),
                    Call::WriteFile { path, text } => e.u8(1).str(path).str(text),
                    Call::ReadDir { path } => e.u8(2).str(path),
                    Call::Exists { path } => e.u8(3).str(path),
                    Call::Stat { path, follow } => e.u8(4).str(path).bool(*follow),
                    Call::Mkdir { path } => e.u8(5).str(path),
                    Call::Remove { path, recursive } => e.u8(6).str(path).bool(*recursive),
                    Call::Symlink { target, path } => e.u8(7).str(target).str(path),
                    Call::ReadLink { path } => e.u8(8).str(path),
                    Call::Fetch {
                        url,
                        method,
                        body,
                        headers,
                    } => e
                        .u8(9)
                        .str(url)
                        .str(method)
                        .opt_str(body.as_deref())
                        .pairs(headers),
                };
            }
            FromWorker::Done(outcome) => {
                e = Enc::new(2);
                match outcome {
                    Outcome::Finished {
                        exit_code,
                        stdout,
                        stderr,
                        truncated,
                    } => e
                        .u8(0)
                        .u32(u32::from_le_bytes(exit_code.to_le_bytes()))
                        .bytes(stdout)
                        .bytes(stderr)
                        .bool(*truncated),
                    Outcome::Timeout => e.u8(1),
                    Outcome::OutOfMemory => e.u8(2),
                    Outcome::Engine(m) => e.u8(3).str(m),
                };
            }
        }
        e.finish(max)
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            0 => FromWorker::Hello(Hello {
                version: d.u32()?,
                vm_bytes: d.u64()?,
                unconfined: d.opt_string()?,
            }),
            1 => FromWorker::Call(match d.u8()? {
                0 => Call::ReadFile { path: d.string()? },
                1 => Call::WriteFile {
                    path: d.string()?,
                    text: d.string()?,
                },
                2 => Call::ReadDir { path: d.string()? },
                3 => Call::Exists { path: d.string()? },
                4 => Call::Stat {
                    path: d.string()?,
                    follow: d.bool()?,
                },
                5 => Call::Mkdir { path: d.string()? },
                6 => Call::Remove {
                    path: d.string()?,
                    recursive: d.bool()?,
                },
                7 => Call::Symlink {
                    target: d.string()?,
                    path: d.string()?,
                },
                8 => Call::ReadLink { path: d.string()? },
                9 => Call::Fetch {
                    url: d.string()?,
                    method: d.string()?,
                    body: d.opt_string()?,
                    headers: d.pairs()?,
                },
                _ => return Err(ProtocolError("unknown call")),
            }),
            2 => FromWorker::Done(match d.u8()? {
                0 => Outcome::Finished {
                    exit_code: i32::from_le_bytes(d.u32()?.to_le_bytes()),
                    stdout: d.bytes()?.to_vec(),
                    stderr: d.bytes()?.to_vec(),
                    truncated: d.bool()?,
                },
                1 => Outcome::Timeout,
                2 => Outcome::OutOfMemory,
                3 => Outcome::Engine(d.string()?),
                _ => return Err(ProtocolError("unknown outcome")),
            }),
            _ => return Err(ProtocolError("unknown message")),
        };
        d.end()?;
        Ok(msg)
    }
}

fn announced(header: [u8; 4], max: usize) -> io::Result<usize> {
    let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        return Err(ProtocolError("frame too large").into());
    }
    Ok(len)
}

/// Read one frame's payload (blocking). `Ok(None)` at a clean end of stream.
pub(crate) fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = announced(header, max)?;
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    r.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(buf))
}

/// Read one frame's payload. `Ok(None)` at a clean end of stream.
pub(crate) async fn read_frame_async(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = announced(header, max)?;
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    r.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(buf))
}

/// Write a frame made by an `encode` (blocking).
pub(crate) fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_from(msg: FromWorker) {
        let frame = msg.encode(MAX_FRAME_BYTES).unwrap();
        let payload = read_frame(&mut &frame[..], MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(FromWorker::decode(&payload).unwrap(), msg);
    }

    fn round_trip_to(msg: ToWorker) {
        let frame = msg.encode(MAX_FRAME_BYTES).unwrap();
        let payload = read_frame(&mut &frame[..], MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(ToWorker::decode(&payload).unwrap(), msg);
    }

    #[test]
    fn every_message_survives_a_round_trip() {
        round_trip_to(ToWorker::Run(Job {
            code: "1 + 2 // é".into(),
            timeout: Duration::from_millis(1500),
            memory_limit: 8 << 20,
            max_output_bytes: 100,
        }));
        for reply in [
            Reply::Error("/workspace/x: no such file or directory".into()),
            Reply::Unit,
            Reply::Bool(true),
            Reply::Text("héllo".into()),
            Reply::Names(vec!["a".into(), String::new()]),
            Reply::Stat(StatReply {
                kind: 2,
                size: 7,
                mtime_ms: Some(1.5e12),
            }),
            Reply::Stat(StatReply {
                kind: 0,
                size: 0,
                mtime_ms: None,
            }),
            Reply::Fetch {
                status: 201,
                headers: vec![("a".into(), "b".into())],
                body: "{}".into(),
            },
        ] {
            round_trip_to(ToWorker::Reply(reply));
        }
        round_trip_from(FromWorker::Hello(Hello {
            version: PROTOCOL_VERSION,
            vm_bytes: 1 << 30,
            unconfined: Some("seccomp: EINVAL".into()),
        }));
        for call in [
            Call::ReadFile { path: "a".into() },
            Call::WriteFile {
                path: "a".into(),
                text: "b".into(),
            },
            Call::ReadDir { path: ".".into() },
            Call::Exists { path: "a".into() },
            Call::Stat {
                path: "a".into(),
                follow: false,
            },
            Call::Mkdir { path: "d".into() },
            Call::Remove {
                path: "d".into(),
                recursive: true,
            },
            Call::Symlink {
                target: "t".into(),
                path: "l".into(),
            },
            Call::ReadLink { path: "l".into() },
            Call::Fetch {
                url: "https://x.test/".into(),
                method: "GET".into(),
                body: None,
                headers: vec![("k".into(), "v".into())],
            },
        ] {
            round_trip_from(FromWorker::Call(call));
        }
        for outcome in [
            Outcome::Finished {
                exit_code: -1,
                stdout: b"out".to_vec(),
                stderr: vec![0xff],
                truncated: true,
            },
            Outcome::Timeout,
            Outcome::OutOfMemory,
            Outcome::Engine("boom".into()),
        ] {
            round_trip_from(FromWorker::Done(outcome));
        }
    }

    #[test]
    fn announced_lengths_past_the_cap_are_refused_before_reading() {
        let mut frame = u32::MAX.to_le_bytes().to_vec();
        frame.push(0);
        let err = read_frame(&mut &frame[..], 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A frame shorter than announced is an error, not a hang or a short message.
        let mut frame = 10u32.to_le_bytes().to_vec();
        frame.extend_from_slice(b"abc");
        let err = read_frame(&mut &frame[..], 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(read_frame(&mut &[][..], 1024).unwrap().is_none());
    }

    #[test]
    fn hostile_payloads_are_refused_not_trusted() {
        // A names reply announcing 2^32-1 entries in a few bytes.
        let mut p = vec![1, 4];
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(ToWorker::decode(&p).is_err());
        // A string longer than the payload.
        let mut p = vec![1, 1, 0];
        p.extend_from_slice(&1000u32.to_le_bytes());
        p.extend_from_slice(b"abc");
        assert!(FromWorker::decode(&p).is_err());
        // Invalid UTF-8, unknown tags, trailing bytes.
        let mut p = vec![1, 0];
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0xff);
        assert!(FromWorker::decode(&p).is_err());
        assert!(FromWorker::decode(&[9]).is_err());
        assert!(FromWorker::decode(&[2, 1, 0]).is_err());
        assert!(FromWorker::decode(&[]).is_err());
        // Every prefix of a valid message is refused (no panic on truncation).
        let frame = FromWorker::Call(Call::Fetch {
            url: "u".into(),
            method: "GET".into(),
            body: Some("b".into()),
            headers: vec![("k".into(), "v".into())],
        })
        .encode(MAX_FRAME_BYTES)
        .unwrap();
        let payload = &frame[4..];
        for cut in 0..payload.len() {
            assert!(FromWorker::decode(&payload[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn encoding_refuses_frames_over_the_cap() {
        let msg = FromWorker::Call(Call::WriteFile {
            path: "a".into(),
            text: "x".repeat(100),
        });
        assert!(msg.encode(50).is_err());
        assert!(msg.encode(200).is_ok());
    }
}
