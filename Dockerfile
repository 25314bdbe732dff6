# syntax=docker/dockerfile:1
# Dockerfile: the hookwatch image, one for every role: the five hw-*
# binaries on Debian bookworm-slim, run as the user hookwatch (uid and gid
# 10001, not root), the spool in the volume /shared.
#
#   docker build -t hookwatch .
#   docker volume create spool
#   docker run -d --stop-timeout 45 -v spool:/shared \
#       -e HW_WORKER=marie hookwatch marie                      # a worker
#   docker run -d -v spool:/shared --no-healthcheck \
#       --entrypoint hw-listen hookwatch                        # the listener
#   docker run --rm -v spool:/shared --entrypoint hw-status hookwatch
#
# docker-compose.yml runs three workers and the listener this way; k8s/
# does the same on Kubernetes.
#
# No --init needed: an agent's background children, orphaned, are
# re-parented to hw-worker (a child subreaper, PID 1 here), which reaps
# them (hw-worker(8), Orphans and PID 1); it handles SIGTERM itself.
#
# --stop-timeout 45: at SIGTERM the worker lets running tasks finish for
# --shutdown-timeout (30 s by default), stops the rest (SIGKILL
# --kill-grace, 5 s, after SIGTERM) and returns them to pending; docker's
# default of 10 s would SIGKILL it in the middle of that.
#
# The image holds no agent: the default CLAUDE_COMMAND, `claude`, is not
# in it, and every task fails with exit status 127 until it is.  Build
# your own image on this one with the agent installed, for example:
#
#   FROM hookwatch
#   USER root
#   RUN apt-get update \
#    && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
#    && npm install -g @anthropic-ai/claude-code \
#    && rm -rf /var/lib/apt/lists/*
#   USER 10001:10001

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
# The home is where an agent keeps its login and settings (~/.claude).
# /shared belongs to hookwatch, mode 0750: a new named volume takes that
# from the image, and the worker refuses a tasks folder that other users
# may write to.  --no-log-init: no sparse lastlog entry for the high uid.
RUN groupadd --gid 10001 hookwatch \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home \
        --home-dir /home/hookwatch --shell /usr/sbin/nologin hookwatch \
 && install -d -o 10001 -g 10001 -m 0750 /shared
COPY --from=build \
    /src/target/release/hw-worker \
    /src/target/release/hw-listen \
    /src/target/release/hw-enqueue \
    /src/target/release/hw-dlq \
    /src/target/release/hw-status \
    /usr/local/bin/
ENV HW_ROOT=/shared
VOLUME /shared
# Numeric, so that Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
WORKDIR /home/hookwatch
# /metrics, /healthz, /livez; METRICS_ADDR=0.0.0.0 to reach it from
# outside the container (the default, 127.0.0.1, keeps it inside).
EXPOSE 9090

# Healthy while the heartbeat of the worker HW_WORKER is fresh and says it
# runs ("healthy", or "degraded" while its circuit breaker is open, which
# passes by itself): that is, the loop that claims tasks is alive.  From
# the spool, so it needs neither a port nor an HTTP client in the image.
# Not hw-status's exit status: 1 ("warning") is a stale or stopped
# heartbeat, a worker that is down, but also merely dead letters present.
# One worker per container, so HW_WORKER must name it (the same NAME as
# the argument); without it, the check fails and says why.  The first
# heartbeat is written at start-up, so a short start period will do.
# docker-compose.yml checks /healthz instead.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["sh", "-c", "if [ -z \"$HW_WORKER\" ]; then echo 'HW_WORKER is not set: no worker to check' >&2; exit 1; fi; hw-status -w \"$HW_WORKER\" --json | grep -Eq '\"status\":\"(healthy|degraded)\"'"]

ENTRYPOINT ["hw-worker"]
