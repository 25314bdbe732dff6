//! hw-listen: the orchestrator's listener. Parses arguments, builds the
//! configuration, runs the listener, maps errors to exit statuses.

use std::process::ExitCode;

use hookwatch::cli::exit;
use hookwatch::cli::{self, Command};
use hookwatch::listen::config::{ListenConfig, ListenFlags};

const USAGE: &str = "\
Usage: hw-listen [OPTIONS]

Follows every worker's pending tasks, results, dead letters and heartbeats
and emits events, each once, as JSON lines on stdout and as trigger files
in triggers/orchestrator/: task_completed, task_dead_lettered,
task_timeout, worker_unhealthy, worker_recovered, worker_disconnected,
worker_paused, worker_resumed,
batch_completed. Catches up on what happened while it was not running.

Options:
  -r, --root DIR              spool root (HW_ROOT; /shared)
  -w, --workers LIST          follow these workers, comma-separated (WORKERS;
                              default: every worker found, now and later)
      --state-file FILE       what was seen and emitted (STATE_FILE;
                              $HW_ROOT/orchestrator_state.json)
      --completion-timeout SECS  enqueue to terminal record (COMPLETION_TIMEOUT; 600)
      --stale-after SECS      heartbeat age of an unhealthy worker (3 intervals)
      --disconnect-after SECS heartbeat age of a disconnected one (10 intervals)
      --exec CMD              run CMD per event, the event on stdin, HW_EVENT set
      --exec-timeout SECS     a hook's time limit (30)
      --retain SECS           forget tasks that ended longer ago (7d)
      --poll SECS             also read every folder again every SECS (for
                              spools shared by several hosts; inotify sees
                              only this host's writes)
      --once                  catch up, emit, save and exit (for cron)
      --log-level LEVEL       DEBUG, INFO, WARNING, ERROR (LOG_LEVEL; INFO)
      --log-format FORMAT     json or text (LOG_FORMAT; json)
  -h, --help                  this text
  -V, --version               the version

Exit status: 0 stopped by SIGTERM or SIGINT, or --once done; 64 usage;
65 the state file cannot be parsed; 73 a folder cannot be created; 74 I/O
error; 75 another hw-listen uses the state file; 78 a bad option value.
See hw-listen(8).
";

fn parse_args(mut parser: lexopt::Parser) -> Result<Command<Box<ListenFlags>>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut f = ListenFlags::default();
    while let Some(arg) = parser.next()? {
        let slot = match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("once") => {
                f.once = true;
                continue;
            }
            Short('r') | Long("root") => &mut f.root,
            Short('w') | Long("workers") => &mut f.workers,
            Long("state-file") => &mut f.state_file,
            Long("completion-timeout") => &mut f.completion_timeout,
            Long("stale-after") => &mut f.stale_after,
            Long("disconnect-after") => &mut f.disconnect_after,
            Long("exec") => &mut f.exec,
            Long("exec-timeout") => &mut f.exec_timeout,
            Long("retain") => &mut f.retain,
            Long("poll") => &mut f.poll,
            Long("log-level") => &mut f.log_level,
            Long("log-format") => &mut f.log_format,
            _ => return Err(arg.unexpected()),
        };
        *slot = Some(parser.value()?.string()?);
    }
    Ok(Command::Run(Box::new(f)))
}

fn main() -> ExitCode {
    let parsed = parse_args(lexopt::Parser::from_env());
    let flags = match cli::command_line("hw-listen", USAGE, parsed) {
        Ok(flags) => flags,
        Err(status) => return status,
    };
    let config = match ListenConfig::resolve(&flags) {
        Ok(c) => c,
        Err(e) => return exit::report("hw-listen", &e),
    };
    hookwatch::log::init("hw-listen", None, config.log);
    match hookwatch::listen::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report("hw-listen", &e),
    }
}
