"""Training in its own process: start, stop (like Ctrl+C) and resume ``voicetune train``, and tell whether a
run's process is alive, from what the UI recorded beside the run folder.

The UI runs ``python -m voicetune.cli train ...`` as a child in a session of its own, so neither a crash of
the UI nor a closed browser stops it. Its console output goes to ``RUNS/.ui/<run>/console.log``; what it
launched (pid, the process's start time, the command) to ``RUNS/.ui/<run>/process.json`` (never into the run
folder, which `voicetune train` owns and refuses to share), so a restarted UI,
or another browser tab, finds the process again: the pid is trusted only while a process of that pid with the
same start time exists (pids are reused). While the UI that started it lives, it also records the exit status.

Stop sends SIGINT, exactly what Ctrl+C does: training finishes its step, saves a checkpoint and exits
(``voicetune train --resume RUN_DIR`` continues it); a second stop stops at once.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetune.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

# What the UI knows of a launch lives beside the run folder, never in it: `voicetune train` refuses an --out
# folder holding files it did not write, and the run folder is train's alone.
STATE_FOLDER = ".ui"  # RUNS/.ui/<run name>/
PROCESS_FILE = "process.json"  # pid, start time, command, exit status
LOG_FILE = "console.log"  # everything the process printed (its errors before train.log opens included)
_START_TIME_TOLERANCE_S = 1.0
_lock = threading.Lock()
_children: dict[Path, subprocess.Popen] = {}  # processes this UI started, by run folder (their exit is known)


@dataclass(frozen=True)
class ProcessState:
    """What is known about the training process of a run folder."""

    state: str  # "none" (never launched from the UI), "running", "exited", "gone" (ended, status unknown)
    pid: int | None = None
    exit_code: int | None = None
    command: str = ""
    started: float | None = None
    ended: float | None = None
    stop_requests: int = 0

    @property
    def running(self) -> bool:
        return self.state == "running"


def train_command(dataset: Path | None, base: Path | None, run_dir: Path, flags: list[str],
                  resume: bool = False) -> list[str]:
    """The ``voicetune train`` command line of a new run (or of ``--resume RUN_DIR``)."""
    argv = [sys.executable, "-m", "voicetune.cli", "train"]
    if resume:
        return [*argv, "--resume", str(run_dir), *flags]
    assert dataset is not None and base is not None
    return [*argv, str(dataset), "--base", str(base), "--out", str(run_dir), *flags]


def state_dir(run_dir: Path) -> Path:
    """Where the UI keeps the launch record and console of ``run_dir``: ``RUNS/.ui/<run name>``."""
    run_dir = Path(run_dir)
    return run_dir.parent / STATE_FOLDER / run_dir.name


def log_path(run_dir: Path) -> Path:
    """The console of the run's training process (stdout and stderr, appended over resumes)."""
    return state_dir(run_dir) / LOG_FILE


def _read(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir(run_dir) / PROCESS_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: int, created: float | None) -> bool:
    """A live (not zombie) process with this pid and start time."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return created is None or abs(p.create_time() - created) < _START_TIME_TOLERANCE_S
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_state(run_dir: Path) -> ProcessState:
    """The run's training process as its launch record (:func:`state_dir`) and the process table tell it."""
    data = _read(run_dir)
    if not data.get("pid"):
        return ProcessState("none")
    pid = int(data["pid"])
    common = {"pid": pid, "command": data.get("command", ""), "started": data.get("started"),
              "stop_requests": int(data.get("stop_requests", 0))}
    child = _children.get(Path(run_dir).resolve())
    if child is not None and child.pid == pid:  # started by this process: its own exit status, without a race
        code = child.poll()
        if code is None:
            return ProcessState("running", **common)
        return ProcessState("exited", exit_code=code, ended=data.get("ended"), **common)
    if data.get("exit_code") is not None:
        return ProcessState("exited", exit_code=int(data["exit_code"]), ended=data.get("ended"), **common)
    if _alive(pid, data.get("create_time")):
        return ProcessState("running", **common)
    return ProcessState("gone", **common)


def _update(run_dir: Path, **changes: Any) -> None:
    with _lock:
        data = _read(run_dir)
        data.update(changes)
        atomic_write_json(state_dir(run_dir) / PROCESS_FILE, data)


def start(run_dir: Path, argv: list[str], cwd: Path) -> ProcessState:
    """Launch ``argv`` (a ``voicetune train`` command) for ``run_dir`` in a new session, its output appended
    to :func:`log_path`. Refused while a process of this run is alive."""
    import psutil

    run_dir = Path(run_dir)
    if process_state(run_dir).running:
        raise RuntimeError(
            f"{run_dir.name} is already training (pid {process_state(run_dir).pid}); stop it first"
        )
    state = state_dir(run_dir)
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = shlex.join(argv)
    with open(state / LOG_FILE, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} voicetune ui started: {command}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(cwd), env=env, start_new_session=True)
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # it ended already; wait() below records how
        created = None
    with _lock:
        atomic_write_json(state / PROCESS_FILE, {"pid": proc.pid, "create_time": created, "command": command,
                                                   "started": time.time(), "stop_requests": 0})
    _children[run_dir.resolve()] = proc
    threading.Thread(
        target=_reap, args=(proc, run_dir), daemon=True, name=f"voicetune-ui-wait-{proc.pid}"
    ).start()
    logger.info("started training of %s (pid %d): %s", run_dir, proc.pid, command)
    return process_state(run_dir)


def _reap(proc: subprocess.Popen, run_dir: Path) -> None:
    """Wait for the child (so it leaves no zombie) and record how it ended."""
    code = proc.wait()
    _update(run_dir, exit_code=code, ended=time.time())
    logger.info("training of %s ended with exit status %d", run_dir, code)


def stop(run_dir: Path) -> ProcessState:
    """Ask the run's training process to stop, as Ctrl+C does (SIGINT): it saves a checkpoint and exits. A
    second request stops it at once. Refused when no process of this run is alive."""
    st = process_state(run_dir)
    if not st.running or st.pid is None:
        raise RuntimeError(f"{Path(run_dir).name} is not training")
    os.kill(st.pid, signal.SIGINT)
    _update(run_dir, stop_requests=st.stop_requests + 1)
    logger.info("sent SIGINT to the training of %s (pid %d)", run_dir, st.pid)
    return process_state(run_dir)


def wait(run_dir: Path, timeout: float) -> ProcessState:
    """Poll until the run's process is no longer running (or ``timeout`` seconds pass)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = process_state(run_dir)
        if not st.running:
            return st
        time.sleep(0.2)
    return process_state(run_dir)
