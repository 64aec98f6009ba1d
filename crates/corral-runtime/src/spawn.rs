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
use std::sync::mpsc;

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
            Step::WriteFile { path, .. } => format!("writing {}", s(path)),
            Step::DropCaps { .. } => "dropping capabilities".into(),
            Step::NoNewPrivs => "setting no_new_privs".into(),
            Step::Seccomp { .. } => "loading the seccomp filter".into(),
            Step::Optional(inner) | Step::BestEffort(inner) => inner.describe(),
            Step::Rlimit { resource, .. } => format!("setting rlimit {resource}"),
        }
    }
}

/// Called on the spawner thread with the child's pid while the child waits.
pub type BeforeStart = Box<dyn FnOnce(i32) -> io::Result<()> + Send>;

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
    /// Becomes stdout and stderr of the agent.
    pub log: OwnedFd,
    /// Called on the spawner thread with the child's pid while the child waits, e.g. to
    /// move it into its cgroups before it runs anything.
    pub before_start: Option<BeforeStart>,
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

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{op}: {source}")]
    Host { op: &'static str, source: io::Error },
    #[error("sandbox setup failed at {step}: {source}")]
    Step { step: String, source: io::Error },
    #[error("the spawner thread is gone")]
    Gone,
}

type Job = (Plan, oneshot::Sender<Result<Spawned, SpawnError>>);

/// Handle to the spawner thread.
#[derive(Debug, Clone)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the spawner thread.
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("corral-spawner".into())
            .spawn(move || {
                for (plan, reply) in rx {
                    let _ = reply.send(spawn(plan));
                }
            })?;
        Ok(Self { jobs: tx })
    }

    /// Runs a plan on the spawner thread.
    pub async fn spawn(&self, plan: Plan) -> Result<Spawned, SpawnError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((plan, tx)).map_err(|_| SpawnError::Gone)?;
        rx.await.map_err(|_| SpawnError::Gone)?
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

fn spawn(plan: Plan) -> Result<Spawned, SpawnError> {
    let (sync_r, sync_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let listener = high_fd(&plan.listener)?;
    let config = high_fd(&plan.config)?;
    let log = high_fd(&plan.log)?;

    let mut argv: Vec<*const c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let child = ChildArgs {
        steps: &plan.steps,
        exec_path: plan.exec_path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        sync: sync_r.as_raw_fd(),
        err: err_w.as_raw_fd(),
        listener: listener.as_raw_fd(),
        config: config.as_raw_fd(),
        log: log.as_raw_fd(),
    };

    let mut pidfd: libc::c_int = -1;
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like fork(2): the
    // child gets a copy of this thread's memory and continues here with return value 0. The
    // child only runs `child_main`, which makes raw system calls on memory prepared above and
    // never returns. With CLONE_PIDFD the kernel writes the pidfd into `pidfd`
    // (x86_64 argument order: flags, stack, parent_tid, child_tid, tls).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (CLONE_FLAGS | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            &mut pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    };
    if ret == 0 {
        // SAFETY: we are the freshly cloned child; see `child_main`.
        unsafe { child_main(&child) }
    }
    if ret < 0 {
        return Err(SpawnError::Host {
            op: "clone",
            source: io::Error::last_os_error(),
        });
    }
    let pid = ret as i32;
    // SAFETY: clone succeeded with CLONE_PIDFD, so `pidfd` is a fresh fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((sync_r, err_w, listener, config, log));

    let kill_and_reap = |pidfd: &OwnedFd| {
        // SAFETY: plain syscalls on a pidfd and pid that we own.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                0usize,
                0u32,
            );
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    };
    if let Some(hook) = plan.before_start
        && let Err(e) = hook(pid)
    {
        kill_and_reap(&pidfd);
        return Err(SpawnError::Host {
            op: "preparing the sandbox init",
            source: e,
        });
    }
    // Let the child go, then wait for it to exec (EOF) or report a failed step.
    write_all(&sync_w, &[1]).map_err(|e| SpawnError::Host {
        op: "releasing the child",
        source: e,
    })?;
    drop(sync_w);
    let mut report = [0u8; 8];
    let n = read_full(&err_r, &mut report).map_err(|e| SpawnError::Host {
        op: "reading child status",
        source: e,
    })?;
    if n == 0 {
        return Ok(Spawned { pid, pidfd });
    }
    kill_and_reap(&pidfd);
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let what = match plan.steps.get(step) {
        Some(s) => s.describe(),
        None if step == EXEC_STEP as usize => "exec of the agent".into(),
        None => "starting the sandbox".into(),
    };
    Err(SpawnError::Step {
        step: what,
        source: io::Error::from_raw_os_error(errno),
    })
}

fn write_all(fd: &OwnedFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: writing from a valid buffer to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of a valid buffer from an fd we own.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(got)
}

/// Raw pointers and fds the child uses; everything it points to outlives the clone in the
/// parent, and the child has its own copy.
struct ChildArgs<'a> {
    steps: &'a [Step],
    exec_path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    sync: RawFd,
    err: RawFd,
    listener: RawFd,
    config: RawFd,
    log: RawFd,
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

/// The cloned child. Only raw system calls from here on: no allocation, no locks, no
/// panics (iteration instead of indexing).
///
/// # Safety
/// Must only be called in the child of the clone in [`spawn`].
unsafe fn child_main(a: &ChildArgs<'_>) -> ! {
    // SAFETY: every pointer comes from `Plan`/`spawn`, which stay valid in the child's copy
    // of memory; all calls are async-signal-safe syscall wrappers.
    unsafe {
        // Wait until the parent has put us into our cgroups.
        let mut b = [0u8; 1];
        if libc::read(a.sync, b.as_mut_ptr().cast(), 1) != 1 {
            libc::_exit(126);
        }
        for (i, step) in a.steps.iter().enumerate() {
            if run_step(step) != 0 {
                fail(a.err, i as u32);
            }
        }
        // stdio: /dev/null in, the log file out; the listener and config on 3 and 4.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(a.log, 1) < 0
            || libc::dup2(a.log, 2) < 0
            || libc::dup2(a.listener, corral_core::agent::LISTENER_FD) < 0
            || libc::dup2(a.config, corral_core::agent::CONFIG_FD) < 0
            // Nothing else of the server may reach the agent.
            || libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0
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
