//! The worker's counters and gauges, shared by the dispatcher, the pool,
//! the heartbeat and the HTTP thread without locks (atomics only, so a
//! scrape never waits for a task), and their Prometheus text rendering
//! (format 0.0.4) with the metric names of the system hookwatch replaces.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::agent::claude::{AgentReport, TokenType};
use crate::clock;
use crate::model::dead_letter::DlqReason;
use crate::model::failure::{FailureClass, PauseReason};
use crate::model::heartbeat::{BreakerState, HeartbeatStats};
use crate::model::result::ResultStatus;
use crate::model::Word;

const DURATION_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
const PICKUP_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One counter per word of a vocabulary: a metric with a label whose
/// values are exactly the words, all of them always present.
#[derive(Debug)]
pub struct Counters<W: Word> {
    counts: Vec<AtomicU64>,
    words: std::marker::PhantomData<W>,
}

impl<W: Word> Counters<W> {
    fn new() -> Counters<W> {
        Counters {
            counts: W::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            words: std::marker::PhantomData,
        }
    }

    pub fn add(&self, word: W) {
        self.add_n(word, 1);
    }

    pub fn add_n(&self, word: W, n: u64) {
        self.counts[word.index()].fetch_add(n, Relaxed);
    }

    /// As a gauge: the value of `word` is `n`.
    pub fn set(&self, word: W, n: u64) {
        self.counts[word.index()].store(n, Relaxed);
    }

    pub fn get(&self, word: W) -> u64 {
        self.counts[word.index()].load(Relaxed)
    }

    fn sum(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// `name{labels,label="word"} n` for every word.
    fn render(&self, out: &mut String, name: &str, labels: &str, label: &str) {
        for w in W::ALL {
            let n = self.get(*w);
            let _ = writeln!(out, "{name}{{{labels},{label}=\"{}\"}} {n}", w.as_str());
        }
    }
}

/// A histogram of seconds with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last one is +Inf.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[derive(Debug)]
pub struct Metrics {
    worker: String,
    processed: Counters<ResultStatus>,
    attempt_failures: Counters<FailureClass>,
    retried: AtomicU64,
    dead_letters: Counters<DlqReason>,
    pub duration: Histogram,
    pub pickup: Histogram,
    queue_size: AtomicU64,
    active: AtomicU64,
    breaker: AtomicU64,
    /// Set once the worker stops claiming (health turns 503).
    stopping: AtomicBool,
    /// 1 for the reason the worker is paused for, 0 for the others.
    paused: Counters<PauseReason>,
    /// The agent's spend, as its result objects report it.
    cost_usd: AtomicF64,
    tokens: Counters<TokenType>,
    turns: AtomicU64,
    /// Today's spend (UTC), for the daily budget.
    today: Mutex<DaySpend>,
    budget_usd: Option<f64>,
}

/// The spend of one UTC day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaySpend {
    /// `2026-12-04`.
    pub day: String,
    pub usd: f64,
}

impl Metrics {
    pub fn new(worker: &str, budget_usd: Option<f64>) -> Metrics {
        Metrics {
            worker: worker.to_string(),
            processed: Counters::new(),
            attempt_failures: Counters::new(),
            retried: AtomicU64::new(0),
            dead_letters: Counters::new(),
            duration: Histogram::new(&DURATION_BUCKETS),
            pickup: Histogram::new(&PICKUP_BUCKETS),
            queue_size: AtomicU64::new(0),
            active: AtomicU64::new(0),
            breaker: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            paused: Counters::new(),
            cost_usd: AtomicF64::default(),
            tokens: Counters::new(),
            turns: AtomicU64::new(0),
            today: Mutex::new(DaySpend::default()),
            budget_usd,
        }
    }

    /// A task reached its terminal result.
    pub fn processed(&self, status: ResultStatus) {
        self.processed.add(status);
    }

    /// One failed attempt.
    pub fn attempt_failed(&self, class: FailureClass) {
        self.attempt_failures.add(class);
    }

    pub fn retried(&self) {
        self.retried.fetch_add(1, Relaxed);
    }

    /// A dead letter was written.
    pub fn dead_lettered(&self, reason: DlqReason) {
        self.dead_letters.add(reason);
    }

    /// What one attempt of the agent cost, by its result object.
    pub fn spent(&self, agent: &AgentReport) {
        let usd = agent.cost_usd();
        self.cost_usd.add(usd);
        for (kind, n) in agent.tokens() {
            self.tokens.add_n(kind, n);
        }
        self.turns.fetch_add(agent.turns(), Relaxed);
        let day = clock::utc_day(clock::unix_now());
        let mut today = self.today.lock().unwrap_or_else(|e| e.into_inner());
        if today.day != day {
            *today = DaySpend { day, usd: 0.0 };
        }
        today.usd += usd;
    }

    /// Today's spend, 0 once the UTC day has turned.
    pub fn today(&self) -> DaySpend {
        let day = clock::utc_day(clock::unix_now());
        let today = self.today.lock().unwrap_or_else(|e| e.into_inner());
        match today.day == day {
            true => today.clone(),
            false => DaySpend { day, usd: 0.0 },
        }
    }

    /// Takes up a day's spend where a previous run left it.
    pub fn resume_today(&self, spend: DaySpend) {
        *self.today.lock().unwrap_or_else(|e| e.into_inner()) = spend;
    }

    pub fn set_paused(&self, reason: Option<PauseReason>) {
        for r in PauseReason::ALL {
            self.paused.set(*r, u64::from(reason == Some(*r)));
        }
    }

    pub fn set_queue_size(&self, n: usize) {
        self.queue_size.store(n as u64, Relaxed);
    }

    pub fn set_active(&self, n: usize) {
        self.active.store(n as u64, Relaxed);
    }

    pub fn set_breaker(&self, state: BreakerState) {
        self.breaker.store(u64::from(state.gauge()), Relaxed);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// Ready: running, not paused, and the breaker closed.
    pub fn healthy(&self) -> bool {
        !self.stopping.load(Relaxed) && self.breaker.load(Relaxed) == 0 && self.paused.sum() == 0
    }

    pub fn heartbeat_stats(&self) -> HeartbeatStats {
        HeartbeatStats {
            tasks_processed: self.processed.sum(),
            tasks_failed: self.processed.get(ResultStatus::Failed),
            tasks_retried: self.retried.load(Relaxed),
            tasks_dlq: self.dead_letters.sum(),
        }
    }

    /// The whole exposition, worker metrics then process metrics.
    pub fn render(&self) -> String {
        let w = format!("worker=\"{}\"", escape_label(&self.worker));
        let mut e = Exposition {
            out: String::with_capacity(8192),
            labels: &w,
        };
        let name = "watcher_tasks_processed_total";
        e.head(name, "counter", "Tasks that reached a terminal result.");
        self.processed.render(&mut e.out, name, &w, "status");
        let name = "watcher_tasks_failed_total";
        e.head(name, "counter", "Failed attempts, by reason.");
        self.attempt_failures.render(&mut e.out, name, &w, "reason");
        let name = "watcher_tasks_retried_total";
        e.head(name, "counter", "Failed attempts scheduled for a retry.");
        e.sample(name, self.retried.load(Relaxed));
        let name = "watcher_tasks_dlq_total";
        e.head(name, "counter", "Dead letters written, by reason.");
        self.dead_letters.render(&mut e.out, name, &w, "reason");
        let name = "watcher_task_duration_seconds";
        e.head(name, "histogram", "Duration of attempts.");
        self.duration.render(&mut e.out, name, &w);
        let name = "watcher_task_pickup_latency_seconds";
        e.head(
            name,
            "histogram",
            "From a task file's last write to its claim.",
        );
        self.pickup.render(&mut e.out, name, &w);
        e.gauge(
            "watcher_task_queue_size",
            "Pending tasks on disk.",
            self.queue_size.load(Relaxed),
        );
        e.gauge(
            "watcher_active_tasks",
            "Tasks running now.",
            self.active.load(Relaxed),
        );
        e.gauge(
            "watcher_circuit_breaker_state",
            "0 closed, 1 open, 2 half-open.",
            self.breaker.load(Relaxed),
        );
        let name = "watcher_worker_paused";
        e.head(
            name,
            "gauge",
            "1 while the worker claims nothing, by reason.",
        );
        self.paused.render(&mut e.out, name, &w, "reason");
        let name = "watcher_agent_cost_usd_total";
        e.head(name, "counter", "The agent's spend as it reported it, USD.");
        e.sample(name, self.cost_usd.get());
        let name = "watcher_agent_tokens_total";
        e.head(name, "counter", "Tokens the agent reported, by type.");
        self.tokens.render(&mut e.out, name, &w, "type");
        let name = "watcher_agent_turns_total";
        e.head(name, "counter", "Turns the agent reported.");
        e.sample(name, self.turns.load(Relaxed));
        e.gauge(
            "watcher_agent_cost_usd_today",
            "The agent's spend this UTC day, USD.",
            self.today().usd,
        );
        if let Some(budget) = self.budget_usd {
            e.gauge(
                "watcher_agent_daily_budget_usd",
                "--daily-budget-usd: claims pause once today's spend reaches it.",
                budget,
            );
        }
        render_process(&mut e.out);
        e.out
    }
}

/// The text being rendered, and the worker's labels.
struct Exposition<'a> {
    out: String,
    labels: &'a str,
}

impl Exposition<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{}}} {value}", self.labels);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, "gauge", help);
        self.sample(name, value);
    }
}

/// An f64 that threads add to without a lock.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn add(&self, x: f64) {
        let _ = self.0.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + x).to_bits())
        });
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The standard `process_*` metrics, read from /proc.
fn render_process(out: &mut String) {
    let Some(p) = ProcessStats::read() else {
        return;
    };
    let rows: [(&str, &str, &str, f64); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.rss_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.vsize_bytes,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time,
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time: f64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may hold spaces, in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        use nix::unistd::{sysconf, SysconfVar};
        let constant = |var| sysconf(var).ok().flatten().map(|v| v as f64);
        let (tick, page) = (
            constant(SysconfVar::CLK_TCK)?,
            constant(SysconfVar::PAGE_SIZE)?,
        );
        // Field numbers of proc(5), minus 3 (pid, comm and state are gone).
        let (utime, stime, start, vsize, rss) = (num(11)?, num(12)?, num(19)?, num(20)?, num(21)?);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(0.0, |(soft, _)| soft as f64);
        Some(ProcessStats {
            cpu_seconds: (utime + stime) / tick,
            rss_bytes: rss * page,
            vsize_bytes: vsize,
            open_fds,
            max_fds,
            start_time: boot + start / tick,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_inf() {
        let m = Metrics::new("marie", None);
        m.duration.observe(Duration::from_millis(5));
        m.duration.observe(Duration::from_secs(1000));
        let text = m.render();
        assert!(
            text.contains("watcher_task_duration_seconds_bucket{worker=\"marie\",le=\"0.01\"} 1")
        );
        assert!(
            text.contains("watcher_task_duration_seconds_bucket{worker=\"marie\",le=\"600\"} 1")
        );
        assert!(
            text.contains("watcher_task_duration_seconds_bucket{worker=\"marie\",le=\"+Inf\"} 2")
        );
        assert!(text.contains("watcher_task_duration_seconds_count{worker=\"marie\"} 2"));
        assert!(text.contains("process_resident_memory_bytes "));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
