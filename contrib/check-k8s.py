#!/usr/bin/env python3
"""check-k8s.py: check what the manifests in k8s/ promise each other.

kubernetes-validate checks each object against the API's schema; this
checks what no schema knows, with PyYAML:

  - one ReadWriteMany PersistentVolumeClaim, mounted at /shared by every
    Deployment;
  - the Deployments hw-worker-marie, -anga and -fabien: one replica, the
    worker's name as the last argument, in HW_WORKER and in the label
    hookwatch/worker; METRICS_ADDR 0.0.0.0; a liveness probe on /livez
    and a readiness probe on /healthz at the port METRICS_PORT names;
    --shutdown-timeout and --kill-grace in the arguments, and a
    terminationGracePeriodSeconds that covers them; memory requests and
    limits;
  - the Deployment hw-listen: one replica, running hw-listen as a daemon
    with --poll (inotify does not see the other nodes' writes to the
    shared volume), not --once;
  - every pod: runAsNonRoot with a non-zero uid, an fsGroup, a read-only
    root file system, no privilege escalation, and shareProcessNamespace
    (the pause container reaps the agents' orphans).

Exit status: 0 clean, or skipped with a message when PyYAML is missing;
1 with each failure printed.

    python3 contrib/check-k8s.py k8s/*.yaml       (make lint)
"""

import sys

WORKERS = ("marie", "anga", "fabien")

failures = []


def fail(what):
    failures.append(what)


def flag(args, name):
    for i, a in enumerate(args[:-1]):
        if a == name:
            try:
                return float(args[i + 1])
            except ValueError:
                return None
    return None


def mebibytes(quantity):
    """A memory quantity (512Mi, 2Gi, 1G) in MiB, or None."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    q = str(quantity)
    for u in sorted(units, key=len, reverse=True):
        if q.endswith(u):
            try:
                return float(q[: -len(u)]) * units[u]
            except ValueError:
                return None
    return None


def check_pod(name, pod, claim):
    sc = pod.get("securityContext") or {}
    if sc.get("runAsNonRoot") is not True or not sc.get("runAsUser"):
        fail(f"{name}: not runAsNonRoot with a non-zero runAsUser")
    if not sc.get("fsGroup"):
        fail(f"{name}: no fsGroup (the spool volume may not be writable)")
    if pod.get("shareProcessNamespace") is not True:
        fail(f"{name}: no shareProcessNamespace (nothing reaps the agents' orphans)")
    containers = pod.get("containers") or []
    if len(containers) != 1:
        fail(f"{name}: {len(containers)} containers, not one")
        return None
    c = containers[0]
    csc = c.get("securityContext") or {}
    if csc.get("readOnlyRootFilesystem") is not True:
        fail(f"{name}: the root file system is not read-only")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail(f"{name}: allowPrivilegeEscalation is not false")
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    spool = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/shared"]
    if len(spool) != 1:
        fail(f"{name}: nothing mounted at /shared")
    else:
        pvc = (volumes.get(spool[0]["name"]) or {}).get("persistentVolumeClaim") or {}
        if pvc.get("claimName") != claim:
            fail(f"{name}: /shared is not the claim {claim}")
    limits = (c.get("resources") or {}).get("limits") or {}
    requests = (c.get("resources") or {}).get("requests") or {}
    if mebibytes(requests.get("memory")) is None or mebibytes(limits.get("memory")) is None:
        fail(f"{name}: no memory request and limit")
    elif mebibytes(requests["memory"]) > mebibytes(limits["memory"]):
        fail(f"{name}: memory request above the limit")
    return c


def check_worker(worker, deployment, claim):
    name = deployment["metadata"]["name"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    if spec.get("replicas", 1) != 1:
        fail(f"{name}: {spec.get('replicas')} replicas: they would share one heartbeat")
    labels = spec["template"]["metadata"].get("labels") or {}
    if labels.get("hookwatch/worker") != worker:
        fail(f"{name}: label hookwatch/worker is {labels.get('hookwatch/worker')!r}")
    c = check_pod(name, pod, claim)
    if c is None:
        return
    args = [str(a) for a in c.get("args") or []]
    if c.get("command") or not args or args[-1] != worker:
        fail(f"{name}: does not run the image's hw-worker with {worker} as the last argument")
    env = {e["name"]: e.get("value") for e in c.get("env") or []}
    if env.get("HW_WORKER") != worker:
        fail(f"{name}: HW_WORKER is {env.get('HW_WORKER')!r}")
    if env.get("METRICS_ADDR") != "0.0.0.0":
        fail(f"{name}: METRICS_ADDR is {env.get('METRICS_ADDR')!r}: the probes come from the node")
    port = int(env.get("METRICS_PORT") or 9090)
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/healthz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        target = ports.get(get.get("port"), get.get("port"))
        if get.get("path") != path or target != port:
            fail(f"{name}: {probe} is not GET {path} on port {port}")
    shutdown = flag(args, "--shutdown-timeout")
    grace = flag(args, "--kill-grace")
    period = pod.get("terminationGracePeriodSeconds", 30)
    if shutdown is None or grace is None:
        fail(f"{name}: args do not give --shutdown-timeout and --kill-grace")
    elif period < shutdown + grace + 5:
        fail(
            f"{name}: terminationGracePeriodSeconds {period} does not cover "
            f"--shutdown-timeout {shutdown:g} + --kill-grace {grace:g} + 5"
        )


def main():
    paths = sys.argv[1:]
    try:
        import yaml
    except ImportError:
        print(f"check-k8s: PyYAML not installed, {' '.join(paths)} not checked")
        return 0
    print(f"check-k8s: {' '.join(paths)}")
    objects = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            objects += [d for d in yaml.safe_load_all(f) if d]
    claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    if len(claims) != 1:
        fail(f"{len(claims)} PersistentVolumeClaims, not one")
        return report()
    claim = claims[0]["metadata"]["name"]
    if claims[0]["spec"].get("accessModes") != ["ReadWriteMany"]:
        fail(f"{claim}: not ReadWriteMany: pods on different nodes share it")
    expected = {f"hw-worker-{w}" for w in WORKERS} | {"hw-listen"}
    if set(deployments) != expected:
        fail(f"Deployments are {sorted(deployments)}, expected {sorted(expected)}")
    for w in WORKERS:
        if f"hw-worker-{w}" in deployments:
            check_worker(w, deployments[f"hw-worker-{w}"], claim)
    listener = deployments.get("hw-listen")
    if listener:
        spec = listener["spec"]
        if spec.get("replicas", 1) != 1:
            fail("hw-listen: more than one replica: each event would be emitted twice")
        c = check_pod("hw-listen", spec["template"]["spec"], claim)
        argv = [] if c is None else c.get("command", []) + c.get("args", [])
        if c is not None and "hw-listen" not in " ".join(argv):
            fail("hw-listen: does not run hw-listen")
        if c is not None and not any(a == "--poll" or a.startswith("--poll=") for a in argv):
            fail("hw-listen: no --poll: on a volume shared between nodes inotify misses "
                 "the other nodes' writes")
        if c is not None and "--once" in " ".join(argv):
            fail("hw-listen: runs --once in a loop: run it as a daemon with --poll")
    return report()


def report():
    for f in failures:
        print(f"check-k8s: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
