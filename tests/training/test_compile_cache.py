"""Compile once per machine: torch.compile's artifacts kept in voicetune's cache folder between runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from voicetune.training import compile_cache
from voicetune.training.compile_cache import CompileCache, cache_root


class _Info:
    def __init__(self, keys: dict[str, list[str]]):
        self.artifacts = keys


def test_the_cache_folder_and_key_follow_the_environment_model_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICETUNE_CACHE_DIR", str(tmp_path / "vt"))
    assert cache_root() == tmp_path / "vt"
    monkeypatch.delenv("VOICETUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "voicetune"
    small, large = torch.nn.Linear(4, 4), torch.nn.Linear(4, 8)
    cpu = torch.device("cpu")
    a = CompileCache.for_run(cpu, small, {"compile_mode": "default"}, root=tmp_path)
    assert a.folder.parent == tmp_path / "compile"
    assert a.folder == CompileCache.for_run(cpu, small, {"compile_mode": "default"}, root=tmp_path).folder
    assert a.folder != CompileCache.for_run(cpu, large, {"compile_mode": "default"}, root=tmp_path).folder
    assert (
        a.folder != CompileCache.for_run(cpu, small, {"compile_mode": "max-autotune"}, root=tmp_path).folder
    )


def test_only_new_artifacts_are_written_and_covered_files_are_replaced(tmp_path, monkeypatch):
    """What torch hands over (everything recorded in the process, hits included) is written only when it holds
    artifacts not on disk yet; a file whose artifacts a newer one holds too is removed; every file loads."""
    recorded: list[tuple[bytes, _Info] | None] = [None]
    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: recorded[0])

    def load(data: bytes) -> _Info:
        loaded.append(data)
        return _Info({"inductor": data.decode().split(",")})

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    first = CompileCache(tmp_path / "key")
    assert first.load() == 0 and first.save() is None  # nothing compiled: nothing written
    recorded[0] = (b"g1,g2", _Info({"inductor": ["g1", "g2"]}))
    written = first.save()
    assert written is not None and written.read_bytes() == b"g1,g2"
    assert first.save() is None  # the same artifacts again: no new file

    second = CompileCache(tmp_path / "key")  # a later run: loads the file, then compiles a new padded length
    assert second.load() == 2 and loaded == [b"g1,g2"]
    recorded[0] = (b"g1,g2", _Info({"inductor": ["g1", "g2"]}))  # cache hits are recorded too
    assert second.save() is None
    recorded[0] = (b"g1,g2,g3", _Info({"inductor": ["g1", "g2", "g3"]}))
    newer = second.save()
    assert newer is not None and sorted(p.name for p in (tmp_path / "key").glob("*.bin")) == [newer.name]

    third = CompileCache(tmp_path / "key")
    (tmp_path / "key" / "broken.bin").write_bytes(b"x")
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts",
                        lambda data: None if data == b"x" else load(data))
    assert third.load() == 3  # the unreadable file is skipped with a warning


COMPILE_AND_SAVE = textwrap.dedent("""
    import sys, torch
    from voicetune.training.compile_cache import CompileCache, cache_counters
    cache = CompileCache.for_run(torch.device("cpu"), torch.nn.Linear(8, 8), {})
    loaded = cache.load()
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    f = torch.compile(lambda x: torch.nn.functional.gelu(layer(x)).sum(), dynamic=False)
    f(torch.randn(2, 8)).backward()
    cache.save()
    print("LOADED", loaded, "COUNTERS", cache_counters())
""")


@pytest.mark.slow
def test_a_new_machine_state_compiles_nothing_after_loading_the_cache(tmp_path):
    """Two processes with empty Inductor caches (as after a reboot cleared /tmp) and one voicetune cache: the
    second loads the first's artifacts and compiles nothing (every graph a cache hit)."""
    out = []
    for run in ("first", "second"):
        env = {**os.environ, "VOICETUNE_CACHE_DIR": str(tmp_path / "voicetune"),
               "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / run / "inductor"), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(Path(compile_cache.__file__).parents[2])}
        proc = subprocess.run(
            [sys.executable, "-c", COMPILE_AND_SAVE],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        out.append(proc.stdout.strip().splitlines()[-1])
    assert "LOADED 0 " in out[0] and " 0 hit / 2 miss" in out[0], out
    assert "LOADED 0 " not in out[1] and "fx graphs 2 hit / 0 miss" in out[1], out
