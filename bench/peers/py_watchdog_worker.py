#!/usr/bin/env python3
"""py_watchdog_worker.py NAME -- what a competent Python user writes with `watchdog`.
(From the team's shared bench harness, shared/bench/peers/, unchanged otherwise.)

Observer on $TASK_DIR/NAME; on_created/on_moved push *.json paths into a
queue.Queue; MAX_CONCURRENT_TASKS pool threads claim each file by renaming it
into .active/, run `$CLAUDE_COMMAND -p DESCRIPTION`, write
$RESULT_DIR/NAME/<id>.json atomically (temp file + os.replace) and remove the
claimed file.  Files present at start are queued too.  Needs: pip install watchdog.
"""

import json
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

TASK_TIMEOUT = float(os.environ.get("TASK_TIMEOUT", "600"))


class TaskHandler(FileSystemEventHandler):
    def __init__(self, q: queue.Queue):
        self.q = q

    def _push(self, path: str) -> None:
        name = os.path.basename(path)
        if name.endswith(".json") and not name.startswith("."):
            self.q.put(path)

    def on_created(self, event):
        if not event.is_directory:
            self._push(event.src_path)

    def on_moved(self, event):
        if not event.is_directory:
            self._push(event.dest_path)


class Worker:
    def __init__(self, name: str):
        self.name = name
        self.task_dir = os.path.join(os.environ["TASK_DIR"], name)
        self.result_dir = os.path.join(os.environ["RESULT_DIR"], name)
        self.active_dir = os.path.join(self.task_dir, ".active")
        self.cmd = os.environ.get("CLAUDE_COMMAND", "claude")
        self.concurrency = max(1, int(os.environ.get("MAX_CONCURRENT_TASKS", "2")))
        for d in (self.task_dir, self.result_dir, self.active_dir):
            os.makedirs(d, exist_ok=True)
        self.q: queue.Queue = queue.Queue()

    def write_result(self, task_id: str, result: dict) -> None:
        final = os.path.join(self.result_dir, f"{task_id}.json")
        tmp = os.path.join(self.result_dir, f".{task_id}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, final)

    def process(self, path: str) -> None:
        fname = os.path.basename(path)
        claimed = os.path.join(self.active_dir, fname)
        try:
            os.rename(path, claimed)  # atomic claim; loser gets FileNotFoundError
        except FileNotFoundError:
            return
        task_id = fname[:-len(".json")]
        start = time.monotonic()
        try:
            with open(claimed) as f:
                task = json.load(f)
            proc = subprocess.run([self.cmd, "-p", str(task.get("description", ""))],
                                  capture_output=True, text=True, timeout=TASK_TIMEOUT)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            code, out, err = 124, "", f"timed out after {e.timeout}s"
        except (OSError, ValueError) as e:
            code, out, err = 1, "", f"{type(e).__name__}: {e}"
        self.write_result(task_id, {
            "task_id": task_id,
            "worker": self.name,
            "status": "completed" if code == 0 else "failed",
            "exit_code": code,
            "stdout": out,
            "stderr": err,
            "duration_seconds": round(time.monotonic() - start, 6),
        })
        os.unlink(claimed)

    def pool_loop(self) -> None:
        while True:
            path = self.q.get()
            try:
                self.process(path)
            except Exception as e:  # keep the pool thread alive
                print(f"error processing {path}: {e}", file=sys.stderr, flush=True)

    def run(self) -> None:
        observer = Observer()
        observer.schedule(TaskHandler(self.q), self.task_dir, recursive=False)
        observer.start()
        # files dropped before we started (or before the watch was in place)
        for fname in sorted(os.listdir(self.task_dir)):
            if fname.endswith(".json") and not fname.startswith("."):
                self.q.put(os.path.join(self.task_dir, fname))
        print(f"watching {self.task_dir} with {self.concurrency} workers", flush=True)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for _ in range(self.concurrency):
                pool.submit(self.pool_loop)
            observer.join()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: py_watchdog_worker.py NAME")
    Worker(sys.argv[1]).run()
