//! hw-status: one screen of system state per worker, or one JSON object;
//! its exit status follows the monitoring-plugin convention.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use hookwatch::cli::exit;
use hookwatch::cli::values::{invalid, parse_duration, worker_names, Raw};
use hookwatch::cli::{self, Command};
use hookwatch::error::Error;
use hookwatch::spool::Spool;
use hookwatch::status::{self, Overall};

const USAGE: &str = "\
Usage: hw-status [OPTIONS]
       hw-status --init NAME[,NAME...]

Shows each worker's heartbeat status and age, its pending, active,
deferred, completed and failed tasks and dead letters (counted in the
spool), its breaker, the agent's spend today (UTC), uptime and metrics
address. A paused worker (usage limit, login, budget) is a warning that
says why and until when.

Options:
  -r, --root DIR          spool root (HW_ROOT; /shared)
  -w, --workers LIST      the workers to expect, comma-separated (WORKERS;
                          default: every worker with a tasks folder or heartbeat)
  -j, --json              one JSON object instead of the table
      --watch [SECS]      redraw every SECS (2) until SIGINT
      --init NAMES        create the spool layout for these workers and exit
  -h, --help              this text
  -V, --version           the version

Exit status: 0 all healthy; 1 warning (degraded, paused, stale, stopped,
or dead letters present); 2 critical (a worker has no heartbeat, or there are no
workers); 3 unknown (the spool cannot be read); 64 usage; 78 a bad value
(--watch, --workers, WORKERS, --init). See hw-status(1).
";

struct Args {
    root: Option<String>,
    workers: Option<String>,
    json: bool,
    /// `--watch`, with the interval as given (`None` inside: the default).
    watch: Option<Option<String>>,
    init: Option<String>,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Command<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        root: None,
        workers: None,
        json: false,
        watch: None,
        init: None,
    };
    let mut after_watch = false;
    while let Some(arg) = parser.next()? {
        let was_watch = std::mem::take(&mut after_watch);
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('r') | Long("root") => a.root = Some(parser.value()?.string()?),
            Short('w') | Long("workers") => a.workers = Some(parser.value()?.string()?),
            Short('j') | Long("json") => a.json = true,
            Long("init") => a.init = Some(parser.value()?.string()?),
            Long("watch") => {
                let secs = parser.optional_value().map(|v| v.string()).transpose()?;
                after_watch = secs.is_none();
                a.watch = Some(secs);
            }
            // `--watch 5`: the interval may also be the next word.
            Value(v) if was_watch => a.watch = Some(Some(v.string()?)),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::Run(a))
}

fn main() -> ExitCode {
    let parsed = parse_args(lexopt::Parser::from_env());
    let args = match cli::command_line("hw-status", USAGE, parsed) {
        Ok(args) => args,
        Err(status) => return status,
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => exit::report("hw-status", &e),
    }
}

fn run(args: &Args) -> Result<ExitCode, Error> {
    let spool = Spool::from_env(args.root.clone().map(Into::into));
    if let Some(names) = &args.init {
        status::init(&spool, &names_of(names, "--init")?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let workers = match &args.workers {
        Some(list) => Some((list.clone(), "--workers")),
        None => std::env::var("WORKERS").ok().map(|l| (l, "WORKERS")),
    };
    let expected = match workers {
        Some((list, origin)) if !list.trim().is_empty() => names_of(&list, origin)?,
        _ => Vec::new(),
    };
    Ok(match &args.watch {
        Some(given) => watch(&spool, &expected, args, watch_interval(given)?),
        None => ExitCode::from(show(&spool, &expected, args, false).unwrap_or(0)),
    })
}

fn watch_interval(given: &Option<String>) -> Result<Duration, Error> {
    let Some(s) = given else {
        return Ok(Duration::from_secs(2));
    };
    parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| invalid(s, "--watch", "not a positive duration"))
}

/// Comma-separated worker names, each checked; a bad one is a bad value
/// of the flag or variable it came from.
fn names_of(list: &str, origin: &str) -> Result<Vec<String>, Error> {
    let raw = Raw::new(list, origin);
    let names = worker_names(&raw)?;
    match names.is_empty() {
        true => Err(raw.invalid("no worker names")),
        false => Ok(names),
    }
}

/// Prints one report; returns its exit status, or `None` when stdout is
/// closed (`| head`), which ends a watch quietly.
fn show(spool: &Spool, expected: &[String], args: &Args, clear: bool) -> Option<u8> {
    let report = match status::collect(spool, expected) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hw-status: {e}");
            if args.json {
                let unknown = serde_json::json!({
                    "timestamp": hookwatch::clock::now_rfc3339(),
                    "overall": "unknown", "workers": {}, "error": e.to_string(),
                });
                println!("{unknown}");
            }
            return Some(Overall::Unknown.exit_status());
        }
    };
    let text = match args.json {
        true => format!(
            "{}\n",
            serde_json::to_string(&report).expect("a report serializes")
        ),
        false => status::render_table(&report),
    };
    let screen = if clear {
        format!("\x1b[H\x1b[2J{text}")
    } else {
        text
    };
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(screen.as_bytes())
        .and_then(|()| stdout.flush());
    written.ok().map(|()| report.overall.exit_status())
}

/// Redraws until SIGINT or SIGTERM (or a closed stdout); exits with the
/// last verdict.
fn watch(spool: &Spool, expected: &[String], args: &Args, every: Duration) -> ExitCode {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return ExitCode::from(exit::IO_ERR);
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(());
        }
    });
    loop {
        let Some(code) = show(spool, expected, args, !args.json) else {
            return ExitCode::SUCCESS;
        };
        if rx.recv_timeout(every).is_ok() {
            return ExitCode::from(code);
        }
    }
}
