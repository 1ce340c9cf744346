# Developer entry points; `make test` is what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
ARGS ?=

.PHONY: venv system-deps test-deps bench-deps bench bench-dkim bench-checks crash test lint serve clean

venv: $(VENV)/.stamp

# Reinstall only when the dependency list changes (pyproject.toml newer than the stamp).
# `make serve` needs only what serving needs; the test tools come with `make test`.
$(VENV)/.stamp: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test,fast,postgresql]'
	touch $@ $(VENV)/.stamp-serve

$(VENV)/.stamp-serve: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[fast]'
	touch $@

# Test peers, installed only when missing: swaks (Net::SSLeay gives it -tls), strace (holds
# the server inside a rename so a test can kill -9 it there), Postfix,
# preseeded to "No configuration" so no system instance is set up, Dovecot's LMTP
# server, HAProxy (the load balancer in front of a proxy_protocol listener),
# PostgreSQL (the shared queue's tests run initdb/pg_ctl in a temp dir; postgresql-common
# goes first so its createcluster.conf can say create_main_cluster = false before the
# server package's postinst would make /var/lib/postgresql/*/main), Chromium with its
# WebDriver (the web console's browser test, through Selenium) and Firefox ESR (the same
# test in Firefox, spoken to over WebDriver BiDi: Debian has no geckodriver). The
# interop tests and the bench run private instances in temp directories, so the install
# starts no service (tools/apt-install-no-start.sh), and a Dovecot or HAProxy installed
# here is also kept from starting at boot, as is PostgreSQL (one that was already there
# is left alone).
# Knot DNS (knotd) is the authoritative DNS server the tests run on loopback
# (tests/dns_server.py), and Mail::DKIM the independent verifier of Petrel's signatures;
# a knot installed here is kept from starting at boot too.
system-deps:
	@if ! command -v swaks >/dev/null 2>&1 || ! perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null \
			|| ! command -v postfix >/dev/null 2>&1 || ! test -x /usr/lib/dovecot/lmtp \
			|| ! test -x /usr/sbin/haproxy || ! command -v strace >/dev/null 2>&1 \
			|| ! test -x /usr/sbin/knotd || ! perl -MMail::DKIM::Verifier -e1 2>/dev/null \
			|| ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
			|| ! command -v chromium >/dev/null 2>&1 \
			|| ! command -v chromedriver >/dev/null 2>&1 \
			|| ! command -v firefox-esr >/dev/null 2>&1; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		if [ -e /usr/sbin/dovecot ]; then had_dovecot=yes; else had_dovecot=; fi; \
		if [ -e /usr/sbin/haproxy ]; then had_haproxy=yes; else had_haproxy=; fi; \
		if [ -e /usr/sbin/knotd ]; then had_knot=yes; else had_knot=; fi; \
		if [ -e /etc/init.d/postgresql ]; then had_postgresql=yes; else had_postgresql=; fi; \
		echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
		$$SUDO apt-get update && \
		$$SUDO sh tools/apt-install-no-start.sh \
			swaks libnet-ssleay-perl libio-socket-ssl-perl postfix dovecot-core dovecot-lmtpd \
			haproxy strace knot libmail-dkim-perl postgresql-common chromium chromium-driver \
			firefox-esr && \
		$$SUDO sed -ri 's/^#? *create_main_cluster *=.*/create_main_cluster = false/' \
			/etc/postgresql-common/createcluster.conf && \
		$$SUDO sh tools/apt-install-no-start.sh postgresql && \
		{ [ -n "$$had_dovecot" ] || $$SUDO update-rc.d dovecot disable || true; } && \
		{ [ -n "$$had_haproxy" ] || $$SUDO update-rc.d haproxy disable || true; } && \
		{ [ -n "$$had_knot" ] || $$SUDO update-rc.d knot disable || true; } && \
		{ [ -n "$$had_postgresql" ] || $$SUDO update-rc.d postgresql disable || true; }; \
	fi

# The second DKIM verifier of the tests: mailauth (Node.js), for the Ed25519 signatures
# that Debian 12's Mail::DKIM cannot check; pinned by tests/dkim_verify/package-lock.json.
test-deps: system-deps
	@if ! command -v npm >/dev/null 2>&1; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && $$SUDO sh tools/apt-install-no-start.sh nodejs npm; \
	fi
	@test -d tests/dkim_verify/node_modules/mailauth \
		|| (cd tests/dkim_verify && npm ci --no-audit --no-fund)

test: venv test-deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy --strict src

# Postfix gives the bench smtp-source and the side-by-side peer. The preseed keeps the
# package from configuring or starting a system instance; the bench runs its own. Knot
# DNS answers the lookups of the "petrel checks" target (bench/run.py), started by the
# bench in its temporary directory, never as a service.
bench-deps:
	@if ! command -v smtp-source >/dev/null 2>&1; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
		$$SUDO apt-get update && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix; \
	fi
	@if ! test -x /usr/sbin/knotd; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && $$SUDO sh tools/apt-install-no-start.sh knot && \
		{ $$SUDO update-rc.d knot disable || true; }; \
	fi

# Side by side with Postfix on loopback; QUICK=1 for a < 2 minute run. Writes bench/results/.
# Root is needed for the private Postfix instance (sudo is used when not root).
# BACKEND=postgresql: the shared queue instead (bench/pg_cluster.py): the spool, then 1, 2
# and 3 nodes on one private PostgreSQL, same run (MESSAGES, SESSIONS).
QUICK ?= 0
BACKEND ?= spool
bench: venv bench-deps
	@if [ "$(BACKEND)" = "postgresql" ]; then \
		exec $(VENV)/bin/python bench/pg_cluster.py $${MESSAGES:-2000} $${SESSIONS:-20}; \
	fi; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO="sudo --preserve-env=QUICK,RUNS,MESSAGES,WORKERS,TARGETS,PROBES,IDLE_SESSIONS,LATENCY_MESSAGES,BIG_MB,KEEP,CONSOLE"; fi; \
		QUICK=$(QUICK) $$SUDO $(VENV)/bin/python bench/run.py

# What DKIM signing costs: the signer alone, the event loop meanwhile, petrel serve
# with and without [[dkim.sign]] (bench/dkim_cost.py; MESSAGES, CLIENTS).
bench-dkim: venv
	cd bench && ../$(VENV)/bin/python dkim_cost.py

# What the inbound checks cost per message, alone (bench/checks_cost.py; ROUNDS); `make
# bench` has them end to end (its "petrel checks" target, against Knot DNS on loopback).
bench-checks: venv
	$(VENV)/bin/python bench/checks_cost.py

# kill -9 under load, again and again: every 250 must arrive exactly once (bench/crash.py).
crash: venv
	$(VENV)/bin/python bench/crash.py

serve: $(VENV)/.stamp-serve
	$(VENV)/bin/petrel serve $(ARGS)

# Leaves petrel-data/ alone: it holds mail.
clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
