//! Group commit for the files a worker writes on its hot path: the
//! receipt at claim and the result of a completed task. One thread takes
//! every file that is ready, stages them all as dot-files, makes them
//! durable with one flush, renames them into place in the order they came,
//! and syncs each folder once. A burst of tasks then costs a flush or two
//! rather than four fsyncs per task, and a pool thread goes back to work
//! as soon as its agent has exited.
//!
//! Files go out in the order they came, so a task's receipt is always in
//! place before its result.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::clock::Backoff;
use crate::error::Result;
use crate::latch::Latch;
use crate::spool::publish::{self, Durability};

/// Files in flight beyond this make pool threads wait: back-pressure when
/// the disk is slow or full.
const CAPACITY: usize = 256;

/// What runs once a result is durable (`true`), or when the worker is
/// told to stop before it could be (`false`).
pub type Then = Box<dyn FnOnce(bool) + Send>;

enum Item {
    Receipt(File),
    Result(File, Then),
    /// Answered once everything sent before it is published.
    Flush(Sender<()>),
}

struct File {
    dir: PathBuf,
    name: String,
    bytes: Vec<u8>,
}

impl File {
    fn target(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// The sending side, one per pool thread (cheap to clone).
#[derive(Clone)]
pub struct Commits {
    tx: Sender<Item>,
    /// One permit per result not yet durable: a pool thread waits for one,
    /// so a crash catches at most that many tasks whose agent finished but
    /// whose result was not yet written.
    permits: Sender<()>,
}

/// The committing thread; `close` drains it.
pub struct Committer {
    commits: Commits,
    thread: JoinHandle<()>,
}

impl Committer {
    /// `unpublished`: how many results may wait to be made durable.
    pub fn start(abort: Latch, unpublished: usize, d: Durability) -> std::io::Result<Committer> {
        let (tx, rx) = bounded(CAPACITY);
        let (permits, returned) = bounded(unpublished.max(1));
        let thread = thread::Builder::new()
            .name("commit".into())
            .spawn(move || serve(&rx, &returned, &abort, d))?;
        Ok(Committer {
            commits: Commits { tx, permits },
            thread,
        })
    }

    pub fn commits(&self) -> Commits {
        self.commits.clone()
    }

    /// Publishes what is left once every `Commits` is dropped, then ends.
    pub fn close(self) {
        drop(self.commits);
        let _ = self.thread.join();
    }
}

impl Commits {
    /// A receipt: one that cannot be written is logged, not retried.
    pub fn receipt(&self, dir: PathBuf, name: String, bytes: Vec<u8>) {
        let _ = self.tx.send(Item::Receipt(File { dir, name, bytes }));
    }

    /// A result: `then(true)` runs once it is durable and in place.
    pub fn result(&self, dir: PathBuf, name: String, bytes: Vec<u8>, then: Then) {
        let item = Item::Result(File { dir, name, bytes }, then);
        if self.permits.send(()).is_err() {
            return then_not_durable(item);
        }
        if let Err(e) = self.tx.send(item) {
            then_not_durable(e.into_inner());
        }
    }

    /// Returns once everything sent before is published: what a pool
    /// thread calls before it writes anything of its own for a task.
    pub fn flush(&self) {
        let (tx, rx) = bounded(1);
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn then_not_durable(item: Item) {
    if let Item::Result(_, then) = item {
        then(false);
    }
}

fn serve(rx: &Receiver<Item>, permits: &Receiver<()>, abort: &Latch, d: Durability) {
    // Whatever queued up while the last batch was being written is the
    // next batch: the busier the worker, the more each flush covers.
    while let Ok(first) = rx.recv() {
        let mut batch = Batch::default();
        for item in std::iter::once(first).chain(rx.try_iter().take(CAPACITY)) {
            match item {
                Item::Receipt(f) => batch.receipts.push(f),
                Item::Result(f, then) => batch.results.push((f, then)),
                Item::Flush(answer) => batch.answers.push(answer),
            }
        }
        let results = batch.results.len();
        batch.commit(abort, d);
        for _ in 0..results {
            let _ = permits.try_recv();
        }
    }
}

#[derive(Default)]
struct Batch {
    receipts: Vec<File>,
    results: Vec<(File, Then)>,
    answers: Vec<Sender<()>>,
}

impl Batch {
    /// Stage all, flush, rename all (receipts first), sync each folder
    /// once, then tell. A file whose fast path fails goes the slow way:
    /// its own publish, retried while the disk refuses.
    fn commit(self, abort: &Latch, d: Durability) {
        let files: Vec<&File> = self
            .receipts
            .iter()
            .chain(self.results.iter().map(|(f, _)| f))
            .collect();
        let placed = place(&files, d);
        let receipts = self.receipts.len();
        for (f, ok) in self.receipts.iter().zip(&placed) {
            if !ok {
                publish_receipt(f, d);
            }
        }
        for ((f, then), ok) in self.results.into_iter().zip(&placed[receipts..]) {
            let slow = || publish::publish(&f.dir, &f.name, &f.bytes, d);
            then(*ok || persist(abort, slow).is_some());
        }
        for answer in self.answers {
            let _ = answer.send(());
        }
    }
}

/// Publishes `files` in order with one flush per file system: whether each is now
/// durable and in place.
fn place(files: &[&File], d: Durability) -> Vec<bool> {
    let alone = files.len() == 1;
    let staged: Vec<Option<PathBuf>> = files
        .iter()
        .map(|f| publish::stage(&f.dir, f.name.as_ref(), &f.bytes, alone && d.flushes()).ok())
        .collect();
    let flushed = alone || sync_all_staged(files, &staged, d);
    let mut placed: Vec<bool> = files
        .iter()
        .zip(staged)
        .map(|(f, tmp)| match tmp {
            Some(tmp) if flushed => publish::install(&tmp, &f.target()).is_ok(),
            Some(tmp) => {
                let _ = std::fs::remove_file(tmp);
                false
            }
            None => false,
        })
        .collect();
    let folders: BTreeSet<&Path> = files
        .iter()
        .zip(&placed)
        .filter(|(_, ok)| **ok)
        .map(|(f, _)| f.dir.as_path())
        .collect();
    let unsynced: Vec<&Path> = folders
        .into_iter()
        .filter(|dir| publish::sync_dir(dir, d).is_err())
        .collect();
    for (f, ok) in files.iter().zip(placed.iter_mut()) {
        *ok = *ok && !unsynced.contains(&f.dir.as_path());
    }
    placed
}

/// One flush per file system that holds a staged file: TRIGGER_DIR and
/// RESULT_DIR may each be moved to another one.
fn sync_all_staged(files: &[&File], staged: &[Option<PathBuf>], d: Durability) -> bool {
    let mut looked: Vec<&Path> = Vec::new();
    let mut flushed: Vec<u64> = Vec::new();
    for (f, tmp) in files.iter().zip(staged) {
        let Some(tmp) = tmp else { continue };
        if looked.contains(&f.dir.as_path()) {
            continue;
        }
        looked.push(&f.dir);
        let dev = std::fs::metadata(tmp).map(|m| m.dev());
        if dev.as_ref().is_ok_and(|d| flushed.contains(d)) {
            continue;
        }
        if let Err(e) = publish::sync_filesystem(tmp, d) {
            log::warn!("{e}; publishing one by one");
            return false;
        }
        flushed.extend(dev.ok());
    }
    true
}

/// A receipt is a courtesy: failing to write one does not stop the task.
fn publish_receipt(f: &File, d: Durability) {
    if let Err(e) = publish::publish(&f.dir, &f.name, &f.bytes, d) {
        log::warn!("{e}");
    }
}

/// Runs a publish until it works. An I/O error (a full disk, say) is not
/// the task's fault: log it, wait, try again, with back-off up to 5 s.
/// Gives up (`None`) only when the worker is told to stop now.
pub fn persist<T>(abort: &Latch, mut publish: impl FnMut() -> Result<T>) -> Option<T> {
    let mut delay = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut logged_at: Option<Instant> = None;
    loop {
        match publish() {
            Ok(v) => return Some(v),
            Err(e) => {
                if logged_at.map_or(true, |t| t.elapsed() >= Duration::from_secs(30)) {
                    log::error!("{e}; will try again");
                    logged_at = Some(Instant::now());
                }
                if abort.wait_timeout(delay.take()) {
                    return None;
                }
            }
        }
    }
}
