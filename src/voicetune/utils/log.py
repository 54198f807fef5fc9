"""Logging set-up for the CLI (library code only calls ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import os
import warnings


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # third-party chatter that says nothing to a voicetune user
    for name in ("TTS", "trainer", "numba", "matplotlib", "urllib3", "faster_whisper", "httpx", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|torchaudio|TTS|resemblyzer)\b.*")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
