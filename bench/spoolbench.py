#!/usr/bin/env python3
"""spoolbench: benchmark harness for file-spool job-queue workers.

From the team's shared bench harness (shared/bench/spoolbench.py, with its
README and BASELINE.md); `make bench` runs it through bench/run.py.  Changed
here: in the batch phases (throughput, backlog) the result folder is
rescanned every max(10 ms, 20 x the last scan's duration), at most 2 s,
instead of every 10 ms.  A scan reads the whole folder, so with 10 ms
rescans the harness itself took ~22 % of a core during a 10,000 backlog
and half a core or more at 100,000 results, on the 2 cores it shares with
the worker: the backlog rates of 10,000 and 100,000 were not comparable.
Now it stays near 5 % whatever the size, and the end is seen at most 20
scan times late (~0.5 % of a run here).  The backlog phase also reports
the harness's own CPU time (backlog_harness_cpu_s), and --phases picks
several phases for one run of the worker (bench/run.py skips the idle
phase in its later rounds).

A worker under test is started as a shell command (``bash -c WORKER_CMD``, in a
new session) with these variables pointing into a fresh spool root:

    TASK_DIR RESULT_DIR TRIGGER_DIR HEARTBEAT_DIR DLQ_DIR   (parent folders)
    MAX_CONCURRENT_TASKS  CLAUDE_COMMAND  BENCH_WORKER_NAME

Producers (this harness) drop ``$TASK_DIR/<name>/<id>.json`` atomically (write
``.<id>.x.tmp`` in the same folder, then rename); the worker must write
``$RESULT_DIR/<name>/<id>.json`` with at least ``task_id`` and ``status``.

Phases (see --only): idle, latency, throughput, memory (default: all four with
one worker process), backlog (separate worker start; also with --backlog N).

Output: one JSON object per line on stdout {"peer","metric","value","unit"};
a readable table on stderr.  Python 3.11 standard library only.

Every wait is bounded: each phase gives up after --timeout seconds (and after
--stall seconds without any new result), and reports what it saw.  The worker's
whole process group (and any leftover process of its session) is killed at the
end of each run; nothing else is ever signalled.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_SLEEP_S = 0.0002  # latency-phase poll period (0.2 ms)
SCAN_SLEEP_S = 0.010  # throughput/backlog: re-scan result dir every 10 ms at least


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
class Report:
    def __init__(self, peer: str):
        self.peer = peer
        self.rows: list[tuple[str, object, str]] = []

    def add(self, metric: str, value, unit: str) -> None:
        if isinstance(value, float):
            value = round(value, 4)
        self.rows.append((metric, value, unit))
        print(json.dumps({"peer": self.peer, "metric": metric, "value": value, "unit": unit}), flush=True)

    def table(self) -> None:
        w = max([len(m) for m, _, _ in self.rows] + [10])
        err = sys.stderr
        print(f"\n== spoolbench: {self.peer} ==", file=err)
        print(f"{'metric':<{w}}  {'value':>14}  unit", file=err)
        print(f"{'-' * w}  {'-' * 14}  ----", file=err)
        for m, v, u in self.rows:
            vs = "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
            print(f"{m:<{w}}  {vs:>14}  {u}", file=err)
        err.flush()


def log(msg: str) -> None:
    print(f"[spoolbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(sorted_vals: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


# --------------------------------------------------------------------------
# /proc sampling of the worker's session
# --------------------------------------------------------------------------
def _stat_fields(path: str) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            s = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # fields after "comm)"; rest[0] is field 3 (state)
    return s[s.rfind(")") + 2:].split()


def session_pids(sid: int) -> list[int]:
    """All live processes whose session id is `sid` (descendants of our worker)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(f"/proc/{d}/stat")
        if f and int(f[3]) == sid and f[0] != "Z":
            out.append(int(d))
    return out


def _status_kv(path: str) -> dict[str, str]:
    kv = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(":")
                kv[k] = v.strip()
    except OSError:
        pass
    return kv


def sample(sid: int) -> dict:
    """Snapshot of CPU ticks, schedstat ns, context switches and memory of the session."""
    snap = {"ticks": {}, "sched_ns": {}, "vol": {}, "nonvol": {}, "rss_kib": 0, "hwm_kib": 0,
            "procs": 0, "threads": 0, "t": time.monotonic()}
    for pid in session_pids(sid):
        f = _stat_fields(f"/proc/{pid}/stat")
        if not f:
            continue
        snap["procs"] += 1
        # utime (14) + stime (15): process-wide, includes all its threads
        snap["ticks"][pid] = int(f[11]) + int(f[12])
        st = _status_kv(f"/proc/{pid}/status")
        snap["rss_kib"] += int(st.get("VmRSS", "0 kB").split()[0])
        snap["hwm_kib"] += int(st.get("VmHWM", "0 kB").split()[0])
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            key = (pid, int(tid))
            ts = _status_kv(f"/proc/{pid}/task/{tid}/status")
            if not ts:
                continue
            snap["threads"] += 1
            snap["vol"][key] = int(ts.get("voluntary_ctxt_switches", "0"))
            snap["nonvol"][key] = int(ts.get("nonvoluntary_ctxt_switches", "0"))
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as sf:
                    snap["sched_ns"][key] = int(sf.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return snap


def _delta(a: dict, b: dict) -> int:
    """Sum of per-key increases; keys that appear only in b count from 0."""
    return sum(v - a.get(k, 0) for k, v in b.items() if v >= a.get(k, 0))


# --------------------------------------------------------------------------
# minimal inotify (ctypes) used only with --detect inotify
# --------------------------------------------------------------------------
IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x8, 0x80, 0x100


class Inotify:
    def __init__(self, path: str):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def names(self, timeout: float) -> list[str]:
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i + 16 <= len(buf):
            _wd, _mask, _cookie, ln = struct.unpack_from("iIII", buf, i)
            out.append(buf[i + 16:i + 16 + ln].rstrip(b"\0").decode("utf-8", "replace"))
            i += 16 + ln
        return out

    def close(self) -> None:
        os.close(self.fd)


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
class Run:
    def __init__(self, args, report: Report):
        self.a = args
        self.rep = report
        self.name = args.name
        base = args.base or tempfile.mkdtemp(prefix="spoolbench-")
        os.makedirs(base, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix="spool-", dir=base)
        self.base_created = args.base is None
        self.base = base
        self.dirs = {k: os.path.join(self.root, k.lower().replace("_dir", "s")) for k in
                     ("TASK_DIR", "RESULT_DIR", "TRIGGER_DIR", "HEARTBEAT_DIR", "DLQ_DIR")}
        self.tdir = os.path.join(self.dirs["TASK_DIR"], self.name)
        self.rdir = os.path.join(self.dirs["RESULT_DIR"], self.name)
        for k, d in self.dirs.items():
            os.makedirs(d if k == "HEARTBEAT_DIR" else os.path.join(d, self.name), exist_ok=True)
        self.logpath = os.path.join(self.root, "worker.log")
        self.proc: subprocess.Popen | None = None
        self.seq = 0
        self.inotify = Inotify(self.rdir) if args.detect == "inotify" else None

    # ---- worker lifecycle ------------------------------------------------
    def env(self) -> dict:
        e = dict(os.environ)
        e.update(self.dirs)
        e["MAX_CONCURRENT_TASKS"] = str(self.a.concurrency)
        e["CLAUDE_COMMAND"] = self.a.claude_command
        e["BENCH_WORKER_NAME"] = self.name
        return e

    def start_worker(self) -> float:
        logf = open(self.logpath, "ab")
        t0 = time.monotonic()
        # bash exec()s a single simple command, so usually no wrapper shell remains.
        self.proc = subprocess.Popen(["bash", "-c", self.a.worker_cmd], env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        log(f"started worker pid={self.proc.pid}")
        return t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop_worker(self, prefix: str = "") -> None:
        p = self.proc
        if p is None:
            return
        sid = p.pid  # start_new_session: pid == pgid == sid
        if p.poll() is None:
            try:
                os.killpg(sid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # leftovers of the worker's session that moved to another process group
        for _ in range(3):
            rest = session_pids(sid)
            if not rest:
                break
            for pid in rest:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        self.rep.add(f"{prefix}worker_exit_code", p.returncode, "code")
        self.proc = None

    def log_tail(self, n: int = 12) -> list[str]:
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        return lines[-n:]

    # ---- producer ----------------------------------------------------------
    def _task_body(self, tid: str) -> bytes:
        return json.dumps({"task_id": tid, "worker": self.name,
                           "description": f"benchmark task {tid}: do nothing"}).encode()

    def new_id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq:06d}"

    def stage(self, tid: str) -> str:
        """Write the task body under a temporary name (not ending in .json)."""
        if self.a.write_mode == "direct":
            return ""
        tmp = os.path.join(self.tdir, f".{tid}.x.tmp")
        with open(tmp, "wb") as f:
            f.write(self._task_body(tid))
        return tmp

    def publish(self, tid: str, tmp: str) -> None:
        final = os.path.join(self.tdir, f"{tid}.json")
        if self.a.write_mode == "direct":
            with open(final, "wb") as f:
                f.write(self._task_body(tid))
        else:
            os.rename(tmp, final)

    def result_path(self, tid: str) -> str:
        return os.path.join(self.rdir, f"{tid}.json")

    # ---- waiting -----------------------------------------------------------
    def wait_one(self, tid: str, deadline: float) -> float | None:
        """Wait for one result file; returns monotonic time seen, or None."""
        path = self.result_path(tid)
        while True:
            if os.path.exists(path):
                return time.monotonic()
            now = time.monotonic()
            if now >= deadline or not self.alive():
                return time.monotonic() if os.path.exists(path) else None
            if self.inotify:
                self.inotify.names(min(0.05, deadline - now))
            else:
                time.sleep(POLL_SLEEP_S)

    def wait_all(self, ids: set[str], deadline: float, phase: str) -> tuple[float | None, set[str]]:
        """Wait until every id has a result; returns (time all seen, missing ids)."""
        pending = {f"{t}.json" for t in ids}
        scan_s = 0.0  # the last scan's duration: rescans wait 20 times that (>= 10 ms)
        last_progress = time.monotonic()
        next_log = last_progress + 10
        while pending:
            now = time.monotonic()
            if now >= deadline:
                log(f"{phase}: timeout with {len(pending)} results missing")
                break
            if now - last_progress >= self.a.stall:
                log(f"{phase}: no new result for {self.a.stall:.0f}s, giving up ({len(pending)} missing)")
                break
            if not self.alive():
                log(f"{phase}: worker exited (code {self.proc.returncode}), {len(pending)} missing")
                break
            if self.inotify:
                self.inotify.names(min(0.05, deadline - now))
            else:
                time.sleep(min(max(SCAN_SLEEP_S, 20 * scan_s), 2.0, max(0.0, deadline - now)))
            before = len(pending)
            t_scan = time.monotonic()
            with os.scandir(self.rdir) as it:
                for e in it:
                    pending.discard(e.name)
            scan_s = time.monotonic() - t_scan
            if len(pending) < before:
                last_progress = time.monotonic()
            if now >= next_log:
                log(f"{phase}: {len(ids) - len(pending)}/{len(ids)} done")
                next_log = now + 10
        done_t = time.monotonic() if not pending else None
        return done_t, {p[:-5] for p in pending}

    def check(self, ids: list[str], phase: str, grace: float = 0.5) -> None:
        """Correctness counters: lost tasks and results whose status is not completed."""
        missing = [t for t in ids if not os.path.exists(self.result_path(t))]
        if missing and grace > 0 and self.alive():
            time.sleep(grace)
            missing = [t for t in missing if not os.path.exists(self.result_path(t))]
        bad, bad_example = 0, None
        for t in ids:
            p = self.result_path(t)
            if t in missing:
                continue
            try:
                with open(p, "rb") as f:
                    r = json.loads(f.read())
                ok = r.get("status") == "completed"
            except (OSError, ValueError, AttributeError) as e:
                ok, r = False, {"status": f"unreadable: {e}"}
            if not ok:
                bad += 1
                bad_example = bad_example or {k: r.get(k) for k in ("task_id", "status", "exit_code", "stderr")}
        try:
            left = sum(1 for n in os.listdir(self.tdir) if n.endswith(".json"))
        except OSError:
            left = -1
        self.rep.add(f"{phase}_tasks_sent", len(ids), "tasks")
        self.rep.add(f"{phase}_tasks_lost", len(missing), "tasks")
        self.rep.add(f"{phase}_results_not_completed", bad, "tasks")
        self.rep.add(f"{phase}_task_files_left", left, "files")
        if bad_example:
            log(f"{phase}: example non-completed result: {json.dumps(bad_example)[:300]}")
        if missing:
            log(f"{phase}: {len(missing)} task(s) lost; worker log tail:")
            for line in self.log_tail():
                print("    | " + line[:300], file=sys.stderr)

    # ---- phases ------------------------------------------------------------
    def warmup(self, t_start: float) -> bool:
        tid = self.new_id("warm")
        self.publish(tid, self.stage(tid))
        seen = self.wait_one(tid, time.monotonic() + min(self.a.timeout, self.a.ready_timeout))
        if seen is None:
            self.rep.add("startup_first_result_s", None, "s")
            log("warm-up task got no result: the worker is not processing tasks")
            self.check([tid], "warmup", grace=0)
            return False
        self.rep.add("startup_first_result_s", seen - t_start, "s")
        return True

    def phase_idle(self) -> None:
        time.sleep(self.a.idle_settle)
        if not self.alive():
            log("idle: worker not running")
            return
        sid = self.proc.pid
        a = sample(sid)
        time.sleep(self.a.idle_window)
        b = sample(sid)
        wall = b["t"] - a["t"]
        self.rep.add("idle_cpu_percent", 100.0 * _delta(a["ticks"], b["ticks"]) / CLK_TCK / wall, "%")
        if b["sched_ns"]:
            self.rep.add("idle_cpu_percent_schedstat", 100.0 * _delta(a["sched_ns"], b["sched_ns"]) / 1e9 / wall, "%")
        self.rep.add("idle_wakeups_per_s", _delta(a["vol"], b["vol"]) / wall, "1/s")
        self.rep.add("idle_nonvoluntary_ctxsw_per_s", _delta(a["nonvol"], b["nonvol"]) / wall, "1/s")
        self.rep.add("idle_processes", b["procs"], "count")
        self.rep.add("idle_threads", b["threads"], "count")
        self.rep.add("rss_idle_kib", b["rss_kib"], "KiB")

    def phase_latency(self) -> None:
        n = self.a.latency_tasks
        deadline = time.monotonic() + self.a.timeout
        lat_ms, ids, consecutive_lost = [], [], 0
        for _ in range(n):
            if time.monotonic() >= deadline:
                log("latency: phase timeout")
                break
            if not self.alive():
                log("latency: worker exited")
                break
            tid = self.new_id("lat")
            tmp = self.stage(tid)
            ids.append(tid)
            t0 = time.monotonic()
            self.publish(tid, tmp)
            seen = self.wait_one(tid, min(deadline, t0 + self.a.task_timeout))
            if seen is None:
                consecutive_lost += 1
                if consecutive_lost >= 3:
                    log("latency: 3 consecutive tasks got no result, giving up")
                    break
                continue
            consecutive_lost = 0
            lat_ms.append((seen - t0) * 1000.0)
            if self.a.latency_gap > 0:
                time.sleep(self.a.latency_gap / 1000.0)
        lat_ms.sort()
        self.rep.add("latency_samples", len(lat_ms), "tasks")
        for p in (50, 90, 99):
            self.rep.add(f"latency_p{p}_ms", pct(lat_ms, p) if lat_ms else None, "ms")
        self.rep.add("latency_max_ms", lat_ms[-1] if lat_ms else None, "ms")
        self.check(ids, "latency")

    def drop_batch(self, n: int, prefix: str) -> tuple[list[str], list[str]]:
        ids = [self.new_id(prefix) for _ in range(n)]
        tmps = [self.stage(t) for t in ids]
        return ids, tmps

    def phase_throughput(self) -> None:
        n = self.a.tasks
        ids, tmps = self.drop_batch(n, "thr")
        time.sleep(0.5)  # let the worker digest the temp-file events before the clock starts
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        for tid, tmp in zip(ids, tmps):
            self.publish(tid, tmp)
        t_pub = time.monotonic()
        done_t, missing = self.wait_all(set(ids), t0 + self.a.timeout, "throughput")
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        self.rep.add("throughput_publish_s", t_pub - t0, "s")
        if done_t is not None:
            self.rep.add("throughput_wall_s", done_t - t0, "s")
            self.rep.add("throughput_tasks_per_s", n / (done_t - t0), "tasks/s")
        else:
            self.rep.add("throughput_wall_s", None, "s")
            self.rep.add("throughput_tasks_per_s", None, "tasks/s")
            self.rep.add("throughput_done_before_giveup", n - len(missing), "tasks")
        self.rep.add("throughput_harness_cpu_s",
                     (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), "s")
        self.check(ids, "throughput")

    def phase_memory_after(self) -> None:
        if not self.alive():
            return
        s = sample(self.proc.pid)
        self.rep.add("hwm_after_throughput_kib", s["hwm_kib"], "KiB")
        self.rep.add("rss_after_throughput_kib", s["rss_kib"], "KiB")

    def run_backlog(self, n: int) -> None:
        log(f"backlog: pre-creating {n} tasks before starting the worker")
        ids, tmps = self.drop_batch(n, "blg")
        for tid, tmp in zip(ids, tmps):
            self.publish(tid, tmp)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = self.start_worker()
        done_t, missing = self.wait_all(set(ids), t0 + self.a.timeout, "backlog")
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        self.rep.add("backlog_tasks", n, "tasks")
        self.rep.add("backlog_harness_cpu_s",
                     (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), "s")
        if done_t is not None:
            self.rep.add("backlog_wall_s", done_t - t0, "s")
            self.rep.add("backlog_tasks_per_s", n / (done_t - t0), "tasks/s")
        else:
            self.rep.add("backlog_wall_s", None, "s")
            self.rep.add("backlog_tasks_per_s", None, "tasks/s")
            self.rep.add("backlog_done_before_giveup", n - len(missing), "tasks")
        self.check(ids, "backlog")
        if self.alive():
            s = sample(self.proc.pid)
            self.rep.add("hwm_after_backlog_kib", s["hwm_kib"], "KiB")

    def cleanup(self) -> None:
        if self.inotify:
            self.inotify.close()
        if self.a.keep:
            log(f"kept spool root and worker log under {self.root}")
            return
        shutil.rmtree(self.root if not self.base_created else self.base, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker-cmd", required=True,
                    help="shell command starting the worker, e.g. 'path/to/hw-worker bench'")
    ap.add_argument("--peer-name", default="worker", help="label for the output lines")
    ap.add_argument("--name", default="bench", help="worker NAME used in tasks/<NAME> (default bench)")
    ap.add_argument("--concurrency", type=int, default=2, help="MAX_CONCURRENT_TASKS (default 2)")
    ap.add_argument("--claude-command", default=shutil.which("true") or "true",
                    help="CLAUDE_COMMAND given to the worker (default: the `true` binary on PATH)")
    ap.add_argument("--tasks", type=int, default=2000, help="tasks in the throughput burst (default 2000)")
    ap.add_argument("--latency-tasks", type=int, default=200, help="sequential tasks for latency (default 200)")
    ap.add_argument("--latency-gap", type=float, default=10.0, help="ms pause between latency tasks (default 10)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up a phase after this many s (default 120)")
    ap.add_argument("--stall", type=float, default=30.0, help="give up a batch phase after s without progress")
    ap.add_argument("--task-timeout", type=float, default=10.0, help="latency: max wait for one result (s)")
    ap.add_argument("--ready-timeout", type=float, default=30.0, help="max wait for the warm-up result (s)")
    ap.add_argument("--idle-settle", type=float, default=3.0, help="s to wait once idle before sampling")
    ap.add_argument("--idle-window", type=float, default=10.0, help="s of idle sampling (default 10)")
    ap.add_argument("--only", choices=["latency", "throughput", "idle", "memory", "backlog"])
    ap.add_argument("--phases", default=None,
                    help="comma-separated subset of idle,latency,throughput,memory (default: all four)")
    ap.add_argument("--backlog", type=int, nargs="?", const=10000, default=None,
                    help="also run the backlog test with N pre-created tasks (default N=10000)")
    ap.add_argument("--write-mode", choices=["rename", "direct"], default="rename",
                    help="rename: .<id>.x.tmp then rename (default); direct: write <id>.json in place")
    ap.add_argument("--detect", choices=["poll", "inotify"], default="poll",
                    help="how the harness notices result files (default poll)")
    ap.add_argument("--base", default=None, help="folder for the temporary spool root (default: new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the spool root and worker log")
    a = ap.parse_args(argv)

    rep = Report(a.peer_name)
    phases = {"idle", "latency", "throughput", "memory"} if a.only is None else {a.only}
    if a.phases is not None and a.only is None:
        phases = {p for p in a.phases.split(",") if p}
    backlog_n = a.backlog if a.backlog is not None else (10000 if a.only == "backlog" else None)
    if a.only == "backlog":
        phases = set()

    rc = 0
    if phases:
        run = Run(a, rep)
        try:
            t_start = run.start_worker()
            ready = run.warmup(t_start)
            if not run.alive():
                log(f"worker exited early (code {run.proc.returncode}); skipping the phases")
                phases = set()
            # a worker that runs but never answered the warm-up is idle too: measure it anyway
            if "idle" in phases or "memory" in phases:
                run.phase_idle()
            if "latency" in phases:
                run.phase_latency()
            if "throughput" in phases or "memory" in phases:
                run.phase_throughput()
            if "memory" in phases:
                run.phase_memory_after()
            if not ready:
                rc = 2
        finally:
            run.stop_worker()
            tail = run.log_tail(5)
            run.cleanup()
        if rc:
            log("worker log tail: " + " || ".join(t[:200] for t in tail))
    if backlog_n:
        run = Run(a, rep)
        try:
            run.run_backlog(backlog_n)
        finally:
            run.stop_worker("backlog_")
            run.cleanup()
    rep.table()
    return rc


if __name__ == "__main__":
    sys.exit(main())
