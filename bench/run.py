#!/usr/bin/env python3
"""bench/run.py: `make bench`, hookwatch against its peers on one machine, in one go.

Runs, on the same workload and the same spool protocol (bench/spoolbench.py):

  hw-worker            target/release/hw-worker --no-metrics bench, concurrency 2
  inotify_loop         bench/peers/inotify_loop.sh (inotifywait + jq), concurrency 1
                       (it is sequential); skipped when inotifywait is missing
  py_watchdog          bench/peers/py_watchdog_worker.py (watchdog + thread pool),
                       concurrency 2; skipped when `import watchdog` fails
  hw_noreceipts        hw-worker --no-receipts, concurrency 2: fully durable,
                       one file per task like the peers (no receipt)
  hw_nofsync           hw-worker --no-fsync, concurrency 2: what durability
                       costs (its ratio < 1 is the price of the fsyncs)
  --column L=CMD       any other worker command (another build, a flag), for A/B

in alternated rounds (A B C A B C ...: the disk's state drifts within minutes,
so running one column after another would favour one of them), each round on
the disk (the system's temp dir, --base) and then on a tmpfs (--tmpfs,
default /dev/shm), through these phases (the agent is /bin/true, which
ignores -p DESC):

  0. floor       the machine's floor, measured from Python at the start of each
                 round on each file system: posix_spawn+wait of the agent, a
                 durable publish (create, write 300 B, fsync, rename, fsync
                 the folder), the same without fsyncs, and a task's floor:
                 spawn + one durable publish (2 processes in parallel)
  1. latency     200 tasks one at a time, enqueue (rename) -> result, p50/p90/p99
  2. throughput  2,000 tasks dropped at once, tasks/s until the last result
  3. backlog     10,000 tasks present before the worker starts, tasks/s
                 (hw-worker also 100,000, once, on the disk; --big-backlog)
  4. idle        CPU % and wake-ups/s over 10 s, RSS idle and peak (VmHWM),
                 in the first round
  5. hw-enqueue  10,000 descriptions on stdin, tasks/s (3 runs, first)
  6. hw-listen   --once over 10,000 result files, seconds (3 runs, first)

The order of the columns turns by one each round (A B C, B C A, C A B).
After the first round, py_watchdog skips its latency phase (0.5 s a task) and
inotify_loop is not run again (minutes a run, 10-20x behind); inotify_loop
runs no backlog (27 tasks/s: 10,000 do not finish within 120 s).  The table shows
each cell as median (min-max) over the rounds, and per peer the ratio to
hookwatch taken within each round (>1 meaning hookwatch is better; a minimum
above 1 means better in every round).  The same goes as JSON lines to
bench/results/latest.jsonl (--out).  --quick: 2 rounds, latency 50,
throughput 500, backlog 2,000, enqueue/listen 2,000, idle window 3 s.

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
# the machine's floor
# --------------------------------------------------------------------------
BODY = b'{"task_id":"floor","worker":"bench","status":"completed","exit_code":0,"stdout":"","stderr":"",' \
       b'"duration_seconds":0.001,"timestamp":"2026-11-28T10:30:00.000Z","retry_count":0,"metadata":{}}\n'
BODY = BODY + b" " * max(0, 300 - len(BODY))


def _publish(d: int, dpath: str, i: int, durable: bool) -> None:
    """One file the way a worker publishes it: create a dot-file, write
    300 bytes, (fsync,) rename into place, (fsync the folder)."""
    tmp, name = f".{i}.tmp", f"{i}.json"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640, dir_fd=d)
    try:
        os.write(fd, BODY)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
    if durable:
        os.fsync(d)


def _spawn(agent: str) -> None:
    pid = os.posix_spawn(agent, [agent, "-p", "floor"], {})
    os.waitpid(pid, 0)


def _floor_loop(kind: str, agent: str, folder: str, first: int, n: int) -> float:
    """n operations of one kind in folder; returns the seconds taken."""
    d = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.monotonic()
        for i in range(first, first + n):
            if kind in ("spawn", "task", "task_nofsync"):
                _spawn(agent)
            if kind in ("publish", "task"):
                _publish(d, folder, i, True)
            elif kind in ("publish_nofsync", "task_nofsync"):
                _publish(d, folder, i, False)
        return time.monotonic() - t0
    finally:
        os.close(d)


def _floor_child(args) -> float:
    return _floor_loop(*args)


def measure_floor(agent: str, base: str, n: int) -> dict:
    """The floor on the file system of `base`, from Python (so a little above
    what a compiled worker pays): per second, 2 processes in parallel (the
    concurrency of the bench), and per operation, one process alone.
      spawn            posix_spawn + wait of the agent
      publish          create + write 300 B + fsync + rename + fsync(folder)
      publish_nofsync  the same without the two fsyncs
      task             spawn + one durable publish: a task with a durable result
      task_nofsync     spawn + create + rename"""
    import multiprocessing
    out = {}
    ctx = multiprocessing.get_context("fork")
    for kind in ("spawn", "publish", "publish_nofsync", "task", "task_nofsync"):
        folder = tempfile.mkdtemp(prefix=f"floor-{kind}-", dir=base)
        try:
            alone = _floor_loop(kind, agent, folder, 0, max(50, n // 4))
            out[f"floor_{kind}_ms"] = 1000.0 * alone / max(50, n // 4)
            with ctx.Pool(2) as pool:
                t0 = time.monotonic()
                pool.map(_floor_child, [(kind, agent, folder, 10**6, n // 2), (kind, agent, folder, 2 * 10**6, n // 2)])
                wall = time.monotonic() - t0
            out[f"floor_{kind}_per_s"] = n / wall
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def fs_type(path: str) -> str:
    """The type of the file system holding path (/proc/self/mountinfo)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, right.split()[0]
    except OSError:
        pass
    return kind


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------
# (row label, metric key, unit, better: "lower" | "higher" | None)
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
    ("tasks lost (all phases)", "tasks_lost_total", "tasks", None),
    ("results not completed", "results_not_completed_total", "tasks", None),
    ("floor: spawn, 2 parallel", "floor_spawn_per_s", "1/s", None),
    ("floor: durable publish", "floor_publish_per_s", "1/s", None),
    ("floor: create+rename", "floor_publish_nofsync_per_s", "1/s", None),
    ("floor: task (spawn+durable)", "floor_task_per_s", "tasks/s", None),
    ("floor: task, no fsync", "floor_task_nofsync_per_s", "tasks/s", None),
    ("floor: one task alone", "floor_task_ms", "ms", None),
    ("throughput / floor task", "throughput_of_floor", "%", None),
    ("latency p50 - floor alone", "latency_over_floor_ms", "ms", None),
]
TOOL_ROWS = [
    ("hw-enqueue {enq} lines", "hw_enqueue_tasks_per_s", "tasks/s"),
    ("hw-listen --once {lst}", "hw_listen_once_s", "s"),
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


def spread(vals: list, f=fmt) -> str:
    """median (min-max) of the rounds' values; a lone value as is."""
    xs = [v for v in vals if isinstance(v, (int, float))]
    if not xs:
        strs = [v for v in vals if isinstance(v, str)]
        return strs[0] if strs else "-"
    med = statistics.median(xs)
    if isinstance(xs[0], int) and all(isinstance(x, int) for x in xs):
        med = int(med) if med == int(med) else med
    if len(xs) == 1 or min(xs) == max(xs):
        return f(med)
    return f"{f(med)} ({f(min(xs))}-{f(max(xs))})"


def ratio(hw, peer, better):
    """How many times better hookwatch is: peer/hw for lower-is-better, hw/peer for higher."""
    if better is None or not isinstance(hw, (int, float)) or not isinstance(peer, (int, float)):
        return None
    num, den = (peer, hw) if better == "lower" else (hw, peer)
    if den == 0:
        return None
    return num / den


def fmt_ratio(r) -> str:
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def per_round_ratios(hw: list, peer: list, better) -> list:
    """The ratio within each round both were measured in: a peer is beaten
    in every round when the smallest of these is above 1."""
    out = []
    for h, p in zip(hw, peer):
        r = ratio(h, p, better)
        if r is not None:
            out.append(r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer tasks, 2 rounds, 3 s idle window")
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "release"),
                    help="where hw-worker, hw-enqueue, hw-listen are (default target/release)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.jsonl"), help="JSON lines output")
    ap.add_argument("--peers", default="inotify_loop,py_watchdog,hw_noreceipts,hw_nofsync",
                    help="peers to run, comma-separated (default inotify_loop,py_watchdog,hw_noreceipts,hw_nofsync; "
                         "'' for none)")
    ap.add_argument("--column", action="append", default=[], metavar="LABEL=COMMAND",
                    help="one more column, a worker command taking the spool from the environment "
                         "(e.g. another build: 'old=exec /path/hw-worker --no-metrics bench'); repeatable")
    ap.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 3, --quick 2)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="spoolbench's per-phase limit, s (default 120; the 100,000 backlog gets 10x)")
    ap.add_argument("--base", default=None, help="the disk folder for the spools (default: system temp dir)")
    ap.add_argument("--tmpfs", default="/dev/shm",
                    help="a tmpfs folder for the second set of spools (default /dev/shm; '' for none)")
    ap.add_argument("--no-tools", action="store_true", help="skip the hw-enqueue and hw-listen runs")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor measurements")
    ap.add_argument("--no-backlog", action="store_true", help="skip the backlog phases")
    ap.add_argument("--big-backlog", type=int, default=100000,
                    help="hw-worker's second backlog, once, on the disk (default 100,000; 0 for none)")
    a = ap.parse_args(argv)

    q = a.quick
    rounds = a.rounds or (2 if q else 3)
    cfg = {
        "latency_tasks": 50 if q else 200,
        "tasks": 500 if q else 2000,
        "backlog": 2000 if q else 10000,
        "backlog_big": None if q or not a.big_backlog else a.big_backlog,
        "idle_window": 3.0 if q else 10.0,
        "enqueue_n": 2000 if q else 10000,
        "listen_n": 2000 if q else 10000,
        "floor_n": 300 if q else 1000,
        "runs": 3,
        "rounds": rounds,
        "concurrency": {HW: 2, "inotify_loop": 1, "py_watchdog": 2, "hw_noreceipts": 2, "hw_nofsync": 2},
        "agent": "/bin/true",
    }
    bindir = os.path.abspath(a.bin_dir)
    for b in ("hw-worker", "hw-enqueue", "hw-listen"):
        if not os.access(os.path.join(bindir, b), os.X_OK):
            print(f"bench: {bindir}/{b} not built; run `make build` (or `make bench`, which does)", file=sys.stderr)
            return 1
    agent = cfg["agent"] if os.access(cfg["agent"], os.X_OK) else (shutil.which("true") or "true")
    cfg["agent"] = agent

    # ---- which workers run, and how often ------------------------------------
    # (name, command, what it runs after the first round).  In the first round
    # every worker runs every phase.  After it, the slow peers run only what
    # they are close on: py_watchdog's latency (0.5 s a task, 100 s a run) and
    # the whole of inotify_loop (minutes a run, 10-20x behind) are measured once.
    workers = [(HW, f"exec {sh(os.path.join(bindir, 'hw-worker'))} --no-metrics bench", "all")]
    skipped = {}
    wanted = [p for p in a.peers.split(",") if p]
    if "inotify_loop" in wanted:
        if shutil.which("inotifywait"):
            workers.append(("inotify_loop", f"exec bash {sh(os.path.join(HERE, 'peers', 'inotify_loop.sh'))} bench",
                            "none"))
        else:
            skipped["inotify_loop"] = "inotifywait not found (apt-get install inotify-tools, or make bench-deps)"
    if "py_watchdog" in wanted:
        chk = subprocess.run([sys.executable, "-c", "import watchdog"], capture_output=True, timeout=60)
        if chk.returncode == 0:
            workers.append(("py_watchdog",
                            f"exec {sh(sys.executable)} {sh(os.path.join(HERE, 'peers', 'py_watchdog_worker.py'))} bench",
                            "batch"))
        else:
            skipped["py_watchdog"] = f"{sys.executable} cannot import watchdog (pip install watchdog, or make bench-deps)"
    if "hw_noreceipts" in wanted:
        workers.append(("hw_noreceipts",
                        f"exec {sh(os.path.join(bindir, 'hw-worker'))} --no-metrics --no-receipts bench", "all"))
    if "hw_nofsync" in wanted:
        workers.append(("hw_nofsync", f"exec {sh(os.path.join(bindir, 'hw-worker'))} --no-metrics --no-fsync bench",
                        "all"))
    for c in a.column:
        label, _, cmd = c.partition("=")
        if not label or not cmd:
            print(f"bench: --column wants LABEL=COMMAND, not {c!r}", file=sys.stderr)
            return 2
        workers.append((label, cmd, "all"))
        cfg["concurrency"].setdefault(label, 2)
    for name, why in skipped.items():
        log(f"skipping peer {name}: {why}")

    disk = os.path.abspath(a.base or tempfile.gettempdir())
    fses = [("disk", disk)]
    if a.tmpfs:
        if fs_type(a.tmpfs) == "tmpfs":
            fses.append(("tmpfs", os.path.abspath(a.tmpfs)))
        else:
            skipped["tmpfs"] = f"{a.tmpfs} is not a tmpfs ({fs_type(a.tmpfs)})"
            log(f"skipping the tmpfs set: {skipped['tmpfs']}")

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    logpath = os.path.splitext(os.path.abspath(a.out))[0] + ".log"
    bases = {fs: tempfile.mkdtemp(prefix="hw-bench-", dir=d) for fs, d in fses}
    started = time.monotonic()
    names = [w for w, _, _ in workers]
    # values[fs][worker][metric] = one value per round (None: not measured)
    values = {fs: {w: {} for w in names} for fs, _ in fses}
    notes: list[str] = []
    raw: list[dict] = []

    def put(fs: str, w: str, rnd: int, key: str, v) -> None:
        vals = values[fs][w].setdefault(key, [None] * rounds)
        vals[rnd] = v

    enq = lst = {"times": [], "bad": []}
    try:
        # The command-line tools first, on the disk, and their spools kept until
        # the end: file creation is measured before the worker phases have deleted
        # 100,000s of files (see "file creation" in docs/performance.md).
        if not a.no_tools:
            log(f"hw-enqueue: {cfg['enqueue_n']:,} descriptions on stdin, {cfg['runs']} runs")
            enq = bench_enqueue(bindir, cfg["enqueue_n"], cfg["runs"], bases["disk"])
            log(f"hw-listen --once: {cfg['listen_n']:,} result files, {cfg['runs']} runs")
            lst = bench_listen(bindir, cfg["listen_n"], cfg["runs"], bases["disk"])
        with open(logpath, "w") as logf:
            for rnd in range(rounds):
                for fs, _ in fses:
                    base = bases[fs]
                    if not a.no_floor:
                        log(f"round {rnd + 1}/{rounds}, {fs}: the floor")
                        fl = measure_floor(agent, base, cfg["floor_n"])
                        for k, v in fl.items():
                            put(fs, HW, rnd, k, v)
                            raw.append({"peer": "floor", "fs": fs, "round": rnd + 1, "metric": k,
                                        "value": r4(v), "unit": "ms" if k.endswith("_ms") else "1/s"})
                    # The order turns by one each round (A B C, B C A, C A B): a
                    # column's place in the round changes what the disk is left
                    # with by the one before, so no column keeps one place.
                    active = [w for w in workers if rnd == 0 or w[2] != "none"]
                    k = rnd % len(active)
                    for w, cmd, later in active[k:] + active[:k]:
                        run_unit(a, cfg, w, cmd, later, rnd, fs, base, logf, put, raw, notes)
                    if rnd == 0 and fs == "disk" and cfg["backlog_big"] and not a.no_backlog:
                        n = cfg["backlog_big"]
                        tmo = a.timeout * 10
                        log(f"{HW}: backlog of {n:,} tasks on {fs} (limit {tmo:.0f} s)")
                        cmd = workers[0][1]
                        common = ["--worker-cmd", cmd, "--concurrency", "2", "--claude-command", agent,
                                  "--base", base, "--timeout", str(tmo)]
                        recs = run_spoolbench(HW, common + ["--only", "backlog", "--backlog", str(n)], tmo + 300, logf)
                        absorb(lambda k, v: put(fs, HW, rnd, k, v), recs, "backlog2_", notes, f"{HW} on {fs}")
                        for r in recs:
                            raw.append({**r, "fs": fs, "round": rnd + 1,
                                        "metric": "backlog2_" + r["metric"].removeprefix("backlog_")})
    finally:
        for b in bases.values():
            shutil.rmtree(b, ignore_errors=True)

    # ---- derived rows -----------------------------------------------------------
    for fs, _ in fses:
        for w in names:
            wv = values[fs][w]
            for total, part in (("tasks_lost_total", "lost"), ("results_not_completed_total", "not_completed")):
                for rnd in range(rounds):
                    xs = [wv[k][rnd] for k in wv if k.endswith("_" + part) and wv[k][rnd] is not None]
                    if xs:
                        put(fs, w, rnd, total, sum(xs))
        hv = values[fs][HW]
        for rnd in range(rounds):
            thr = (hv.get("throughput_tasks_per_s") or [None] * rounds)[rnd]
            fl = (hv.get("floor_task_per_s") or [None] * rounds)[rnd]
            if isinstance(thr, (int, float)) and isinstance(fl, (int, float)) and fl:
                put(fs, HW, rnd, "throughput_of_floor", 100.0 * thr / fl)
            p50 = (hv.get("latency_p50_ms") or [None] * rounds)[rnd]
            alone = (hv.get("floor_task_ms") or [None] * rounds)[rnd]
            if isinstance(p50, (int, float)) and isinstance(alone, (int, float)):
                put(fs, HW, rnd, "latency_over_floor_ms", p50 - alone)

    tools = {}
    if enq["times"]:
        tools["hw_enqueue_tasks_per_s"] = [cfg["enqueue_n"] / t for t in enq["times"]]
    if lst["times"]:
        tools["hw_listen_once_s"] = list(lst["times"])
    for label, vals in (("hw_enqueue", enq), ("hw_listen_once", lst)):
        raw.append({"peer": HW, "metric": f"{label}_runs_s", "value": [round(t, 4) for t in vals["times"]],
                    "unit": "s"})
        raw.append({"peer": HW, "metric": f"{label}_failed_runs", "value": len(vals["bad"]), "unit": "runs"})

    # ---- the table --------------------------------------------------------
    peers = names[1:]
    fill = {"tasks": f"{cfg['tasks']:,}", "b1": f"{cfg['backlog']:,}",
            "b2": f"{cfg['backlog_big']:,}" if cfg["backlog_big"] else "",
            "enq": f"{cfg['enqueue_n']:,}", "lst": f"{cfg['listen_n']:,}"}
    table_rows = []
    for fs, _ in fses:
        for label, key, unit, better in ROWS:
            cols = {w: values[fs][w].get(key, []) for w in names}
            if not any(isinstance(v, (int, float, str)) for vs in cols.values() for v in vs):
                continue
            ratios = {p: per_round_ratios(cols[HW], cols[p], better) for p in peers}
            table_rows.append({"fs": fs, "label": label.format(**fill), "metric": key, "unit": unit,
                               "better": better, "values": cols, "ratios": ratios})
    header = ["file system", "metric", "unit", HW]
    for p in peers:
        header += [p, "ratio"]
    lines = [header]
    for tr in table_rows:
        cells = [tr["fs"], tr["label"], tr["unit"], spread(tr["values"][HW])]
        for p in peers:
            rs = tr["ratios"][p]
            cells += [spread(tr["values"][p]), spread(rs, fmt_ratio) if rs else "-"]
        lines.append(cells)
    for label, key, unit in TOOL_ROWS:
        if key in tools:
            lines.append(["disk", label.format(**fill), unit, spread(tools[key])] + ["", ""] * len(peers))
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    elapsed = time.monotonic() - started
    out = sys.stdout
    conc = ", ".join(f"{w} {cfg['concurrency'][w]}" for w in names)
    where = ", ".join(f"{fs} {d} ({fs_type(d)})" for fs, d in fses)
    print(f"\nhookwatch bench{' --quick' if q else ''}: {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{os.cpu_count()} CPUs, agent {agent}, concurrency: {conc}; {rounds} alternated rounds on {where}; "
          f"{elapsed / 60:.1f} min", file=out)
    print("each cell: median (min-max) over the rounds; ratio = how many times better hookwatch is, within each "
          "round (peer/hookwatch for times, CPU, wake-ups and memory, hookwatch/peer for rates): median "
          "(min-max), >1 = hookwatch better; min > 1 = better in every round", file=out)
    for i, r in enumerate(lines):
        print("  ".join(c.ljust(widths[j]) if j < 3 else c.rjust(widths[j]) for j, c in enumerate(r)), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    if rounds > 1:
        print("the order of the columns turns by one each round; rounds after the first: no idle phase (idle and "
              "RSS rows are from round 1); py_watchdog without its latency phase (0.5 s a task); inotify_loop not run "
              "(minutes a run, 10-20x behind)", file=out)
    if "inotify_loop" in names and not a.no_backlog:
        print("inotify_loop runs no backlog: about 27 tasks/s, it does not finish 10,000 within the phase's 120 s "
              "(see the shared BASELINE.md)", file=out)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=out)
    for note in notes:
        print(f"note: {note}", file=out)
    if enq["bad"] or lst["bad"]:
        print(f"note: failed runs: hw-enqueue {len(enq['bad'])}, hw-listen {len(lst['bad'])} (see above)", file=out)

    # ---- JSON lines ---------------------------------------------------------
    meta = {"kind": "meta", "date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": q,
            "cpus": os.cpu_count(), "elapsed_s": round(elapsed, 1), "config": cfg,
            "file_systems": {fs: {"dir": d, "type": fs_type(d)} for fs, d in fses},
            "workers": {w: c.replace(REPO + os.sep, "") for w, c, _ in workers}, "skipped": skipped}
    with open(a.out, "w") as f:
        f.write(json.dumps(meta) + "\n")
        for tr in table_rows:
            f.write(json.dumps({"kind": "row", **{k: tr[k] for k in ("fs", "label", "metric", "unit", "better")},
                                "values": {w: [r4(v) for v in vs] for w, vs in tr["values"].items()},
                                "ratios": {p: [r4(v) for v in vs] for p, vs in tr["ratios"].items()}}) + "\n")
        for key, vs in tools.items():
            f.write(json.dumps({"kind": "row", "fs": "disk", "metric": key, "values": {HW: [r4(v) for v in vs]}}) + "\n")
        for r in raw:
            f.write(json.dumps({"kind": "raw", **r}) + "\n")
    print(f"\nJSON lines: {a.out}\nspoolbench output: {logpath}", file=out)
    lost = any(v for fs, _ in fses for k in ("tasks_lost_total", "results_not_completed_total")
               for v in values[fs][HW].get(k, []))
    return 1 if (lost or enq["bad"] or lst["bad"]) else 0


def run_unit(a, cfg, w, cmd, later, rnd, fs, base, logf, put, raw, notes) -> None:
    """One worker's turn in one round on one file system: a run of the
    idle, latency and burst phases, then one of the backlog."""
    agent = cfg["agent"]
    common = ["--worker-cmd", cmd, "--concurrency", str(cfg["concurrency"][w]),
              "--claude-command", agent, "--base", base, "--timeout", str(a.timeout)]
    if rnd == 0:
        phases = "idle,latency,throughput,memory"
    else:
        phases = "latency,throughput" if later == "all" else "throughput"
    args = ["--phases", phases, "--latency-tasks", str(cfg["latency_tasks"]), "--tasks", str(cfg["tasks"]),
            "--idle-window", str(cfg["idle_window"])]
    log(f"round {rnd + 1}/{cfg['rounds']}, {fs}: {w}: {phases}")
    limit = 3 * a.timeout + cfg["idle_window"] + 120
    recs = run_spoolbench(w, common + args, limit, logf)
    raw += [{**r, "fs": fs, "round": rnd + 1} for r in recs]
    absorb(lambda k, v: put(fs, w, rnd, k, v), recs, "", notes, f"{w} on {fs}, round {rnd + 1}")
    if not a.no_backlog and w != "inotify_loop":
        n = cfg["backlog"]
        log(f"round {rnd + 1}/{cfg['rounds']}, {fs}: {w}: backlog of {n:,} tasks")
        recs = run_spoolbench(w, common + ["--only", "backlog", "--backlog", str(n)], a.timeout + 300, logf)
        for r in recs:
            r["metric"] = "backlog1_" + r["metric"].removeprefix("backlog_")
        raw += [{**r, "fs": fs, "round": rnd + 1} for r in recs]
        absorb(lambda k, v: put(fs, w, rnd, k, v), recs, "backlog1_", notes, f"{w} on {fs}, round {rnd + 1}")


def r4(v):
    return round(v, 4) if isinstance(v, float) else v


def sh(s: str) -> str:
    return shlex.quote(s)


def absorb(put, recs: list[dict], prefix: str, notes: list, who: str) -> None:
    """Folds one spoolbench run's records into a worker's values for one
    round (prefix "": the idle/latency/burst run; "backlogN_": a backlog)."""
    m = {r["metric"]: r["value"] for r in recs}

    def rate(key: str, done_key: str, sent_key: str, what: str) -> None:
        if key not in m:
            return
        if m[key] is not None:
            put(key, m[key])
            return
        done, sent = m.get(done_key) or 0, m.get(sent_key) or 0
        put(key, f"unfinished {done:,}/{sent:,}")
        notes.append(f"{who}: {what} of {sent:,}: only {done:,} results before spoolbench gave up "
                     f"(phase timeout or stall), so no rate")

    if not prefix:
        for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
                  "idle_cpu_percent_schedstat", "idle_wakeups_per_s"):
            if k in m:
                put(k, m[k])
        if m.get("startup_first_result_s") is not None:
            put("startup_first_result_ms", m["startup_first_result_s"] * 1000.0)
        if m.get("rss_idle_kib") is not None:
            put("rss_idle_mib", m["rss_idle_kib"] / 1024.0)
        if m.get("hwm_after_throughput_kib") is not None:
            put("hwm_after_throughput_mib", m["hwm_after_throughput_kib"] / 1024.0)
        rate("throughput_tasks_per_s", "throughput_done_before_giveup", "throughput_tasks_sent", "throughput")
        if "startup_first_result_s" in m and m["startup_first_result_s"] is None:
            notes.append(f"{who}: the warm-up task got no result")
    else:
        rate(f"{prefix}tasks_per_s", f"{prefix}done_before_giveup", f"{prefix}tasks", "backlog")
        if m.get(f"{prefix}hwm_after_backlog_kib") is not None:
            put(f"hwm_after_{prefix}mib", m[f"{prefix}hwm_after_backlog_kib"] / 1024.0)
    part = prefix or "main_"
    put(f"{part}lost", sum(r["value"] or 0 for r in recs if r["metric"].endswith("_tasks_lost")))
    put(f"{part}not_completed", sum(r["value"] or 0 for r in recs if r["metric"].endswith("_results_not_completed")))


if __name__ == "__main__":
    sys.exit(main())
