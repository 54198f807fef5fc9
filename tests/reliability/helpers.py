"""What every case of the reliability suite checks, and how it runs the command users run.

For each bad input the suite asserts four things:

1. one clear message names the item and the reason (for config: the option and the allowed values);
2. the run went on with the rest where that makes sense (:func:`assert_went_on` is the caller's check);
3. every input file is byte-identical afterwards (:func:`digest` before and after);
4. no partial output looks complete (:func:`assert_nothing_partial`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import voicetune

# The voicetune sources this test process imports: commands run in new processes use the same ones.
SRC = str(Path(voicetune.__file__).resolve().parents[1])


@dataclass
class Outcome:
    """What a user saw: the exit code and everything printed or logged."""

    rc: int
    text: str


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def cli(*argv: object) -> Outcome:
    """``voicetune ARGV`` in this process (the CLI's own error handling included)."""
    from voicetune.cli import main

    handler, root = _Collect(), logging.getLogger()
    old = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in argv])
            except SystemExit as e:  # argparse
                rc = int(e.code or 0)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    return Outcome(rc, "\n".join(handler.lines) + "\n" + out.getvalue() + err.getvalue())


def assert_reported(outcome: Outcome | str, *patterns: str) -> None:
    """Each regex (case-insensitive) is in what the user saw, and no traceback is."""
    text = outcome if isinstance(outcome, str) else outcome.text
    for pattern in patterns:
        assert re.search(pattern, text, re.IGNORECASE | re.DOTALL), (
            f"{pattern!r} not reported in:\n{text[-4000:]}"
        )
    assert "Traceback (most recent call last)" not in text, text[-4000:]


def digest(*roots: Path) -> dict[str, str]:
    """Content hash of every file under ``roots`` (symlinks by their target text, folders by their mode)."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        entries = [root] + (
            sorted(root.rglob("*"), key=str) if root.is_dir() and not root.is_symlink() else []
        )
        for p in entries:
            key = os.fsdecode(bytes(p))
            if p.is_symlink():
                out[key] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[key] = f"dir:{p.stat().st_mode:o}"
            elif p.is_file():
                try:
                    out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:  # a case that makes a file unreadable on purpose: its mode and size
                    st = p.stat()
                    out[key] = f"unreadable:{st.st_mode:o}:{st.st_size}"
            else:
                out[key] = f"special:{p.stat().st_mode:o}"
    return out


def assert_unchanged(before: dict[str, str], *roots: Path, logs: tuple[str, ...] = ()) -> None:
    """Everything under ``roots`` is as :func:`digest` found it (``before`` may cover more than ``roots``),
    except the log files named in ``logs`` (a run's train.log records the refused attempt too)."""
    after = {k: v for k, v in digest(*roots).items() if os.path.basename(k) not in logs}
    prefixes = [os.fsdecode(bytes(Path(r))) for r in roots]
    before = {
        k: v
        for k, v in before.items()
        if any(k == p or k.startswith(p + os.sep) for p in prefixes) and os.path.basename(k) not in logs
    }
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"inputs changed: {changed[:10]}"


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders/files of an unfinished write beside or inside ``folder``."""
    found = []
    for d in {Path(folder).parent, Path(folder)}:
        if d.is_dir():
            found += [
                p.name for p in d.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))
            ]
    return sorted(found)


COMPLETE_MARKS = {  # what makes each kind of output look complete to the next command
    "dataset": ("metadata_train.csv", "prepare.yaml"),
    "package": ("voicetune.json", "model.pth"),
    "run": ("checkpoints/latest",),
    "base-evaluation": ("metrics.json",),
    "tiny-base": ("model.pth",),
}


def assert_nothing_partial(out: Path, kind: str, existed_before: bool = False) -> None:
    """After a failed command: ``out`` does not look like a complete ``kind`` output (unless it was one before
    the command), and no temporary folder of the attempt is left beside it."""
    out = Path(out)
    if not existed_before:
        marks = [m for m in COMPLETE_MARKS[kind] if (out / m).exists()]
        assert not marks, f"{out} looks complete after a failure: {marks}"
    assert not leftovers(out), f"temporary leftovers beside {out}: {leftovers(out)}"


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a folder whose files are hard links (cheap for the 90 MB tiny base), except ``copy`` ones."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    """Give a hard-linked file new content without touching the file it was linked to."""
    path.unlink()
    path.write_bytes(data)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
