"""Run ``python -m voicetune.cli ...`` with some paths unreadable: the fallback for a root test on a machine
where privileges cannot be dropped (no ``setpriv``). Python-level opens and folder listings of the paths in
``VOICETUNE_TEST_DENY`` (os.pathsep-separated) fail with EACCES, as they would for a user without permission.

Usage: ``python _deny.py ARGS...`` runs the CLI with ARGS.
"""

import builtins
import errno
import os
import runpy
import sys

DENIED = [os.path.abspath(p) for p in os.environ.get("VOICETUNE_TEST_DENY", "").split(os.pathsep) if p]
_open, _scandir = builtins.open, os.scandir


def _denied(path: object) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False
    p = os.path.abspath(os.fsdecode(path))
    return any(p == d or p.startswith(d + os.sep) for d in DENIED)


def _guarded_open(file, *args, **kwargs):
    if _denied(file):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))
    return _open(file, *args, **kwargs)


def _guarded_scandir(path="."):
    if _denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
    return _scandir(path)


builtins.open = _guarded_open
os.scandir = _guarded_scandir
sys.argv = ["voicetune", *sys.argv[1:]]
runpy.run_module("voicetune.cli", run_name="__main__")
