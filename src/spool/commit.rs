//! Group commit for the files a worker writes on its hot path: the
//! receipt at claim and the result of a completed task. One thread takes
//! every file that is ready, stages them all as dot-files, makes them
//! durable with one flush, renames them into place in the order they came,
//! and syncs each folder once. A burst of tasks then costs a flush or two
//! rather than four fsyncs per task, and a pool thread goes back to work
//! as soon as its agent has exited. A committer that has just written
//! results waits a moment for more before the next flush.
//!
//! A receipt is put in place at once but not flushed on its own: it is
//! owed, and made durable by the next flush, which comes before any
//! result is put in place and before a pool thread writes anything else
//! for its task. So a task's receipt is always in place, and durable,
//! before its result, and a task costs the flushes of one file, not two.

use std::ffi::OsString;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::clock::Backoff;
use crate::error::Result;
use crate::latch::Latch;
use crate::spool::dir::Dir;
use crate::spool::publish::Durability;
use crate::spool::spare::Spares;

/// Files in flight beyond this make pool threads wait: back-pressure when
/// the disk is slow or full.
const CAPACITY: usize = 256;

/// How long a busy committer lets a batch holding a result wait for more.
/// On a disk where a flush costs milliseconds, results finishing a moment
/// apart then share one; a worker that was idle never waits, so a lone
/// task's latency is unchanged (measured in docs/performance.md).
const LINGER: Duration = Duration::from_millis(1);

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
    dir: Arc<Dir>,
    name: OsString,
    bytes: Vec<u8>,
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
    /// Files are written into `spares` where they can be.
    pub fn start(
        abort: Latch,
        unpublished: usize,
        d: Durability,
        spares: Arc<Spares>,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = bounded(CAPACITY);
        let (permits, returned) = bounded(unpublished.max(1));
        let thread = thread::Builder::new()
            .name("commit".into())
            .spawn(move || serve(&rx, &returned, &abort, Writer { d, spares }))?;
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
    pub fn receipt(&self, dir: Arc<Dir>, name: OsString, bytes: Vec<u8>) {
        let _ = self.tx.send(Item::Receipt(File { dir, name, bytes }));
    }

    /// A result: `then(true)` runs once it is durable and in place.
    pub fn result(&self, dir: Arc<Dir>, name: OsString, bytes: Vec<u8>, then: Then) {
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

/// How the committer writes: flushed or not, into spares where it can.
struct Writer {
    d: Durability,
    spares: Arc<Spares>,
}

impl Writer {
    fn stage(&self, f: &File, sync: bool) -> Result<OsString> {
        self.spares.stage(&f.dir, &f.bytes, sync)
    }
}

fn serve(rx: &Receiver<Item>, permits: &Receiver<()>, abort: &Latch, w: Writer) {
    let d = w.d;
    // No more results can come than there are permits: waiting for one
    // more would be waiting for nothing.
    let most = permits.capacity().unwrap_or(1);
    let mut owed = Owed::default();
    let mut last_results: Option<Instant> = None;
    // Whatever queued up while the last batch was being written is the
    // next batch: the busier the worker, the more each flush covers.
    while let Ok(first) = rx.recv() {
        let mut batch = Batch::default();
        batch.take(first);
        batch.take_ready(rx);
        if busy(last_results, Instant::now()) {
            batch.linger(rx, most);
        }
        let results = batch.results.len();
        batch.commit(abort, &w, &mut owed);
        if results > 0 {
            last_results = Some(Instant::now());
        }
        for _ in 0..results {
            let _ = permits.try_recv();
        }
    }
    owed.settle(d);
}

/// Whether results were committed less than `LINGER` ago.
fn busy(last_results: Option<Instant>, now: Instant) -> bool {
    last_results.is_some_and(|t| now.duration_since(t) < LINGER)
}

#[derive(Default)]
struct Batch {
    receipts: Vec<File>,
    results: Vec<(File, Then)>,
    answers: Vec<Sender<()>>,
}

impl Batch {
    fn take(&mut self, item: Item) {
        match item {
            Item::Receipt(f) => self.receipts.push(f),
            Item::Result(f, then) => self.results.push((f, then)),
            Item::Flush(answer) => self.answers.push(answer),
        }
    }

    fn take_ready(&mut self, rx: &Receiver<Item>) {
        for item in rx.try_iter().take(CAPACITY) {
            self.take(item);
        }
    }

    /// Takes what comes within `LINGER` while the batch holds a result,
    /// fewer than `most` of them, and no pool thread waits on a flush.
    fn linger(&mut self, rx: &Receiver<Item>, most: usize) {
        let deadline = Instant::now() + LINGER;
        while !self.results.is_empty() && self.results.len() < most && self.answers.is_empty() {
            match rx.recv_deadline(deadline) {
                Ok(item) => self.take(item),
                Err(_) => break,
            }
        }
    }

    /// Receipts in place (owed), then the results: stage all, flush (which
    /// settles what is owed), rename all, sync each folder once, then
    /// tell. A result whose fast path fails goes the slow way: its own
    /// publish, retried while the disk refuses.
    fn commit(self, abort: &Latch, w: &Writer, owed: &mut Owed) {
        let d = w.d;
        for f in &self.receipts {
            owed.place_receipt(f, w);
        }
        let files: Vec<&File> = self.results.iter().map(|(f, _)| f).collect();
        let placed = place(&files, w, owed);
        for ((f, then), ok) in self.results.into_iter().zip(placed) {
            let slow = || {
                owed.settle(d);
                f.dir.publish(&f.name, &f.bytes, d)
            };
            then(ok || matches!(persist(abort, slow), Persisted::Done(())));
        }
        if !self.answers.is_empty() {
            owed.settle(d);
        }
        for answer in self.answers {
            let _ = answer.send(());
        }
    }
}

/// The folders holding receipts put in place but not yet flushed.
#[derive(Default)]
struct Owed(Vec<Arc<Dir>>);

impl Owed {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Puts a receipt in place without a flush; one that cannot be staged
    /// or renamed goes the slow, durable way.
    fn place_receipt(&mut self, f: &File, w: &Writer) {
        let d = w.d;
        let placed = w
            .stage(f, false)
            .and_then(|tmp| f.dir.install(&tmp, &f.name));
        match placed {
            Ok(()) if d.flushes() => self.owe(&f.dir),
            Ok(()) => {}
            Err(_) => publish_receipt(f, d),
        }
    }

    fn owe(&mut self, dir: &Arc<Dir>) {
        if !self.0.iter().any(|o| o.device() == dir.device()) {
            self.0.push(dir.clone());
        }
    }

    /// One flush per file system owed (a receipt's content and its
    /// folder's entry go with it); what fails stays owed.
    fn settle(&mut self, d: Durability) {
        self.0.retain(|dir| match dir.sync_filesystem(d) {
            Ok(()) => false,
            Err(e) => {
                log::warn!("{e}");
                true
            }
        });
    }
}

/// Publishes `files` in order with one flush per file system (and one for
/// each file system `owed`, which it settles): whether each is now durable
/// and in place.
fn place(files: &[&File], w: &Writer, owed: &mut Owed) -> Vec<bool> {
    if files.is_empty() {
        return Vec::new();
    }
    let d = w.d;
    let alone = files.len() == 1 && owed.is_empty();
    let staged: Vec<Option<OsString>> = files
        .iter()
        .map(|f| w.stage(f, alone && d.flushes()).ok())
        .collect();
    let flushed = alone || sync_all_staged(files, &staged, d, owed);
    let mut placed: Vec<bool> = files
        .iter()
        .zip(staged)
        .map(|(f, tmp)| match tmp {
            Some(tmp) if flushed => f.dir.install(&tmp, &f.name).is_ok(),
            Some(tmp) => {
                let _ = f.dir.unlink(&tmp);
                false
            }
            None => false,
        })
        .collect();
    // Each folder that received a file is synced once.
    let mut synced: Vec<(&Arc<Dir>, bool)> = Vec::new();
    for (f, ok) in files.iter().zip(placed.iter_mut()) {
        if !*ok {
            continue;
        }
        let done = match synced.iter().find(|(dir, _)| Arc::ptr_eq(dir, &f.dir)) {
            Some((_, done)) => *done,
            None => {
                let done = f.dir.sync(d).is_ok();
                synced.push((&f.dir, done));
                done
            }
        };
        *ok = done;
    }
    placed
}

/// One flush per file system that holds a staged file or an owed
/// receipt: TRIGGER_DIR and RESULT_DIR may each be moved to another one.
fn sync_all_staged(
    files: &[&File],
    staged: &[Option<OsString>],
    d: Durability,
    owed: &mut Owed,
) -> bool {
    let mut flushed: Vec<u64> = Vec::new();
    let dirs = files
        .iter()
        .zip(staged)
        .filter(|(_, tmp)| tmp.is_some())
        .map(|(f, _)| &f.dir);
    for dir in dirs.chain(owed.0.iter()) {
        if flushed.contains(&dir.device()) {
            continue;
        }
        if let Err(e) = dir.sync_filesystem(d) {
            log::warn!("{e}; publishing one by one");
            return false;
        }
        flushed.push(dir.device());
    }
    owed.0.clear();
    true
}

/// A receipt is a courtesy: failing to write one does not stop the task.
fn publish_receipt(f: &File, d: Durability) {
    if let Err(e) = f.dir.publish(&f.name, &f.bytes, d) {
        log::warn!("{e}");
    }
}

/// What became of `persist`.
#[derive(Debug)]
pub enum Persisted<T> {
    Done(T),
    /// The worker was told to stop now.
    Aborted,
    /// An error that will not go away by waiting (a name the file system
    /// refuses, say): the caller must do something else.
    Never(crate::error::Error),
}

/// Runs a publish until it works. An I/O error (a full disk, say) is not
/// the task's fault: log it, wait, try again, with back-off up to 5 s.
/// Gives up when the worker is told to stop now, or at once on an error
/// that waiting will not mend.
pub fn persist<T>(abort: &Latch, mut publish: impl FnMut() -> Result<T>) -> Persisted<T> {
    let mut delay = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut logged_at: Option<Instant> = None;
    loop {
        match publish() {
            Ok(v) => return Persisted::Done(v),
            Err(e) if e.is_permanent() => return Persisted::Never(e),
            Err(e) => {
                if logged_at.map_or(true, |t| t.elapsed() >= Duration::from_secs(30)) {
                    log::error!("{e}; will try again");
                    logged_at = Some(Instant::now());
                }
                if abort.wait_timeout(delay.take()) {
                    return Persisted::Aborted;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file() -> File {
        File {
            dir: Arc::new(Dir::open(Path::new("/")).unwrap()),
            name: "t.json".into(),
            bytes: Vec::new(),
        }
    }

    fn result() -> Item {
        Item::Result(file(), Box::new(|_| {}))
    }

    /// A batch of one result, and `queued` sent after it.
    fn lingered(queued: Vec<Item>, most: usize) -> (Batch, usize) {
        let (tx, rx) = bounded(CAPACITY);
        let mut batch = Batch::default();
        batch.take(result());
        for item in queued {
            tx.send(item).unwrap();
        }
        batch.linger(&rx, most);
        (batch, rx.len())
    }

    #[test]
    fn a_batch_lingers_only_when_results_were_committed_a_moment_ago() {
        let now = Instant::now();
        assert!(!busy(None, now));
        assert!(busy(Some(now), now));
        assert!(!busy(now.checked_sub(2 * LINGER), now));
    }

    #[test]
    fn a_lingering_batch_takes_the_results_that_come() {
        let (batch, left) = lingered(vec![result(), Item::Receipt(file()), result()], 8);
        assert_eq!((batch.results.len(), batch.receipts.len(), left), (3, 1, 0));
    }

    #[test]
    fn a_batch_stops_lingering_at_as_many_results_as_there_are_permits() {
        let (batch, left) = lingered(vec![result(), result(), result()], 2);
        assert_eq!((batch.results.len(), left), (2, 2));
    }

    #[test]
    fn a_batch_stops_lingering_when_a_pool_thread_waits_on_a_flush() {
        let (answer, _) = bounded(1);
        let (batch, left) = lingered(vec![Item::Flush(answer), result()], 8);
        assert_eq!((batch.results.len(), batch.answers.len(), left), (1, 1, 1));
    }

    #[test]
    fn a_batch_without_a_result_does_not_linger() {
        let (tx, rx) = bounded(CAPACITY);
        let mut batch = Batch::default();
        batch.take(Item::Receipt(file()));
        tx.send(result()).unwrap();
        batch.linger(&rx, 8);
        assert_eq!((batch.results.len(), rx.len()), (0, 1));
    }
}
