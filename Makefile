# Developer entry points; `make test` is what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
ARGS ?=

.PHONY: venv system-deps test lint serve clean

venv: $(VENV)/.stamp

# Reinstall only when the dependency list changes (pyproject.toml newer than the stamp).
$(VENV)/.stamp: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test,fast]'
	touch $@

# swaks drives the end-to-end tests (Net::SSLeay gives it -tls); install only when missing.
system-deps:
	@if ! command -v swaks >/dev/null 2>&1 || ! perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y swaks libnet-ssleay-perl libio-socket-ssl-perl; \
	fi

test: venv system-deps
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests

serve: venv
	$(VENV)/bin/petrel serve $(ARGS)

# Leaves petrel-data/ alone: it holds mail.
clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
