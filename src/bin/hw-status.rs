//! hw-status: one screen of system state per worker, or one JSON object;
//! its exit status follows the monitoring-plugin convention.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use hookwatch::cli::exit;
use hookwatch::cli::values::{
    duration, invalid, invalid_worker_name, parse_duration, worker_names, Raw,
};
use hookwatch::cli::{self, Command};
use hookwatch::error::Error;
use hookwatch::spool::names::valid_worker_name;
use hookwatch::spool::Spool;
use hookwatch::status::{self, Overall};

const USAGE: &str = "\
Usage: hw-status [OPTIONS]
       hw-status --tasks [WORKER] [-j] [-r DIR]
       hw-status --prune-older-than AGE [-r DIR]
       hw-status --init NAME[,NAME...]

Shows each worker's heartbeat status and age, its pending, active,
deferred, completed and failed tasks and dead letters (counted in the
spool), its breaker, the agent's spend today (UTC), uptime and metrics
address. A paused worker (usage limit, login, budget) is a warning that
says why and until when. Each process of a worker name has its own
heartbeat: the name is healthy if any is, and a dead one (stale) is a
warning naming it (column INSTANCES, instances in the JSON).

Options:
  -r, --root DIR          spool root (HW_ROOT; /shared)
  -w, --workers LIST      the workers to expect, comma-separated (WORKERS;
                          default: every worker with a tasks folder or heartbeat)
  -j, --json              one JSON object instead of the table (with
                          --tasks: one JSON object per task)
      --watch [SECS]      redraw every SECS (2) until SIGINT
      --tasks [WORKER]    one line per pending, active and deferred task:
                          id, state, priority, age, attempts, not_before and
                          the dependencies it waits for
      --prune-older-than AGE
                          remove results, receipts, listener trigger files and
                          dead instances' heartbeats older than AGE (e.g. 30d),
                          but none a queued task, the listener or a live
                          process still needs; print each path removed
      --init NAMES        create the spool layout for these workers and exit
  -h, --help              this text
  -V, --version           the version

Exit status: 0 all healthy; 1 warning (degraded, paused, stale, stopped,
or dead letters present); 2 critical (a worker has no heartbeat, or there are no
workers); 3 unknown (the spool cannot be read); 64 usage; 65 the listener's
state cannot be read (--prune-older-than); 66 the spool root does not
exist; 74 I/O error; 78 a bad value (--watch, --workers, WORKERS, --init,
--prune-older-than). With --tasks and --prune-older-than: 0 done.
See hw-status(1).
";

struct Args {
    root: Option<String>,
    workers: Option<String>,
    json: bool,
    /// `--watch`, with the interval as given (`None` inside: the default).
    watch: Option<Option<String>>,
    init: Option<String>,
    tasks: bool,
    prune: Option<String>,
    /// Words that are not options: `--tasks`'s WORKER.
    operands: Vec<String>,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Command<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        root: None,
        workers: None,
        json: false,
        watch: None,
        init: None,
        tasks: false,
        prune: None,
        operands: Vec::new(),
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
            Long("tasks") => {
                a.tasks = true;
                // `--tasks=marie` as well as `--tasks marie`.
                if let Some(worker) = parser.optional_value() {
                    a.operands.push(worker.string()?);
                }
            }
            Long("prune-older-than") => a.prune = Some(parser.value()?.string()?),
            // `--watch 5`: the interval may also be the next word.
            Value(v) if was_watch => a.watch = Some(Some(v.string()?)),
            Value(v) => a.operands.push(v.string()?),
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
    let modes = [args.watch.is_some(), args.tasks, args.prune.is_some()];
    if modes.iter().filter(|&&m| m).count() > 1 {
        return Err(Error::usage(
            "--watch, --tasks and --prune-older-than exclude each other (see --help)",
        ));
    }
    match (args.tasks, args.operands.as_slice()) {
        (_, []) => {}
        (true, [worker]) if valid_worker_name(worker) => {}
        (true, [worker]) => return Err(Error::usage(invalid_worker_name(worker))),
        (true, _) => {
            return Err(Error::usage(
                "--tasks takes at most one WORKER (see --help)",
            ))
        }
        (false, [word, ..]) => {
            return Err(Error::usage(format!(
                "unexpected argument {word:?} (see --help)"
            )))
        }
    }
    let workers = match &args.workers {
        Some(list) => Some((list.clone(), "--workers")),
        None => std::env::var("WORKERS").ok().map(|l| (l, "WORKERS")),
    };
    let expected = match workers {
        Some((list, origin)) if !list.trim().is_empty() => names_of(&list, origin)?,
        _ => Vec::new(),
    };
    if let Some(age) = &args.prune {
        let age = duration(Some(Raw::new(age, "--prune-older-than")), 0.0, false)?;
        spool.require_root(&spool.results)?;
        return prune(&spool, age);
    }
    if args.tasks {
        spool.require_root(&spool.tasks)?;
        let workers = match args.operands.first() {
            Some(w) => vec![w.clone()],
            None => expected,
        };
        return tasks(&spool, &workers, args.json);
    }
    let every = match &args.watch {
        Some(given) => Some(watch_interval(given)?),
        None => None,
    };
    if let Err(e) = spool.require_root(&spool.tasks) {
        show_unknown(&e, args.json);
        return Err(e);
    }
    Ok(match every {
        Some(every) => watch(&spool, &expected, args, every),
        None => ExitCode::from(show(&spool, &expected, args, false).unwrap_or(0)),
    })
}

/// `--tasks`: the table, or one JSON object per task.
fn tasks(spool: &Spool, workers: &[String], json: bool) -> Result<ExitCode, Error> {
    let lines = status::tasks::list(spool, workers)?;
    for t in lines.iter().filter(|t| t.error.is_some()) {
        eprintln!(
            "hw-status: {} {}: {}",
            t.worker,
            t.file,
            t.error.as_deref().unwrap_or_default()
        );
    }
    let text = match json {
        true => lines
            .iter()
            .map(|t| serde_json::to_string(t).expect("a task line serializes") + "\n")
            .collect(),
        false => status::tasks::render_table(&lines),
    };
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`| head`) is not an error.
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    Ok(ExitCode::SUCCESS)
}

/// `--prune-older-than`: each path removed on a line as it goes; errors
/// on stderr, and then exit 74.
fn prune(spool: &Spool, age: Duration) -> Result<ExitCode, Error> {
    let mut closed = false;
    let mut print = |path: &std::path::Path| {
        if closed {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        let line = format!("{}\n", path.display());
        closed = stdout
            .write_all(line.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err();
    };
    let summary = status::prune::prune(spool, age, &mut print)?;
    for e in &summary.errors {
        eprintln!("hw-status: {e}");
    }
    Ok(match summary.errors.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(exit::IO_ERR),
    })
}

/// What a monitoring plugin prints when there is no spool to judge: the
/// verdict `unknown`, on stdout, with why.
fn show_unknown(e: &Error, json: bool) {
    let text = match json {
        true => format!("{}\n", unknown_json(e)),
        false => status::unknown_line(&e.to_string()),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn unknown_json(e: &Error) -> serde_json::Value {
    serde_json::json!({
        "timestamp": hookwatch::clock::now_rfc3339(),
        "overall": "unknown", "workers": {}, "error": e.to_string(),
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
    let mut names = worker_names(&raw)?;
    // `-w marie,marie` is marie once.
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
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
            let text = match args.json {
                true => format!("{}\n", unknown_json(&e)),
                false => status::unknown_line(&e.to_string()),
            };
            let screen = match clear {
                true => format!("\x1b[H\x1b[2J{text}"),
                false => text,
            };
            let mut stdout = std::io::stdout().lock();
            let written = stdout
                .write_all(screen.as_bytes())
                .and_then(|()| stdout.flush());
            return written.ok().map(|()| Overall::Unknown.exit_status());
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
