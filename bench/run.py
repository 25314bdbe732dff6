#!/usr/bin/env python3
"""bench/run.py: `make bench`, hookwatch against its peers on one machine, in one go.

Runs, on the same workload and the same spool protocol (bench/spoolbench.py):

  hw-worker            target/release/hw-worker --no-metrics bench, concurrency 2
  inotify_loop         bench/peers/inotify_loop.sh (inotifywait + jq), concurrency 1
                       (it is sequential); skipped when inotifywait is missing
  py_watchdog          bench/peers/py_watchdog_worker.py (watchdog + thread pool),
                       concurrency 2; skipped when `import watchdog` fails
  hw_nofsync           hw-worker --no-fsync, concurrency 2: what durability
                       costs (its ratio < 1 is the price of the fsyncs)

through these phases (the agent command is /bin/true, which ignores -p DESC):

  1. latency     200 tasks one at a time, enqueue (rename) -> result, p50/p90/p99
  2. throughput  2,000 tasks dropped at once, tasks/s until the last result
  3. backlog     10,000 and 100,000 tasks present before the worker starts
                 (peers: 10,000 only), tasks/s
  4. idle        CPU % and wake-ups/s over 10 s, RSS idle and peak (VmHWM)
  5. hw-enqueue  10,000 descriptions on stdin, tasks/s (median of 3)
  6. hw-listen   --once over 10,000 result files, seconds (median of 3)

(5 and 6 run first, on spools kept until the end: see docs/performance.md.)

then prints one table (rows: metrics, columns: workers, with a ratio to
hookwatch per peer, >1 meaning hookwatch is better) and writes the same as
JSON lines to bench/results/latest.jsonl (--out).  --quick: latency 50,
throughput 500, backlog 2,000 only, enqueue/listen 2,000, idle window 3 s.

It builds nothing (`make bench` depends on `make build`).  Python 3.11
standard library only.  Every wait is bounded: each spoolbench phase by its
--timeout/--stall, each run of spoolbench by a wall-clock limit after which
it is interrupted (SIGINT, so it stops its worker) and then killed; every
hw-enqueue/hw-listen run by a timeout.  Temporary spools are removed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HW = "hw-worker"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# running spoolbench
# --------------------------------------------------------------------------
def run_spoolbench(label: str, argv: list[str], wall_limit: float, logf) -> list[dict]:
    """Runs spoolbench.py with argv; returns its JSON records.  Its progress
    lines are echoed; everything it prints on stderr goes to logf."""
    cmd = [sys.executable, os.path.join(HERE, "spoolbench.py"), "--peer-name", label] + argv
    logf.write(f"\n$ {' '.join(cmd)}\n")
    logf.flush()
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

        def pump() -> None:
            for line in p.stderr:
                logf.write(line)
                if line.startswith("[spoolbench") or line.startswith("    |"):
                    sys.stderr.write(f"  {label}: {line}")
                    sys.stderr.flush()

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            p.wait(timeout=wall_limit)
        except subprocess.TimeoutExpired:
            # SIGINT makes spoolbench unwind through its finally: it stops its worker.
            log(f"{label}: still running after {wall_limit:.0f} s, interrupting it")
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        except KeyboardInterrupt:
            p.send_signal(signal.SIGINT)  # it got one too; make sure, then wait for its cleanup
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            raise
        t.join(timeout=5)
        out.seek(0)
        recs = []
        for line in out:
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
        if p.returncode not in (0, None):
            log(f"{label}: spoolbench exited with {p.returncode}")
        return recs


# --------------------------------------------------------------------------
# hw-enqueue and hw-listen
# --------------------------------------------------------------------------
def bench_enqueue(bindir: str, n: int, runs: int, base: str) -> dict:
    """hw-enqueue WORKER < n lines, fresh spool each run; wall time."""
    lines = "".join(f"benchmark task {i}: do nothing\n" for i in range(n)).encode()
    times, bad = [], []
    for r in range(runs):
        root = tempfile.mkdtemp(prefix="enq-", dir=base)  # removed with base, at the end
        try:
            t0 = time.monotonic()
            p = subprocess.run([os.path.join(bindir, "hw-enqueue"), "-r", root, "bench"], input=lines,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
            dt = time.monotonic() - t0
            ids = p.stdout.split()
            files = [f for f in os.listdir(os.path.join(root, "tasks", "bench")) if f.endswith(".json")]
            if p.returncode != 0 or len(ids) != n or len(files) != n:
                bad.append(f"run {r + 1}: exit {p.returncode}, {len(ids)} ids, {len(files)} files, "
                           f"stderr {p.stderr[-200:]!r}")
            else:
                times.append(dt)
        except subprocess.TimeoutExpired:
            bad.append(f"run {r + 1}: no exit within 300 s (killed)")
    for b in bad:
        log(f"hw-enqueue: {b}")
    return {"times": times, "bad": bad}


RESULT = ('{{"task_id":"{id}","worker":"bench","status":"completed","exit_code":0,"stdout":"ok\\n",'
          '"stderr":"","duration_seconds":0.0021,"timestamp":"2026-11-28T10:30:00.000Z",'
          '"retry_count":0,"metadata":{{}}}}\n')


def bench_listen(bindir: str, n: int, runs: int, base: str) -> dict:
    """hw-listen --once over n hand-written result files, fresh spool and state each run."""
    times, bad, events = [], [], []
    for r in range(runs):
        root = tempfile.mkdtemp(prefix="lst-", dir=base)  # removed with base, at the end
        try:
            rdir = os.path.join(root, "results", "bench")
            os.makedirs(rdir)
            for d in ("tasks/bench", "dlq/bench", "heartbeats", "triggers/orchestrator"):
                os.makedirs(os.path.join(root, d))
            for i in range(n):
                tid = f"res-{i:06d}"
                with open(os.path.join(rdir, f"{tid}.json"), "w") as f:
                    f.write(RESULT.format(id=tid))
            t0 = time.monotonic()
            p = subprocess.run([os.path.join(bindir, "hw-listen"), "-r", root, "--once"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
            dt = time.monotonic() - t0
            done = sum(1 for ln in p.stdout.splitlines() if b'"task_completed"' in ln)
            events.append(done)
            if p.returncode != 0 or done != n:
                bad.append(f"run {r + 1}: exit {p.returncode}, {done} task_completed events of {n}, "
                           f"stderr {p.stderr[-200:]!r}")
            else:
                times.append(dt)
        except subprocess.TimeoutExpired:
            bad.append(f"run {r + 1}: no exit within 300 s (killed)")
    for b in bad:
        log(f"hw-listen: {b}")
    return {"times": times, "bad": bad, "events": events}


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------
# (row label, metric key in the records, unit, better: "lower" | "higher" | None)
ROWS = [
    ("latency p50", "latency_p50_ms", "ms", "lower"),
    ("latency p90", "latency_p90_ms", "ms", "lower"),
    ("latency p99", "latency_p99_ms", "ms", "lower"),
    ("throughput {tasks}", "throughput_tasks_per_s", "tasks/s", "higher"),
    ("backlog {b1}", "backlog1_tasks_per_s", "tasks/s", "higher"),
    ("backlog {b2}", "backlog2_tasks_per_s", "tasks/s", "higher"),
    ("idle CPU (schedstat)", "idle_cpu_percent_schedstat", "%", "lower"),
    ("idle wake-ups", "idle_wakeups_per_s", "1/s", "lower"),
    ("RSS idle", "rss_idle_mib", "MiB", "lower"),
    ("RSS peak (burst {tasks})", "hwm_after_throughput_mib", "MiB", "lower"),
    ("RSS peak (backlog {b1})", "hwm_after_backlog1_mib", "MiB", "lower"),
    ("RSS peak (backlog {b2})", "hwm_after_backlog2_mib", "MiB", "lower"),
    ("start -> first result", "startup_first_result_ms", "ms", "lower"),
    ("hw-enqueue {enq} lines", "hw_enqueue_tasks_per_s", "tasks/s", None),
    ("hw-listen --once {lst}", "hw_listen_once_s", "s", None),
    ("tasks lost (all phases)", "tasks_lost_total", "tasks", None),
    ("results not completed", "results_not_completed_total", "tasks", None),
]


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:,}"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(hw, peer, better):
    """How many times better hookwatch is: peer/hw for lower-is-better, hw/peer for higher."""
    if better is None or not isinstance(hw, (int, float)) or not isinstance(peer, (int, float)):
        return None
    num, den = (peer, hw) if better == "lower" else (hw, peer)
    if den == 0:
        return "=" if num == 0 else "inf"
    return num / den


def fmt_ratio(r) -> str:
    if r is None:
        return "-"
    if isinstance(r, str):
        return r
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer tasks, 3 s idle window")
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "release"),
                    help="where hw-worker, hw-enqueue, hw-listen are (default target/release)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.jsonl"), help="JSON lines output")
    ap.add_argument("--peers", default="inotify_loop,py_watchdog,hw_nofsync",
                    help="peers to run, comma-separated (default inotify_loop,py_watchdog,hw_nofsync; "
                         "'' for none)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="spoolbench's per-phase limit, s (default 120; the 100,000 backlog gets 10x)")
    ap.add_argument("--base", default=None, help="folder for the temporary spools (default: system temp dir)")
    a = ap.parse_args(argv)

    q = a.quick
    cfg = {
        "latency_tasks": 50 if q else 200,
        "tasks": 500 if q else 2000,
        "backlogs_hw": [2000] if q else [10000, 100000],
        "backlog_peers": 2000 if q else 10000,
        "idle_window": 3.0 if q else 10.0,
        "enqueue_n": 2000 if q else 10000,
        "listen_n": 2000 if q else 10000,
        "runs": 3,
        "concurrency": {HW: 2, "inotify_loop": 1, "py_watchdog": 2, "hw_nofsync": 2},
        "agent": "/bin/true",
    }
    bindir = os.path.abspath(a.bin_dir)
    for b in ("hw-worker", "hw-enqueue", "hw-listen"):
        if not os.access(os.path.join(bindir, b), os.X_OK):
            print(f"bench: {bindir}/{b} not built; run `make build` (or `make bench`, which does)", file=sys.stderr)
            return 1
    agent = cfg["agent"] if os.access(cfg["agent"], os.X_OK) else (shutil.which("true") or "true")
    cfg["agent"] = agent

    # ---- which workers run --------------------------------------------------
    workers = [(HW, f"exec {sh(os.path.join(bindir, 'hw-worker'))} --no-metrics bench")]
    skipped = {}
    wanted = [p for p in a.peers.split(",") if p]
    if "inotify_loop" in wanted:
        if shutil.which("inotifywait"):
            workers.append(("inotify_loop", f"exec bash {sh(os.path.join(HERE, 'peers', 'inotify_loop.sh'))} bench"))
        else:
            skipped["inotify_loop"] = "inotifywait not found (apt-get install inotify-tools, or make bench-deps)"
    if "py_watchdog" in wanted:
        chk = subprocess.run([sys.executable, "-c", "import watchdog"], capture_output=True, timeout=60)
        if chk.returncode == 0:
            workers.append(("py_watchdog",
                            f"exec {sh(sys.executable)} {sh(os.path.join(HERE, 'peers', 'py_watchdog_worker.py'))} bench"))
        else:
            skipped["py_watchdog"] = f"{sys.executable} cannot import watchdog (pip install watchdog, or make bench-deps)"
    if "hw_nofsync" in wanted:
        workers.append(("hw_nofsync", f"exec {sh(os.path.join(bindir, 'hw-worker'))} --no-metrics --no-fsync bench"))
    for name, why in skipped.items():
        log(f"skipping peer {name}: {why}")

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    logpath = os.path.splitext(os.path.abspath(a.out))[0] + ".log"
    base = tempfile.mkdtemp(prefix="hw-bench-", dir=a.base)
    started = time.monotonic()
    values: dict[str, dict[str, object]] = {w: {} for w, _ in workers}
    raw: list[dict] = []
    try:
        # The command-line tools first, and their spools kept until the end: file
        # creation is measured before the worker phases have deleted 100,000s of
        # files (see "file creation" in docs/performance.md).
        log(f"hw-enqueue: {cfg['enqueue_n']:,} descriptions on stdin, {cfg['runs']} runs")
        enq = bench_enqueue(bindir, cfg["enqueue_n"], cfg["runs"], base)
        log(f"hw-listen --once: {cfg['listen_n']:,} result files, {cfg['runs']} runs")
        lst = bench_listen(bindir, cfg["listen_n"], cfg["runs"], base)
        with open(logpath, "w") as logf:
            for w, cmd in workers:
                common = ["--worker-cmd", cmd, "--concurrency", str(cfg["concurrency"][w]),
                          "--claude-command", agent, "--base", base, "--timeout", str(a.timeout)]
                phases = ["--latency-tasks", str(cfg["latency_tasks"]), "--tasks", str(cfg["tasks"]),
                          "--idle-window", str(cfg["idle_window"])]
                log(f"{w}: idle, latency, throughput ({cfg['latency_tasks']} + {cfg['tasks']} tasks)")
                limit = 3 * a.timeout + cfg["idle_window"] + 120
                recs = run_spoolbench(w, common + phases, limit, logf)
                raw += recs
                absorb(values[w], recs, "")
                backlogs = cfg["backlogs_hw"] if w == HW else [cfg["backlog_peers"]]
                for i, n in enumerate(backlogs, 1):
                    tmo = a.timeout * (10 if n > 10000 else 1)
                    log(f"{w}: backlog of {n:,} tasks (limit {tmo:.0f} s)")
                    recs = run_spoolbench(w, common[:-1] + [str(tmo), "--only", "backlog", "--backlog", str(n)],
                                          tmo + 300, logf)
                    for r in recs:
                        r["metric"] = f"backlog{i}_" + r["metric"].removeprefix("backlog_")
                    raw += recs
                    absorb(values[w], recs, f"backlog{i}_")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    hwv = values[HW]
    if enq["times"]:
        med = statistics.median(enq["times"])
        hwv["hw_enqueue_s"] = med
        hwv["hw_enqueue_tasks_per_s"] = cfg["enqueue_n"] / med
    if lst["times"]:
        hwv["hw_listen_once_s"] = statistics.median(lst["times"])
    for label, vals in (("hw_enqueue", enq), ("hw_listen_once", lst)):
        raw.append({"peer": HW, "metric": f"{label}_runs_s", "value": [round(t, 4) for t in vals["times"]],
                    "unit": "s"})
        raw.append({"peer": HW, "metric": f"{label}_failed_runs", "value": len(vals["bad"]), "unit": "runs"})
    raw.append({"peer": HW, "metric": "hw_enqueue_tasks_per_s", "value": r4(hwv.get("hw_enqueue_tasks_per_s")),
                "unit": "tasks/s"})
    raw.append({"peer": HW, "metric": "hw_listen_once_s", "value": r4(hwv.get("hw_listen_once_s")), "unit": "s"})

    # ---- the table --------------------------------------------------------
    names = [w for w, _ in workers]
    peers = names[1:]
    fill = {"tasks": f"{cfg['tasks']:,}", "b1": f"{cfg['backlogs_hw'][0]:,}",
            "b2": f"{cfg['backlogs_hw'][1]:,}" if len(cfg["backlogs_hw"]) > 1 else "",
            "enq": f"{cfg['enqueue_n']:,}", "lst": f"{cfg['listen_n']:,}"}
    table_rows = []
    for label, key, unit, better in ROWS:
        if key.startswith(("backlog2_", "hwm_after_backlog2_")) and not fill["b2"]:
            continue
        row_vals = {w: values[w].get(key) for w in names}
        shown = {w: values[w].get(key + "_shown", row_vals[w]) for w in names}
        ratios = {p: ratio(row_vals[HW], row_vals[p], better) for p in peers}
        table_rows.append({"label": label.format(**fill), "metric": key, "unit": unit, "better": better,
                           "values": row_vals, "shown": shown, "ratios": ratios})

    header = ["metric", "unit", HW]
    for p in peers:
        header += [p, "ratio"]
    lines = [header]
    for tr in table_rows:
        cells = [tr["label"], tr["unit"], fmt(tr["shown"][HW])]
        for p in peers:
            cells += [fmt(tr["shown"][p]), fmt_ratio(tr["ratios"][p])]
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    elapsed = time.monotonic() - started
    out = sys.stdout
    conc = ", ".join(f"{w} {cfg['concurrency'][w]}" for w in names)
    print(f"\nhookwatch bench{' --quick' if q else ''}: {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{os.cpu_count()} CPUs, agent {agent}, concurrency: {conc} (inotify_loop is sequential); "
          f"{elapsed / 60:.1f} min", file=out)
    print("ratio = how many times better hookwatch is: peer/hookwatch for times, CPU, wake-ups and memory, "
          "hookwatch/peer for rates; >1 = hookwatch better", file=out)
    for i, r in enumerate(lines):
        print("  ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(r)), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=out)
    for w in names:
        for note in values[w].get("notes", []):
            print(f"note: {w}: {note}", file=out)
    if enq["bad"] or lst["bad"]:
        print(f"note: failed runs: hw-enqueue {len(enq['bad'])}, hw-listen {len(lst['bad'])} (see above)", file=out)

    # ---- JSON lines ---------------------------------------------------------
    meta = {"kind": "meta", "date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": q,
            "cpus": os.cpu_count(), "elapsed_s": round(elapsed, 1), "config": cfg,
            "workers": {w: c.replace(REPO + os.sep, "") for w, c in workers}, "skipped": skipped}
    with open(a.out, "w") as f:
        f.write(json.dumps(meta) + "\n")
        for tr in table_rows:
            f.write(json.dumps({"kind": "row", **{k: tr[k] for k in ("label", "metric", "unit", "better")},
                                "values": {w: r4(v) for w, v in tr["values"].items()},
                                **({"shown": tr["shown"]} if tr["shown"] != tr["values"] else {}),
                                "ratios": {p: r4(v) for p, v in tr["ratios"].items()}}) + "\n")
        for r in raw:
            f.write(json.dumps({"kind": "raw", **r}) + "\n")
    print(f"\nJSON lines: {a.out}\nspoolbench output: {logpath}", file=out)
    lost = values[HW].get("tasks_lost_total") or values[HW].get("results_not_completed_total")
    return 1 if (lost or enq["bad"] or lst["bad"] or values[HW].get("latency_p50_ms") is None) else 0


def r4(v):
    return round(v, 4) if isinstance(v, float) else v


def sh(s: str) -> str:
    return shlex.quote(s)


def absorb(v: dict, recs: list[dict], prefix: str) -> None:
    """Folds one spoolbench run's records into a worker's table values
    (prefix "": the idle/latency/throughput run; "backlogN_": a backlog run)."""
    m = {r["metric"]: r["value"] for r in recs}

    def rate(key: str, done_key: str, sent_key: str, what: str) -> None:
        if key not in m:
            return
        if m[key] is not None:
            v[key] = m[key]
            return
        done, sent = m.get(done_key) or 0, m.get(sent_key) or 0
        v[key + "_shown"] = f"unfinished {done:,}/{sent:,}"
        v.setdefault("notes", []).append(f"{what} of {sent:,}: only {done:,} results before spoolbench "
                                         f"gave up (phase timeout or stall), so no rate")

    if not prefix:
        for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
                  "idle_cpu_percent_schedstat", "idle_wakeups_per_s"):
            if k in m:
                v[k] = m[k]
        if m.get("startup_first_result_s") is not None:
            v["startup_first_result_ms"] = m["startup_first_result_s"] * 1000.0
        if m.get("rss_idle_kib") is not None:
            v["rss_idle_mib"] = m["rss_idle_kib"] / 1024.0
        if m.get("hwm_after_throughput_kib") is not None:
            v["hwm_after_throughput_mib"] = m["hwm_after_throughput_kib"] / 1024.0
        rate("throughput_tasks_per_s", "throughput_done_before_giveup", "throughput_tasks_sent", "throughput")
        if m.get("startup_first_result_s", 0) is None:
            v.setdefault("notes", []).append("the warm-up task got no result")
    else:
        rate(f"{prefix}tasks_per_s", f"{prefix}done_before_giveup", f"{prefix}tasks", "backlog")
        if m.get(f"{prefix}hwm_after_backlog_kib") is not None:
            v[f"hwm_after_{prefix}mib"] = m[f"{prefix}hwm_after_backlog_kib"] / 1024.0
    v["tasks_lost_total"] = v.get("tasks_lost_total", 0) + sum(
        r["value"] or 0 for r in recs if r["metric"].endswith("_tasks_lost"))
    v["results_not_completed_total"] = v.get("results_not_completed_total", 0) + sum(
        r["value"] or 0 for r in recs if r["metric"].endswith("_results_not_completed"))


if __name__ == "__main__":
    sys.exit(main())
