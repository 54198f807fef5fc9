"""Does the installed set of packages equal the lock file?

``requirements.lock`` (written by ``make lock``: ``uv pip compile --universal --generate-hashes``) pins every
direct and transitive dependency for every supported Python. This module reads it, keeps the entries whose
environment markers hold on this interpreter, and compares them with what is installed. ``make setup`` runs it
after installing, and the test suite runs it again, so an install that drifted from the lock (a package
upgraded by hand, an old machine that kept its packages) fails loudly with the difference.

Run as ``python -m voicetune.utils.lockcheck [requirements.lock]``: exit status 1 and the difference when the
installed set does not match.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

# Installed by the virtual environment itself or by `make setup` around the lock, never pinned in it.
SEED_PACKAGES = frozenset({"pip", "setuptools", "wheel", "voicetune"})

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?\s*$")


@dataclass
class LockDiff:
    """What differs between the lock (for this interpreter) and the installed packages."""

    missing: dict[str, str] = field(default_factory=dict)  # name -> locked version
    wrong: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (locked, installed)
    extra: dict[str, str] = field(default_factory=dict)  # name -> installed version, not in the lock

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong or self.extra)

    def describe(self) -> str:
        lines = [f"  {n}: locked {v}, not installed" for n, v in sorted(self.missing.items())]
        lines += [f"  {n}: locked {lv}, installed {iv}" for n, (lv, iv) in sorted(self.wrong.items())]
        lines += [f"  {n}: installed {v}, not in the lock" for n, v in sorted(self.extra.items())]
        return "\n".join(lines)


def locked_versions(lock: Path) -> dict[str, str]:
    """{canonical name: version} of the lock's entries whose markers hold on this interpreter."""
    pins: dict[str, str] = {}
    for lineno, line in enumerate(Path(lock).read_text().splitlines(), 1):
        if not line or line[0] in " #-":
            continue
        m = _ENTRY.match(line)
        if m is None:
            raise ValueError(f"{lock}:{lineno}: not a pinned requirement: {line!r}")
        name, version, marker = m.groups()
        if marker and not Marker(marker).evaluate():
            continue
        pins[canonicalize_name(name)] = version
    return pins


def installed_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[canonicalize_name(name)] = dist.version
    return found


def compare(lock: Path, installed: dict[str, str] | None = None) -> LockDiff:
    pins = locked_versions(lock)
    have = installed_versions() if installed is None else installed
    diff = LockDiff()
    for name, version in pins.items():
        if name not in have:
            diff.missing[name] = version
        elif have[name] != version:
            diff.wrong[name] = (version, have[name])
    for name, version in have.items():
        if name not in pins and name not in SEED_PACKAGES:
            diff.extra[name] = version
    return diff


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    lock = Path(args[0] if args else "requirements.lock")
    diff = compare(lock)
    if diff.ok:
        print(f"installed packages match {lock} ({len(locked_versions(lock))} pinned)")
        return 0
    print(
        f"installed packages differ from {lock}:\n{diff.describe()}\n"
        f"Re-install exactly the lock with `make clean-venv setup` (or `uv pip sync {lock}`).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
