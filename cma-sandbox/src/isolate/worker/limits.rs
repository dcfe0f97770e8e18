//! How a worker process confines itself before it runs anything a script controls, and the
//! limits the backend sets on it from outside.
//!
//! In the worker, at start ([`die_with_parent`]): die with the backend (`PR_SET_PDEATHSIG`,
//! `SIGKILL`; and exit at once if the backend is already gone), no core dumps. Inherited
//! descriptors other than its socket are closed before this (in the entry hook). Once it has
//! read what it needs from files (its size; the C library's time zone data, read on first use
//! of local time) ([`limit_resources`]): no new files, no child processes, no locked memory or
//! message queues (`RLIMIT_FSIZE`, `RLIMIT_NOFILE`, `RLIMIT_NPROC`, `RLIMIT_MEMLOCK`,
//! `RLIMIT_MSGQUEUE`, hard limits included, so they cannot be raised again), and no
//! capabilities (a root backend's workers are otherwise root with every capability).
//!
//! Then, once its first runtime is built ([`install_syscall_filter`]): `PR_SET_NO_NEW_PRIVS`
//! and a seccomp filter that kills the process on any system call outside a short list: reads
//! and writes on its socket (descriptor 0) and writes to descriptor 2 (`/dev/null`), anonymous
//! non-executable memory (`mmap` of no file, `mprotect` without `PROT_EXEC`, `munmap`,
//! `mremap`, `brk`, `madvise`), `futex`, clocks, `getrandom`, `close`, reading (not setting) its
//! limits, and what `abort` needs to kill itself (`rt_sigprocmask`, `getpid`, `gettid`,
//! `tgkill` on its own pid), and exiting. No `open`, `socket`, `connect`, `execve`, `clone`,
//! `fork`, `kill` of others, `ptrace`, `prlimit` writes or signal handlers: even code that
//! took over the worker reaches nothing but the backend's end of its socket, which answers only
//! the protocol, with the sandbox's own confinement.
//!
//! From outside, per script (by the backend, with `prlimit`, which the worker cannot undo):
//! `RLIMIT_AS` (the script's heap limit plus a margin, see [`address_space_limit`]) and
//! `RLIMIT_CPU` (the CPU time it has used plus the script's timeout: a backstop should the
//! backend itself stop watching; the wall-clock kill is the guard).

use std::collections::BTreeMap;
use std::time::Duration;

use rustix::process::{Pid, Resource, Rlimit, Signal};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Address space a worker may use on top of its size when idle and three times the script's
/// heap limit: room for the copies a host call makes of a script's strings and for the
/// allocator's slack.
pub(crate) const ADDRESS_SPACE_MARGIN: u64 = 64 * 1024 * 1024;
/// CPU seconds a worker gets on top of a script's timeout before `RLIMIT_CPU` stops it.
const CPU_MARGIN_SECS: u64 = 2;

fn limit(resource: Resource, value: u64) -> std::io::Result<()> {
    rustix::process::setrlimit(
        resource,
        Rlimit {
            current: Some(value),
            maximum: Some(value),
        },
    )
    .map_err(Into::into)
}

/// Tie the worker's life to the backend's; `parent` is the backend's pid (the worker exits if
/// its parent is already someone else).
pub(crate) fn die_with_parent(parent: Option<u32>) -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    // The parent may have died before the line above: then nothing would ever kill us.
    let ppid = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if parent.is_none() || ppid.and_then(|p| u32::try_from(p).ok()) != parent {
        return Err(std::io::Error::other("the backend is gone"));
    }
    limit(Resource::Core, 0)
}

/// The worker's resource limits, once it has opened all it ever will: no files, no processes,
/// no locked memory or message queues.
pub(crate) fn limit_resources() -> std::io::Result<()> {
    limit(Resource::Fsize, 0)?;
    limit(Resource::Nofile, 3)?;
    limit(Resource::Nproc, 0)?;
    limit(Resource::Memlock, 0)?;
    limit(Resource::Msgqueue, 0)?;
    // A backend running as root starts root workers: drop every capability (the worker needs
    // none; without CAP_SYS_RESOURCE the limits above are final even for root).
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )?;
    Ok(())
}

/// This process's virtual address space size, from `/proc/self/statm` (0 if unreadable).
pub(crate) fn vm_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages.saturating_mul(rustix::param::page_size() as u64)
}

/// The address-space limit for a script with heap limit `memory_limit` in a worker whose idle
/// size is `vm_bytes`.
pub(crate) fn address_space_limit(vm_bytes: u64, memory_limit: u64) -> u64 {
    vm_bytes
        .saturating_add(memory_limit.saturating_mul(3))
        .saturating_add(ADDRESS_SPACE_MARGIN)
}

/// What a process has used so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// User + system CPU time, in whole seconds rounded up.
    pub cpu_secs: u64,
    /// Virtual address space size, in bytes.
    pub vm_bytes: u64,
}

/// A process's usage, from `/proc/<pid>/stat` (`None` if unreadable).
pub(crate) fn usage(pid: Pid) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    // Fields after the command name (which may hold spaces and parentheses) start after its
    // last `)`: the line's field 3 is index 0 here, so utime (14), stime (15) and vsize (23)
    // are 11, 12 and 20.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // Clock ticks: 100 per second on every Linux configuration Rust supports (USER_HZ).
    let ticks = field(11)?.saturating_add(field(12)?);
    Some(Usage {
        cpu_secs: ticks.div_ceil(100),
        vm_bytes: field(20)?,
    })
}

/// Set a worker's limits for its next script, from outside: address space, and CPU time (its
/// usage so far plus `timeout`). `None` lifts a limit (up to the hard limit).
pub(crate) fn set_script_limits(
    pid: Pid,
    used: Option<Usage>,
    address_space: Option<u64>,
    timeout: Duration,
) -> std::io::Result<()> {
    let cpu = used.map(|u| {
        u.cpu_secs
            .saturating_add(timeout.as_secs())
            .saturating_add(CPU_MARGIN_SECS)
    });
    for (resource, soft) in [(Resource::As, address_space), (Resource::Cpu, cpu)] {
        // The worker's hard limits are the backend's (inherited, never changed): keep them, as
        // lowering one could not be undone for the next script. Its filter forbids the worker
        // to raise its soft limits itself.
        let hard = rustix::process::getrlimit(resource).maximum;
        let current = match (soft, hard) {
            (Some(s), Some(h)) => Some(s.min(h)),
            (s, None) => s,
            (None, h) => h,
        };
        rustix::process::prlimit(
            Some(pid),
            resource,
            Rlimit {
                current,
                maximum: hard,
            },
        )?;
    }
    Ok(())
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    SeccompCondition::new(arg, len, op, value).map_err(seccompiler::Error::Backend)
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::Error> {
    SeccompRule::new(conds).map_err(seccompiler::Error::Backend)
}

/// The filter's rules: system call number → alternatives (an empty list allows any arguments).
fn rules(own_pid: u64) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::Error> {
    let fd_is = |fd: u64| rule(vec![cond(0, Len::Dword, Op::Eq, fd)?]);
    let no_exec = |arg| cond(arg, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0);
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in [
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
    ] {
        r.insert(nr, vec![fd_is(0)?]);
    }
    for nr in [
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
    ] {
        r.insert(nr, vec![fd_is(0)?, fd_is(2)?]);
    }
    // Anonymous memory only (fd -1), never executable.
    r.insert(
        libc::SYS_mmap,
        vec![rule(vec![
            no_exec(2)?,
            cond(4, Len::Dword, Op::Eq, u64::from(u32::MAX))?,
        ])?],
    );
    r.insert(libc::SYS_mprotect, vec![rule(vec![no_exec(2)?])?]);
    // Reading limits only (glibc asks for the stack limit): a null new-limit pointer.
    r.insert(
        libc::SYS_prlimit64,
        vec![rule(vec![cond(2, Len::Qword, Op::Eq, 0)?])?],
    );
    // `abort` (an allocation failure in Rust code) signals its own process only.
    r.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, Len::Dword, Op::Eq, own_pid)?])?],
    );
    for nr in [
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        libc::SYS_sched_yield,
        libc::SYS_close,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ] {
        r.insert(nr, Vec::new());
    }
    #[cfg(target_arch = "x86_64")]
    {
        r.insert(libc::SYS_getrlimit, Vec::new());
        r.insert(libc::SYS_time, Vec::new());
    }
    Ok(r)
}

/// Install the worker's system-call filter (and `no_new_privs`) on every thread of this process.
/// `Err` says why it could not be; the backend decides whether to use such a worker.
pub(crate) fn install_syscall_filter() -> Result<(), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp: unsupported architecture: {e}"))?;
    let own_pid = u64::from(
        rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs(),
    );
    let program: BpfProgram = SeccompFilter::new(
        rules(own_pid).map_err(|e| format!("seccomp: {e}"))?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| format!("seccomp: {e}"))?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| format!("seccomp: {e}"))
}
