# hookwatch: build, test, lint and install.  `make demo` shows it working.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
DOCDIR ?= $(PREFIX)/share/doc/hookwatch
DATADIR ?= $(PREFIX)/share/hookwatch
CARGO ?= cargo
INSTALL ?= install
# Where cargo puts what it builds: CARGO_TARGET_DIR, build.target-dir of
# a .cargo/config.toml, or target/ (asked of cargo once; target/ when
# cargo cannot answer, as under a sudo without it on PATH).  BIN_DIR, the
# release binaries, is what demo, the checks and install use.
TARGET_DIR := $(or $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | \
	sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'),target)
BIN_DIR ?= $(TARGET_DIR)/release

BINS = hw-worker hw-listen hw-enqueue hw-dlq hw-status
MANS = $(wildcard man/*.[1-8])
UNITS = contrib/systemd/hw-worker@.service contrib/systemd/hw-listen.service
# The Kubernetes release whose API kubernetes-validate checks k8s/ against.
K8S_VERSION ?= 1.30.0

all: build

build:
	$(CARGO) build --release

test:
	$(CARGO) test --profile testing

# The slow tests: the 40,000-task flood (tests/faults.rs) and the
# 100,000 mutated task files (tests/it); .ci/run runs them too. The other
# ignored tests have their own targets: test-claude and test-gluster.
test-slow:
	$(CARGO) test --profile testing --test faults --test it -- --ignored

# The contract tests against the real Claude Code CLI (tests/claude_cli.rs):
# the pinned version of the npm package, installed once into a cache outside
# the repository with no package script run (tests/claude-cli.sh), run with
# an empty HOME and no key: no login, no cost.  Needs npm (and the network)
# the first time only.  `make test` does not run them.
CLAUDE_CODE_VERSION ?= 2.1.197
CLAUDE_CODE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hookwatch/claude-code-$(CLAUDE_CODE_VERSION)
CLAUDE_CLI = bash tests/claude-cli.sh $(CLAUDE_CODE_VERSION) "$(CLAUDE_CODE_DIR)"

claude-cli:
	@$(CLAUDE_CLI) >/dev/null

test-claude:
	@cli=$$($(CLAUDE_CLI)) || exit; \
	set -x; HW_CLAUDE_CLI=$$cli $(CARGO) test --profile testing --test claude_cli \
		-- --ignored --nocapture --test-threads 1

demo: build
	BIN_DIR='$(BIN_DIR)' bash examples/demo.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	@if command -v mandoc >/dev/null 2>&1; then \
		echo "mandoc -T lint -W warning $(MANS)"; \
		mandoc -T lint -W warning $(MANS); \
	else \
		echo "lint: mandoc not installed, man pages not checked"; \
	fi
	@if command -v promtool >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory check-metrics; \
	else \
		echo "lint: promtool not installed, /metrics not checked"; \
	fi
	@if command -v systemd-analyze >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory check-systemd; \
	else \
		echo "lint: systemd-analyze not installed, units not checked"; \
	fi
	@$(MAKE) --no-print-directory check-completion check-containers check-monitoring

# A live worker's /metrics through `promtool check metrics`.
check-metrics: build
	BIN_DIR='$(BIN_DIR)' bash examples/promtool-check.sh

# contrib/systemd: systemd-analyze verify on the units (run from the
# built binaries), the sysusers.d and tmpfiles.d files in a scratch root.
check-systemd: build
	BIN_DIR='$(BIN_DIR)' bash contrib/check-systemd.sh

# The bash completion: syntax, `complete -p`, every --help flag offered.
check-completion: build
	BIN_DIR='$(BIN_DIR)' bash contrib/check-completion.sh

# contrib/prometheus and contrib/grafana: the alert rules (promtool check
# and test rules), the dashboard, the metric names both use against a live
# worker's /metrics, and hw-status-textfile.  Skips what lacks its tool.
check-monitoring: build
	BIN_DIR='$(BIN_DIR)' bash contrib/check-monitoring.sh

# docker-compose.yml with the Dockerfile, and k8s/: what they promise
# each other (PyYAML), and k8s/ against the API (kubernetes-validate).
# Each part says so and passes when its tool is missing.
check-containers:
	@if command -v python3 >/dev/null 2>&1; then \
		python3 contrib/check-compose.py docker-compose.yml && \
		python3 contrib/check-k8s.py k8s/*.yaml; \
	else \
		echo "lint: python3 not installed, docker-compose.yml and k8s/ not checked"; \
	fi
	@if command -v kubernetes-validate >/dev/null 2>&1; then \
		echo "kubernetes-validate -k $(K8S_VERSION) --strict k8s/*.yaml"; \
		kubernetes-validate -k $(K8S_VERSION) --strict --quiet k8s/*.yaml; \
	else \
		echo "lint: kubernetes-validate not installed, k8s/ not validated"; \
	fi

# Installs what `make` built; it does not build (so `sudo make install`
# builds nothing as root).  A sudo that drops CARGO_TARGET_DIR needs
# BIN_DIR: `sudo make install BIN_DIR=$CARGO_TARGET_DIR/release`.
install:
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	@for b in $(BINS); do \
		if [ -f '$(BIN_DIR)'/$$b ]; then \
			echo "$(INSTALL) -m 755 $(BIN_DIR)/$$b $(DESTDIR)$(BINDIR)/$$b"; \
			$(INSTALL) -m 755 '$(BIN_DIR)'/$$b $(DESTDIR)$(BINDIR)/$$b || exit; \
		else \
			echo "install: $(BIN_DIR)/$$b not built, skipped (run make first)"; \
		fi; \
	done
	@for m in $(MANS); do \
		d=$(DESTDIR)$(MANDIR)/man$${m##*.}; \
		echo "$(INSTALL) -m 644 $$m $$d/"; \
		$(INSTALL) -d $$d && $(INSTALL) -m 644 $$m $$d/ || exit; \
	done
	$(INSTALL) -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(COMPLETIONDIR) $(DESTDIR)$(DOCDIR)
	@for u in $(UNITS); do \
		t=$(DESTDIR)$(UNITDIR)/$${u##*/}; \
		echo "sed 's|/usr/local/bin/|$(BINDIR)/|g' $$u >$$t"; \
		sed 's|/usr/local/bin/|$(BINDIR)/|g' $$u >$$t && chmod 644 $$t || exit; \
	done
	$(INSTALL) -m 644 contrib/systemd/hookwatch.sysusers $(DESTDIR)$(SYSUSERSDIR)/hookwatch.conf
	$(INSTALL) -m 644 contrib/systemd/hookwatch.tmpfiles $(DESTDIR)$(TMPFILESDIR)/hookwatch.conf
	$(INSTALL) -m 644 contrib/systemd/hookwatch.env $(DESTDIR)$(DOCDIR)/hookwatch.env
	$(INSTALL) -m 644 contrib/bash-completion/hookwatch $(DESTDIR)$(COMPLETIONDIR)/hookwatch
	$(INSTALL) -d $(DESTDIR)$(DATADIR)/claude-code
	$(INSTALL) -m 755 contrib/claude-code/enqueue-review $(DESTDIR)$(DATADIR)/claude-code/
	$(INSTALL) -m 644 contrib/claude-code/settings.json $(DESTDIR)$(DATADIR)/claude-code/
	for b in $(BINS); do ln -sf hookwatch $(DESTDIR)$(COMPLETIONDIR)/$$b || exit; done

uninstall:
	for b in $(BINS); do rm -f $(DESTDIR)$(BINDIR)/$$b; done
	for m in $(notdir $(MANS)); do rm -f $(DESTDIR)$(MANDIR)/man$${m##*.}/$$m; done
	for u in $(notdir $(UNITS)); do rm -f $(DESTDIR)$(UNITDIR)/$$u; done
	rm -f $(DESTDIR)$(SYSUSERSDIR)/hookwatch.conf $(DESTDIR)$(TMPFILESDIR)/hookwatch.conf
	for f in hookwatch $(BINS); do rm -f $(DESTDIR)$(COMPLETIONDIR)/$$f; done
	rm -f $(DESTDIR)$(DOCDIR)/hookwatch.env
	rm -f $(DESTDIR)$(DATADIR)/claude-code/enqueue-review $(DESTDIR)$(DATADIR)/claude-code/settings.json
	rmdir $(DESTDIR)$(DATADIR)/claude-code $(DESTDIR)$(DATADIR) 2>/dev/null || true
	rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null || true

clean:
	$(CARGO) clean

.PHONY: all build test test-slow claude-cli test-claude demo lint check-metrics check-systemd check-completion \
	check-containers check-monitoring install uninstall clean

# Benchmark: hw-worker against the peers that are installed (bench/peers/),
# in alternated rounds on the disk and on a tmpfs, with the machine's floor;
# one table of medians and spreads, and bench/results/latest.jsonl; see
# docs/performance.md.  BENCH_ARGS=--quick for a smoke run, e.g.
# BENCH_ARGS='--rounds 5 --column "x=exec /other/hw-worker --no-metrics bench"'
# for an A/B.  bench-deps installs the peers' tools.
bench: build
	python3 bench/run.py --bin-dir '$(BIN_DIR)' $(BENCH_ARGS)

bench-deps:
	apt-get update && apt-get install -y inotify-tools
	python3 -m pip install watchdog

.PHONY: bench bench-deps

# Many hosts on a real GlusterFS volume (tests/gluster.rs, issue #16):
# the release binaries, a volume mounted four times on this machine by
# tests/gluster/setup.sh (which installs glusterfs-server and
# glusterfs-client the first time) and taken down again by teardown.sh.
# Needs root and /dev/fuse; says "skipped: why" without them.  About 3
# minutes.  `make test` does not run it.
test-gluster:
	$(CARGO) test --release --test gluster -- --ignored --nocapture --test-threads 1

.PHONY: test-gluster
