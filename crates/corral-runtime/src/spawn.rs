//! The spawner: a dedicated OS thread that starts sandboxes.
//!
//! Starting a sandbox means `clone(2)` into new pid, mount, uts, ipc and net namespaces.
//! The server is multi-threaded, so the child of that clone may only make raw system calls
//! (another thread may have held the allocator's lock at the moment of the clone). Every
//! string, pointer array and step is therefore prepared in a [`Plan`] *before* the clone; the
//! child walks the plan with `libc` calls only, reports a failing step through a pipe as two
//! integers, and otherwise ends in `execve` of the agent. The clone runs on the spawner
//! thread, never on a tokio worker, so slow namespace creation never stalls request handling.
//!
//! Hand-written rather than a library: no crate offers "clone into namespaces, build an
//! overlay root and pivot_root with no allocation after the clone"; `nix::sched::clone`
//! cannot return a pidfd, and runc/youki-style libraries are whole container runtimes.

use std::ffi::{CString, c_char};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

/// One step the child performs before `execve`.
#[derive(Debug)]
pub enum Step {
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    Mknod {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Unshare {
        flags: libc::c_int,
    },
    Sethostname {
        name: CString,
    },
    /// `chdir(root)`, `pivot_root(".", ".")`, detach the old root, `chdir("/")`.
    PivotRoot {
        root: CString,
    },
    Umask {
        mask: libc::mode_t,
    },
    /// Brings the loopback interface of the new net namespace up.
    LoopbackUp,
    /// Enters an existing namespace (`setns(fd, nstype)`); the fd belongs to the plan.
    Setns {
        fd: RawFd,
        nstype: libc::c_int,
    },
    /// Writes `data` to an existing file (e.g. a /proc knob).
    WriteFile {
        path: CString,
        data: Vec<u8>,
    },
    /// Drops these capabilities from the bounding set and clears the ambient set.
    DropCaps {
        caps: Vec<u32>,
    },
    /// Sets `no_new_privs`: setuid binaries and file capabilities grant nothing.
    NoNewPrivs,
    /// Loads a compiled seccomp filter.
    Seccomp {
        program: Vec<seccompiler::sock_filter>,
    },
    /// Runs the inner step; a missing path (ENOENT) is not an error.
    Optional(Box<Step>),
    /// Runs the inner step and ignores any failure.
    BestEffort(Box<Step>),
    /// Sets a resource limit.
    Rlimit {
        resource: u32,
        soft: u64,
        hard: u64,
    },
    /// Bind-mounts a host directory (`source`, then `subpath` beneath it, never through a
    /// symlink) onto a directory of the new root (`root`, then `target`, resolved as if
    /// `root` were `/`; missing directories are created), with `nosuid,nodev`.
    BindVolume(Box<VolumeBind>),
}

/// What [`Step::BindVolume`] needs, prepared before the clone.
#[derive(Debug, Clone)]
pub struct VolumeBind {
    /// The volume's host directory (a trusted path: symlinks are refused anyway).
    pub source: CString,
    /// A relative path inside the volume, or `None` for its root.
    pub subpath: Option<CString>,
    /// The new root (before `pivot_root`).
    pub root: CString,
    /// The mount point's successive prefixes, relative to `root` (`a`, `a/b`, `a/b/c`).
    pub target_prefixes: Vec<CString>,
    /// The mount point's components (`a`, `b`, `c`), one per prefix.
    pub target_names: Vec<CString>,
}

impl Step {
    /// A short name for error messages.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::Mount { target, fstype, .. } => {
                format!(
                    "mount {} on {}",
                    fstype.as_ref().map(s).unwrap_or_else(|| "bind".into()),
                    s(target)
                )
            }
            Step::Mkdir { path, .. } => format!("mkdir {}", s(path)),
            Step::Mknod { path, .. } => format!("mknod {}", s(path)),
            Step::Symlink { link, .. } => format!("symlink {}", s(link)),
            Step::Unshare { .. } => "unshare".into(),
            Step::Sethostname { .. } => "sethostname".into(),
            Step::PivotRoot { root } => format!("pivot_root into {}", s(root)),
            Step::Umask { .. } => "umask".into(),
            Step::LoopbackUp => "bringing up lo".into(),
            Step::Setns { .. } => "entering the network namespace".into(),
            Step::WriteFile { path, .. } => format!("writing {}", s(path)),
            Step::DropCaps { .. } => "dropping capabilities".into(),
            Step::NoNewPrivs => "setting no_new_privs".into(),
            Step::Seccomp { .. } => "loading the seccomp filter".into(),
            Step::Optional(inner) | Step::BestEffort(inner) => inner.describe(),
            Step::Rlimit { resource, .. } => format!("setting rlimit {resource}"),
            Step::BindVolume(b) => format!(
                "mounting volume {} on /{}",
                s(&b.source),
                b.target_prefixes.last().map(s).unwrap_or_default()
            ),
        }
    }
}

/// Everything the child needs, prepared before the clone.
pub struct Plan {
    pub steps: Vec<Step>,
    /// The agent's path inside the new root.
    pub exec_path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// Becomes fd 3 in the agent: the listening toolbox socket.
    pub listener: OwnedFd,
    /// Becomes fd 4 in the agent: its configuration.
    pub config: OwnedFd,
    /// Becomes stdout and stderr of the agent: the write end of its log pipe, which the
    /// server drains (`agent_log.rs`); never a file, which `/proc/1/fd/1` would name.
    pub log: OwnedFd,
    /// A prepared network namespace the child enters (a `Step::Setns` names its fd) instead
    /// of creating an empty one.
    pub netns: Option<OwnedFd>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("steps", &self.steps)
            .field("argv", &self.argv)
            .finish_non_exhaustive()
    }
}

/// A started sandbox init process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// A pidfd for the init process; readable once it has exited.
    pub pidfd: OwnedFd,
}

/// Which kind of step failed, for callers that treat some failures as the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Mounting a volume ([`Step::BindVolume`]).
    Volume,
    /// The exec of the agent, after every step succeeded.
    Exec,
    /// Any other setup step.
    Setup,
}

impl Step {
    /// The kind of this step, looking through `Optional`/`BestEffort`.
    pub fn kind(&self) -> StepKind {
        match self {
            Step::BindVolume(_) => StepKind::Volume,
            Step::Optional(inner) | Step::BestEffort(inner) => inner.kind(),
            _ => StepKind::Setup,
        }
    }
}

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{op}: {source}")]
    Host { op: &'static str, source: io::Error },
    #[error("sandbox setup failed at {step}: {source}")]
    Step {
        step: String,
        kind: StepKind,
        source: io::Error,
    },
    #[error("the spawner thread is gone")]
    Gone,
}

type Job = (Plan, oneshot::Sender<Result<Spawned, SpawnError>>);

/// Handle to the spawner threads.
#[derive(Debug, Clone)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts one spawner thread per CPU (at least two): each blocks while its child sets
    /// itself up, so several sandboxes start at once.
    pub fn start() -> io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let mut stack = ChildStack::new()?;
            std::thread::Builder::new()
                .name(format!("corral-spawner-{i}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take one job.
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((plan, reply)) = job else { break };
                        let _ = reply.send(spawn(plan, &mut stack));
                    }
                })?;
        }
        Ok(Self { jobs: tx })
    }

    /// Runs a plan on a spawner thread.
    pub async fn spawn(&self, plan: Plan) -> Result<Spawned, SpawnError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((plan, tx)).map_err(|_| SpawnError::Gone)?;
        rx.await.map_err(|_| SpawnError::Gone)?
    }
}

/// The stack a child runs on between `clone` and `execve`: it shares the spawner's memory
/// (`CLONE_VM`), so it needs a stack of its own. One per spawner thread, reused, with a
/// guard page at the bottom.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is owned by exactly one spawner thread and only used while that thread
// is suspended in `clone(CLONE_VFORK)`.
unsafe impl Send for ChildStack {}

impl ChildStack {
    const LEN: usize = 256 << 10;
    const GUARD: usize = 4 << 10;

    fn new() -> io::Result<Self> {
        // SAFETY: an anonymous private mapping; the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self {
            base,
            len: Self::LEN,
        };
        // SAFETY: the lowest page of the mapping we own.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down on every Linux target we build for).
    fn top(&mut self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, 16-byte aligned as the ABI wants.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// SIGKILLs the process behind a pidfd.
pub(crate) fn pidfd_kill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            0usize,
            0u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Kills a child that failed to start and collects its exit status.
fn kill_and_reap(pid: i32, pidfd: &OwnedFd) {
    // Already dead is fine: the wait below collects it either way.
    let _ = pidfd_kill(pidfd);
    // SAFETY: waitpid on our own child; a null status pointer is allowed.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
}

/// The error for a child's report: a step number and an errno, native-endian.
fn step_failure(steps: &[Step], report: &[u8]) -> SpawnError {
    let word = |at: usize| {
        let mut b = [0u8; 4];
        if let Some(src) = report.get(at..at + 4) {
            b.copy_from_slice(src);
        }
        b
    };
    let step = u32::from_ne_bytes(word(0)) as usize;
    let errno = i32::from_ne_bytes(word(4));
    let (what, kind) = match steps.get(step) {
        Some(s) => (s.describe(), s.kind()),
        None if step == EXEC_STEP as usize => ("exec of the agent".into(), StepKind::Exec),
        None => ("starting the sandbox".into(), StepKind::Setup),
    };
    SpawnError::Step {
        step: what,
        kind,
        source: io::Error::from_raw_os_error(errno),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Host {
            op: "pipe2",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Duplicates `fd` to a number >= 10 (close-on-exec), so the child's `dup2` onto 0..4 can
/// never clobber a source it still needs.
fn high_fd(fd: &OwnedFd) -> Result<OwnedFd, SpawnError> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd or -1.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(SpawnError::Host {
            op: "fcntl(F_DUPFD_CLOEXEC)",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `n` is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

const CLONE_FLAGS: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET
    | libc::CLONE_PIDFD;

/// Clones the child into its namespaces and waits until it has exec'd the agent or reported
/// the step that failed.
///
/// The clone is `CLONE_VM | CLONE_VFORK`, as glibc's `posix_spawn` does: the child borrows
/// this process's memory (no page tables copied, no copy-on-write faults afterwards in the
/// server's other threads) and runs on `stack` while this thread is suspended, until its
/// `execve` or exit. Signals are blocked across the clone so no server handler can run on
/// the child's stack; the child resets handlers and restores the mask just before `execve`.
fn spawn(plan: Plan, stack: &mut ChildStack) -> Result<Spawned, SpawnError> {
    let (err_r, err_w) = pipe()?;
    let listener = high_fd(&plan.listener)?;
    let config = high_fd(&plan.config)?;
    let log = high_fd(&plan.log)?;

    let mut argv: Vec<*const c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut all: libc::sigset_t = empty_sigset();
    let mut old: libc::sigset_t = empty_sigset();
    // SAFETY: valid sigset pointers on this stack frame.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let mut child = ChildArgs {
        steps: &plan.steps,
        exec_path: plan.exec_path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        err: err_w.as_raw_fd(),
        listener: listener.as_raw_fd(),
        config: config.as_raw_fd(),
        log: log.as_raw_fd(),
        sigmask: old,
    };

    let clone_flags = if plan.netns.is_some() {
        CLONE_FLAGS & !libc::CLONE_NEWNET
    } else {
        CLONE_FLAGS
    };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: `child_entry` runs on `stack` (ours, unused by anyone else) with a pointer to
    // `child`, which lives on this frame; CLONE_VFORK keeps this thread suspended, and every
    // pointer in `child` valid, until the child has exec'd or exited. With CLONE_PIDFD the
    // kernel writes the pidfd into `pidfd` (the parent_tid argument).
    let ret = unsafe {
        libc::clone(
            child_entry,
            stack.top(),
            clone_flags | libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut child).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: restoring this thread's own mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if ret < 0 {
        return Err(SpawnError::Host {
            op: "clone",
            source: clone_err,
        });
    }
    let pid = ret;
    // SAFETY: clone succeeded with CLONE_PIDFD, so `pidfd` is a fresh fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((err_w, listener, config, log));
    // The child has exec'd (its copy of the write end closed on exec: EOF) or written a
    // failure report and exited.
    let mut report = [0u8; 8];
    // SAFETY: reading into a valid buffer from a pipe we own.
    let n = unsafe { libc::read(err_r.as_raw_fd(), report.as_mut_ptr().cast(), report.len()) };
    if n == 0 {
        return Ok(Spawned { pid, pidfd });
    }
    kill_and_reap(pid, &pidfd);
    if n < 0 {
        return Err(SpawnError::Host {
            op: "reading child status",
            source: io::Error::last_os_error(),
        });
    }
    Err(step_failure(&plan.steps, &report))
}

/// An empty signal set (all-zero), filled or overwritten before use.
fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all-zero is a valid (empty) set.
    unsafe { std::mem::zeroed() }
}

/// Raw pointers and fds the child uses; everything it points to outlives the clone in the
/// parent, and the child has its own copy.
struct ChildArgs<'a> {
    steps: &'a [Step],
    exec_path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    err: RawFd,
    listener: RawFd,
    config: RawFd,
    log: RawFd,
    /// The spawner thread's signal mask, restored just before `execve`.
    sigmask: libc::sigset_t,
}

/// Step numbers for failures outside the plan's steps.
const SETUP_STEP: u32 = u32::MAX - 1;
const EXEC_STEP: u32 = u32::MAX;

/// Reports a failed step to the parent and exits. Async-signal-safe.
unsafe fn fail(err: RawFd, step: u32) -> ! {
    // SAFETY: __errno_location is always valid for the calling thread.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: raw write and _exit; no allocation, no locks.
    unsafe {
        libc::write(err, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Entry point of the cloned child (see [`spawn`]).
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed to clone and keeps alive while
    // it is suspended; we are the child that clone created.
    unsafe { child_main(&*arg.cast::<ChildArgs<'_>>()) }
}

/// The cloned child. It shares the server's memory, so: only raw system calls from here on,
/// no allocation, no locks, no panics (iteration instead of indexing), nothing written but
/// its own stack.
///
/// # Safety
/// Must only be called in the child of the clone in [`spawn`].
unsafe fn child_main(a: &ChildArgs<'_>) -> ! {
    // SAFETY: every pointer comes from `Plan`/`spawn`, which stay valid while the parent is
    // suspended; all calls are async-signal-safe syscall wrappers.
    unsafe {
        // Server signal handlers must never run here: back to the defaults (ignored signals
        // stay ignored, as across a fork and exec).
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut act) == 0
                && act.sa_sigaction != libc::SIG_IGN
                && act.sa_sigaction != libc::SIG_DFL
            {
                act.sa_sigaction = libc::SIG_DFL;
                act.sa_flags = 0;
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
        for (i, step) in a.steps.iter().enumerate() {
            if run_step(step) != 0 {
                fail(a.err, i as u32);
            }
        }
        // stdio: /dev/null in, the log pipe out; the listener and config on 3 and 4.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(a.log, 1) < 0
            || libc::dup2(a.log, 2) < 0
            || libc::dup2(a.listener, corral_core::agent::LISTENER_FD) < 0
            || libc::dup2(a.config, corral_core::agent::CONFIG_FD) < 0
            // Nothing else of the server may reach the agent.
            || libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0
            || libc::sigprocmask(libc::SIG_SETMASK, &a.sigmask, std::ptr::null_mut()) != 0
        {
            fail(a.err, SETUP_STEP);
        }
        libc::execve(a.exec_path, a.argv, a.envp);
        fail(a.err, EXEC_STEP)
    }
}

/// `ip link set lo up`, with two ioctls. Returns 0 or -1 with errno set.
unsafe fn loopback_up() -> libc::c_int {
    // SAFETY: a zeroed ifreq is valid; the name fits with its NUL; the socket is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return -1;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
        r
    }
}

/// Runs one step; returns 0 or -1 with errno set.
unsafe fn run_step(step: &Step) -> libc::c_int {
    let opt = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are valid NUL-terminated strings or null where the call allows it.
    unsafe {
        match step {
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => libc::mount(
                opt(source),
                target.as_ptr(),
                opt(fstype),
                *flags,
                data.as_ref()
                    .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            ),
            Step::Mkdir { path, mode } => libc::mkdir(path.as_ptr(), *mode),
            Step::Mknod { path, mode, dev } => libc::mknod(path.as_ptr(), *mode, *dev),
            Step::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()),
            Step::Unshare { flags } => libc::unshare(*flags),
            Step::Sethostname { name } => libc::sethostname(name.as_ptr(), name.as_bytes().len()),
            Step::PivotRoot { root } => {
                if libc::chdir(root.as_ptr()) != 0 {
                    return -1;
                }
                let dot = c".".as_ptr();
                if libc::syscall(libc::SYS_pivot_root, dot, dot) != 0 {
                    return -1;
                }
                // The old root is now stacked under the new one at "."; detach it.
                if libc::umount2(dot, libc::MNT_DETACH) != 0 {
                    return -1;
                }
                libc::chdir(c"/".as_ptr())
            }
            Step::Umask { mask } => {
                libc::umask(*mask);
                0
            }
            Step::LoopbackUp => loopback_up(),
            Step::Setns { fd, nstype } => libc::setns(*fd, *nstype),
            Step::WriteFile { path, data } => {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return -1;
                }
                let n = libc::write(fd, data.as_ptr().cast(), data.len());
                libc::close(fd);
                if n == data.len() as isize { 0 } else { -1 }
            }
            Step::DropCaps { caps } => {
                for cap in caps {
                    if libc::prctl(libc::PR_CAPBSET_DROP, *cap as libc::c_ulong, 0, 0, 0) != 0 {
                        return -1;
                    }
                }
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            }
            Step::NoNewPrivs => libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            Step::Seccomp { program } => {
                let prog = libc::sock_fprog {
                    len: program.len() as libc::c_ushort,
                    // seccompiler's sock_filter has the kernel's layout (u16, u8, u8, u32).
                    filter: program.as_ptr() as *mut libc::sock_filter,
                };
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog as libc::c_ulong,
                    0,
                    0,
                )
            }
            Step::Rlimit {
                resource,
                soft,
                hard,
            } => {
                let lim = libc::rlimit {
                    rlim_cur: *soft,
                    rlim_max: *hard,
                };
                libc::setrlimit(*resource, &lim)
            }
            Step::BestEffort(inner) => {
                run_step(inner);
                0
            }
            Step::BindVolume(b) => bind_volume(b),
            Step::Optional(inner) => {
                let r = run_step(inner);
                if r != 0 && *libc::__errno_location() == libc::ENOENT {
                    0
                } else {
                    r
                }
            }
        }
    }
}

/// `openat2(2)`; returns an fd or -1 with errno set.
unsafe fn openat2(dirfd: RawFd, path: &CString, flags: libc::c_int, resolve: u64) -> RawFd {
    // SAFETY: a zeroed open_how is valid; the kernel reads `size` bytes of it.
    unsafe {
        let mut how: libc::open_how = std::mem::zeroed();
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = resolve;
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        ) as RawFd
    }
}

/// `struct mount_attr` of `mount_setattr(2)` (the first version, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
/// The attributes every volume is mounted with ([`Step::BindVolume`]).
pub(crate) const VOLUME_ATTRS: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

/// Runs [`Step::BindVolume`]; returns 0 or -1 with errno set. Async-signal-safe: raw
/// system calls only, fds closed on every path (the last errno is kept).
unsafe fn bind_volume(b: &VolumeBind) -> libc::c_int {
    const DIR: libc::c_int = libc::O_PATH | libc::O_DIRECTORY;
    let no_links = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: raw syscalls on fds this function opens and closes, with valid C strings.
    unsafe {
        let close_keep_errno = |fd: RawFd| {
            let e = *libc::__errno_location();
            libc::close(fd);
            *libc::__errno_location() = e;
        };
        let vol = openat2(libc::AT_FDCWD, &b.source, DIR, no_links);
        if vol < 0 {
            return -1;
        }
        let src = match &b.subpath {
            None => vol,
            Some(sub) => {
                let fd = openat2(
                    vol,
                    sub,
                    DIR,
                    no_links | libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV,
                );
                close_keep_errno(vol);
                if fd < 0 {
                    return -1;
                }
                fd
            }
        };
        let root = openat2(libc::AT_FDCWD, &b.root, DIR, no_links);
        if root < 0 {
            close_keep_errno(src);
            return -1;
        }
        let in_root = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        let mut parent = root;
        for (prefix, name) in b.target_prefixes.iter().zip(&b.target_names) {
            let mut fd = openat2(root, prefix, DIR, in_root);
            if fd < 0 && *libc::__errno_location() == libc::ENOENT {
                if libc::mkdirat(parent, name.as_ptr(), 0o755) != 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    fd = -1;
                } else {
                    fd = openat2(root, prefix, DIR, in_root);
                }
            }
            if parent != root {
                close_keep_errno(parent);
            }
            if fd < 0 {
                close_keep_errno(root);
                close_keep_errno(src);
                return -1;
            }
            parent = fd;
        }
        let target = parent;
        let tree = libc::syscall(
            libc::SYS_open_tree,
            src,
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        ) as RawFd;
        let mut r = if tree < 0 { -1 } else { 0 };
        if r == 0 {
            let attr = MountAttr {
                attr_set: VOLUME_ATTRS,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            r = libc::syscall(
                libc::SYS_mount_setattr,
                tree,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ) as libc::c_int;
        }
        if r == 0 {
            r = libc::syscall(
                libc::SYS_move_mount,
                tree,
                c"".as_ptr(),
                target,
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            ) as libc::c_int;
        }
        if tree >= 0 {
            close_keep_errno(tree);
        }
        if target != root {
            close_keep_errno(target);
        }
        close_keep_errno(root);
        close_keep_errno(src);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: u32, errno: i32) -> Vec<u8> {
        let mut r = step.to_ne_bytes().to_vec();
        r.extend(errno.to_ne_bytes());
        r
    }

    /// A child's failure report names the step and its kind: the runtime tells a volume's
    /// failure (the request's problem) from the others by the kind, not by the message.
    #[test]
    fn failures_carry_the_kind_of_step() {
        let c = |s: &str| CString::new(s).expect("no NUL");
        let steps = vec![
            Step::Umask { mask: 0 },
            Step::Optional(Box::new(Step::BindVolume(Box::new(VolumeBind {
                source: c("/v"),
                subpath: None,
                root: c("/m"),
                target_prefixes: vec![c("data")],
                target_names: vec![c("data")],
            })))),
        ];
        let kind = |step, errno| match step_failure(&steps, &report(step, errno)) {
            SpawnError::Step { kind, source, .. } => {
                assert_eq!(source.raw_os_error(), Some(errno));
                kind
            }
            e => panic!("{e:?}"),
        };
        assert_eq!(kind(0, libc::EPERM), StepKind::Setup);
        assert_eq!(kind(1, libc::ELOOP), StepKind::Volume);
        assert_eq!(kind(EXEC_STEP, libc::ENOENT), StepKind::Exec);
        assert_eq!(kind(7, libc::EIO), StepKind::Setup);
        let msg = step_failure(&steps, &report(1, libc::ELOOP)).to_string();
        assert!(
            msg.starts_with("sandbox setup failed at mounting volume /v on /data"),
            "{msg}"
        );
    }
}
