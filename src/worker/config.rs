//! hw-worker's configuration: every flag over its environment variable
//! over its default, validated in one place before anything starts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{AgentCommand, CommandLine};
use crate::cli::values::{
    boolean, bytes, count, duration, invalid_worker_name, number, optional_duration, Raw,
};
use crate::error::{Error, Result};
use crate::log::LogConfig;
use crate::spool::names::valid_worker_name;
use crate::spool::publish::Durability;
use crate::spool::Spool;
use crate::worker::retry::RetryPolicy;

/// The raw values of hw-worker's flags, as the command line gave them.
#[derive(Debug, Default)]
pub struct WorkerFlags {
    pub name: Option<String>,
    pub root: Option<String>,
    pub max_concurrent: Option<String>,
    pub command: Option<String>,
    pub system_prompt_file: Option<String>,
    pub task_timeout: Option<String>,
    pub kill_grace: Option<String>,
    pub max_retries: Option<String>,
    pub retry_backoff: Option<String>,
    pub initial_retry_delay: Option<String>,
    pub breaker_threshold: Option<String>,
    pub breaker_timeout: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub poll: Option<String>,
    pub workdir: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub max_output: Option<String>,
    pub max_task_bytes: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub metrics_port: Option<String>,
    pub metrics_addr: Option<String>,
    /// `--no-metrics`: no listener at all.
    pub no_metrics: bool,
    pub max_memory: Option<String>,
    pub max_cpu: Option<String>,
    /// `--allow-shared-spool`: start on a folder others may write to.
    pub allow_shared_spool: bool,
    /// `--no-inotify`: find tasks by rescans only (a remote host's view).
    pub no_inotify: bool,
    pub queue_cap: Option<String>,
    /// `--no-fsync`: a throwaway spool, fast and not crash-safe.
    pub no_fsync: bool,
    /// `--no-receipts`: no `triggers/NAME/ID.trigger` at claim.
    pub no_receipts: bool,
    pub daily_budget_usd: Option<String>,
    pub pause_backoff: Option<String>,
}

/// Everything hw-worker needs, validated.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub name: String,
    pub spool: Spool,
    pub max_concurrent: usize,
    pub command: AgentCommand,
    pub task_timeout: Duration,
    pub kill_grace: Duration,
    pub retry: RetryPolicy,
    pub breaker_threshold: u32,
    pub breaker_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Periodic rescans; `None` means "decide from the file system".
    pub poll: Option<Duration>,
    pub workdir: PathBuf,
    pub shutdown_timeout: Duration,
    pub max_output: usize,
    pub max_task_bytes: u64,
    pub log: LogConfig,
    /// Where to serve /metrics and the health checks; `None`: nowhere.
    pub metrics: Option<(IpAddr, u16)>,
    /// RLIMIT_AS of each agent.
    pub max_memory: Option<u64>,
    /// RLIMIT_CPU of each agent.
    pub max_cpu: Option<Duration>,
    pub allow_shared_spool: bool,
    /// Watch the tasks folder with inotify (else rescans only).
    pub inotify: bool,
    /// `--daily-budget-usd`: claims pause once today's spend reaches it.
    pub daily_budget_usd: Option<f64>,
    /// The first pause after a usage limit without a reset time, or a
    /// failed login (60 s), doubling to 30 minutes.
    pub pause_backoff: Duration,
    /// Pending tasks kept in memory; the folder holds the rest.
    pub queue_cap: usize,
    /// Write a receipt (`triggers/NAME/ID.trigger`) at each claim
    /// (`--no-receipts`: no).
    pub receipts: bool,
    /// Whether every write is flushed before it counts (`--no-fsync`:
    /// `Volatile`).
    pub durability: Durability,
}

impl WorkerConfig {
    pub fn resolve(f: &WorkerFlags) -> Result<WorkerConfig> {
        let name = f
            .name
            .clone()
            .ok_or_else(|| Error::usage("missing worker NAME"))?;
        if !valid_worker_name(&name) {
            return Err(Error::usage(invalid_worker_name(&name)));
        }
        let spool = Spool::from_env(Raw::pick(&f.root, "--root", None).map(|r| r.value.into()));
        let workdir = match Raw::pick(&f.workdir, "--workdir", None) {
            Some(raw) if !std::path::Path::new(&raw.value).is_dir() => {
                return Err(raw.invalid("not a folder"));
            }
            Some(raw) => PathBuf::from(raw.value),
            None => spool.tasks_parent(),
        };
        let poll = optional_duration(Raw::pick(&f.poll, "--poll", None), false)?;
        if f.no_inotify && poll.is_some_and(|p| p.is_zero()) {
            return Err(Error::config(
                "--no-inotify with --poll 0 would never see a new task",
            ));
        }
        Ok(WorkerConfig {
            spool,
            max_concurrent: count(
                Raw::pick(
                    &f.max_concurrent,
                    "--max-concurrent",
                    Some("MAX_CONCURRENT_TASKS"),
                ),
                3,
                1,
                1024,
            )? as usize,
            task_timeout: duration(
                Raw::pick(&f.task_timeout, "--task-timeout", Some("TASK_TIMEOUT")),
                600.0,
                true,
            )?,
            kill_grace: duration(Raw::pick(&f.kill_grace, "--kill-grace", None), 5.0, false)?,
            retry: RetryPolicy {
                max_retries: count(
                    Raw::pick(&f.max_retries, "--max-retries", Some("MAX_RETRIES")),
                    3,
                    0,
                    1000,
                )? as u32,
                backoff: number(
                    Raw::pick(&f.retry_backoff, "--retry-backoff", Some("RETRY_BACKOFF")),
                    2.0,
                    1.0,
                    100.0,
                )?,
                initial_delay: duration(
                    Raw::pick(
                        &f.initial_retry_delay,
                        "--initial-retry-delay",
                        Some("INITIAL_RETRY_DELAY"),
                    ),
                    1.0,
                    false,
                )?,
            },
            breaker_threshold: count(
                Raw::pick(
                    &f.breaker_threshold,
                    "--breaker-threshold",
                    Some("CIRCUIT_BREAKER_THRESHOLD"),
                ),
                5,
                1,
                1_000_000,
            )? as u32,
            breaker_timeout: duration(
                Raw::pick(
                    &f.breaker_timeout,
                    "--breaker-timeout",
                    Some("CIRCUIT_BREAKER_TIMEOUT"),
                ),
                60.0,
                false,
            )?,
            heartbeat_interval: duration(
                Raw::pick(
                    &f.heartbeat_interval,
                    "--heartbeat-interval",
                    Some("HEARTBEAT_INTERVAL"),
                ),
                10.0,
                true,
            )?,
            poll,
            workdir,
            shutdown_timeout: duration(
                Raw::pick(&f.shutdown_timeout, "--shutdown-timeout", None),
                30.0,
                false,
            )?,
            max_output: bytes(Raw::pick(&f.max_output, "--max-output", None), 1 << 20)? as usize,
            max_task_bytes: bytes(
                Raw::pick(&f.max_task_bytes, "--max-task-bytes", None),
                crate::model::task::TASK_BYTES_DEFAULT,
            )?,
            metrics: metrics_endpoint(f)?,
            max_memory: match Raw::pick(&f.max_memory, "--max-memory", None) {
                None => None,
                raw => Some(bytes(raw, 0)?),
            },
            max_cpu: optional_duration(Raw::pick(&f.max_cpu, "--max-cpu", None), true)?,
            allow_shared_spool: f.allow_shared_spool,
            pause_backoff: duration(
                Raw::pick(&f.pause_backoff, "--pause-backoff", None),
                60.0,
                true,
            )?,
            daily_budget_usd: match Raw::pick(
                &f.daily_budget_usd,
                "--daily-budget-usd",
                Some("DAILY_BUDGET_USD"),
            ) {
                None => None,
                raw => Some(number(raw, 0.0, 0.0, 1e9)?),
            },
            inotify: !f.no_inotify,
            queue_cap: count(
                Raw::pick(&f.queue_cap, "--queue-cap", None),
                crate::worker::queue::QUEUE_CAP as u64,
                1,
                1 << 24,
            )? as usize,
            receipts: !f.no_receipts,
            durability: match f.no_fsync {
                true => Durability::Volatile,
                false => Durability::Durable,
            },
            log: LogConfig::resolve(&f.log_level, &f.log_format)?,
            name,
            // Last: every other bad value is said first, and one that is
            // fine is not hidden behind a program that is not installed.
            command: agent_command(f)?,
        })
    }
}

/// `ENABLE_METRICS` (or `--no-metrics`), `METRICS_ADDR`, `METRICS_PORT`.
fn metrics_endpoint(f: &WorkerFlags) -> Result<Option<(IpAddr, u16)>> {
    if f.no_metrics || !boolean(Raw::pick(&None, "", Some("ENABLE_METRICS")), true)? {
        return Ok(None);
    }
    let ip = match Raw::pick(&f.metrics_addr, "--metrics-addr", Some("METRICS_ADDR")) {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(raw) => raw
            .value
            .trim()
            .parse()
            .map_err(|_| raw.invalid("not an IP address"))?,
    };
    let port = count(
        Raw::pick(&f.metrics_port, "--metrics-port", Some("METRICS_PORT")),
        9090,
        0,
        65535,
    )?;
    Ok(Some((ip, port as u16)))
}

/// `--command` (`CLAUDE_COMMAND`, default `claude`) with
/// `--system-prompt-file` (`SYSTEM_PROMPT_FILE`), checked before anything
/// starts: the program is found and may be run, the prompt file is a
/// readable file (made absolute, as the agent runs elsewhere).
fn agent_command(f: &WorkerFlags) -> Result<AgentCommand> {
    let raw = Raw::pick(&f.command, "--command", Some("CLAUDE_COMMAND"))
        .unwrap_or_else(|| Raw::new("claude", "CLAUDE_COMMAND (default)"));
    let line = CommandLine::parse(&raw.value)
        .ok_or_else(|| raw.invalid("an empty command or an open quote"))?;
    let mut command = AgentCommand::new(line, None).map_err(|why| raw.invalid(&why))?;
    let program = find_program(command.program()).map_err(|why| raw.invalid(&why))?;
    command.set_program(&program);
    let prompt = Raw::pick(
        &f.system_prompt_file,
        "--system-prompt-file",
        Some("SYSTEM_PROMPT_FILE"),
    );
    if let Some(raw) = prompt {
        let path = absolute(Path::new(&raw.value));
        match std::fs::File::open(&path).and_then(|file| file.metadata()) {
            Ok(m) if m.is_file() => command.set_system_prompt_file(path),
            Ok(_) => return Err(raw.invalid("not a regular file")),
            Err(e) => return Err(raw.invalid(&format!("cannot read it: {}", os_words(&e)))),
        }
    }
    Ok(command)
}

/// The program to run for `name`: a path (made absolute) when it holds a
/// `/`, else the first executable file of that name on `PATH`.
fn find_program(name: &str) -> std::result::Result<PathBuf, String> {
    let runnable = |p: &Path| {
        p.metadata().is_ok_and(|m| m.is_file())
            && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
    };
    if name.contains('/') {
        let path = absolute(Path::new(name));
        return match path.metadata() {
            Err(e) => Err(format!("program {name:?}: {}", os_words(&e))),
            Ok(_) if !runnable(&path) => Err(format!("program {name:?} is not an executable file")),
            Ok(_) => Ok(path),
        };
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .map(|d| absolute(&d.join(name)))
        .find(|p| runnable(p))
        .ok_or_else(|| format!("program {name:?} is not found on PATH"))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `No such file or directory`, without the `(os error 2)`.
fn os_words(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}
