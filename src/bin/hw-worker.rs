//! hw-worker: the daemon for one worker. Parses arguments, builds the
//! configuration, runs the worker, maps errors to exit statuses.

use std::process::ExitCode;

use hookwatch::cli::exit;
use hookwatch::cli::{self, Command};
use hookwatch::worker::config::{WorkerConfig, WorkerFlags};

const USAGE: &str = "\
Usage: hw-worker [OPTIONS] NAME

Runs the tasks dropped into tasks/NAME/ of the spool: claims each one, runs
the agent command, retries failures with back-off, dead-letters what cannot
succeed, and writes results and a heartbeat (its own,
heartbeats/NAME@INSTANCE.json, and the name's, heartbeats/NAME.json).
Reaps the orphans its agents leave (a child subreaper; PID 1 in a
container needs no init). Stops on SIGTERM or SIGINT.

Options (each overrides its environment variable):
  -r, --root DIR                spool root (HW_ROOT; /shared)
  -c, --max-concurrent N        tasks run at once (MAX_CONCURRENT_TASKS; 3)
      --command CMD             agent command, split like a shell splits words
                                (CLAUDE_COMMAND; claude); see below
      --system-prompt-file F    passed as --system-prompt-file (SYSTEM_PROMPT_FILE)
      --daily-budget-usd X      pause claims once today's (UTC) agent spend
                                reaches X (DAILY_BUDGET_USD; none)
      --pause-backoff SECS      the first pause after a usage limit with no reset
                                time, or a failed login; doubles up to 30m (60)
      --task-timeout SECS       per attempt (TASK_TIMEOUT; 600)
      --kill-grace SECS         SIGTERM to SIGKILL on timeout (5)
      --max-retries N           retries after the first attempt (MAX_RETRIES; 3)
      --retry-backoff X         delay multiplier (RETRY_BACKOFF; 2.0)
      --initial-retry-delay SECS  first retry delay (INITIAL_RETRY_DELAY; 1)
      --breaker-threshold N     failures that open the breaker (CIRCUIT_BREAKER_THRESHOLD; 5)
      --breaker-timeout SECS    how long it stays open (CIRCUIT_BREAKER_TIMEOUT; 60)
      --heartbeat-interval SECS (HEARTBEAT_INTERVAL; 10)
      --poll SECS               also rescan every SECS; 0 off (2 on network file
                                systems and with --no-inotify)
      --no-inotify              find tasks by rescans only (as on a remote host)
      --workdir DIR             agents' working directory (the folder holding tasks/)
      --shutdown-timeout SECS   grace for running tasks and unwritten results
                                at SIGTERM (30)
      --max-output BYTES        output kept per stream (1M)
      --max-task-bytes BYTES    larger task files are dead-lettered (1M)
      --max-memory BYTES        address-space limit of each agent (none)
      --max-cpu SECS            CPU-time limit of each agent (none)
      --queue-cap N             pending tasks kept in memory; the folder holds
                                the rest (8192)
      --no-fsync                skip every fsync: fast, but a crash may lose or
                                tear files (throwaway spools only)
      --no-receipts             write no receipt (triggers/NAME/ID.trigger) at
                                claim: one file less per task
      --allow-shared-spool      start even if others may write the tasks folder
      --log-level LEVEL         DEBUG, INFO, WARNING, ERROR (LOG_LEVEL; INFO)
      --log-format FORMAT       json or text (LOG_FORMAT; json)
      --metrics-addr IP         serve /metrics, /healthz here (METRICS_ADDR; 127.0.0.1)
      --metrics-port PORT       0 picks a free port (METRICS_PORT; 9090)
      --no-metrics              no HTTP listener (ENABLE_METRICS=false)
  -h, --help                    this text
  -V, --version                 the version

The agent's argv: the command's words, then --system-prompt-file FILE,
--output-format json (unless the words name a format), the task's options
(model, max_turns, max_budget_usd, allowed_tools, append_system_prompt,
resume), then -p -- DESCRIPTION; a description of 128 KiB or more goes to
stdin instead. A word {} makes it a generic command: the description takes
its place and nothing is added. A usage limit or a failed login pauses
claims (no attempt charged) until the CLI's reset time, else 60 s doubling
to 30 min.

Durations are seconds (fractions allowed) or take s, m, h, d; sizes take K, M, G.
Exit status: 0 stopped by a signal, 64 usage, 69 metrics port in use,
73 cannot create a spool folder, 74 I/O error, 78 bad configuration. See hw-worker(8), hookwatch(5).
";

fn parse_args(mut parser: lexopt::Parser) -> Result<Command<Box<WorkerFlags>>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut f = WorkerFlags::default();
    while let Some(arg) = parser.next()? {
        let slot = match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('r') | Long("root") => &mut f.root,
            Short('c') | Long("max-concurrent") => &mut f.max_concurrent,
            Long("command") => &mut f.command,
            Long("system-prompt-file") => &mut f.system_prompt_file,
            Long("task-timeout") => &mut f.task_timeout,
            Long("kill-grace") => &mut f.kill_grace,
            Long("max-retries") => &mut f.max_retries,
            Long("retry-backoff") => &mut f.retry_backoff,
            Long("initial-retry-delay") => &mut f.initial_retry_delay,
            Long("breaker-threshold") => &mut f.breaker_threshold,
            Long("breaker-timeout") => &mut f.breaker_timeout,
            Long("heartbeat-interval") => &mut f.heartbeat_interval,
            Long("poll") => &mut f.poll,
            Long("workdir") => &mut f.workdir,
            Long("shutdown-timeout") => &mut f.shutdown_timeout,
            Long("max-output") => &mut f.max_output,
            Long("max-task-bytes") => &mut f.max_task_bytes,
            Long("log-level") => &mut f.log_level,
            Long("log-format") => &mut f.log_format,
            Long("metrics-port") => &mut f.metrics_port,
            Long("metrics-addr") => &mut f.metrics_addr,
            Long("no-metrics") => {
                f.no_metrics = true;
                continue;
            }
            Long("allow-shared-spool") => {
                f.allow_shared_spool = true;
                continue;
            }
            Long("no-inotify") => {
                f.no_inotify = true;
                continue;
            }
            Long("no-fsync") => {
                f.no_fsync = true;
                continue;
            }
            Long("no-receipts") => {
                f.no_receipts = true;
                continue;
            }
            Long("queue-cap") => &mut f.queue_cap,
            Long("max-memory") => &mut f.max_memory,
            Long("max-cpu") => &mut f.max_cpu,
            Long("daily-budget-usd") => &mut f.daily_budget_usd,
            Long("pause-backoff") => &mut f.pause_backoff,
            Value(name) if f.name.is_none() => {
                f.name = Some(name.string()?);
                continue;
            }
            _ => return Err(arg.unexpected()),
        };
        *slot = Some(parser.value()?.string()?);
    }
    Ok(Command::Run(Box::new(f)))
}

fn main() -> ExitCode {
    let parsed = parse_args(lexopt::Parser::from_env());
    let flags = match cli::command_line("hw-worker", USAGE, parsed) {
        Ok(flags) => flags,
        Err(status) => return status,
    };
    let config = match WorkerConfig::resolve(&flags) {
        Ok(c) => c,
        Err(e) => return exit::report("hw-worker", &e),
    };
    hookwatch::log::init("hw-worker", Some(config.name.clone()), config.log);
    match hookwatch::worker::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report("hw-worker", &e),
    }
}
