# hookwatch: build, test, lint and install.  `make demo` shows it working.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
CARGO ?= cargo
INSTALL ?= install

BINS = hw-worker hw-listen hw-enqueue hw-dlq hw-status
MANS = $(wildcard man/*.[1-8])

all: build

build:
	$(CARGO) build --release

test:
	$(CARGO) test --release

demo: build
	bash examples/demo.sh

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

# A live worker's /metrics through `promtool check metrics`.
check-metrics: build
	bash examples/promtool-check.sh

# Installs what `make` built; it does not build (so `sudo make install`
# runs no cargo as root).
install:
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	@for b in $(BINS); do \
		if [ -f target/release/$$b ]; then \
			echo "$(INSTALL) -m 755 target/release/$$b $(DESTDIR)$(BINDIR)/$$b"; \
			$(INSTALL) -m 755 target/release/$$b $(DESTDIR)$(BINDIR)/$$b || exit; \
		else \
			echo "install: target/release/$$b not built, skipped (run make first)"; \
		fi; \
	done
	@for m in $(MANS); do \
		d=$(DESTDIR)$(MANDIR)/man$${m##*.}; \
		echo "$(INSTALL) -m 644 $$m $$d/"; \
		$(INSTALL) -d $$d && $(INSTALL) -m 644 $$m $$d/ || exit; \
	done

uninstall:
	for b in $(BINS); do rm -f $(DESTDIR)$(BINDIR)/$$b; done
	for m in $(notdir $(MANS)); do rm -f $(DESTDIR)$(MANDIR)/man$${m##*.}/$$m; done

clean:
	$(CARGO) clean

.PHONY: all build test demo lint check-metrics install uninstall clean
