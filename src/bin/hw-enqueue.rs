//! hw-enqueue: writes tasks into a worker's tasks folder and prints their
//! ids (or, with --wait, their terminal records).

use std::io::{BufRead, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use hookwatch::cli::exit;
use hookwatch::cli::values::{invalid, invalid_worker_name, parse_duration};
use hookwatch::cli::{self, Command};
use hookwatch::enqueue::{check_id, Enqueuer, Prepared, Template};
use hookwatch::error::{Error, Kind};
use hookwatch::model::agent_options::AgentOptions;
use hookwatch::model::task::{Priority, TASK_BYTES_DEFAULT};
use hookwatch::spool::names::valid_worker_name;
use hookwatch::spool::Spool;
use hookwatch::wait::{WaitEnd, Waiter};
use serde_json::{Map, Value};

const USAGE: &str = "\
Usage: hw-enqueue [OPTIONS] WORKER [DESCRIPTION...]

Writes a task for WORKER atomically into its tasks folder and prints its
id. The words of DESCRIPTION make one description; without any, reads one
description per line from standard input (empty lines skipped).

Options:
  -r, --root DIR            spool root (HW_ROOT; /shared)
      --id ID               the task id (default: generated, sortable by time)
  -p, --priority P          high, normal or low
  -t, --timeout SECS        the task's time limit per attempt
  -d, --depends-on ID       run only after task ID completed (repeatable)
  -m, --meta KEY=VALUE      metadata (repeatable)
  -b, --batch-id ID         metadata.batch_id
      --model M             the Claude model (model)
      --max-turns N         at most N agentic turns (max_turns)
      --max-budget-usd X    at most X USD per attempt (max_budget_usd)
      --allowed-tools T     a tool the agent may use without asking, such as
                            Read or 'Bash(git log:*)' (allowed_tools; repeatable)
      --append-system-prompt TEXT  added to the system prompt
      --resume ID           resume this Claude session (resume)
      --workdir DIR         run the agent in DIR, relative to the worker's
                            --workdir (workdir)
  -n, --count N             N copies of the one description
  -j, --json                standard input holds one task object per line
  -w, --wait                print each task's result (or dead letter) as a
                            JSON line when it ends, instead of its id
      --wait-timeout SECS   give up waiting after SECS (exit 124), saying on
                            stderr where each unfinished task is
  -q, --quiet               no warning when WORKER has no heartbeat
  -h, --help                this text
  -V, --version             the version

A description that begins with '-' (but for a Markdown bullet, '- ...')
goes after '--': hw-enqueue marie -- '-v is too verbose'.
Durations are seconds or take s, m, h, d; they are stored in seconds.
A WORKER that has never written a heartbeat gets a warning (a typo?); the
spool root must exist (hw-status --init creates it).
Exit status: 0 enqueued (with --wait: all completed); 1 with --wait, a
task failed or was dead-lettered; 64 usage or a bad WORKER; 65 bad input
(a bad line, named by its number; the lines before it are enqueued), or a
bad --id or --depends-on; 66 the spool root does not exist; 73 the id
exists for that worker; 74 I/O error; 78 a bad option value; 124
--wait-timeout passed. See hw-enqueue(1).
";

#[derive(Default)]
struct Args {
    root: Option<String>,
    worker: Option<String>,
    words: Vec<String>,
    id: Option<String>,
    priority: Option<String>,
    timeout: Option<String>,
    depends_on: Vec<String>,
    meta: Vec<String>,
    batch_id: Option<String>,
    model: Option<String>,
    max_turns: Option<String>,
    max_budget_usd: Option<String>,
    allowed_tools: Vec<String>,
    append_system_prompt: Option<String>,
    resume: Option<String>,
    workdir: Option<String>,
    count: Option<String>,
    json: bool,
    wait: bool,
    wait_timeout: Option<String>,
    quiet: bool,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Command<Box<Args>>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('r') | Long("root") => a.root = Some(parser.value()?.string()?),
            Long("id") => a.id = Some(parser.value()?.string()?),
            Short('p') | Long("priority") => a.priority = Some(parser.value()?.string()?),
            Short('t') | Long("timeout") => a.timeout = Some(parser.value()?.string()?),
            Short('d') | Long("depends-on") => a.depends_on.push(parser.value()?.string()?),
            Short('m') | Long("meta") => a.meta.push(parser.value()?.string()?),
            Short('b') | Long("batch-id") => a.batch_id = Some(parser.value()?.string()?),
            Long("model") => a.model = Some(parser.value()?.string()?),
            Long("max-turns") => a.max_turns = Some(parser.value()?.string()?),
            Long("max-budget-usd") => a.max_budget_usd = Some(parser.value()?.string()?),
            Long("allowed-tools") => a.allowed_tools.push(parser.value()?.string()?),
            Long("append-system-prompt") => {
                a.append_system_prompt = Some(parser.value()?.string()?)
            }
            Long("resume") => a.resume = Some(parser.value()?.string()?),
            Long("workdir") => a.workdir = Some(parser.value()?.string()?),
            Short('n') | Long("count") => a.count = Some(parser.value()?.string()?),
            Short('j') | Long("json") => a.json = true,
            Short('w') | Long("wait") => a.wait = true,
            Long("wait-timeout") => a.wait_timeout = Some(parser.value()?.string()?),
            Short('q') | Long("quiet") => a.quiet = true,
            Value(v) if a.worker.is_none() => a.worker = Some(v.string()?),
            Value(v) => a.words.push(v.string()?),
            // A Markdown bullet, `- fix the login bug`: a word, not options.
            Short(c) if c.is_whitespace() && a.worker.is_some() => {
                let rest = parser.optional_value().map(|v| v.string()).transpose()?;
                a.words.push(format!("-{c}{}", rest.unwrap_or_default()));
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::Run(Box::new(a)))
}

/// The validated invocation.
struct Plan {
    spool: Spool,
    worker: String,
    template: Template,
    id: Option<String>,
    /// The one description of the command line, and how many copies.
    description: Option<(String, u64)>,
    json: bool,
    wait: Option<Option<Duration>>,
    quiet: bool,
}

fn plan(a: &Args) -> Result<Plan, Error> {
    let worker = a
        .worker
        .clone()
        .ok_or_else(|| Error::usage("missing WORKER"))?;
    if !valid_worker_name(&worker) {
        return Err(Error::usage(invalid_worker_name(&worker)));
    }
    for id in a.id.iter().chain(&a.depends_on) {
        check_id(id)?;
    }
    let priority = match &a.priority {
        None => None,
        Some(p) => Some(
            Priority::parse(p)
                .ok_or_else(|| invalid(p, "--priority", "not high, normal or low"))?,
        ),
    };
    let seconds = |flag: &str, v: &Option<String>| -> Result<Option<Duration>, Error> {
        match v {
            None => Ok(None),
            Some(s) => match parse_duration(s) {
                Some(d) if !d.is_zero() => Ok(Some(d)),
                _ => Err(invalid(
                    s,
                    flag,
                    "not a positive duration (seconds, or with s, m, h or d)",
                )),
            },
        }
    };
    let mut meta = Vec::new();
    for kv in &a.meta {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => meta.push((k.to_string(), v.to_string())),
            _ => return Err(invalid(kv, "--meta", "not KEY=VALUE")),
        }
    }
    let count = match &a.count {
        None => 1,
        Some(n) => n
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| invalid(n, "--count", "not a whole number from 1 to 1000000"))?,
    };
    let description = (!a.words.is_empty()).then(|| (a.words.join(" "), count));
    if a.json && description.is_some() {
        return Err(Error::usage(
            "--json reads tasks from standard input: give no DESCRIPTION",
        ));
    }
    if a.count.is_some() && description.is_none() {
        return Err(Error::usage(
            "--count copies the one DESCRIPTION given as arguments",
        ));
    }
    if a.id.is_some() && a.json {
        return Err(Error::usage(
            "--id names one task: with --json, put task_id in the line",
        ));
    }
    if a.wait_timeout.is_some() && !a.wait {
        return Err(Error::usage("--wait-timeout goes with --wait"));
    }
    if a.id.is_some() && count > 1 {
        return Err(Error::usage(
            "--id names one task: it cannot go with --count",
        ));
    }
    if description
        .as_ref()
        .is_some_and(|(d, _)| d.trim().is_empty())
    {
        return Err(Error::new(Kind::Data, "the description is empty"));
    }
    let wait_timeout = seconds("--wait-timeout", &a.wait_timeout)?;
    Ok(Plan {
        spool: Spool::from_env(a.root.clone().map(Into::into)),
        template: Template {
            priority,
            timeout: seconds("--timeout", &a.timeout)?.map(|d| d.as_secs_f64()),
            depends_on: a.depends_on.clone(),
            meta,
            batch_id: a.batch_id.clone(),
            agent: agent_options(a)?,
        },
        worker,
        id: a.id.clone(),
        description,
        json: a.json,
        wait: a.wait.then_some(wait_timeout),
        quiet: a.quiet,
    })
}

/// The task options of the flags, each checked as the worker checks it;
/// a bad one is a bad value of its flag (78).
fn agent_options(a: &Args) -> Result<Map<String, Value>, Error> {
    let mut fields = Map::new();
    let text = |v: &Option<String>| v.clone().map(Value::from);
    let number = |flag: &str, v: &Option<String>, whole: bool| -> Result<Option<Value>, Error> {
        let Some(s) = v else { return Ok(None) };
        let parsed = match whole {
            true => s.trim().parse::<u64>().ok().map(Value::from),
            false => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(|x| serde_json::Number::from_f64(x).map(Value::from)),
        };
        parsed
            .map(Some)
            .ok_or_else(|| invalid(s, flag, "not a number"))
    };
    let given = [
        ("model", "--model", text(&a.model)),
        (
            "max_turns",
            "--max-turns",
            number("--max-turns", &a.max_turns, true)?,
        ),
        (
            "max_budget_usd",
            "--max-budget-usd",
            number("--max-budget-usd", &a.max_budget_usd, false)?,
        ),
        (
            "allowed_tools",
            "--allowed-tools",
            (!a.allowed_tools.is_empty()).then(|| Value::from(a.allowed_tools.clone())),
        ),
        (
            "append_system_prompt",
            "--append-system-prompt",
            text(&a.append_system_prompt),
        ),
        ("resume", "--resume", text(&a.resume)),
        ("workdir", "--workdir", text(&a.workdir)),
    ];
    for (key, flag, value) in given {
        let Some(value) = value else { continue };
        let one = Map::from_iter([(key.to_string(), value.clone())]);
        if let Err(why) = AgentOptions::parse(&one) {
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), String::from);
            return Err(invalid(&shown, flag, &why));
        }
        fields.insert(key.to_string(), value);
    }
    Ok(fields)
}

fn main() -> ExitCode {
    let parsed = parse_args(lexopt::Parser::from_env());
    let args = match cli::command_line("hw-enqueue", USAGE, parsed) {
        Ok(args) => args,
        Err(status) => return status,
    };
    match plan(&args).and_then(|p| run(&p)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => exit::report("hw-enqueue", &e),
    }
}

fn run(p: &Plan) -> Result<u8, Error> {
    p.spool.require_root(&p.spool.tasks)?;
    // `--id` names one task: the whole input is read and checked before
    // anything is written.
    let from_stdin = match (&p.id, &p.description) {
        (Some(_), None) => Some(one_description()?),
        _ => None,
    };
    if !p.quiet {
        warn_without_heartbeat(p);
    }
    let mut enqueuer = Enqueuer::new(&p.spool, &p.worker)?;
    // Watching starts before anything is published, so no record is missed.
    let mut waiter = match p.wait {
        Some(_) => Some(Waiter::new(&p.spool, &p.worker)?),
        None => None,
    };
    let started = Instant::now();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut sink = |ids: Vec<String>| {
        for id in ids {
            match waiter.as_mut() {
                Some(w) => w.expect(id),
                None => {
                    let _ = writeln!(out, "{id}");
                }
            }
        }
        let _ = out.flush();
    };
    let fed = match (&p.description, from_stdin) {
        (Some((d, count)), _) => feed_arguments(p, &mut enqueuer, d, *count, &mut sink),
        (None, Some(Some(d))) => feed_arguments(p, &mut enqueuer, &d, 1, &mut sink),
        (None, Some(None)) => Ok(()),
        (None, None) => feed_stdin(p, &mut enqueuer, &mut sink),
    };
    let (Some(w), Some(timeout)) = (waiter.as_mut(), p.wait) else {
        return fed.map(|()| exit::OK);
    };
    // After a bad line, what was enqueued before it is still waited for
    // and printed, so the caller knows exactly what happened.
    let mut out = std::io::stdout().lock();
    let end = w.run(timeout.map(|t| started + t), &mut out)?;
    if end == WaitEnd::TimedOut {
        for line in w.unfinished(&p.spool, &p.worker) {
            eprintln!("hw-enqueue: not finished: {line}");
        }
    }
    fed?;
    Ok(match end {
        WaitEnd::Done {
            all_completed: true,
        } => exit::OK,
        WaitEnd::Done {
            all_completed: false,
        } => exit::FAILED,
        WaitEnd::TimedOut => exit::TIMED_OUT,
    })
}

fn feed_arguments(
    p: &Plan,
    enqueuer: &mut Enqueuer,
    description: &str,
    count: u64,
    sink: &mut impl FnMut(Vec<String>),
) -> Result<(), Error> {
    let mut batch = Vec::new();
    for _ in 0..count {
        batch.push(enqueuer.from_description(description, p.id.as_deref(), &p.template)?);
        if batch.len() == BATCH {
            publish(enqueuer, std::mem::take(&mut batch), sink)?;
        }
    }
    publish(enqueuer, batch, sink)
}

/// The one description that standard input may hold with `--id`: its
/// only line that is not blank (`None`: there is none). A second one is a
/// usage error, found before anything is written.
fn one_description() -> Result<Option<String>, Error> {
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    let mut found: Option<String> = None;
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        if read_line(&mut input, &mut line, number)? == 0 {
            return Ok(found);
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| Error::new(Kind::Data, format!("line {number}: not UTF-8")))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if found.is_some() {
            return Err(Error::usage(format!(
                "line {number}: --id names one task, and the input holds more (nothing was written)"
            )));
        }
        found = Some(text.to_string());
    }
}

/// A worker that has never written a heartbeat is most likely a typo
/// (`mairie` for `marie`): its tasks would wait for ever, and hw-status
/// would call it missing. Said once, on stderr; `--quiet` silences it.
fn warn_without_heartbeat(p: &Plan) {
    let beat = p.spool.heartbeat_path(&p.worker);
    if let Err(e) = std::fs::symlink_metadata(&beat) {
        if e.kind() == std::io::ErrorKind::NotFound {
            eprintln!(
                "hw-enqueue: warning: worker {} has never had a heartbeat (no {}): \
                 is the name right? (-q silences this)",
                p.worker,
                beat.display()
            );
        }
    }
}

/// Tasks already read are published when the input pauses or a batch is
/// full, so a slow producer's tasks are not held back.
const BATCH: usize = 1024;

fn feed_stdin(
    p: &Plan,
    enqueuer: &mut Enqueuer,
    sink: &mut impl FnMut(Vec<String>),
) -> Result<(), Error> {
    // Our own buffer, to know when what was read so far is used up.
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut batch: Vec<Prepared> = Vec::new();
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        if read_line(&mut input, &mut line, number)? == 0 {
            break;
        }
        let prepared = prepare_line(p, enqueuer, &line);
        match prepared {
            Ok(Some(task)) => batch.push(task),
            Ok(None) => {}
            Err(e) => {
                publish(enqueuer, batch, sink)?;
                return Err(Error::new(e.kind, format!("line {number}: {e}")));
            }
        }
        let paused = input.buffer().is_empty() && !input_ready(input.get_ref());
        if batch.len() >= BATCH || (!batch.is_empty() && paused) {
            publish(enqueuer, std::mem::take(&mut batch), sink)?;
        }
    }
    publish(enqueuer, batch, sink)
}

/// Reads line `number` of the input into `line`; 0 at its end. A line
/// longer than the largest task file a worker takes by default is
/// refused before more of it is read, so no input grows memory unbounded.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, number: u64) -> Result<usize, Error> {
    let n = input
        .by_ref()
        .take(TASK_BYTES_DEFAULT + 1)
        .read_until(b'\n', line)
        .map_err(|e| Error::io("cannot read", "standard input".as_ref(), e))?;
    if line.len() as u64 > TASK_BYTES_DEFAULT && line.last() != Some(&b'\n') {
        return Err(Error::new(
            Kind::Data,
            format!("line {number}: longer than {TASK_BYTES_DEFAULT} bytes, more than a worker takes by default (--max-task-bytes)"),
        ));
    }
    Ok(n)
}

/// One line of input as a task; `None` for an empty line.
fn prepare_line(p: &Plan, enqueuer: &mut Enqueuer, line: &[u8]) -> Result<Option<Prepared>, Error> {
    let text = std::str::from_utf8(line).map_err(|_| Error::new(Kind::Data, "not UTF-8"))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Ok(None);
    }
    // With `--id`, the input was read whole beforehand (one_description).
    let task = match p.json {
        true => enqueuer.from_json(text.as_bytes(), &p.template)?,
        false => enqueuer.from_description(text, None, &p.template)?,
    };
    Ok(Some(task))
}

/// Whether more input can be read at once: an emptied buffer is a pause
/// only when the pipe is empty too, not each time the buffer needs a refill.
fn input_ready(input: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
    // An error or a hang-up counts as ready: the next read tells which.
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

fn publish(
    enqueuer: &mut Enqueuer,
    batch: Vec<Prepared>,
    sink: &mut impl FnMut(Vec<String>),
) -> Result<(), Error> {
    match enqueuer.publish(batch) {
        Ok(ids) => {
            sink(ids);
            Ok(())
        }
        Err((ids, e)) => {
            sink(ids);
            Err(e)
        }
    }
}
