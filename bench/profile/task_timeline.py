#!/usr/bin/env python3
"""task_timeline.py TRACE: where one task's time goes, from `strace -f -tt -T -o TRACE`
of hw-worker running spoolbench's latency tasks (one at a time, ids lat-NNNNNN).

Prints p50/p90/max of each step (file creations, fsyncs, spawn, execve) and
of the segments inotify event -> claim -> agent done -> result renamed.
strace slows process creation a lot: read the spawn figures as upper bounds.
Standard library only.  See docs/performance.md ("Where the time goes").
"""
import re, sys, statistics, collections
path = sys.argv[1]
L = re.compile(r'^(\d+)\s+(\d+):(\d+):([\d.]+)\s+(.*)$')
def ts(h, m, s): return int(h) * 3600 + int(m) * 60 + float(s)
calls = []  # (pid, start, name, args, ret, dur)
pend = {}
for ln in open(path, errors="replace"):
    m = L.match(ln.rstrip("\n"))
    if not m: continue
    pid, t, rest = m.group(1), ts(m.group(2), m.group(3), m.group(4)), m.group(5)
    if rest.startswith("+++") or rest.startswith("---"):
        calls.append((pid, t, "EXIT" if rest.startswith("+++") else "SIG", rest, "", 0.0)); continue
    r = re.match(r'<\.\.\. (\w+) resumed>(.*)$', rest)
    if r:
        if pid in pend:
            st, name, args = pend.pop(pid)
            d = re.search(r'<([\d.]+)>$', rest)
            calls.append((pid, st, name, args + r.group(2), "", float(d.group(1)) if d else 0.0))
        continue
    c = re.match(r'(\w+)\((.*)$', rest)
    if not c: continue
    name, args = c.group(1), c.group(2)
    if args.endswith("<unfinished ...>"):
        pend[pid] = (t, name, args); continue
    d = re.search(r'<([\d.]+)>$', rest)
    calls.append((pid, t, name, args, "", float(d.group(1)) if d else 0.0))
calls.sort(key=lambda c: c[1])
# per task
tasks = collections.defaultdict(dict)
fdpath = {}
stats = collections.defaultdict(list)
spawn_start = {}
for pid, t, name, args, _, dur in calls:
    tid = re.search(r'(lat-\d+)', args)
    if name == "read" and tid and ".x.tmp" in args:
        pass
    if name == "read" and "lat-" in args and "json\\0" in args:
        tasks[tid.group(1)].setdefault("event", t)  # IN_MOVED_TO read from inotify
    if name == "renameat2" and tid and ".active" in args:
        tasks[tid.group(1)]["claimed"] = t + dur
    if name == "openat" and "O_CREAT" in args:
        f = re.search(r'= (\d+)', args)
        kind = "trigger" if "/triggers/" in args else "result" if "/results/" in args else "other"
        stats[f"openat(O_CREAT) {kind} tmp"].append(dur)
        if f: fdpath[(pid, f.group(1))] = kind
        if tid and kind == "result": tasks[tid.group(1)]["result_open"] = t
        if tid and kind == "trigger": tasks[tid.group(1)]["trigger_open"] = t
    if name == "openat" and "O_CREAT" not in args and ("/triggers/bench\"" in args or "/results/bench\"" in args):
        f = re.search(r'= (\d+)', args)
        if f: fdpath[(pid, f.group(1))] = ("trigger" if "/triggers/" in args else "result") + " dir"
    if name == "fsync":
        fd = re.match(r'(\d+)', args).group(1)
        stats[f"fsync {fdpath.get((pid, fd), '?')}"].append(dur)
    if name == "rename" and tid and "/results/" in args:
        tasks[tid.group(1)]["result_renamed"] = t + dur
    if name == "clone3" and "CLONE_VFORK" in args:
        stats["posix_spawn (clone3 vfork -> child exec'd)"].append(dur)
        spawn_start[pid] = t
    if name == "wait4" and pid in spawn_start:
        stats["spawn -> agent reaped"].append(t + dur - spawn_start.pop(pid))
    if name == "execve" and "/true" in args:
        stats["execve /bin/true"].append(dur)
def ms(v): return f"{v*1000:7.3f}"
print(f"{'step':<45} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
for k in sorted(stats):
    v = sorted(stats[k])
    print(f"{k:<45} {len(v):>4} {ms(v[len(v)//2])} {ms(v[int(len(v)*0.9)])} {ms(v[-1])}")
seg = collections.defaultdict(list)
for tid, d in tasks.items():
    if all(k in d for k in ("event", "claimed", "result_open", "result_renamed")):
        seg["inotify read -> claimed (.active)"].append(d["claimed"] - d["event"])
        seg["claimed -> result tmp created (agent ran)"].append(d["result_open"] - d["claimed"])
        seg["result tmp -> result renamed"].append(d["result_renamed"] - d["result_open"])
        seg["inotify read -> result renamed"].append(d["result_renamed"] - d["event"])
for k, v in seg.items():
    v = sorted(v)
    print(f"{k:<45} {len(v):>4} {ms(v[len(v)//2])} {ms(v[int(len(v)*0.9)])} {ms(v[-1])}")
