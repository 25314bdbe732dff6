//! hw-status: the state of every worker, read from the spool itself (the
//! folders are counted, so the numbers are true even for a dead worker)
//! and from each heartbeat, with a verdict in the monitoring-plugin
//! convention: ok, warning, critical, unknown. `tasks` lists the tasks
//! that wait or run (`--tasks`); `prune` removes old results and trigger
//! files (`--prune-older-than`).

pub mod prune;
pub mod tasks;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::clock;
use crate::error::{Error, Result};
use crate::model::failure::PauseReason;
use crate::model::heartbeat::{
    self, BreakerState, Heartbeat, HeartbeatStatus, Standing, Unclaimable,
};
use crate::model::instances as heartbeats;
use crate::model::result::ResultStatus;
use crate::spool::names::{heartbeat_worker, is_task_file, result_id};
use crate::spool::{read_regular, Spool, RECORD_MAX};

pub use crate::model::heartbeat::STALE_INTERVALS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Overall {
    /// The exit status of a monitoring plugin.
    pub fn exit_status(self) -> u8 {
        match self {
            Overall::Ok => 0,
            Overall::Warning => 1,
            Overall::Critical => 2,
            Overall::Unknown => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Ok => "ok",
            Overall::Warning => "warning",
            Overall::Critical => "critical",
            Overall::Unknown => "unknown",
        }
    }
}

/// What hw-status says of a worker: its heartbeat's status, unless the
/// heartbeat is stale or missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Reported(HeartbeatStatus),
    /// Older than three of the intervals it names.
    Stale,
    /// No heartbeat that can be read.
    Missing,
}

impl Seen {
    pub fn as_str(self) -> &'static str {
        match self {
            Seen::Reported(s) => s.as_str(),
            Seen::Stale => "stale",
            Seen::Missing => "missing",
        }
    }
}

impl Serialize for Seen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerStatus {
    pub status: Seen,
    pub heartbeat_age_seconds: Option<f64>,
    pub pending: u64,
    pub active: u64,
    pub deferred: u64,
    pub completed: u64,
    pub failed: u64,
    pub dlq: u64,
    pub circuit_breaker_state: Option<BreakerState>,
    pub metrics_addr: Option<String>,
    pub uptime_seconds: Option<u64>,
    /// While paused: why and until when.
    pub paused_reason: Option<PauseReason>,
    pub paused_until: Option<String>,
    /// The agent's spend today (UTC), by the heartbeat; 0 when unknown.
    pub cost_usd_today: f64,
    /// Pending files the worker cannot claim for now, by its heartbeat.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unclaimable: Vec<Unclaimable>,
    /// Each process of the name (hookwatch(5), Heartbeat); the fields
    /// above are those of the best of them (healthy if any is).
    pub instances: Vec<InstanceStatus>,
}

/// One process of a worker name, by its own heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceStatus {
    /// `<worker>@<instance>`, or the file of a heartbeat that names no
    /// instance (an older writer's `<worker>.json`).
    pub instance: String,
    pub hostname: String,
    pub pid: u32,
    pub status: Seen,
    pub heartbeat_age_seconds: Option<f64>,
}

impl WorkerStatus {
    /// The instances whose heartbeat is stale: dead processes or hosts.
    pub fn dead_instances(&self) -> impl Iterator<Item = &InstanceStatus> {
        self.instances.iter().filter(|i| i.status == Seen::Stale)
    }
}

impl WorkerStatus {
    fn verdict(&self) -> Overall {
        match self.status {
            Seen::Missing => Overall::Critical,
            Seen::Reported(HeartbeatStatus::Healthy)
                if self.dlq == 0
                    && self.unclaimable.is_empty()
                    && self.dead_instances().next().is_none() =>
            {
                Overall::Ok
            }
            _ => Overall::Warning,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub timestamp: String,
    pub overall: Overall,
    pub workers: BTreeMap<String, WorkerStatus>,
    /// Why the verdict is not ok, one phrase each (not in the JSON).
    #[serde(skip)]
    pub reasons: Vec<String>,
}

/// Reads the state of `expected` workers (none: every worker with a tasks
/// folder or a heartbeat). An unreadable spool is an error (unknown).
pub fn collect(spool: &Spool, expected: &[String]) -> Result<StatusReport> {
    let now = clock::unix_now();
    fs::metadata(&spool.root).map_err(|e| Error::io("cannot read the spool", &spool.root, e))?;
    let mut names: Vec<String> = expected.to_vec();
    if names.is_empty() {
        names = spool.worker_names()?;
        for name in heartbeat_names(spool)? {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.sort();
    }
    let mut report = StatusReport {
        timestamp: clock::rfc3339(clock::from_unix(now)),
        overall: Overall::Ok,
        workers: BTreeMap::new(),
        reasons: Vec::new(),
    };
    if names.is_empty() {
        report.overall = Overall::Critical;
        report.reasons.push("no workers and no heartbeats".into());
    }
    for name in names {
        if report.workers.contains_key(&name) {
            continue;
        }
        let status = worker_status(spool, &name, now)?;
        report.reasons.extend(reasons(&name, &status));
        report.overall = report.overall.max(status.verdict());
        report.workers.insert(name, status);
    }
    Ok(report)
}

/// Every reason a worker is not ok, one phrase each: its status, and its
/// dead letters (a breaker open does not hide them).
fn reasons(name: &str, s: &WorkerStatus) -> Vec<String> {
    let mut out = Vec::new();
    match s.status {
        Seen::Reported(HeartbeatStatus::Healthy) => {}
        Seen::Missing => out.push(format!("{name}: no heartbeat")),
        Seen::Reported(HeartbeatStatus::Degraded) => out.push(format!(
            "{name}: breaker {}",
            s.circuit_breaker_state.map_or("?", BreakerState::as_str)
        )),
        Seen::Reported(HeartbeatStatus::Paused) => out.push(format!(
            "{name}: paused ({}) until {}",
            s.paused_reason.map_or("?", PauseReason::as_str),
            s.paused_until.as_deref().unwrap_or("?")
        )),
        other => out.push(format!("{name}: {}", other.as_str())),
    }
    if s.status != Seen::Stale {
        for i in s.dead_instances() {
            out.push(format!(
                "{name}: instance {} (host {}, pid {}) stale{}",
                i.instance,
                i.hostname,
                i.pid,
                i.heartbeat_age_seconds
                    .map_or_else(String::new, |a| format!(", {a:.1}s"))
            ));
        }
    }
    match s.dlq {
        0 => {}
        1 => out.push(format!("{name}: 1 dead letter")),
        n => out.push(format!("{name}: {n} dead letters")),
    }
    for u in &s.unclaimable {
        let owner = u
            .owner_uid
            .map_or_else(String::new, |uid| format!(", owner uid {uid}"));
        out.push(format!(
            "{name}: cannot claim {} ({}{owner})",
            u.file, u.error
        ));
    }
    out
}

/// What hw-status says of one heartbeat, and its age.
fn seen(beat: Option<&Heartbeat>, now: f64) -> (Seen, Option<f64>) {
    let age = beat
        .and_then(|b| b.age(now))
        .map(|a| (a * 10.0).round() / 10.0);
    let status = match (beat, age) {
        (Some(b), Some(_)) => match heartbeat::standing(b, now, stale_after(b)) {
            Standing::Stale => Seen::Stale,
            _ => Seen::Reported(b.status),
        },
        _ => Seen::Missing,
    };
    (status, age)
}

fn stale_after(b: &Heartbeat) -> f64 {
    STALE_INTERVALS * b.interval().as_secs_f64()
}

fn worker_status(spool: &Spool, name: &str, now: f64) -> Result<WorkerStatus> {
    let all = heartbeats::of_worker(spool, name);
    let beat = heartbeat::speaker(all.iter().map(|i| &i.beat), now, stale_after).cloned();
    let (status, age) = seen(beat.as_ref(), now);
    let instances = all
        .iter()
        .map(|i| {
            let (status, heartbeat_age_seconds) = seen(Some(&i.beat), now);
            InstanceStatus {
                instance: i.label(name),
                hostname: i.beat.hostname.clone(),
                pid: i.beat.pid,
                status,
                heartbeat_age_seconds,
            }
        })
        .collect();
    let (completed, failed) = count_results(&spool.result_dir(name))?;
    Ok(WorkerStatus {
        status,
        heartbeat_age_seconds: age,
        pending: count_tasks(&spool.pending_dir(name))?,
        active: count_tasks(&spool.active_dir(name))?,
        deferred: count_tasks(&spool.deferred_dir(name))?,
        completed,
        failed,
        dlq: count_tasks(&spool.dlq_dir(name))?,
        circuit_breaker_state: beat.as_ref().map(|b| b.circuit_breaker_state),
        metrics_addr: beat.as_ref().and_then(|b| b.metrics_addr.clone()),
        uptime_seconds: beat.as_ref().map(|b| b.uptime_seconds),
        paused_reason: beat.as_ref().and_then(|b| b.paused_reason),
        paused_until: beat.as_ref().and_then(|b| b.paused_until.clone()),
        cost_usd_today: beat.as_ref().map_or(0.0, |b| b.cost_usd_today),
        unclaimable: beat.map(|b| b.unclaimable).unwrap_or_default(),
        instances,
    })
}

fn heartbeat_names(spool: &Spool) -> Result<Vec<String>> {
    Ok(list(&spool.heartbeats)?
        .into_iter()
        .filter_map(|n| heartbeat_worker(&n).map(String::from))
        .collect())
}

/// Entry names of a folder; a missing folder has none.
fn list(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if crate::error::vanished(&e) => Ok(Vec::new()),
        Err(e) => Err(Error::io("cannot list", dir, e)),
    }
}

fn count_tasks(dir: &Path) -> Result<u64> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .flatten()
            .filter(|e| is_task_file(&e.file_name()))
            .count() as u64),
        Err(e) if crate::error::vanished(&e) => Ok(0),
        Err(e) => Err(Error::io("cannot list", dir, e)),
    }
}

/// Completed and failed results, by each result's `status`.
fn count_results(dir: &Path) -> Result<(u64, u64)> {
    let (mut completed, mut failed) = (0, 0);
    for name in list(dir)?.iter().filter(|n| result_id(n).is_some()) {
        let status = read_regular(&dir.join(name), RECORD_MAX)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|record| ResultStatus::of(&record));
        match status {
            Some(ResultStatus::Completed) => completed += 1,
            Some(ResultStatus::Failed) => failed += 1,
            None => {}
        }
    }
    Ok((completed, failed))
}

/// The verdict line of a spool that cannot be read: a monitoring plugin
/// prints its verdict whatever happens.
pub fn unknown_line(why: &str) -> String {
    format!("overall: unknown ({})\n", printable(why))
}

/// The human screen: the verdict first (a monitoring plugin's summary
/// line), then one row per worker.
pub fn render_table(report: &StatusReport) -> String {
    let header = [
        "WORKER",
        "STATUS",
        "AGE",
        "PENDING",
        "ACTIVE",
        "DEFERRED",
        "COMPLETED",
        "FAILED",
        "DLQ",
        "BREAKER",
        "COST",
        "UPTIME",
        "METRICS",
        "INSTANCES",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for (name, w) in &report.workers {
        let dash = || "-".to_string();
        rows.push(vec![
            name.clone(),
            w.status.as_str().to_string(),
            w.heartbeat_age_seconds
                .map_or_else(dash, |a| format!("{a:.1}s")),
            w.pending.to_string(),
            w.active.to_string(),
            w.deferred.to_string(),
            w.completed.to_string(),
            w.failed.to_string(),
            w.dlq.to_string(),
            w.circuit_breaker_state
                .map_or_else(dash, |b| b.as_str().to_string()),
            format!("${:.2}", w.cost_usd_today),
            w.uptime_seconds.map_or_else(dash, human_duration),
            w.metrics_addr.clone().unwrap_or_else(dash),
            instances_cell(w),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("overall: {}", report.overall.as_str());
    if !report.reasons.is_empty() {
        let _ = write!(out, " ({})", printable(&report.reasons.join("; ")));
    }
    out.push('\n');
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| printable(c))
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// `live/all` instances, with the dead ones named: `1/2 (dead: marie@h2)`.
fn instances_cell(w: &WorkerStatus) -> String {
    if w.instances.is_empty() {
        return "-".into();
    }
    let live = w
        .instances
        .iter()
        .filter(|i| {
            !matches!(
                i.status,
                Seen::Stale | Seen::Reported(HeartbeatStatus::Stopped)
            )
        })
        .count();
    let dead: Vec<&str> = w.dead_instances().map(|i| i.instance.as_str()).collect();
    match dead.is_empty() {
        true => format!("{live}/{}", w.instances.len()),
        false => format!("{live}/{} (dead: {})", w.instances.len(), dead.join(",")),
    }
}

/// A heartbeat's text as a terminal may show it: control characters (an
/// escape sequence could forge a line) become `?`.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub(crate) fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// `hw-status --init`: the layout for these workers, and the listener's
/// folder, created where missing (0750 less umask).
pub fn init(spool: &Spool, workers: &[String]) -> Result<()> {
    for w in workers {
        spool.create_worker_dirs(w)?;
    }
    crate::spool::create_dir(&spool.orchestrator_dir())
}
