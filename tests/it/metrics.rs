//! hw-worker's HTTP endpoint (SPEC section 7): the metric names and values
//! after known work, the exposition format (histograms, HELP and TYPE,
//! Content-Type, promtool), the health checks and the breaker, where and
//! whether it listens, scrapes under load, and floods of connections
//! that neither take the worker's descriptors nor kill the endpoint.

use crate::common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const W: &str = "w";

// ---------------------------------------------------------------------------
// A tiny HTTP/1.0 client.

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh connection; reads until the server closes it.
fn http_get(addr: &str, path: &str) -> std::io::Result<Response> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, DEADLINE)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no end of headers in {text:?}"),
        )
    })?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

fn get(addr: &str, path: &str) -> Response {
    http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

fn scrape(addr: &str) -> String {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
    r.body
}

// ---------------------------------------------------------------------------
// Reading the exposition.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("not a sample value: {other:?}")),
    }
}

/// `{a="x",b="y"}` (already without the braces) into a map; handles the
/// escapes of the text format.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return labels;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} has no quoted value in {s:?}"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => panic!("dangling escape in {s:?}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
}

/// Every sample line (comments and blank lines skipped).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                    (name.to_string(), parse_labels(inner))
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value: parse_value(value.trim()),
            }
        })
        .collect()
}

/// The value of the series `name` with exactly these labels.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Checks the shape of histogram `name`: `_bucket` lines with increasing
/// `le` ending in `+Inf`, non-decreasing cumulative counts, `+Inf` equal
/// to `_count`, a `_sum`. Returns `_count`.
fn check_histogram(text: &str, name: &str) -> f64 {
    let all = samples(text);
    let buckets: Vec<&Sample> = all
        .iter()
        .filter(|s| s.name == format!("{name}_bucket"))
        .collect();
    assert!(!buckets.is_empty(), "no {name}_bucket lines in:\n{text}");
    let mut last_le = f64::NEG_INFINITY;
    let mut last_count = 0.0;
    for b in &buckets {
        let le = parse_value(b.labels.get("le").unwrap_or_else(|| {
            panic!("{name}_bucket without le: {b:?}");
        }));
        assert!(
            le > last_le,
            "{name}: le {le} after {last_le}, not increasing"
        );
        assert!(
            b.value >= last_count,
            "{name}: cumulative count {} at le {le} after {last_count}",
            b.value
        );
        assert_eq!(
            b.labels.get("worker").map(String::as_str),
            Some(W),
            "{name}_bucket without worker=\"{W}\": {b:?}"
        );
        last_le = le;
        last_count = b.value;
    }
    assert_eq!(
        buckets.last().unwrap().labels["le"],
        "+Inf",
        "{name}: the last bucket is not le=\"+Inf\""
    );
    let count = value(text, &format!("{name}_count"), &[("worker", W)])
        .unwrap_or_else(|| panic!("no {name}_count{{worker=\"{W}\"}} in:\n{text}"));
    assert_eq!(last_count, count, "{name}: +Inf bucket != _count");
    let sum = value(text, &format!("{name}_sum"), &[("worker", W)])
        .unwrap_or_else(|| panic!("no {name}_sum{{worker=\"{W}\"}} in:\n{text}"));
    assert!(sum >= 0.0, "{name}_sum is negative: {sum}");
    count
}

// ---------------------------------------------------------------------------
// Workers.

/// Waits until the heartbeat of `worker` names its metrics address;
/// `log` is shown when it does not.
fn wait_metrics_addr(spool: &Spool, worker: &str, log: impl Fn() -> String) -> String {
    let mut addr = None;
    let ok = wait_until(DEADLINE, || {
        addr = spool
            .heartbeat(worker)
            .and_then(|h| h["metrics_addr"].as_str().map(String::from));
        addr.is_some()
    });
    assert!(
        ok,
        "no metrics_addr in the heartbeat of {worker} within {DEADLINE:?}; log:\n{}",
        log()
    );
    addr.unwrap()
}

fn metrics_addr(spool: &Spool, worker: &str, d: &Daemon) -> String {
    wait_metrics_addr(spool, worker, || d.log_text())
}

/// Waits for the first heartbeat of `worker` and returns it.
fn first_heartbeat(spool: &Spool, worker: &str, d: &Daemon) -> Value {
    let mut beat = None;
    let ok = wait_until(DEADLINE, || {
        beat = spool.heartbeat(worker);
        beat.is_some()
    });
    assert!(
        ok,
        "no heartbeat of {worker} within {DEADLINE:?}; log:\n{}",
        d.log_text()
    );
    beat.unwrap()
}

/// An agent that fails (exit 3) when the description starts with `fail`.
fn agent(spool: &Spool) -> PathBuf {
    spool.script(
        "agent.sh",
        r#"case "$desc" in fail*) echo boom >&2; exit 3;; esac
echo "ok: $desc""#,
    )
}

/// The known work of the first two tests, with MAX_RETRIES=1: two tasks
/// that succeed, one that always fails (two attempts, one retry, one dead
/// letter) and one file that is not JSON. Four attempts in all.
fn known_work(spool: &Spool) -> Daemon {
    let agent = agent(spool);
    spool.drop_simple(W, "ok-1", "one");
    spool.drop_simple(W, "ok-2", "two");
    spool.drop_simple(W, "bad-1", "fail please");
    spool.drop_bytes(W, "garbage.json", b"{this is not json");
    let d = Daemon::worker(spool, W, &agent, &[("MAX_RETRIES", "1")]);
    assert_eq!(spool.wait_result(W, "ok-1")["status"], "completed");
    assert_eq!(spool.wait_result(W, "ok-2")["status"], "completed");
    assert_eq!(spool.wait_result(W, "bad-1")["status"], "failed");
    spool.wait_dlq(W, 2);
    d
}

/// Scrapes until `done` holds for the exposition (counters are bumped
/// just after the files are written), then returns the last scrape.
fn scrape_until(addr: &str, mut done: impl FnMut(&str) -> bool) -> String {
    let mut text = String::new();
    wait_until(DEADLINE, || {
        text = scrape(addr);
        done(&text)
    });
    text
}

/// Where `promtool` is on PATH, if anywhere.
fn find_on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    })
}

// ---------------------------------------------------------------------------
// Tests.

/// A series (name and exact labels) and the value it must have.
type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

#[test]
fn metrics_count_the_known_work_by_name_and_label() {
    let spool = Spool::new();
    let d = known_work(&spool);
    let addr = metrics_addr(&spool, W, &d);
    let w = ("worker", W);
    let expected: Vec<Expected> = vec![
        (
            "watcher_tasks_processed_total",
            vec![w, ("status", "completed")],
            2.0,
        ),
        (
            "watcher_tasks_processed_total",
            vec![w, ("status", "failed")],
            1.0,
        ),
        (
            "watcher_tasks_failed_total",
            vec![w, ("reason", "exit_status")],
            2.0,
        ),
        ("watcher_tasks_retried_total", vec![w], 1.0),
        (
            "watcher_tasks_dlq_total",
            vec![w, ("reason", "max_retries_exceeded")],
            1.0,
        ),
        (
            "watcher_tasks_dlq_total",
            vec![w, ("reason", "invalid_json")],
            1.0,
        ),
        ("watcher_task_queue_size", vec![w], 0.0),
        ("watcher_active_tasks", vec![w], 0.0),
        ("watcher_circuit_breaker_state", vec![w], 0.0),
    ];
    let text = scrape_until(&addr, |text| {
        expected
            .iter()
            .all(|(name, labels, v)| value(text, name, labels) == Some(*v))
    });
    for (name, labels, v) in &expected {
        assert_eq!(
            value(&text, name, labels),
            Some(*v),
            "{name}{labels:?} in:\n{text}"
        );
    }
    let rss = value(&text, "process_resident_memory_bytes", &[])
        .unwrap_or_else(|| panic!("no process_resident_memory_bytes in:\n{text}"));
    assert!(rss > 0.0, "process_resident_memory_bytes {rss}");
    let start = value(&text, "process_start_time_seconds", &[])
        .unwrap_or_else(|| panic!("no process_start_time_seconds in:\n{text}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start > now - 3600.0 && start <= now + 5.0,
        "process_start_time_seconds {start} is not within the last hour (now {now})"
    );
    for name in ["process_cpu_seconds_total", "process_open_fds"] {
        assert!(value(&text, name, &[]).is_some(), "no {name} in:\n{text}");
    }
}

#[test]
fn histograms_have_cumulative_buckets_help_type_and_the_0_0_4_content_type() {
    let spool = Spool::new();
    let d = known_work(&spool);
    let addr = metrics_addr(&spool, W, &d);
    // Four attempts: two successes and the failing task's two.
    let attempts = 4.0;
    let text = scrape_until(&addr, |text| {
        value(
            text,
            "watcher_task_duration_seconds_count",
            &[("worker", W)],
        ) == Some(attempts)
    });
    let durations = check_histogram(&text, "watcher_task_duration_seconds");
    assert_eq!(durations, attempts, "attempts timed, in:\n{text}");
    let pickups = check_histogram(&text, "watcher_task_pickup_latency_seconds");
    assert!(pickups >= 3.0, "claims timed: {pickups}, in:\n{text}");

    // Every family: # HELP and # TYPE before its first sample.
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut families_seen = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap().to_string();
            let kind = words.next().unwrap_or_default().to_string();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str()),
                "unknown TYPE line: {line}"
            );
            types.insert(name, kind);
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = if types.contains_key(name) {
                name.to_string()
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| {
                        matches!(
                            types.get(*base).map(String::as_str),
                            Some("histogram" | "summary")
                        )
                    })
                    .unwrap_or_else(|| panic!("sample {name} has no # TYPE line before it"))
                    .to_string()
            };
            assert!(
                help.contains(&family),
                "family {family} has no # HELP line before its first sample"
            );
            families_seen.insert(family);
        }
    }
    for family in [
        "watcher_tasks_processed_total",
        "watcher_tasks_failed_total",
        "watcher_tasks_retried_total",
        "watcher_tasks_dlq_total",
        "watcher_task_duration_seconds",
        "watcher_task_pickup_latency_seconds",
        "watcher_task_queue_size",
        "watcher_active_tasks",
        "watcher_circuit_breaker_state",
    ] {
        assert!(families_seen.contains(family), "no family {family}");
    }
    assert_eq!(types["watcher_task_duration_seconds"], "histogram");
    assert_eq!(types["watcher_task_pickup_latency_seconds"], "histogram");
    assert_eq!(types["watcher_tasks_processed_total"], "counter");
    assert_eq!(types["watcher_task_queue_size"], "gauge");

    let r = get(&addr, "/metrics");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}

#[test]
fn promtool_accepts_the_exposition() {
    let Some(promtool) = find_on_path("promtool") else {
        println!("promtool is not on PATH: promtool_accepts_the_exposition skipped");
        return;
    };
    let spool = Spool::new();
    let d = known_work(&spool);
    let addr = metrics_addr(&spool, W, &d);
    let text = scrape(&addr);
    // Files, not pipes: nothing can block on a full pipe.
    let input = spool.scratch("scrape.txt");
    let (out_path, err_path) = (spool.scratch("promtool.out"), spool.scratch("promtool.err"));
    std::fs::write(&input, &text).unwrap();
    let child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .expect("start promtool");
    let status = finish(child, b"", "promtool").status;
    assert!(
        status.success(),
        "promtool check metrics: {status}\nstdout: {}\nstderr: {}\nexposition:\n{text}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
}

#[test]
fn health_checks_answer_503_while_the_breaker_is_open() {
    let spool = Spool::new();
    let agent = agent(&spool);
    let d = Daemon::worker(
        &spool,
        W,
        &agent,
        &[
            ("CIRCUIT_BREAKER_THRESHOLD", "1"),
            ("CIRCUIT_BREAKER_TIMEOUT", "60"),
            ("MAX_RETRIES", "0"),
        ],
    );
    let addr = metrics_addr(&spool, W, &d);
    for path in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(get(&addr, path).status, 200, "{path} while healthy");
    }
    assert_eq!(get(&addr, "/no-such-thing").status, 404);

    spool.drop_simple(W, "bad-1", "fail now");
    assert_eq!(spool.wait_result(W, "bad-1")["status"], "failed");
    let open = wait_until(DEADLINE, || get(&addr, "/healthz").status == 503);
    assert!(
        open,
        "/healthz did not turn 503 with the breaker open; log:\n{}",
        d.log_text()
    );
    assert_eq!(get(&addr, "/readyz").status, 503, "/readyz, breaker open");
    assert_eq!(get(&addr, "/livez").status, 200, "/livez, breaker open");
    assert_eq!(get(&addr, "/no-such-thing").status, 404);
}

#[test]
fn port_0_gives_each_worker_its_own_free_port() {
    let spool = Spool::new();
    let agent = agent(&spool);
    let d1 = Daemon::worker(&spool, "w1", &agent, &[("METRICS_PORT", "0")]);
    let d2 = Daemon::worker(&spool, "w2", &agent, &[("METRICS_PORT", "0")]);
    let a1 = metrics_addr(&spool, "w1", &d1);
    let a2 = metrics_addr(&spool, "w2", &d2);
    let port = |a: &str| a.parse::<SocketAddr>().unwrap().port();
    assert_ne!(port(&a1), 0, "{a1}");
    assert_ne!(port(&a2), 0, "{a2}");
    assert_ne!(a1, a2, "both workers report the same address");
    for (addr, worker) in [(&a1, "w1"), (&a2, "w2")] {
        let text = scrape(addr);
        assert!(
            value(&text, "watcher_active_tasks", &[("worker", worker)]).is_some(),
            "{addr} does not serve the metrics of {worker}:\n{text}"
        );
    }
}

#[test]
fn a_metrics_port_in_use_exits_69_naming_the_address() {
    let spool = Spool::new();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let port_s = port.to_string();
    let out = run_tool(&spool, "hw-worker", &[W], &[("METRICS_PORT", &port_s)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one stderr line:\n{stderr}");
    assert!(
        lines[0].contains(&format!("127.0.0.1:{port}")),
        "the line does not name 127.0.0.1:{port}: {}",
        lines[0]
    );
    drop(busy);
}

#[test]
fn metrics_listen_on_loopback_by_default() {
    let spool = Spool::new();
    let agent = agent(&spool);
    // Started by hand so METRICS_ADDR is surely unset.
    let child = Command::new(env!("CARGO_BIN_EXE_hw-worker"))
        .arg(W)
        .envs(base_env(&spool))
        .env_remove("METRICS_ADDR")
        .env_remove("ENABLE_METRICS")
        .env("CLAUDE_COMMAND", &agent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start hw-worker");
    let _guard = Spawned(child);
    let mut addr = None;
    let ok = wait_until(DEADLINE, || {
        addr = spool
            .heartbeat(W)
            .and_then(|h| h["metrics_addr"].as_str().map(String::from));
        addr.is_some()
    });
    assert!(ok, "no metrics_addr in the heartbeat within {DEADLINE:?}");
    let addr = addr.unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "metrics_addr {addr}");
    assert_eq!(get(&addr, "/livez").status, 200);
}

fn assert_no_listener(spool: &Spool, d: &Daemon) {
    let beat = first_heartbeat(spool, W, d);
    assert!(
        beat.get("metrics_addr").is_some_and(Value::is_null),
        "metrics_addr should be null: {beat}"
    );
}

#[test]
fn enable_metrics_false_starts_no_listener() {
    let spool = Spool::new();
    let agent = agent(&spool);
    let d = Daemon::worker(&spool, W, &agent, &[("ENABLE_METRICS", "false")]);
    assert_no_listener(&spool, &d);
}

#[test]
fn no_metrics_flag_starts_no_listener() {
    let spool = Spool::new();
    let agent = agent(&spool).display().to_string();
    let d = Daemon::start(
        &spool,
        "hw-worker",
        &["--no-metrics", W],
        &[("CLAUDE_COMMAND", agent.as_str())],
    );
    assert_no_listener(&spool, &d);
}

#[test]
fn scrapes_under_load_all_answer_while_tasks_complete() {
    const TASKS: usize = 50;
    const REQUESTS: usize = 200;
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "sleep 0.02; echo done");
    let d = Daemon::worker(&spool, W, &agent, &[]);
    let addr = metrics_addr(&spool, W, &d);
    for i in 0..TASKS {
        spool.drop_simple(W, &format!("t-{i:02}"), "work");
    }
    let barrier = Arc::new(Barrier::new(REQUESTS));
    let threads: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let addr = addr.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                http_get(&addr, "/metrics")
            })
        })
        .collect();
    let mut failures = Vec::new();
    for t in threads {
        match t.join().expect("request thread") {
            Ok(r) if r.status == 200 && r.body.contains("watcher_tasks_processed_total") => {}
            Ok(r) => failures.push(format!("status {} body {:?}", r.status, r.body)),
            Err(e) => failures.push(format!("error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} scrapes failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let deadline = Instant::now() + DEADLINE * 2;
    for i in 0..TASKS {
        let id = format!("t-{i:02}");
        let ok = wait_until(deadline.saturating_duration_since(Instant::now()), || {
            spool.result(W, &id).is_some()
        });
        assert!(ok, "no result for {id}; log:\n{}", d.log_text());
        assert_eq!(spool.result(W, &id).unwrap()["status"], "completed", "{id}");
    }
}

// ---------------------------------------------------------------------------
// Floods of connections.

/// The most connections the endpoint holds at once (hw-worker(8),
/// METRICS).
const CAP: usize = 64;

/// Sockets the process `pid` holds open.
fn sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `n` connections that never send a byte; those refused are left out
/// (a dead endpoint refuses them, which the caller finds out by scraping).
fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let sock: SocketAddr = addr.parse().unwrap();
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&sock, DEADLINE).ok())
        .collect()
}

/// Scrapes until one answers 200, retrying what fails; `None` if none did
/// within the deadline.
fn scrape_eventually(addr: &str) -> Option<String> {
    let mut body = None;
    wait_until(DEADLINE, || {
        body = http_get(addr, "/metrics")
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body);
        body.is_some()
    });
    body
}

#[test]
fn idle_connections_beyond_the_cap_take_no_descriptors_and_stop_neither_scrapes_nor_tasks() {
    let spool = Spool::new();
    let agent = agent(&spool);
    let d = Daemon::worker(&spool, W, &agent, &[]);
    let addr = metrics_addr(&spool, W, &d);
    // The listener, and signal-hook's socket pair.
    let before = sockets(d.pid());
    let flood = idle_connections(&addr, 300);
    assert_eq!(flood.len(), 300, "connections refused before any cap");
    spool.drop_simple(W, "during-flood", "work");
    let text = scrape_eventually(&addr);
    assert!(
        text.is_some_and(|t| t.contains("watcher_tasks_processed_total")),
        "no scrape answered while 300 idle connections were held; log:\n{}",
        d.log_text()
    );
    let held = sockets(d.pid()).saturating_sub(before);
    assert!(
        held <= CAP,
        "the worker holds {held} more sockets with 300 clients connected, more than {CAP}"
    );
    assert_eq!(spool.wait_result(W, "during-flood")["status"], "completed");
    drop(flood);
    assert_eq!(get(&addr, "/livez").status, 200);
}

#[test]
fn a_flood_beyond_the_open_files_limit_leaves_the_endpoint_serving_once_it_ends() {
    const LIMIT: u64 = 64;
    let spool = Spool::new();
    let agent = agent(&spool);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hw-worker"));
    cmd.arg(W)
        .envs(base_env(&spool))
        .env("CLAUDE_COMMAND", &agent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(spool.scratch("worker.log")).unwrap())
        .process_group(0);
    // SAFETY: setrlimit(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, LIMIT, LIMIT)
                .map_err(std::io::Error::from)
        });
    }
    let child = Spawned(cmd.spawn().expect("start hw-worker"));
    let pid = child.0.id() as i32;
    let log = || std::fs::read_to_string(spool.scratch("worker.log")).unwrap_or_default();
    let addr = wait_metrics_addr(&spool, W, log);
    let flood = idle_connections(&addr, 4 * LIMIT as usize);
    spool.drop_simple(W, "during-flood", "work");
    let ran = wait_until(DEADLINE, || spool.result(W, "during-flood").is_some());
    let held = sockets(pid);
    drop(flood);
    // The endpoint first: that it survives is the point of this test.
    let text = scrape_eventually(&addr);
    assert!(
        text.is_some_and(|t| t.contains("watcher_tasks_processed_total")),
        "the endpoint did not come back after the flood; log:\n{}",
        log()
    );
    assert_eq!(get(&addr, "/livez").status, 200);
    assert!(
        ran,
        "no result while the endpoint was flooded; log:\n{}",
        log()
    );
    assert_eq!(
        spool.result(W, "during-flood").unwrap()["status"],
        "completed"
    );
    assert!(
        held < LIMIT as usize / 2,
        "{held} sockets of {LIMIT} descriptors during the flood"
    );
}
