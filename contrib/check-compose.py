#!/usr/bin/env python3
"""check-compose.py: check docker-compose.yml, and the Dockerfile it builds.

Parses the compose file with PyYAML (merge keys resolved, as compose does)
and asserts what the deployment relies on, without Docker:

  - the services: the workers marie, anga and fabien, and the listener,
    all running one image that the user names (an `image:` with a
    variable, HOOKWATCH_IMAGE) and none building it; and one build-only
    service, in a profile (so `up` does not start it), that builds the
    Dockerfile under a local name of its own: a build next to the user's
    `image:` would tag the agent-less image with the user's name;
  - one named volume, declared at the top, mounted at /shared by every
    service (no bind mounts: the spool must be the same for all);
  - each worker: the image's entrypoint (hw-worker), its own name as the
    last argument of `command` and in HW_WORKER, --shutdown-timeout and
    --kill-grace in `command` with a stop_grace_period that covers them,
    METRICS_ADDR 0.0.0.0, ANTHROPIC_API_KEY passed through from the
    environment (no value of its own), a health check that requests /healthz on
    127.0.0.1 at METRICS_PORT and wants 200, no `init` (hookwatch reaps
    orphans itself as PID 1), a restart policy, and a host port of its own;
  - the listener: entrypoint hw-listen, no init, restart, and the image's
    worker health check turned off;
  - the Dockerfile: multi-stage with `cargo build --release --locked`,
    all five binaries copied, a numeric non-root USER, VOLUME /shared,
    a HEALTHCHECK, ENTRYPOINT ["hw-worker"].

Exit status: 0 clean, or skipped with a message when PyYAML is missing;
1 with each failure printed.

    python3 contrib/check-compose.py [docker-compose.yml]    (make lint)
"""

import json
import os
import re
import sys

WORKERS = ("marie", "anga", "fabien")
LISTENER = "listen"
BUILDER = "image"
BINARIES = ("hw-worker", "hw-listen", "hw-enqueue", "hw-dlq", "hw-status")

failures = []


def fail(what):
    failures.append(what)


def seconds(value):
    """A compose duration (45s, 1m30s, 90) in seconds, or None."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(value))
    if not parts or "".join(n + u for n, u in parts) != str(value):
        return None
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def flag(args, name):
    """The value after --name in an argument list, as a number, or None."""
    for i, a in enumerate(args[:-1]):
        if a == name:
            try:
                return float(args[i + 1])
            except ValueError:
                return None
    return None


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def check_volumes(compose):
    declared = compose.get("volumes") or {}
    used = set()
    for name, service in compose["services"].items():
        mounts = service.get("volumes") or []
        at_shared = []
        for m in mounts:
            if isinstance(m, str):
                source, _, rest = m.partition(":")
                target = rest.split(":")[0]
            else:
                source, target = m.get("source"), m.get("target")
            if target == "/shared":
                at_shared.append(source)
        if len(at_shared) != 1:
            fail(f"{name}: mounts {len(at_shared)} volumes at /shared, not one")
            continue
        source = at_shared[0]
        if source.startswith((".", "/", "~")):
            fail(f"{name}: /shared is a bind mount ({source}), not the named volume")
        elif source not in declared:
            fail(f"{name}: volume {source} is not declared under volumes:")
        used.add(source)
    if len(used) > 1:
        fail(f"the services mount different volumes at /shared: {sorted(used)}")


def check_worker(name, service, dockerfile_entrypoint):
    entrypoint = service.get("entrypoint", dockerfile_entrypoint)
    if isinstance(entrypoint, str):
        entrypoint = entrypoint.split()
    if entrypoint != ["hw-worker"]:
        fail(f"{name}: entrypoint {entrypoint}, not hw-worker")
    command = service.get("command")
    if isinstance(command, str):
        command = command.split()
    if not command or command[-1] != name:
        fail(f"{name}: command {command} does not end with the worker name")
        command = command or []
    env = environment(service)
    if env.get("HW_WORKER") != name:
        fail(f"{name}: HW_WORKER is {env.get('HW_WORKER')!r}, not {name!r}")
    shutdown = flag(command, "--shutdown-timeout")
    grace = flag(command, "--kill-grace")
    stop = seconds(service.get("stop_grace_period", "10s"))
    if shutdown is None or grace is None:
        fail(f"{name}: command does not give --shutdown-timeout and --kill-grace")
    elif stop is None or stop < shutdown + grace + 5:
        fail(
            f"{name}: stop_grace_period {service.get('stop_grace_period')} does not "
            f"cover --shutdown-timeout {shutdown:g} + --kill-grace {grace:g} + 5 s"
        )
    if "ANTHROPIC_API_KEY" not in env:
        fail(f"{name}: ANTHROPIC_API_KEY is not passed through to the agent")
    elif env["ANTHROPIC_API_KEY"] not in (None, "${ANTHROPIC_API_KEY}", "${ANTHROPIC_API_KEY:-}"):
        fail(f"{name}: ANTHROPIC_API_KEY has a value of its own: a secret in the file")
    if env.get("METRICS_ADDR") != "0.0.0.0":
        fail(f"{name}: METRICS_ADDR is {env.get('METRICS_ADDR')!r}, not 0.0.0.0")
    port = env.get("METRICS_PORT", "9090")
    health = service.get("healthcheck") or {}
    test = health.get("test")
    if health.get("disable") or not test:
        fail(f"{name}: no health check")
    else:
        text = " ".join(test) if isinstance(test, list) else str(test)
        if not (isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL")):
            fail(f"{name}: healthcheck test is not a CMD or CMD-SHELL list")
        if "/healthz" not in text:
            fail(f"{name}: the health check does not request /healthz")
        if f"127.0.0.1/{port}" not in text and f"127.0.0.1:{port}" not in text:
            fail(f"{name}: the health check does not go to 127.0.0.1 port {port}")
        if "200" not in text:
            fail(f"{name}: the health check does not look for status 200")
        if re.search(r"(?<!\$)\$(?!\$)", text):
            fail(f"{name}: a single $ in the health check is compose's, not the shell's: write $$")
        for key in ("interval", "timeout"):
            if seconds(health.get(key, "30s")) is None:
                fail(f"{name}: healthcheck {key} {health.get(key)!r} is not a duration")
    for port_spec in service.get("ports") or []:
        if not str(port_spec).endswith(f":{port}"):
            fail(f"{name}: port {port_spec} does not publish METRICS_PORT {port}")


def check_common(name, service):
    if "init" in service:
        fail(f"{name}: `init` is set: hw-worker and hw-listen reap orphans themselves "
             "as PID 1 (hw-worker(8), Orphans and PID 1); an init is one process too many")
    if service.get("restart") not in ("always", "unless-stopped", "on-failure"):
        fail(f"{name}: restart is {service.get('restart')!r}")
    if service.get("build"):
        fail(f"{name}: builds an image: the build would be tagged with the image the "
             f"user names ({service.get('image')}); only the {BUILDER} service builds")
    if "${" not in str(service.get("image", "")):
        fail(f"{name}: image {service.get('image')!r} cannot be replaced "
             "(no ${HOOKWATCH_IMAGE...}): the user's image, with the agent, goes there")


def check_dockerfile(path):
    """Returns the ENTRYPOINT, as a list."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        fail(f"{path}: {e.strerror}")
        return None
    # Continuation lines joined, comments dropped.
    text = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    if len(froms) < 2:
        fail(f"{path}: not a multi-stage build")
    if not any(re.search(r"cargo build .*--release.*--locked|cargo build .*--locked.*--release", l) for l in lines):
        fail(f"{path}: no `cargo build --release --locked`")
    copies = " ".join(l for l in lines if l.upper().startswith("COPY --FROM"))
    for b in BINARIES:
        if f"/release/{b}" not in copies:
            fail(f"{path}: {b} is not copied into the image")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        fail(f"{path}: the last USER is not a numeric non-root uid: {users[-1:] or 'none'}")
    if not any(re.fullmatch(r"VOLUME\s+(/shared|\[\s*\"/shared\"\s*\])", l) for l in lines):
        fail(f"{path}: no VOLUME /shared")
    if not any(l.upper().startswith("HEALTHCHECK ") for l in lines):
        fail(f"{path}: no HEALTHCHECK")
    entry = [l for l in lines if l.upper().startswith("ENTRYPOINT ")]
    try:
        entrypoint = json.loads(entry[-1].split(None, 1)[1]) if entry else None
    except ValueError:
        entrypoint = None
    if entrypoint != ["hw-worker"]:
        fail(f"{path}: ENTRYPOINT is not [\"hw-worker\"] (exec form)")
    return entrypoint


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
    try:
        import yaml
    except ImportError:
        print(f"check-compose: PyYAML not installed, {path} not checked")
        return 0
    print(f"check-compose: {path}")
    with open(path, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    all_services = compose.get("services") or {}
    expected = set(WORKERS) | {LISTENER, BUILDER}
    if set(all_services) != expected:
        fail(f"services are {sorted(all_services)}, expected {sorted(expected)}")
    builder = all_services.get(BUILDER) or {}
    services = {n: s for n, s in all_services.items() if n != BUILDER}

    builds = {
        (s.get("build") if isinstance(s.get("build"), str) else (s.get("build") or {}).get("context"))
        for s in all_services.values()
    } - {None}
    if BUILDER in all_services:
        if not builder.get("profiles"):
            fail(f"{BUILDER}: not in a profile: `docker compose up` would start it")
        if not builder.get("build"):
            fail(f"{BUILDER}: builds nothing")
        image = str(builder.get("image", ""))
        if not image or "${" in image or "/" in image:
            fail(f"{BUILDER}: image {image!r} is not a fixed local name")
        running = {str(s.get("image")) for s in services.values()}
        if len(running) != 1:
            fail(f"the services run different images: {sorted(running)}")
        elif image and image not in next(iter(running)):
            fail(f"the services' image {next(iter(running))} does not default to "
                 f"the one {BUILDER} builds, {image}")
    dockerfile_entrypoint = None
    for context in builds:
        dockerfile = os.path.join(os.path.dirname(os.path.abspath(path)), context, "Dockerfile")
        dockerfile_entrypoint = check_dockerfile(dockerfile)
    if not builds:
        fail("no service builds the image (build:)")

    check_volumes({**compose, "services": services})
    for name in WORKERS:
        if name in services:
            check_common(name, services[name])
            check_worker(name, services[name], dockerfile_entrypoint)
    if LISTENER in services:
        listener = services[LISTENER]
        check_common(LISTENER, listener)
        entrypoint = listener.get("entrypoint")
        if isinstance(entrypoint, str):
            entrypoint = entrypoint.split()
        if not entrypoint or entrypoint[0] != "hw-listen":
            fail(f"{LISTENER}: entrypoint {entrypoint}, not hw-listen")
        health = listener.get("healthcheck") or {}
        if not health.get("disable") and not health.get("test"):
            fail(f"{LISTENER}: inherits the image's worker health check (HW_WORKER unset): "
                 "give it its own or disable it")
    host_ports = [str(p).rsplit(":", 1)[0] for s in services.values() for p in s.get("ports") or []]
    if len(host_ports) != len(set(host_ports)):
        fail(f"two services publish the same host port: {host_ports}")

    for f in failures:
        print(f"check-compose: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
