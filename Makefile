# The two commands of the README: `make demo` and `make test`. Each sets up .venv first (idempotent:
# a second run skips installation unless the lock, pyproject.toml or this file changed).
#
# Dependencies come from requirements.lock only: every direct and transitive package at an exact version with
# hashes, resolved by uv for Python 3.10+. `make setup` installs exactly that set (uv pip sync: no resolving,
# nothing else) and then voicetune itself without dependencies. `make lock` regenerates the lock from
# pyproject.toml's ranges; then run `make test`, `make test-slow` and the GPU tests before committing it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.voicetune-installed
LOCK   := requirements.lock
DEMO_DIR ?= demo_run
PYTEST_ARGS ?=
export UV_PYTHON := $(PY)

.PHONY: setup system-deps demo test test-fast test-slow lint lock check-lock clean-venv

setup: system-deps $(STAMP)

# Debian packages: espeak-ng gives the metric tests a second real voice (Spanish too); chromium drives the
# web UI's browser tests (Playwright's own browser download cannot work offline). Needs root, as on CI.
SYSTEM_PACKAGES := espeak-ng chromium
system-deps:
	@missing=""; command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null; \
	    else echo "WARNING: missing Debian packages:$$missing (sudo apt-get install$$missing); tests that need them are skipped"; fi; \
	  fi

$(STAMP): $(LOCK) pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# uv itself, at the lock's version and hashes (it is a single wheel without dependencies)
	awk '/^uv==/{p=1} p&&/^    # via/{exit} p' $(LOCK) > $(VENV)/uv-bootstrap.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --require-hashes -r $(VENV)/uv-bootstrap.txt
	$(UV) pip sync --quiet --require-hashes $(LOCK)
	$(UV) pip install --quiet --no-deps -e .
	$(PY) -m voicetune.utils.lockcheck $(LOCK)
	$(PY) -c "import voicetune, TTS, resemblyzer, faster_whisper, silero_vad; print('voicetune set-up OK')"
	@touch $@

demo: setup
	$(VENV)/bin/voicetune demo --workdir $(DEMO_DIR)

# `make test` (what CI runs): the linter and the type checker first (`make lint`), then the fast tests. The
# tests run even when lint fails, so one run reports both; either failing fails `make test`. The 15 slowest
# tests are listed at the end (CI has 30 minutes on 2 cores: watch them).
test: setup
	@status=0; $(MAKE) --no-print-directory lint || status=1; \
	  $(PY) -m pytest -m "not slow and not gpu" --durations=15 $(PYTEST_ARGS) || status=1; \
	  if [ $$status -ne 0 ]; then echo "make test: FAILED (see the lint or pytest output above)"; fi; exit $$status

test-fast: setup
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: setup
	VOICETUNE_SLOW=1 $(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

# ruff (rules and the 110-column limit: pyproject.toml [tool.ruff]) over src, tests and benchmarks, then mypy
# over src (strict on backends/base.py, config.py and training/; the baseline of modules with known errors:
# pyproject.toml [tool.mypy]). Both run even when the first fails. The mypy cache lives in .venv.
lint: setup
	@status=0; echo "ruff check src tests benchmarks"; $(VENV)/bin/ruff check src tests benchmarks || status=1; \
	  echo "mypy (src/)"; $(VENV)/bin/mypy || status=1; exit $$status

# The installed set must equal the lock (the test suite checks this too).
check-lock: setup
	$(PY) -m voicetune.utils.lockcheck $(LOCK)

lock: setup
	$(UV) pip compile --quiet --universal --python-version 3.10 pyproject.toml --all-extras \
	  --override lock/overrides.txt --generate-hashes --no-header -o $(LOCK)
	@echo "Regenerated $(LOCK). Now run: make test && make test-slow, and the GPU tests (tests marked gpu)."

clean-venv:
	rm -rf $(VENV)
