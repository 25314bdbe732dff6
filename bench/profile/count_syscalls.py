#!/usr/bin/env python3
"""count_syscalls.py TRACE NTASKS: syscalls per task from `strace -f -tt -T -o TRACE` of hw-worker.

Splits the worker's own threads from the agents it starts (every process that
called execve, apart from hw-worker itself, from its clone on).  Standard
library only.  See docs/performance.md ("Where the time goes") for the run.
"""
import collections
import re
import sys

path, ntasks = sys.argv[1], int(sys.argv[2])
lines = open(path, errors="replace").read().splitlines()
agents = set()
for ln in lines:
    m = re.match(r"^(\d+)\s+[\d:.]+\s+execve\(", ln)
    if m and "hw-worker" not in ln:
        agents.add(m.group(1))
call = re.compile(r"^(\d+)\s+[\d:.]+\s+(\w+)\(")
worker, agent, wtime = collections.Counter(), collections.Counter(), collections.Counter()
for ln in lines:
    m = call.match(ln)
    if not m:
        continue
    pid, name = m.group(1), m.group(2)
    (agent if pid in agents else worker)[name] += 1
for ln in lines:  # time spent: on the complete line or on the "resumed" one
    m = re.match(r"^(\d+)\s+[\d:.]+\s+(?:<\.\.\. (\w+) resumed>|(\w+)\().*<([\d.]+)>$", ln)
    if m and m.group(1) not in agents:
        wtime[m.group(2) or m.group(3)] += float(m.group(4))
print(f"hw-worker's threads, per task ({ntasks} tasks):  calls   time in call, ms")
for k, v in worker.most_common():
    if v / ntasks >= 0.5:
        print(f"  {k:<20} {v / ntasks:6.2f}   {wtime[k] * 1000 / ntasks:8.3f}")
print(f"  {'all':<20} {sum(worker.values()) / ntasks:6.2f}")
print("agents (fork to exit of /bin/true), per task:")
for k, v in agent.most_common(8):
    print(f"  {k:<20} {v / ntasks:6.2f}")
print(f"  {'all':<20} {sum(agent.values()) / ntasks:6.2f}")
