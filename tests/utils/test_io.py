"""Atomic output helpers: a failed write leaves the old file (or nothing), never a partial one."""

import json
import shutil

import pytest

from voicetune.utils.io import (
    PARTIAL_MARKER,
    append_jsonl,
    atomic_dir,
    atomic_path,
    atomic_write_json,
    clean_stale_tmp,
    new_tmp_dir,
    read_jsonl,
    remove_partial,
)


def test_failed_atomic_write_keeps_the_previous_content(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left behind


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    d = tmp_path / "ckpt"
    with atomic_dir(d) as tmp:
        (tmp / "a.pt").write_text("first")
    with pytest.raises(KeyboardInterrupt), atomic_dir(d) as tmp:
        (tmp / "a.pt").write_text("second, half")
        raise KeyboardInterrupt
    assert (d / "a.pt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with atomic_dir(d) as tmp:
        (tmp / "b.pt").write_text("third")
    assert sorted(p.name for p in d.iterdir()) == ["b.pt"]


def test_jsonl_ignores_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    append_jsonl(p, {"step": 1})
    append_jsonl(p, {"step": 2})
    with open(p, "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(p)] == [1, 2]


def test_atomic_outputs_get_normal_permissions_not_mkstemp_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_a_kill_while_removing_a_replaced_folder_leaves_one_the_next_run_removes(tmp_path, monkeypatch):
    """Kill trial seed 690305 (export): killed while the previous package was being deleted, the `.old`
    folder kept its content but had lost its marker, so the next run left it behind. The marker goes last."""
    out = tmp_path / "pkg"
    trash = new_tmp_dir(out, ".old")
    (trash / "pkg").mkdir()
    (trash / "pkg" / "model.pth").write_bytes(b"x" * 1000)
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # the kill arrives during the first removal

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_partial(trash)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert (trash / PARTIAL_MARKER).is_file() and (trash / "pkg" / "model.pth").is_file()
    info = json.loads((trash / PARTIAL_MARKER).read_text())
    (trash / PARTIAL_MARKER).write_text(json.dumps({**info, "pid": 2**22 + 12345}))  # its process is gone
    assert clean_stale_tmp(out) == [trash] and not trash.exists()
