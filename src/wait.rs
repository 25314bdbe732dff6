//! `hw-enqueue --wait`: block until each task has its terminal record, the
//! result or else the dead letter, with inotify on the worker's results and
//! dead-letter folders (watched before the tasks are published, so nothing
//! is missed), and print each as one JSON line in the order they finish.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use inotify::{EventMask, Inotify, WatchMask};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::clock;
use crate::error::{Error, Result};
use crate::model::dead_letter::DlqReason;
use crate::model::result::ResultStatus;
use crate::model::Word;
use crate::spool::names::{dead_letter_id, result_id, task_file};
use crate::spool::{create_dir, Spool};

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// Every task has its record; `all_completed` is false when one failed
    /// or was dead-lettered.
    Done {
        all_completed: bool,
    },
    TimedOut,
}

pub struct Waiter {
    inotify: Inotify,
    results: PathBuf,
    dlq: PathBuf,
    waiting: HashSet<String>,
    /// The ids in the order they were published, for the timeout's report.
    order: Vec<String>,
    all_completed: bool,
}

impl Waiter {
    /// Watches the worker's results and dead-letter folders.
    pub fn new(spool: &Spool, worker: &str) -> Result<Waiter> {
        let results = spool.result_dir(worker);
        let dlq = spool.dlq_dir(worker);
        let inotify =
            Inotify::init().map_err(|e| Error::io("cannot start inotify for", &results, e))?;
        for dir in [&results, &dlq] {
            create_dir(dir)?;
            inotify
                .watches()
                .add(dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
                .map_err(|e| Error::io("cannot watch", dir, e))?;
        }
        Ok(Waiter {
            inotify,
            results,
            dlq,
            waiting: HashSet::new(),
            order: Vec::new(),
            all_completed: true,
        })
    }

    pub fn expect(&mut self, id: String) {
        if self.waiting.insert(id.clone()) {
            self.order.push(id);
        }
    }

    /// After a timeout: where each task still awaited is, one phrase per
    /// task, in the order they were published: `ID still pending`, `ID
    /// running`, `ID deferred until T`, `ID deferred, waiting for A, B`.
    pub fn unfinished(&self, spool: &Spool, worker: &str) -> Vec<String> {
        self.order
            .iter()
            .filter(|id| self.waiting.contains(*id))
            .map(|id| format!("{id} {}", whereabouts(spool, worker, id)))
            .collect()
    }

    /// Prints records as they come until none is awaited or `deadline`.
    pub fn run(&mut self, deadline: Option<Instant>, out: &mut impl Write) -> Result<WaitEnd> {
        self.look_everywhere(out)?;
        let mut buffer = vec![0u8; 64 * 1024];
        while !self.waiting.is_empty() {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) if Instant::now() >= d => return Ok(WaitEnd::TimedOut),
                Some(d) => clock::poll_timeout(d),
            };
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, timeout).unwrap_or(0) == 0 {
                continue;
            }
            let mut names = Vec::new();
            let mut overflow = false;
            match self.inotify.read_events(&mut buffer) {
                Ok(events) => {
                    for e in events {
                        overflow |= e.mask.contains(EventMask::Q_OVERFLOW);
                        if let Some(n) = e.name.and_then(|n| n.to_str()) {
                            names.push(n.to_string());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    return Err(Error::io(
                        "cannot read inotify events for",
                        &self.results,
                        e,
                    ))
                }
            }
            if overflow {
                self.look_everywhere(out)?;
            }
            for name in names {
                self.consider(&name, out)?;
            }
        }
        Ok(WaitEnd::Done {
            all_completed: self.all_completed,
        })
    }

    /// Looks for every awaited task's record (at start, and after an overflow).
    fn look_everywhere(&mut self, out: &mut impl Write) -> Result<()> {
        let ids: Vec<String> = self.waiting.iter().cloned().collect();
        for id in ids {
            self.consider(&task_file(&id), out)?;
        }
        let letters: Vec<String> = fs::read_dir(&self.dlq)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for name in letters {
            self.consider(&name, out)?;
        }
        Ok(())
    }

    /// A file appeared: a result `<id>.json`, or a dead letter `<id>_<unix>.json`.
    fn consider(&mut self, name: &str, out: &mut impl Write) -> Result<()> {
        if let Some(id) = result_id(name).filter(|id| self.waiting.contains(*id)) {
            if let Some((record, raw)) = read_record(&self.results.join(name)) {
                let completed = ResultStatus::of(&record) == Some(ResultStatus::Completed);
                return self.emit(id.to_string(), &raw, completed, out);
            }
        }
        let Some(id) = dead_letter_id(name).filter(|id| self.waiting.contains(*id)) else {
            return Ok(());
        };
        let Some((record, raw)) = read_record(&self.dlq.join(name)) else {
            return Ok(());
        };
        // A task out of attempts gets a failed result right after its dead
        // letter: that result is the record to print.
        let reason = record.get("dlq_reason").and_then(|r| r.as_str());
        if reason
            .and_then(DlqReason::parse)
            .is_some_and(DlqReason::has_result)
        {
            return Ok(());
        }
        self.emit(id.to_string(), &raw, false, out)
    }

    /// Prints a record as the file holds it (one line, its own key order).
    fn emit(
        &mut self,
        id: String,
        raw: &[u8],
        completed: bool,
        out: &mut impl Write,
    ) -> Result<()> {
        self.waiting.remove(&id);
        self.all_completed &= completed;
        let line = format!("{}\n", String::from_utf8_lossy(raw).trim_end());
        // A closed stdout ends the wait's purpose, not the tasks: say nothing.
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        Ok(())
    }
}

/// Where a task of `worker` is, looked for in the order it moves
/// (pending, active, deferred), twice, since it can move between looks.
fn whereabouts(spool: &Spool, worker: &str, id: &str) -> String {
    for _ in 0..2 {
        let [pending, active, deferred] = spool.queued_paths(worker, id);
        if fs::symlink_metadata(&pending).is_ok() {
            return "still pending".into();
        }
        if fs::symlink_metadata(&active).is_ok() {
            return "running".into();
        }
        if let Some((task, _)) = read_record(&deferred) {
            let not_before = task.get("not_before").and_then(|t| t.as_str());
            let deps: Vec<&str> = task
                .get("dependencies")
                .and_then(|d| d.as_array())
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str())
                .collect();
            return match (not_before, deps.is_empty()) {
                (Some(t), _) => format!("deferred until {t}"),
                (None, false) => format!("deferred, waiting for {}", deps.join(", ")),
                (None, true) => "deferred".into(),
            };
        }
        if fs::symlink_metadata(&deferred).is_ok() {
            return "deferred".into();
        }
    }
    "not found: neither queued nor finished".into()
}

/// A record parsed, and its bytes.
fn read_record(path: &std::path::Path) -> Option<(serde_json::Value, Vec<u8>)> {
    let raw = crate::spool::read_regular(path, crate::spool::RECORD_MAX).ok()?;
    Some((serde_json::from_slice(&raw).ok()?, raw))
}
