//! Processes in a container through the Engine's exec endpoints: one-shot commands with bounded
//! output and a timeout, streamed commands, and interactive processes (stdin + merged output).
//!
//! Every process is started through a tiny `/bin/sh` prelude that prints its pid on stderr and
//! then `exec`s the command, so the pid (a process-group and session leader: Docker starts exec'd
//! processes with `setsid`) is known inside the container and a timeout can kill the whole group
//! with a second exec. The Engine API has no "kill this exec" call.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::map_docker_err;
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::{
    ExecCommand, ExecEvent, ExecExit, ExecOutput, ExecRequest, ExecStream, InteractiveProcess,
    ProcessControl,
};

/// How long a kill may take before it is abandoned.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Output stream of an exec as bollard gives it.
type LogStream =
    Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>>;

/// The argv that runs `cmd` behind the pid prelude.
pub(crate) fn wrap(cmd: &ExecCommand) -> Vec<String> {
    match cmd {
        ExecCommand::Shell(line) => vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo $$ >&2; if [ -x /bin/bash ]; then exec /bin/bash -c \"$1\"; else exec /bin/sh -c \"$1\"; fi"
                .into(),
            "cma".into(),
            line.clone(),
        ],
        ExecCommand::Argv(argv) => {
            let mut v = vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo $$ >&2; exec \"$@\"".into(),
                "cma".into(),
            ];
            v.extend(argv.iter().cloned());
            v
        }
    }
}

/// A started exec: its output frames, stdin and the shared pid slot.
pub(crate) struct Started {
    pub(crate) exec_id: String,
    pub(crate) output: LogStream,
    pub(crate) input: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// Create and start an attached exec of `req` (wrapped) in `container`.
pub(crate) async fn start(
    docker: &Docker,
    container: &str,
    req: &ExecRequest,
    workdir: &str,
    attach_stdin: bool,
) -> Result<Started> {
    if let ExecCommand::Argv(a) = &req.command
        && a.is_empty()
    {
        return Err(SandboxError::new(
            SandboxErrorKind::InvalidInput,
            "exec: empty argv",
        ));
    }
    let env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cwd = req.cwd.clone().unwrap_or_else(|| workdir.to_owned());
    let created = docker
        .create_exec(
            container,
            CreateExecOptions::<String> {
                attach_stdin: Some(attach_stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                env: Some(env),
                cmd: Some(wrap(&req.command)),
                working_dir: Some(cwd),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| map_docker_err(e, "exec"))?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| map_docker_err(e, "exec"))?;
    match started {
        StartExecResults::Attached { output, input } => Ok(Started {
            exec_id: created.id,
            output,
            input,
        }),
        StartExecResults::Detached => Err(SandboxError::new(
            SandboxErrorKind::Backend,
            "exec: the engine did not attach",
        )),
    }
}

/// Strips the pid line the prelude writes first on stderr.
#[derive(Default)]
pub(crate) struct PidSplitter {
    done: bool,
    pending: BytesMut,
}

impl PidSplitter {
    /// Feed a stderr chunk; returns the pid once the line is complete and the rest of the
    /// chunk that is real stderr.
    pub(crate) fn feed(&mut self, chunk: Bytes) -> (Option<i64>, Bytes) {
        if self.done {
            return (None, chunk);
        }
        self.pending.extend_from_slice(&chunk);
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                self.done = true;
                let line = self.pending.split_to(nl + 1);
                let pid = std::str::from_utf8(&line[..nl])
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                (pid, std::mem::take(&mut self.pending).freeze())
            }
            None if self.pending.len() > 64 => {
                // Not a pid line (the prelude did not run as expected): pass it through.
                self.done = true;
                (None, std::mem::take(&mut self.pending).freeze())
            }
            None => (None, Bytes::new()),
        }
    }
}

/// Kill a process group (and the process) inside the container with a second exec.
pub(crate) async fn kill_group(docker: &Docker, container: &str, pid: i64) {
    let req = ExecRequest::argv([
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null; true"),
    ]);
    let fut = async {
        let Ok(created) = docker
            .create_exec(
                container,
                CreateExecOptions::<String> {
                    attach_stdout: Some(false),
                    attach_stderr: Some(false),
                    cmd: match req.command {
                        ExecCommand::Argv(a) => Some(a),
                        ExecCommand::Shell(_) => None,
                    },
                    ..Default::default()
                },
            )
            .await
        else {
            return;
        };
        let _ = docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: true,
                    ..Default::default()
                }),
            )
            .await;
        // Wait until the kill exec has run (bounded).
        for _ in 0..50 {
            match docker.inspect_exec(&created.id).await {
                Ok(i) if i.running != Some(true) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(KILL_TIMEOUT, fut).await;
}

/// Exit code of a finished exec (briefly polled: the engine may lag the end of the stream).
pub(crate) async fn exit_code(docker: &Docker, exec_id: &str) -> Result<Option<i32>> {
    for _ in 0..100 {
        let info = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| map_docker_err(e, "exec"))?;
        if info.running != Some(true) {
            return Ok(info.exit_code.map(|c| c as i32));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(None)
}

/// Keeps the last `cap` bytes written.
struct Tail {
    buf: BytesMut,
    cap: usize,
    truncated: bool,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            cap,
            truncated: false,
        }
    }
    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        if self.buf.len() > self.cap {
            self.truncated = true;
            // Amortised: trim only when a quarter of the cap (at least 64 KiB) past it.
            if self.buf.len() >= self.cap.saturating_add((self.cap / 4).max(64 * 1024)) {
                let cut = self.buf.len() - self.cap;
                let _ = self.buf.split_to(cut);
            }
        }
    }
    fn finish(mut self) -> (Bytes, bool) {
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            let _ = self.buf.split_to(cut);
        }
        (self.buf.freeze(), self.truncated)
    }
}

/// What a spare process runs: print its pid (like the prelude of [`wrap`]), read a script from
/// stdin to its end, and `eval` it (the script `exec`s the command, keeping the pid).
const SPARE: &str = "echo $$ >&2; s=$(cat); eval \"$s\"";

/// Start a spare process in `container`: an attached exec (the container's user, no command
/// yet) that [`run_on_spare`] later turns into a command by writing it to its stdin. It saves
/// the Engine's exec start (tens of milliseconds) on the command that uses it. Closing its stdin
/// without a command makes it exit.
pub(crate) async fn start_spare(docker: &Docker, container: &str) -> Result<Started> {
    let req = ExecRequest::argv(["/bin/sh", "-c", SPARE]);
    // Not through `wrap`: the script prints the pid itself.
    let created = docker
        .create_exec(
            container,
            CreateExecOptions::<String> {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                cmd: match req.command {
                    ExecCommand::Argv(a) => Some(a),
                    ExecCommand::Shell(_) => None,
                },
                working_dir: Some("/".into()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| map_docker_err(e, "exec"))?;
    match docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| map_docker_err(e, "exec"))?
    {
        StartExecResults::Attached { output, input } => Ok(Started {
            exec_id: created.id,
            output,
            input,
        }),
        StartExecResults::Detached => Err(SandboxError::new(
            SandboxErrorKind::Backend,
            "exec: the engine did not attach",
        )),
    }
}

/// Whether a spare process can run `req`: no stdin to feed (the spare's stdin carries the
/// script) and no working directory of its own (a missing one must fail the way the Engine
/// fails it).
pub(crate) fn spare_can_run(req: &ExecRequest) -> bool {
    req.stdin.is_none() && req.cwd.is_none()
}

/// POSIX shell single quoting.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script a spare runs for `req`: the working directory, the variables, then `exec` of the
/// command exactly as [`wrap`] runs it.
fn spare_script(req: &ExecRequest, workdir: &str) -> String {
    let mut s = format!("cd -- {} || exit 126\n", quote(workdir));
    for (k, v) in &req.env {
        s.push_str(&format!("export {}\n", quote(&format!("{k}={v}"))));
    }
    match &req.command {
        ExecCommand::Shell(line) => {
            let q = quote(line);
            s.push_str(&format!(
                "if [ -x /bin/bash ]; then exec /bin/bash -c {q}; else exec /bin/sh -c {q}; fi\n"
            ));
        }
        ExecCommand::Argv(argv) => {
            s.push_str("exec");
            for a in argv {
                s.push(' ');
                s.push_str(&quote(a));
            }
            s.push('\n');
        }
    }
    s
}

/// Run `req` (see [`spare_can_run`]) on a spare process from [`start_spare`]. Gives the spare
/// back as `Err` when it cannot take the command (it is gone), for a normal exec instead.
pub(crate) async fn run_on_spare(
    docker: &Docker,
    container: &str,
    mut spare: Started,
    req: ExecRequest,
    workdir: &str,
) -> std::result::Result<Result<ExecOutput>, ExecRequest> {
    if let ExecCommand::Argv(a) = &req.command
        && a.is_empty()
    {
        return Ok(Err(SandboxError::new(
            SandboxErrorKind::InvalidInput,
            "exec: empty argv",
        )));
    }
    let script = spare_script(&req, workdir);
    let fed = async {
        spare.input.write_all(script.as_bytes()).await?;
        spare.input.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(5), fed)
        .await
        .map_or(true, |r| r.is_err())
    {
        return Err(req);
    }
    Ok(collect(docker, container, spare, req).await)
}

/// Run a command to completion with bounded output and a timeout.
pub(crate) async fn run(
    docker: &Docker,
    container: &str,
    req: ExecRequest,
    workdir: &str,
) -> Result<ExecOutput> {
    let mut started = start(docker, container, &req, workdir, req.stdin.is_some()).await?;
    let input = std::mem::replace(&mut started.input, Box::pin(tokio::io::sink()));
    if let Some(data) = &req.stdin {
        let mut input = input;
        let data = data.clone();
        // Feed stdin concurrently (a big stdin must not block reading the output).
        tokio::spawn(async move {
            let _ = input.write_all(&data).await;
            let _ = input.shutdown().await;
        });
    } else {
        drop(input);
    }
    collect(docker, container, started, req).await
}

/// Read a started command's output to its end (bounded, with the timeout) and its exit code.
async fn collect(
    docker: &Docker,
    container: &str,
    mut started: Started,
    req: ExecRequest,
) -> Result<ExecOutput> {
    let mut out = Tail::new(req.max_output_bytes);
    let mut err = Tail::new(req.max_output_bytes);
    let mut pid_split = PidSplitter::default();
    let mut pid = None;
    let collect = async {
        while let Some(frame) = started.output.next().await {
            match frame.map_err(|e| map_docker_err(e, "exec"))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    out.push(&message)
                }
                LogOutput::StdErr { message } => {
                    let (p, rest) = pid_split.feed(message);
                    if p.is_some() {
                        pid = p;
                    }
                    err.push(&rest);
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        Ok::<_, SandboxError>(())
    };
    match tokio::time::timeout(req.timeout, collect).await {
        Ok(r) => r?,
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(docker, container, pid).await;
            }
            return Err(SandboxError::new(
                SandboxErrorKind::Timeout,
                format!("exec: command timed out after {:?}", req.timeout),
            ));
        }
    }
    let exit_code = exit_code(docker, &started.exec_id).await?;
    let (stdout, t1) = out.finish();
    let (stderr, t2) = err.finish();
    Ok(ExecOutput {
        exit_code,
        stdout,
        stderr,
        truncated: t1 || t2,
    })
}

/// Kills the command when a stream is dropped before its end.
struct KillOnDrop {
    docker: Docker,
    container: String,
    pid: Arc<AtomicI64>,
    finished: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = self.pid.load(Ordering::Acquire);
        if self.finished || pid <= 0 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let container = std::mem::take(&mut self.container);
            rt.spawn(async move { kill_group(&docker, &container, pid).await });
        }
    }
}

/// Run a command and stream its output (per-stream cap: chunks past it are skipped).
pub(crate) async fn stream(
    docker: &Docker,
    container: &str,
    req: ExecRequest,
    workdir: &str,
) -> Result<ExecStream> {
    let started = start(docker, container, &req, workdir, req.stdin.is_some()).await?;
    let Started {
        exec_id,
        output,
        input,
    } = started;
    if let Some(data) = req.stdin.clone() {
        let mut input = input;
        tokio::spawn(async move {
            let _ = input.write_all(&data).await;
            let _ = input.shutdown().await;
        });
    }
    struct St {
        output: LogStream,
        guard: KillOnDrop,
        split: PidSplitter,
        sent: [usize; 2],
        cap: usize,
        truncated: bool,
        deadline: tokio::time::Instant,
        exec_id: String,
        done: bool,
    }
    let st = St {
        output,
        guard: KillOnDrop {
            docker: docker.clone(),
            container: container.to_owned(),
            pid: Arc::new(AtomicI64::new(0)),
            finished: false,
        },
        split: PidSplitter::default(),
        sent: [0, 0],
        cap: req.max_output_bytes,
        truncated: false,
        // A timeout past any representable instant is no timeout (never a panic).
        deadline: tokio::time::Instant::now()
            .checked_add(req.timeout)
            .unwrap_or_else(|| {
                tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400)
            }),
        exec_id,
        done: false,
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let next = tokio::time::timeout_at(st.deadline, st.output.next()).await;
            let frame = match next {
                Err(_) => {
                    st.done = true;
                    let pid = st.guard.pid.load(Ordering::Acquire);
                    if pid > 0 {
                        kill_group(&st.guard.docker, &st.guard.container, pid).await;
                    }
                    st.guard.finished = true;
                    let e = SandboxError::new(SandboxErrorKind::Timeout, "exec: command timed out");
                    return Some((Err(e), st));
                }
                Ok(None) => {
                    st.done = true;
                    st.guard.finished = true;
                    let code = exit_code(&st.guard.docker, &st.exec_id).await;
                    let item = code.map(|exit_code| {
                        ExecEvent::Exit(ExecExit {
                            exit_code,
                            truncated: st.truncated,
                        })
                    });
                    return Some((item, st));
                }
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((Err(map_docker_err(e, "exec")), st));
                }
                Ok(Some(Ok(f))) => f,
            };
            let (idx, bytes) = match frame {
                LogOutput::StdOut { message } | LogOutput::Console { message } => (0, message),
                LogOutput::StdErr { message } => {
                    let (pid, rest) = st.split.feed(message);
                    if let Some(pid) = pid {
                        st.guard.pid.store(pid, Ordering::Release);
                    }
                    (1, rest)
                }
                LogOutput::StdIn { .. } => continue,
            };
            if bytes.is_empty() {
                continue;
            }
            let room = st.cap.saturating_sub(st.sent[idx]);
            if room == 0 {
                st.truncated = true;
                continue;
            }
            let bytes = if bytes.len() > room {
                st.truncated = true;
                bytes.slice(..room)
            } else {
                bytes
            };
            st.sent[idx] += bytes.len();
            let ev = if idx == 0 {
                ExecEvent::Stdout(bytes)
            } else {
                ExecEvent::Stderr(bytes)
            };
            return Some((Ok(ev), st));
        }
    });
    Ok(Box::pin(s))
}

/// Control side of an interactive exec.
struct Control {
    docker: Docker,
    container: String,
    pid: Arc<AtomicI64>,
    exited: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ProcessControl for Control {
    fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    async fn kill(&self) {
        if self.exited.swap(true, Ordering::AcqRel) {
            return;
        }
        // The pid line may still be in flight right after the start.
        for _ in 0..100 {
            if self.pid.load(Ordering::Acquire) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = self.pid.load(Ordering::Acquire);
        if pid > 0 {
            kill_group(&self.docker, &self.container, pid).await;
        }
    }
}

/// Merged output as an `AsyncRead`, recording the pid and the end of the stream.
struct MergedOutput {
    output: LogStream,
    split: PidSplitter,
    pid: Arc<AtomicI64>,
    exited: Arc<AtomicBool>,
    pending: Bytes,
}

impl tokio::io::AsyncRead for MergedOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.output.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.exited.store(true, Ordering::Release);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.exited.store(true, Ordering::Release);
                    return Poll::Ready(Err(std::io::Error::other(e)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        self.pending = message;
                    }
                    LogOutput::StdErr { message } => {
                        let (pid, rest) = self.split.feed(message);
                        if let Some(pid) = pid {
                            self.pid.store(pid, Ordering::Release);
                        }
                        self.pending = rest;
                    }
                    LogOutput::StdIn { .. } => {}
                },
            }
        }
    }
}

/// Start an interactive process.
pub(crate) async fn interactive(
    docker: &Docker,
    container: &str,
    req: ExecRequest,
    workdir: &str,
) -> Result<InteractiveProcess> {
    let started = start(docker, container, &req, workdir, true).await?;
    let pid = Arc::new(AtomicI64::new(0));
    let exited = Arc::new(AtomicBool::new(false));
    Ok(InteractiveProcess {
        stdin: started.input,
        output: Box::pin(MergedOutput {
            output: started.output,
            split: PidSplitter::default(),
            pid: pid.clone(),
            exited: exited.clone(),
            pending: Bytes::new(),
        }),
        control: Box::new(Control {
            docker: docker.clone(),
            container: container.to_owned(),
            pid,
            exited,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_line_is_split_from_stderr_across_chunks() {
        let mut s = PidSplitter::default();
        assert_eq!(s.feed(Bytes::from_static(b"12")), (None, Bytes::new()));
        let (pid, rest) = s.feed(Bytes::from_static(b"3\nerr"));
        assert_eq!((pid, &rest[..]), (Some(123), &b"err"[..]));
        assert_eq!(
            s.feed(Bytes::from_static(b"more")).1,
            Bytes::from_static(b"more")
        );
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"abcdef");
        t.push(b"gh");
        assert_eq!(t.finish(), (Bytes::from_static(b"efgh"), true));
        let mut t = Tail::new(10);
        t.push(b"abc");
        assert_eq!(t.finish(), (Bytes::from_static(b"abc"), false));
    }
}
