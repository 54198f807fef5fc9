"""Fixtures of the web UI's tests: headless Debian Chromium driven by Playwright, and the app on a free port.

Playwright's own browser download cannot work offline; the tests use /usr/bin/chromium (``make setup``
installs it as root) and are skipped, saying so, when it is missing. Screenshots go to
``$VOICETUNE_UI_ARTIFACTS`` (default: a folder under the system's temporary directory).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where the browser tests save their screenshots (kept after the run, for people to look at)."""
    folder = Path(
        os.environ.get("VOICETUNE_UI_ARTIFACTS") or Path(tempfile.gettempdir()) / "voicetune-ui-artifacts"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (run `make setup` as root, or "
                    "apt-get install chromium); Playwright's own browser download cannot work offline")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def start_app(workspace: Path, **kw: Any) -> Any:
    """The UI over ``workspace`` on a free localhost port, in this process's threads (close() it)."""
    from voicetune.ui import launch

    return launch(workspace, port=free_port(), block=False, quiet=True, **kw)
