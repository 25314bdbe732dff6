//! hw-dlq: the dead-letter queue for operators and cron. Parses the
//! command and its arguments, calls `dlq_admin`, prints what it acted on,
//! and maps the outcome to an exit status in one place.

use std::io::{self, Write};
use std::process::ExitCode;

use hookwatch::cli::exit;
use hookwatch::cli::{self, Command};
use hookwatch::dlq::admin::{self as dlq_admin, Filter, Outcome, Selection};
use hookwatch::dlq::cancel as dlq_cancel;
use hookwatch::error::{Error, Kind};
use hookwatch::spool::Spool;

const USAGE: &str = "\
Usage: hw-dlq [-r DIR] [-j] list [--reason R] [--older-than AGE] [WORKER]
       hw-dlq [-r DIR] show WORKER ID
       hw-dlq [-r DIR] [-j] replay [--all] [--reason R] [--older-than AGE] [WORKER [ID...]]
       hw-dlq [-r DIR] [-j] purge [--all] [--reason R] [--older-than AGE] [WORKER [ID...]]
       hw-dlq [-r DIR] [-j] cancel [--wait SECS] WORKER ID...

Lists, shows, replays and purges the dead letters of a hookwatch spool,
dlq/WORKER/*.json, and cancels queued tasks. Without WORKER: every worker's.

  list     a table (WORKER ID REASON WHEN ATTEMPTS ERROR), oldest first;
           nothing when there are no dead letters
  show     the record, as indented JSON
  replay   each selected task back to tasks/WORKER/ (attempts reset), then
           its record removed; prints `WORKER ID` per task
  purge    removes each selected record and the entry it moved aside into
           .rejected/; prints `WORKER FILE` per record
  cancel   each task named becomes a dead letter with dlq_reason
           \"cancelled\" (replay undoes it): a pending or deferred one at
           once; a running one is stopped by its worker (SIGTERM to the
           agent's group, SIGKILL after --kill-grace), waiting up to --wait
           SECS (default 60; exit 75 if the worker has not acted by then);
           prints `WORKER ID` per task

ID is a task id or a record's file name; a task id names its newest record
for show and replay, all its records for purge. For cancel, ID is a task
id or a task's file name. replay and purge act on the
IDs named, or on every record with --all, or on those a filter selects:
never on everything by default.

Options:
  -r, --root DIR          spool root (HW_ROOT; /shared)
  -j, --json              JSON lines: the records (list), or
                          {\"worker\",\"task_id\",\"dlq_file\"} per record acted on
      --reason R          only records whose dlq_reason is R, or whose
                          last_error starts with R (timeout, spawn_failed,
                          agent_reported_error, interrupted)
      --older-than AGE    only records dead-lettered at least AGE ago
                          (seconds, or 30s, 10m, 2h, 7d)
      --all               replay or purge every record (the filters still apply)
  -h, --help              this text
  -V, --version           the version

Exit status: 0 done, also when nothing was selected; 1 a selected record
was not replayed or purged (a bad entry, a task already queued), or a task
not cancelled (running); 64 usage; 65 show of a record that is not JSON;
66 no such dead letter or task, or no spool root; 74 I/O error; 78 a bad
value (--older-than, --reason). See hw-dlq(1).
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    List,
    Show,
    Replay,
    Purge,
    Cancel,
}

#[derive(Debug)]
struct Args {
    action: Action,
    root: Option<String>,
    json: bool,
    reason: Option<String>,
    older_than: Option<String>,
    all: bool,
    /// cancel --wait: how long to wait for a worker to stop a running task.
    wait: Option<String>,
    /// WORKER, then IDs.
    operands: Vec<String>,
}

/// The options before the command, then the command, which takes the
/// parser on.
fn parse_args(mut parser: lexopt::Parser) -> Result<Command<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let (mut root, mut json) = (None, false);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('r') | Long("root") => root = Some(parser.value()?.string()?),
            Short('j') | Long("json") => json = true,
            Value(word) => {
                let action = match word.string()?.as_str() {
                    "list" => Action::List,
                    "show" => Action::Show,
                    "replay" => Action::Replay,
                    "purge" => Action::Purge,
                    "cancel" => Action::Cancel,
                    other => {
                        return Err(format!(
                            "unknown command {other:?}: list, show, replay, purge or cancel"
                        )
                        .into())
                    }
                };
                let args = Args {
                    action,
                    root,
                    json,
                    reason: None,
                    older_than: None,
                    all: false,
                    wait: None,
                    operands: Vec::new(),
                };
                return parse_command(parser, args);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Err("missing command: list, show, replay, purge or cancel".into())
}

/// A command's options and operands; each takes only the options it uses.
fn parse_command(mut parser: lexopt::Parser, mut a: Args) -> Result<Command<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let filters = !matches!(a.action, Action::Show | Action::Cancel);
    let selects = matches!(a.action, Action::Replay | Action::Purge);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('r') | Long("root") => a.root = Some(parser.value()?.string()?),
            Short('j') | Long("json") => a.json = true,
            Long("reason") if filters => a.reason = Some(parser.value()?.string()?),
            Long("older-than") if filters => a.older_than = Some(parser.value()?.string()?),
            Long("all") if selects => a.all = true,
            Long("wait") if matches!(a.action, Action::Cancel) => {
                a.wait = Some(parser.value()?.string()?)
            }
            Value(v) => a.operands.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::Run(a))
}

fn main() -> ExitCode {
    let parsed = parse_args(lexopt::Parser::from_env());
    let args = match cli::command_line("hw-dlq", USAGE, parsed) {
        Ok(args) => args,
        Err(status) => return status,
    };
    match run(&args) {
        Ok(status) => ExitCode::from(status),
        Err(e) => exit::report("hw-dlq", &e),
    }
}

fn run(a: &Args) -> Result<u8, Error> {
    let spool = Spool::from_env(a.root.clone().map(Into::into));
    let uses = match a.action {
        Action::Cancel => &spool.tasks,
        _ => &spool.dlq,
    };
    spool.require_root(uses)?;
    let mut out = Stdout::default();
    let usage = |m: &str| Err(Error::usage(format!("{m} (see --help)")));
    match a.action {
        Action::List => {
            if a.operands.len() > 1 {
                return usage("list takes at most one WORKER");
            }
            let filter = Filter::parse(a.reason.as_deref(), a.older_than.as_deref())?;
            let worker = a.operands.first().map(String::as_str);
            let records = dlq_admin::list(&spool, worker, &filter)?;
            match a.json {
                true => records.iter().for_each(|r| out.line(&r.json_line())),
                false => out.write(&dlq_admin::render_table(&records)),
            }
            out.status(exit::OK)
        }
        Action::Show => {
            let [worker, id] = a.operands.as_slice() else {
                return usage("show takes WORKER and ID");
            };
            let text = dlq_admin::show(&spool, worker, id)?;
            out.write(&text);
            out.status(exit::OK)
        }
        Action::Replay | Action::Purge | Action::Cancel => {
            let mut status = exit::OK;
            let mut report = |outcome: Outcome| match outcome {
                Outcome::Done(done) => out.line(&done.line(a.json)),
                Outcome::Refused(why) => {
                    eprintln!("hw-dlq: {why}");
                    status = status.max(exit::FAILED);
                }
                Outcome::Failed(e) => {
                    eprintln!("hw-dlq: {e}");
                    // The worker has not acted yet (a cancel): try again later.
                    let code = match e.kind {
                        Kind::TempFail => exit::TEMP_FAIL,
                        _ => exit::IO_ERR,
                    };
                    status = status.max(code);
                }
            };
            match a.action {
                Action::Cancel => {
                    let Some((worker, ids)) = a.operands.split_first() else {
                        return usage("cancel takes WORKER and at least one ID");
                    };
                    let wait = match &a.wait {
                        Some(v) => cli::values::parse_duration(v).ok_or_else(|| {
                            cli::values::invalid(v, "--wait", "not a duration (30, 30s, 2m)")
                        })?,
                        None => dlq_cancel::RUNNING_WAIT,
                    };
                    dlq_cancel::cancel(&spool, worker, ids, wait, &mut report)?
                }
                _ => {
                    let filter = Filter::parse(a.reason.as_deref(), a.older_than.as_deref())?;
                    let selection = Selection::new(&a.operands, a.all, filter)?;
                    match a.action {
                        Action::Replay => dlq_admin::replay(&spool, &selection, &mut report)?,
                        _ => dlq_admin::purge(&spool, &selection, &mut report)?,
                    }
                }
            }
            out.status(status)
        }
    }
}

/// Standard output that a closed pipe (`| head`) does not break: from then
/// on lines are dropped quietly, and the work goes on. Any other write
/// error is an I/O error at the end.
#[derive(Default)]
struct Stdout {
    closed: bool,
    error: Option<io::Error>,
}

impl Stdout {
    fn write(&mut self, text: &str) {
        if self.closed || text.is_empty() {
            return;
        }
        let mut stdout = io::stdout().lock();
        if let Err(e) = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            self.closed = true;
            if e.kind() != io::ErrorKind::BrokenPipe {
                self.error = Some(e);
            }
        }
    }

    fn line(&mut self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    fn status(self, status: u8) -> Result<u8, Error> {
        match self.error {
            Some(e) => Err(Error::new(
                Kind::Io,
                format!("cannot write to standard output: {e}"),
            )),
            None => Ok(status),
        }
    }
}
