# The two commands of the README: `make demo` and `make test`. Each sets up .venv first (idempotent:
# a second run skips installation unless pyproject.toml or constraints.txt changed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.voicetune-installed
PIP    := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
DEMO_DIR ?= demo_run
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-slow clean-venv

setup: system-deps $(STAMP)

# espeak-ng gives the metric tests a second real voice (Debian package; needs root, as on CI machines).
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	  else echo "WARNING: espeak-ng is missing; install it (sudo apt-get install espeak-ng) for the metric tests"; fi; }

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip wheel
	$(PIP) -e '.[dev,demo]'
	# resemblyzer declares `webrtcvad`, which does not import here; webrtcvad-wheels (a dependency
	# above) provides the same module, so resemblyzer itself goes in without its declared deps.
	$(PIP) --no-deps resemblyzer==0.1.4
	$(PY) -c "import voicetune, TTS, resemblyzer, faster_whisper, silero_vad; print('voicetune set-up OK')"
	@touch $@

demo: setup
	$(VENV)/bin/voicetune demo --workdir $(DEMO_DIR)

test: setup
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: setup
	VOICETUNE_SLOW=1 $(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
