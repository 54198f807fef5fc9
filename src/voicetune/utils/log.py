"""Logging set-up for the CLI (library code only calls ``logging.getLogger(__name__)``).

Two destinations:

* the console: voicetune's own messages (time, and the level when it is not INFO), written through tqdm so
  that progress bars stay intact; third-party messages and warnings that say nothing to a voicetune user
  (:data:`HARMLESS`) are left out, unless ``--verbose``;
* a log file (``--log-file``; ``train`` writes ``RUN_DIR/train.log``): everything, with logger names and
  tracebacks, third-party warnings included.

Python warnings are captured into logging (``py.warnings``), and transformers' own stderr handler is replaced
by propagation (:func:`route_library_logging`), so both pass through the same filter and reach the file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

CONSOLE_FORMAT = "%(asctime)s %(levelprefix)s%(message)s"
VERBOSE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Third-party log messages that are harmless and say nothing to a voicetune user: kept out of the console,
# still written to the log file.
HARMLESS: list[re.Pattern[str]] = [re.compile(p) for p in (
    # transformers (seen in every XTTS load): GPT2Config's default bos/eos ids (50256) lie outside XTTS's
    # small text vocabulary; XTTS never uses them
    r"(bos|eos|pad)_token_id must be `None` or an integer within the vocabulary",
    # transformers 4.4x-5.x: coqui-tts's XTTS passes its KV cache the old way (past_key_values deprecation)
    r"`past_key_values`.*(deprecated|legacy|as a tuple)",
)]
# Python warnings (captured as "py.warnings" records) that are harmless on the console: deprecation notices of
# any package, and UserWarnings raised inside the model libraries (e.g. torch's weight_norm/stft notices).
HARMLESS_WARNINGS = re.compile(r"\b(FutureWarning|DeprecationWarning|PendingDeprecationWarning):|"
                               r"[/\\](torch|torchaudio|TTS|resemblyzer|librosa|transformers|distillmos)[/\\]"
                               r".*\bUserWarning:")
_THIRD_PARTY_QUIET = ("TTS", "trainer", "numba", "matplotlib", "urllib3", "faster_whisper", "httpx", "PIL",
                      "fsspec", "filelock", "h5py", "tensorboard")


def harmless(record: logging.LogRecord) -> bool:
    """True for a third-party record matching :data:`HARMLESS` (voicetune's own records never are)."""
    if record.name == "voicetune" or record.name.startswith("voicetune."):
        return False
    msg = record.getMessage()
    if record.name == "py.warnings" and HARMLESS_WARNINGS.search(msg):
        return True
    return any(p.search(msg) for p in HARMLESS)


class ConsoleFilter(logging.Filter):
    """Keeps harmless third-party messages off the console; adds ``levelprefix`` ("" for INFO)."""

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelprefix = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        return self.verbose or not harmless(record)


class TqdmHandler(logging.StreamHandler):
    """A stderr handler that writes through ``tqdm.write``, so log lines never cut a progress bar in two."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise; the handler reports it as logging does
            self.handleError(record)


class DeferredFileHandler(logging.Handler):
    """Appends every record to ``path``. Until ``ready()`` says the folder is there and voicetune's own
    (default: the folder exists; for a run folder: ``train`` has written its config.yaml), records are kept in
    memory and written when it is; :meth:`close` drops them if it never is, so a command that fails early
    writes nothing into a folder it did not make."""

    def __init__(self, path: Path | str, ready: Callable[[], bool] | None = None, max_buffered: int = 20000):
        super().__init__(logging.DEBUG)
        self.path = Path(path)
        self.ready = ready or self.path.parent.is_dir
        self.max_buffered = max_buffered
        self._buffer: list[str] = []
        self._file: TextIO | None = None
        self.setFormatter(logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        # voicetune's DEBUG records (every training step, tracebacks); other libraries' INFO and up (their
        # DEBUG chatter, e.g. Piper's phonemes or HTTP connection attempts, would bury the rest)
        self.addFilter(lambda r: r.levelno >= logging.INFO or r.name.split(".")[0] == "voicetune")

    def _open(self) -> bool:
        if self._file is None and self.ready():
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open while logging
            self._file.writelines(line + "\n" for line in self._buffer)
            self._buffer.clear()
        return self._file is not None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self._open():
                assert self._file is not None
                self._file.write(line + "\n")
                self._file.flush()
            elif len(self._buffer) < self.max_buffered:
                self._buffer.append(line)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            self._open()
            if self._file is not None:
                self._file.close()
                self._file = None
            self._buffer.clear()
        finally:
            self.release()
            super().close()


def setup_logging(verbose: bool = False, log_file: Path | str | None = None) -> None:
    """Console (INFO, or DEBUG with ``verbose``; harmless third-party noise filtered) and an optional file."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, (TqdmHandler, DeferredFileHandler)):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.DEBUG)
    console = TqdmHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.addFilter(ConsoleFilter(verbose))
    console.setFormatter(logging.Formatter(VERBOSE_FORMAT if verbose else CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(console)
    if log_file:
        add_log_file(log_file)
    for name in _THIRD_PARTY_QUIET:  # their INFO/DEBUG chatter floods even the log file
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_log_file(path: Path | str, ready: Callable[[], bool] | None = None) -> DeferredFileHandler:
    """Write every record (DEBUG and up, third-party warnings included) to ``path`` from now on (from when
    ``ready()`` first holds, records before it included)."""
    handler = DeferredFileHandler(path, ready)
    logging.getLogger().addHandler(handler)
    return handler


def close_log_files() -> None:
    """Detach and close every log file added here (what they buffer is written if its folder is ready)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, DeferredFileHandler):
            root.removeHandler(h)
            h.close()


def route_library_logging() -> None:
    """Send transformers' log records through the handlers above (console filter, log file) instead of its
    own stderr handler, with its documented switches. Imports transformers: call it only where it is used
    anyway."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers is a dependency of coqui-tts; without it there is nothing to route
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
