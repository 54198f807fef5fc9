"""Ctrl+C and SIGTERM during training: finish the step, save, stop; a second signal stops at once.

The first SIGINT/SIGTERM only sets a flag: the loop finishes the optimizer step it is in, writes a checkpoint
and returns (``voicetune train --resume RUN_DIR`` continues from there). A second signal raises
``KeyboardInterrupt`` immediately; every file voicetune writes is written atomically, so that abandons at
most the checkpoint being written, never corrupts the previous one.

Handlers are only installed from the main thread (Python delivers signals there); elsewhere (e.g. a UI worker
thread) the loop simply never sees a request and callers stop it through a callback instead.

Under torchrun/accelerate a Ctrl+C reaches every worker twice: from the terminal and forwarded by the launcher
(which sends SIGKILL 30 s later). There, a second signal within :data:`LAUNCHER_DEBOUNCE_S` of the first
counts as the same request; a later one stops at once as usual.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LAUNCHER_DEBOUNCE_S = 2.0


def _under_launcher() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


class GracefulStop:
    """Context manager: ``requested`` becomes the signal's name after the first SIGINT/SIGTERM."""

    def __init__(self, debounce_s: float | None = None) -> None:
        self.requested: str = ""
        self.at: float = 0.0
        self.debounce_s = (
            (LAUNCHER_DEBOUNCE_S if _under_launcher() else 0.0) if debounce_s is None else debounce_s
        )
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and time.time() - self.at < self.debounce_s:
            logger.info(
                "%s again within %.0f s: the same stop request (forwarded by the launcher)",
                name,
                self.debounce_s,
            )
            return
        if self.requested:
            logger.warning(
                "second %s: stopping now, without a final checkpoint (the last complete one is kept)", name
            )
            raise KeyboardInterrupt
        self.requested, self.at = name, time.time()
        logger.warning(
            "%s received: finishing this step, then saving a checkpoint and stopping "
            "(press Ctrl+C again to stop at once)",
            name,
        )

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
