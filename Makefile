# The two commands of the README. Both set up everything they need on a fresh machine
# (Python 3.11+, Java 17+ and Maven on PATH) and are safe to run again.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint clean

run: $(VENV)/.ready  ## start the local broker, a worker and a sample stream; Ctrl-C stops all
	$(BIN)/currents demo

test: $(VENV)/.ready  ## lint, then the whole suite against a real broker it starts itself
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(VENV)/.ready
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/currents kafka fetch
	@# the browser test of the user page uses Debian's headless Chromium (skipped without it)
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null \
		|| ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y --no-install-recommends chromium) \
		|| echo "chromium not installed: the browser test will be skipped"
	touch $@

clean:  ## remove local broker data and worker state (keeps the venv and jar cache)
	rm -rf .currents
