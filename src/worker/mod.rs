//! hw-worker: the daemon for one worker name. `run` checks what can be
//! checked before anything starts (`startup`), then wires the threads,
//! each with one job: the dispatcher (`dispatch`, which owns all state
//! and every timer), the inotify reader (`watch`), the pool that runs
//! agents (`pool`), the committer that makes results durable in batches
//! (`spool::commit`), the metrics endpoint (`http`) and a signal reader.
//! They talk through channels; shutdown is a message, then a latch.

mod breaker;
mod cancel;
pub mod config;
mod deps;
mod dispatch;
mod http;
mod instance;
mod metrics;
mod notify;
mod pause;
mod pool;
mod queue;
mod retry;
mod skip;
mod startup;
mod watch;

use std::sync::{Arc, RwLock};
use std::thread;

use crossbeam_channel::unbounded;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};
use crate::latch::Latch;
use crate::spool::commit::Committer;
use crate::spool::spare::Spares;
use crate::spool::WorkerDirs;
use config::WorkerConfig;
use dispatch::Dispatcher;
use http::MetricsServer;
use metrics::Metrics;
use pool::{Context, Pool};
use watch::Watcher;

/// Finished results that may wait to be made durable, per slot: while the
/// committer flushes one batch, the pool goes on and the next batch grows
/// (docs/performance.md: with 4 rather than 1, a disk burst ran about 1.25
/// times faster). A crash reruns at most that many finished tasks.
const UNPUBLISHED_PER_SLOT: usize = 4;

/// The worker's folders, held open; replaced as a whole when one of them
/// was (a tasks folder removed and made again, say).
pub(crate) type SharedDirs = Arc<RwLock<Arc<WorkerDirs>>>;

/// The folders held now.
pub(crate) fn current(dirs: &SharedDirs) -> Arc<WorkerDirs> {
    dirs.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs the worker until SIGTERM or SIGINT. Errors are start-up failures.
pub fn run(config: WorkerConfig) -> Result<()> {
    crate::sys::close_inherited_on_exec();
    // Registered before any thread starts, so every thread inherits the mask.
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Error::os("cannot install signal handlers", e))?;
    crate::agent::run::raise_open_files_limit(config.max_concurrent);
    // PID 1 in a container, or any parent of agents: orphans are reaped.
    crate::agent::reaper::start();
    // Bound before anything is created, so a busy port changes nothing.
    let metrics = Arc::new(Metrics::new(&config.name, config.daily_budget_usd));
    let server = match config.metrics {
        Some((ip, port)) => Some(MetricsServer::start(ip, port, metrics.clone())?),
        None => None,
    };
    let pending = config.spool.pending_dir(&config.name);
    let dirs: SharedDirs = Arc::new(RwLock::new(Arc::new(startup::prepare_spool(&config)?)));
    let cancels = Arc::new(cancel::Cancels::default());
    let (notice_tx, notices) = unbounded();
    let (report_tx, reports) = unbounded();
    let (job_tx, jobs) = unbounded();
    let (signal_tx, signal_rx) = unbounded();
    let stop = Latch::new().map_err(|e| Error::os("cannot create a pipe", e))?;
    let abort = Latch::new().map_err(|e| Error::os("cannot create a pipe", e))?;
    let watcher = match config.inotify {
        true => Some(Watcher::start(&pending, notice_tx, stop.clone())?),
        false => None,
    };
    let signal_handle = signals.handle();
    let signal_thread = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if signal_tx.send(sig).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::os("cannot start the signal thread", e))?;
    if let Some(s) = &server {
        log::info!(metrics_addr = s.addr.to_string(); "Metrics on http://{}/metrics", s.addr);
    }
    let poll = startup::poll_interval(&config);
    // Not on a network file system: other hosts' clients cache a file's
    // content by its inode, and could read a reused file's old content.
    let local = !startup::network_fs(&pending);
    let spares = Arc::new(Spares::open(current(&dirs).spare.clone(), local));
    let committer = Committer::start(
        abort.clone(),
        UNPUBLISHED_PER_SLOT * config.max_concurrent,
        config.durability,
        spares.clone(),
    )
    .map_err(|e| Error::io("cannot start the committer for", &pending, e))?;
    let context = Arc::new(Context {
        config: config.clone(),
        metrics: metrics.clone(),
        abort: abort.clone(),
        commits: committer.commits(),
        reports: report_tx,
        dirs: dirs.clone(),
        cancels: cancels.clone(),
        spares,
    });
    let pool = Pool::start(context, jobs)
        .map_err(|e| Error::io("cannot start the pool for", &pending, e))?;
    let metrics_addr = server.as_ref().map(|s| s.addr.to_string());
    let mut d = Dispatcher::new(
        config,
        dirs,
        cancels,
        metrics,
        job_tx,
        watcher,
        poll,
        metrics_addr,
    );
    d.start();
    d.serve(&notices, &reports, &signal_rx, &abort);
    d.close_jobs();
    pool.join();
    committer.close();
    stop.fire();
    d.join_watcher();
    signal_handle.close();
    let _ = signal_thread.join();
    if let Some(s) = server {
        s.stop();
    }
    d.stopped();
    Ok(())
}
