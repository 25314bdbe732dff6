//! One attempt of a task (hw-worker(8), Running the command): the agent command built without
//! a shell, run in its own process group with stdin on /dev/null, both
//! output streams read concurrently (one poll(2) loop, no pipe deadlock),
//! a time limit enforced with SIGTERM then SIGKILL to the whole group, and
//! the verdict: exit status, and the Claude CLI's `is_error` report.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::agent::claude::{self, AgentReport, Scanner};
use crate::clock;
use crate::latch::Latch;
use crate::model::failure::FailureClass;
use crate::sys::{self, ChildLimit};

/// systemd's variables, which belong to the worker and not to its agents.
const ENV_REMOVED: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How long to keep reading after the main process exited and its group
/// was killed; only a process that left the group can hold a pipe longer.
const DRAIN_BOUND: Duration = Duration::from_secs(1);

/// The bounds of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub max_output: usize,
    /// RLIMIT_AS of the agent, bytes.
    pub max_memory: Option<u64>,
    /// RLIMIT_CPU of the agent (SIGXCPU at this, SIGKILL a second later).
    pub max_cpu: Option<Duration>,
}

/// What one attempt did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
    /// Why it failed; `None` when it succeeded (or was cut short).
    pub failure: Option<Failure>,
    /// Cut short by shutdown: not the task's fault, no attempt is charged.
    pub aborted: bool,
    /// Stopped because an operator cancelled the task (`hw-dlq cancel`).
    pub cancelled: bool,
    /// The worker, not the task, lacked what it takes to start the agent
    /// (open files, processes, memory): no attempt is charged.
    pub transient: bool,
    /// `memory` or `cpu` when the attempt hit a `--max-memory` or
    /// `--max-cpu` limit.
    pub resource_limit: Option<&'static str>,
    /// The Claude CLI's result object, when its output held one.
    pub agent: Option<AgentReport>,
}

/// A failed attempt: its class and what is said of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub class: FailureClass,
    /// One line for `last_error`.
    pub detail: String,
    /// The CLI's own words (`agent_error`).
    pub agent_error: Option<String>,
    /// When a usage limit resets (Unix seconds), if the CLI said.
    pub reset_at: Option<f64>,
}

impl Failure {
    pub fn new(class: FailureClass, detail: String) -> Failure {
        Failure {
            class,
            detail,
            agent_error: None,
            reset_at: None,
        }
    }
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none() && !self.aborted && !self.cancelled
    }

    /// One line for `last_error`.
    pub fn describe(&self) -> String {
        self.failure
            .as_ref()
            .map_or_else(|| "succeeded".into(), |f| f.detail.clone())
    }

    /// The verdict once the child is gone: the first failure that applies,
    /// in this order: it could not start, timed out, hit a limit, the
    /// agent reported one, it exited with another status than 0.
    fn judge(&mut self) {
        if self.failure.is_some() || self.aborted || self.cancelled {
            return;
        }
        if let Some(limit) = self.resource_limit {
            let detail = format!("{limit}_limit_exceeded");
            self.failure = Some(Failure::new(FailureClass::ResourceLimit, detail));
            return;
        }
        if let Some(f) = self
            .agent
            .as_ref()
            .and_then(|a| a.failure(clock::unix_now()))
        {
            let first = f.words.lines().next().unwrap_or("").trim();
            let detail = match (&f.subtype, f.class) {
                (Some(subtype), FailureClass::NotRetryable) => subtype.clone(),
                _ if first.is_empty() => f.class.as_str().to_string(),
                _ => format!("{}: {}", f.class, claude::cut(first, 200)),
            };
            self.failure = Some(Failure {
                class: f.class,
                detail,
                agent_error: Some(f.words).filter(|w| !w.is_empty()),
                reset_at: f.reset_at,
            });
            return;
        }
        if self.exit_code != 0 {
            let stderr = self.stderr.text();
            let detail = match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
                Some(line) => format!("exit status {}: {}", self.exit_code, line.trim()),
                None => format!("exit status {}", self.exit_code),
            };
            self.failure = Some(Failure::new(FailureClass::ExitStatus, detail));
        }
    }
}

/// One output stream, kept up to a bound.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Captured {
    /// The text, with bytes that are not UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// One command to run: what, where, with what around it.
pub struct Invocation<'a> {
    pub argv: &'a [String],
    /// Added to the worker's environment (less systemd's variables).
    pub env: &'a [(&'a str, String)],
    pub workdir: &'a Path,
    /// Standard input; `/dev/null` when `None`.
    pub stdin: Option<File>,
    pub limits: Limits,
    /// Read stdout for the Claude CLI's result object (the agent), or
    /// not (a hook).
    pub agent: bool,
    /// Fired when the run must stop as the task's timeout stops it
    /// (SIGTERM to its group, SIGKILL after the grace): a cancel.
    pub cancel: Option<&'a Latch>,
}

/// Runs a command once. `abort` fired means: kill it now, we stop.
pub fn run(inv: Invocation, abort: &Latch) -> Outcome {
    let started = Instant::now();
    let mut command = std::process::Command::new(&inv.argv[0]);
    let stdin = inv.stdin.map_or_else(Stdio::null, Stdio::from);
    command
        .args(&inv.argv[1..])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(inv.workdir)
        .process_group(0);
    let limits = inv.limits;
    sys::limits_before_exec(&mut command, child_limits(&limits));
    for var in ENV_REMOVED {
        command.env_remove(var);
    }
    command.envs(inv.env.iter().map(|(k, v)| (k, v)));
    let mut outcome = match super::reaper::spawn(&mut command) {
        Ok(child) => {
            let pid = child.id();
            let outcome = Supervisor::new(child, limits, abort, inv.agent, inv.cancel).run();
            super::reaper::waited(pid);
            outcome
        }
        Err(e) => spawn_failed(&e),
    };
    outcome.duration = started.elapsed();
    outcome.judge();
    outcome
}

/// The limits of open files this process was given (soft, hard), when
/// `raise_open_files_limit` raised them: agents get them back.
static INHERITED_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Open files the worker may need besides its running tasks: folders,
/// inotify, the metrics server's clients (at most 64), logs.
const OPEN_FILES_BASE: u64 = 256;
/// Open files per running task: the claimed file, the agent's pipes and
/// pidfd, its stdin, with room to spare.
const OPEN_FILES_PER_TASK: u64 = 16;

/// Raises this process's soft limit of open files to its hard limit when
/// it is below what `max_concurrent` tasks need, so that tasks, watches
/// and metrics clients never starve it; agents are then started with the
/// limit it was given (some programs still use select(2) and break above
/// 1024). A limit that is enough is left alone: restoring it in each
/// agent takes a step between fork and exec, which rules out
/// posix_spawn, and fork costs about 0.3 ms more per agent, a third of
/// the spawn rate (docs/performance.md).
pub fn raise_open_files_limit(max_concurrent: usize) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let needed =
        OPEN_FILES_BASE.saturating_add(OPEN_FILES_PER_TASK.saturating_mul(max_concurrent as u64));
    if soft >= needed || soft >= hard {
        return;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        let _ = INHERITED_NOFILE.set((soft, hard));
    }
}

/// The limits an agent gets: those of `--max-memory` and `--max-cpu`, and
/// the open-files limit the worker was given.
fn child_limits(limits: &Limits) -> Vec<ChildLimit> {
    let mut out = Vec::new();
    if let Some(bytes) = limits.max_memory {
        out.push(ChildLimit {
            resource: Resource::RLIMIT_AS,
            soft: bytes,
            hard: bytes,
        });
    }
    if let Some(cpu) = limits.max_cpu {
        let secs = cpu.as_secs().max(1);
        out.push(ChildLimit {
            resource: Resource::RLIMIT_CPU,
            soft: secs,
            hard: secs + 1,
        });
    }
    if let Some(&(soft, hard)) = INHERITED_NOFILE.get() {
        out.push(ChildLimit {
            resource: Resource::RLIMIT_NOFILE,
            soft,
            hard,
        });
    }
    out
}

fn spawn_failed(e: &io::Error) -> Outcome {
    // The shell's conventions: 127 not found, 126 found but not runnable.
    let exit_code = match e.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    let message = e.to_string();
    let message = message.split(" (os error").next().unwrap_or("").to_string();
    let transient = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    );
    Outcome {
        exit_code,
        failure: Some(Failure::new(
            FailureClass::SpawnFailed,
            format!("spawn_failed: {message}"),
        )),
        transient,
        ..Outcome::default()
    }
}

/// Watches one child: its pipes, its exit, its deadline and the abort latch.
struct Supervisor<'a> {
    child: Child,
    pgid: Pid,
    pidfd: Option<OwnedFd>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Outcome,
    limits: Limits,
    abort: &'a Latch,
    /// The task's cancel, if it can be cancelled.
    cancel: Option<&'a Latch>,
    /// Follows all of stdout for the result object, past `max_output`.
    scanner: Option<Scanner>,
}

/// Where the child is in its life, as the supervisor sees it.
#[derive(PartialEq)]
enum Phase {
    Running,
    /// SIGTERM sent at the deadline; SIGKILL follows at `until`.
    Terminating {
        until: Instant,
    },
    Killed,
}

impl<'a> Supervisor<'a> {
    fn new(
        mut child: Child,
        limits: Limits,
        abort: &'a Latch,
        agent: bool,
        cancel: Option<&'a Latch>,
    ) -> Supervisor<'a> {
        let pid = child.id() as i32;
        Supervisor {
            pgid: Pid::from_raw(pid),
            pidfd: sys::pidfd_open(pid),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            out: Outcome::default(),
            limits,
            abort,
            cancel,
            scanner: agent.then(Scanner::new),
        }
    }

    fn run(mut self) -> Outcome {
        let deadline = Instant::now() + self.limits.timeout;
        let mut phase = Phase::Running;
        let status = loop {
            if let Ok(Some(status)) = self.exited() {
                break status;
            }
            let now = Instant::now();
            phase = match phase {
                Phase::Running if self.abort.is_fired() => {
                    self.out.aborted = true;
                    self.signal(Signal::SIGKILL);
                    Phase::Killed
                }
                Phase::Running if self.cancel.is_some_and(Latch::is_fired) => {
                    self.out.cancelled = true;
                    self.signal(Signal::SIGTERM);
                    Phase::Terminating {
                        until: now + self.limits.kill_grace,
                    }
                }
                Phase::Running if now >= deadline => {
                    let class = FailureClass::Timeout;
                    self.out.failure = Some(Failure::new(class, class.as_str().into()));
                    self.signal(Signal::SIGTERM);
                    Phase::Terminating {
                        until: now + self.limits.kill_grace,
                    }
                }
                Phase::Terminating { until } if now >= until || self.abort.is_fired() => {
                    self.signal(Signal::SIGKILL);
                    Phase::Killed
                }
                p => p,
            };
            let wake = match phase {
                Phase::Running => Some(deadline),
                Phase::Terminating { until } => Some(until),
                Phase::Killed => None,
            };
            self.wait_io(wake);
        };
        // What is left of the task's process group goes with it.
        self.signal(Signal::SIGKILL);
        self.drain(Instant::now() + DRAIN_BOUND);
        if let Some(scanner) = self.scanner.take() {
            let head = &self.out.stdout;
            self.out.agent = scanner.finish(&head.bytes, !head.truncated);
        }
        let cpu = self.reap();
        self.out.resource_limit = self.limit_hit(status, cpu);
        let timed_out = self.out.failure.as_ref().map(|f| f.class) == Some(FailureClass::Timeout);
        self.out.exit_code = match (timed_out, status.code(), status.signal()) {
            (true, _, _) => 124,
            (_, Some(code), _) => code,
            (_, None, Some(sig)) => 128 + sig,
            _ => 255,
        };
        self.out
    }

    /// The child's exit status once it has exited, without reaping it, so
    /// that its pid (and so its process group id) stays reserved.
    fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        Ok(match waitid(Id::Pid(pid), flags)? {
            WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
            WaitStatus::Signaled(_, sig, _) => Some(ExitStatus::from_raw(sig as i32 & 0x7f)),
            _ => None,
        })
    }

    /// Reaps the child; returns the CPU time it used.
    fn reap(&mut self) -> Duration {
        sys::reap(self.child.id() as i32).unwrap_or_default()
    }

    /// Which limit, if any, ended the attempt. CPU: SIGXCPU, or SIGKILL
    /// with the CPU time used up. Memory (an educated guess, as a process
    /// out of address space fails in its own way): a failed attempt that
    /// died of SIGSEGV, SIGBUS, SIGABRT or SIGKILL, or said so on stderr.
    fn limit_hit(&self, status: ExitStatus, cpu: Duration) -> Option<&'static str> {
        let failed = !status.success() && self.out.failure.is_none() && !self.out.aborted;
        let sig = status.signal();
        if let Some(max) = self.limits.max_cpu {
            let used_up = cpu + Duration::from_millis(50) >= max;
            if sig == Some(libc::SIGXCPU) || (failed && sig == Some(libc::SIGKILL) && used_up) {
                return Some("cpu");
            }
        }
        if self.limits.max_memory.is_some() && failed {
            let deadly = matches!(
                sig,
                Some(libc::SIGSEGV | libc::SIGBUS | libc::SIGABRT | libc::SIGKILL)
            );
            let stderr = self.out.stderr.text().to_ascii_lowercase();
            let said = ["memory", "alloc"].iter().any(|w| stderr.contains(w));
            if deadly || said {
                return Some("memory");
            }
        }
        None
    }

    fn signal(&self, signal: Signal) {
        let _ = killpg(self.pgid, signal);
    }

    /// Blocks until output, the child's exit, the abort latch or `wake`.
    fn wait_io(&mut self, wake: Option<Instant>) {
        let mut timeout = match wake {
            Some(at) => clock::poll_timeout(at),
            None => PollTimeout::NONE,
        };
        if self.pidfd.is_none() {
            // No pidfd (kernel before 5.3): look at the child every 50 ms.
            timeout = timeout.min(PollTimeout::from(50u16));
        }
        let (out_ready, err_ready) = {
            let mut fds: Vec<PollFd> = Vec::with_capacity(4);
            let mut slots = [None, None];
            if let Some(s) = &self.stdout {
                slots[0] = Some(fds.len());
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if let Some(s) = &self.stderr {
                slots[1] = Some(fds.len());
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if let Some(p) = &self.pidfd {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            if !self.abort.is_fired() {
                fds.push(PollFd::new(self.abort.fd(), PollFlags::POLLIN));
            }
            if let Some(cancel) = self.cancel.filter(|c| !c.is_fired()) {
                fds.push(PollFd::new(cancel.fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, timeout);
            let ready = |slot: Option<usize>| {
                slot.is_some_and(|i| fds[i].revents().is_some_and(|r| !r.is_empty()))
            };
            (ready(slots[0]), ready(slots[1]))
        };
        if out_ready {
            self.read_stdout();
        }
        if err_ready {
            read_some(
                &mut self.stderr,
                &mut self.out.stderr,
                self.limits.max_output,
                |_| {},
            );
        }
    }

    fn read_stdout(&mut self) {
        let scanner = &mut self.scanner;
        read_some(
            &mut self.stdout,
            &mut self.out.stdout,
            self.limits.max_output,
            |chunk| {
                if let Some(s) = scanner.as_mut() {
                    s.feed(chunk);
                }
            },
        );
    }

    /// Reads what is left in the pipes until both close or `until`.
    fn drain(&mut self, until: Instant) {
        while (self.stdout.is_some() || self.stderr.is_some()) && Instant::now() < until {
            let mut fds: Vec<PollFd> = Vec::with_capacity(2);
            let streams = [
                self.stdout.as_ref().map(|s| s.as_fd()),
                self.stderr.as_ref().map(|s| s.as_fd()),
            ];
            let present: Vec<BorrowedFd> = streams.iter().flatten().copied().collect();
            for fd in &present {
                fds.push(PollFd::new(*fd, PollFlags::POLLIN));
            }
            if poll(&mut fds, clock::poll_timeout(until)).unwrap_or(0) == 0 {
                break;
            }
            self.read_stdout();
            read_some(
                &mut self.stderr,
                &mut self.out.stderr,
                self.limits.max_output,
                |_| {},
            );
        }
    }
}

/// Reads what one pipe has now; closes it on end of file.
/// `seen` gets every chunk read, also what is beyond `max`.
fn read_some<R: Read + AsRawFd>(
    pipe: &mut Option<R>,
    into: &mut Captured,
    max: usize,
    mut seen: impl FnMut(&[u8]),
) {
    let Some(reader) = pipe else { return };
    set_nonblocking(reader.as_raw_fd());
    let mut buf = [0u8; 65536];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                *pipe = None;
                return;
            }
            Ok(n) => {
                seen(&buf[..n]);
                let room = max.saturating_sub(into.bytes.len());
                into.bytes.extend_from_slice(&buf[..n.min(room)]);
                into.truncated |= n > room;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                *pipe = None;
                return;
            }
        }
    }
}

/// Failure only means blocking reads after poll said readable, which
/// still return.
fn set_nonblocking(fd: i32) {
    let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) else {
        return;
    };
    let flags = OFlag::from_bits_retain(flags);
    if !flags.contains(OFlag::O_NONBLOCK) {
        let _ = fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK));
    }
}
