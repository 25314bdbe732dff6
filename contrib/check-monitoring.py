#!/usr/bin/env python3
"""check-monitoring.py: check the monitoring kit against what hookwatch serves.

Python 3 standard library only.  Checks, without Prometheus or Grafana:

  - contrib/grafana/hookwatch.json: valid JSON; a `datasource` variable
    and a multi-value `worker` variable; unique panel ids; every panel on
    the grid, with its title, the `${datasource}` data source, and
    queries that each filter on `$worker`;
  - contrib/prometheus/hookwatch.rules.yml and its tests: every alert has
    a `severity` of page or ticket, a summary and a description, and at
    least one test case where it fires and one where it stays silent
    (promtool runs the tests themselves);
  - the metric names in the dashboard's queries and in the rules'
    expressions, each against the /metrics of a live hw-worker (started
    on a throwaway spool with METRICS_PORT=0; its address read from its
    heartbeat's metrics_addr; stopped with SIGTERM to its process group).
    A histogram's _bucket, _sum and _count series count as the histogram.
    Names that are not the worker's are listed here: `up` (Prometheus's
    own, per target), the hookwatch_status_* metrics that
    hw-status-textfile writes (taken from its output for a canned
    report), and the rules' own recorded series.

Exit status: 0 clean; 1 with each failure printed.

    python3 contrib/check-monitoring.py [--metrics FILE]     (make lint)
    BIN_DIR=DIR      where hw-worker is (default: target/release)
    --metrics FILE   compare with a saved /metrics instead of a live worker
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(REPO, "contrib/grafana/hookwatch.json")
RULES = os.path.join(REPO, "contrib/prometheus/hookwatch.rules.yml")
RULE_TESTS = os.path.join(REPO, "contrib/prometheus/hookwatch.rules.test.yml")
TEXTFILE = os.path.join(REPO, "contrib/prometheus/hw-status-textfile")
CANNED = os.path.join(REPO, "contrib/prometheus/testdata/hw-status.json")

# Not the worker's: Prometheus's per-target series.
PROMETHEUS_NAMES = {"up"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan", "start", "end",
}
SEVERITIES = {"page", "ticket"}

failures = []


def fail(what):
    failures.append(what)


# ---- PromQL: the metric names an expression reads ----------------------

TOKEN = re.compile(
    r"(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[a-zA-Z]*|\.\d+)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<other>.)",
    re.S,
)


def metric_names(expr):
    """The metric names in a PromQL expression (Grafana variables allowed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "", s)  # Grafana variables
    s = re.sub(r"\{[^{}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", "", s)  # ranges and subqueries
    # Label lists: sum by (a, b), on (a), group_left (a), ...
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    names = set()
    tokens = [(m.lastgroup, m.group(), m.end()) for m in TOKEN.finditer(s)]
    for kind, text, end in tokens:
        if kind != "ident" or text in KEYWORDS:
            continue
        if s[end:].lstrip().startswith("("):  # a function or an aggregation
            continue
        names.add(text)
    return names


# ---- The rules file, read without a YAML library -----------------------

KEY = re.compile(r"^(?P<indent>\s*)(?:- )?(?P<key>[A-Za-z_]+):(?:\s+(?P<value>.*?))?\s*$")


def unquote(value):
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return re.sub(r"\s+#.*$", "", value)


def yaml_items(path):
    """(line number, indent, key, value) of each `key: value` of a YAML file
    written in the plain style these files use: block scalars (| and >-)
    joined, quoted scalars unquoted, comments and list items skipped."""
    lines = open(path, encoding="utf-8").read().split("\n")
    items = []
    i = 0
    while i < len(lines):
        m = KEY.match(lines[i])
        i += 1
        if not m or lines[i - 1].lstrip().startswith("#"):
            continue
        indent = len(m.group("indent")) + (2 if lines[i - 1].lstrip().startswith("- ") else 0)
        value = m.group("value") or ""
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            value = ("\n" if value[0] == "|" else " ").join(block).strip()
        else:
            value = unquote(value)
        items.append((i, indent, m.group("key"), value))
    return items


def read_rules():
    """{alert or record name: {"expr", "labels", "annotations", "kind"}}."""
    rules = {}
    current = None
    section = None
    for line, indent, key, value in yaml_items(RULES):
        if key in ("alert", "record"):
            if value in rules:
                fail(f"{RULES}:{line}: {key} {value} defined twice")
            current = rules.setdefault(value, {"kind": key, "expr": None,
                                               "labels": {}, "annotations": {}})
            section = None
        elif current is None:
            continue
        elif key == "expr":
            current["expr"] = value
        elif key in ("labels", "annotations"):
            section = (key, indent)
        elif section and indent > section[1]:
            current[section[0]][key] = value
        else:
            section = None
    return rules


def check_rules(rules):
    for name, r in rules.items():
        if not r["expr"]:
            fail(f"rules: {name}: no expr")
        if r["kind"] != "alert":
            continue
        if r["labels"].get("severity") not in SEVERITIES:
            fail(f"rules: {name}: severity must be one of {sorted(SEVERITIES)}")
        for a in ("summary", "description"):
            if not r["annotations"].get(a):
                fail(f"rules: {name}: no {a} annotation")
    # Each alert: a case that fires and a case that stays silent.
    fires, silent = set(), set()
    alertname = None
    for line, indent, key, value in yaml_items(RULE_TESTS):
        if key == "alertname":
            alertname = value
        elif key == "exp_alerts" and alertname:
            (silent if value.replace(" ", "") == "[]" else fires).add(alertname)
            alertname = None
    for name, r in rules.items():
        if r["kind"] != "alert":
            continue
        if name not in fires:
            fail(f"rule tests: no case where {name} fires")
        if name not in silent:
            fail(f"rule tests: no case where {name} stays silent")
    for name in (fires | silent) - set(rules):
        fail(f"rule tests: {name} is not an alert of the rules file")


# ---- The dashboard ------------------------------------------------------

def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def variable_query(v):
    q = v.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


def read_dashboard():
    """The dashboard's PromQL expressions, after checking its structure."""
    try:
        with open(DASHBOARD, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{DASHBOARD}: {e}")
        return []
    exprs = []
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dash:
            fail(f"dashboard: no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard: needs a `datasource` variable of Prometheus data sources")
    worker = variables.get("worker", {})
    wq = variable_query(worker)
    m = re.fullmatch(r"\s*label_values\((.*),\s*worker\s*\)\s*", wq)
    if worker.get("type") != "query" or not m:
        fail("dashboard: needs a `worker` variable: label_values(METRIC, worker)")
    else:
        exprs.append(("variable worker", m.group(1)))
    if not (worker.get("multi") and worker.get("includeAll") and worker.get("allValue") == ".+"):
        fail("dashboard: the worker variable must be multi-value, with All as .+")
    ids = set()
    for p in all_panels(dash.get("panels", [])):
        title = p.get("title") or f"panel {p.get('id')}"
        if p.get("id") in ids or not isinstance(p.get("id"), int):
            fail(f"dashboard: {title}: id missing or not unique")
        ids.add(p.get("id"))
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
            fail(f"dashboard: {title}: bad gridPos {g}")
        if not p.get("title"):
            fail(f"dashboard: panel {p.get('id')}: no title")
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            fail(f"dashboard: {title}: data source is not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            fail(f"dashboard: {title}: no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            fail(f"dashboard: {title}: refIds missing or repeated")
        for t in targets:
            expr = t.get("expr") or ""
            if "$worker" not in expr:
                fail(f"dashboard: {title}: query does not filter on $worker: {expr}")
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                fail(f"dashboard: {title}: query data source is not ${{datasource}}")
            exprs.append((f"panel {title!r}", expr))
    return exprs


# ---- What is served ------------------------------------------------------

def exposition_names(text):
    """(sample names, histogram names) of a Prometheus text exposition."""
    samples, histograms = set(), set()
    for line in text.splitlines():
        m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
        if m:
            if m.group(2) == "histogram":
                histograms.add(m.group(1))
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
        if m and not line.startswith("#"):
            samples.add(m.group(1))
    return samples, histograms


def textfile_names():
    """The names hw-status-textfile writes, for the canned report."""
    with tempfile.TemporaryDirectory(prefix="hookwatch-textfile.") as d:
        p = subprocess.run([sys.executable, TEXTFILE, "--from", CANNED, d],
                           capture_output=True, text=True, timeout=30, check=False)
        if p.returncode != 0:
            fail(f"hw-status-textfile --from {CANNED}: exit {p.returncode}: {p.stderr.strip()}")
            return set()
        with open(os.path.join(d, "hookwatch.prom"), encoding="utf-8") as f:
            return exposition_names(f.read())[0]


def live_metrics():
    """One scrape of a live hw-worker on a throwaway spool."""
    bin_dir = os.environ.get("BIN_DIR") or os.path.join(REPO, "target/release")
    hw = os.path.join(bin_dir, "hw-worker")
    if not os.access(hw, os.X_OK):
        sys.exit(f"check-monitoring: {hw} not found: run 'cargo build --release'")
    spool = tempfile.mkdtemp(prefix="hookwatch-monitoring.")
    name = "lintcheck"
    env = {k: v for k, v in os.environ.items()
           if k not in ("TASK_DIR", "TRIGGER_DIR", "RESULT_DIR", "HEARTBEAT_DIR", "DLQ_DIR", "RUST_LOG")}
    env.update(HW_ROOT=spool, METRICS_PORT="0", METRICS_ADDR="127.0.0.1", ENABLE_METRICS="true",
               CLAUDE_COMMAND="/bin/true", HEARTBEAT_INTERVAL="0.2", LOG_FORMAT="text",
               # A budget, so that its gauge is served too.
               DAILY_BUDGET_USD="100")
    log = open(os.path.join(spool, "worker.log"), "wb")
    # Its own session and process group, so that the stop reaches it all.
    proc = subprocess.Popen([hw, name], env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log, start_new_session=True)
    try:
        beat = os.path.join(spool, "heartbeats", f"{name}.json")
        deadline = time.monotonic() + 10
        addr = None
        while addr is None:
            if proc.poll() is not None:
                sys.exit(f"check-monitoring: hw-worker exited early:\n{open(log.name).read()}")
            if time.monotonic() > deadline:
                sys.exit(f"check-monitoring: no metrics_addr in {beat} after 10 s")
            time.sleep(0.05)
            try:
                with open(beat, encoding="utf-8") as f:
                    addr = json.load(f).get("metrics_addr")
            except (OSError, ValueError):
                pass
        url = f"http://{addr}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return url, r.read().decode("utf-8")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(spool, ignore_errors=True)


def main(argv):
    metrics_file = None
    if argv[:1] == ["--metrics"] and len(argv) == 2:
        metrics_file = argv[1]
    elif argv:
        sys.exit("usage: check-monitoring.py [--metrics FILE]")

    rules = read_rules()
    check_rules(rules)
    alerts = sum(r["kind"] == "alert" for r in rules.values())
    print(f"check-monitoring: {RULES[len(REPO) + 1:]}: {alerts} alerts, "
          f"{len(rules) - alerts} recording rules"
          + ("" if failures else "; each alert tested firing and silent"))
    exprs = [(f"rule {n}", r["expr"] or "") for n, r in rules.items()]
    dash_exprs = read_dashboard()
    print(f"check-monitoring: {DASHBOARD[len(REPO) + 1:]}: {len(dash_exprs)} queries")
    exprs += dash_exprs

    if metrics_file:
        source = metrics_file
        with open(metrics_file, encoding="utf-8") as f:
            text = f.read()
    else:
        source, text = live_metrics()
    served, histograms = exposition_names(text)
    served |= {h + s for h in histograms for s in HISTOGRAM_SUFFIXES}
    textfile = textfile_names()
    recorded = {n for n, r in rules.items() if r["kind"] == "record"}

    used = {}
    for where, expr in exprs:
        for n in metric_names(expr):
            used.setdefault(n, []).append(where)
    for n, wheres in sorted(used.items()):
        if n in served or n in PROMETHEUS_NAMES or n in recorded:
            continue
        if n.startswith("hookwatch_status_"):
            if n not in textfile:
                fail(f"{n} is not written by hw-status-textfile (used by {', '.join(wheres)})")
            continue
        fail(f"{n} is not served by hw-worker (used by {', '.join(sorted(set(wheres)))})")
    worker_names = sorted(n for n in used if n in served)
    print(f"check-monitoring: {len(used)} metric names used; served by {source}: "
          f"{len(worker_names)}; up; hookwatch_status_*: "
          f"{len([n for n in used if n.startswith('hookwatch_status_')])}; recorded: "
          f"{len([n for n in used if n in recorded])}")
    for f in failures:
        print(f"check-monitoring: {f}", file=sys.stderr)
    if failures:
        return 1
    print("check-monitoring: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
