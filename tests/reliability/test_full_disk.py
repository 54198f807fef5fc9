"""A full disk, for real: the run, dataset or package lives on a small tmpfs (when the tests run as root and
may mount one), filled up with a ballast file. Elsewhere the writes fail by other means: the free-space figure
is faked and the write raises ENOSPC (``failing_writes``). Either way: the message says the disk is full,
where, and how much is needed; what was written before stays intact; nothing half-written is left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from voicetune.run import latest_checkpoint

from .conftest import TRAIN
from .helpers import digest, leftovers

MB = 1 << 20


@pytest.fixture
def disk(tmp_path):
    """A 32 MB file system of its own (tmpfs), or None where it cannot be mounted (or VOICETUNE_TEST_NO_TMPFS
    is set, to exercise the fallback)."""
    mnt = tmp_path / f"disk_{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if (
        os.environ.get("VOICETUNE_TEST_NO_TMPFS")
        or os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, check=False
        ).returncode
        != 0
    ):
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(where: Path, leave: int) -> None:
    """Fill the file system of ``where`` up to ``leave`` free bytes."""
    ballast = where / "ballast.bin"
    with open(ballast, "ab") as f:
        while (free := shutil.disk_usage(where).free) > leave:
            f.write(b"\0" * min(free - leave, 4 * MB))
            f.flush()
            os.fsync(f.fileno())


def failing_writes(monkeypatch, free: int) -> None:
    """The fallback: the disk reports ``free`` bytes, and torch/wav writes fail with ENOSPC."""
    import voicetune.utils.disk as disk_mod

    monkeypatch.setattr(disk_mod, "free_bytes", lambda path: free)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)


def _train(dataset, base, run, **kw):
    from voicetune.training.loop import train

    return train(dataset, base, run, save_every=1, **{**TRAIN, **kw})


@pytest.mark.parametrize("how", ["checked before writing", "failed while writing"])
def test_training_on_a_full_disk_keeps_the_earlier_checkpoint_and_says_why(
    how, disk, tiny_dataset, tiny_base, tmp_path, monkeypatch
):
    from voicetune.training import checkpoint
    from voicetune.training.loop import train

    run = (disk or tmp_path) / "run"
    _train(tiny_dataset, tiny_base, run, max_steps=1)
    step1 = digest(run / "checkpoints" / "step_1")
    if disk is not None:
        fill(disk, leave=2 * MB)
        if how == "failed while writing":  # skip the check before the write, so that the write itself fails
            monkeypatch.setattr(checkpoint, "ensure_free_space", lambda *a, **k: None)
    else:
        if how == "checked before writing":
            failing_writes(monkeypatch, free=2 * MB)
        else:
            monkeypatch.setattr(checkpoint, "ensure_free_space", lambda *a, **k: None)
            failing_writes(monkeypatch, free=0)
    with pytest.raises(OSError) as e:
        train(resume=run, max_steps=2, save_every=1)
    msg = str(e.value)
    assert msg.startswith("disk full: checkpoint step_2 needs about") and str(run / "checkpoints") in msg, msg
    assert " MB" in msg and "is free on that disk" in msg
    assert latest_checkpoint(run).name == "step_1" and digest(run / "checkpoints" / "step_1") == step1
    assert not (run / "checkpoints" / "step_2").exists() and not leftovers(run / "checkpoints")
    monkeypatch.undo()
    if disk is not None:
        (disk / "ballast.bin").unlink()
    assert train(resume=run, max_steps=2, save_every=1).steps == 2  # space again: it resumes


def test_prepare_on_a_full_disk_says_so_and_keeps_the_earlier_dataset(
    disk, piper_sentences, asr_model, tmp_path, monkeypatch
):
    from voicetune.data.prepare import prepare

    src = tmp_path / "rec"
    src.mkdir()
    for path, _ in piper_sentences[:2]:
        shutil.copyfile(path, src / path.name)
    out = (disk or tmp_path) / "dataset"
    prepare(src, out, asr_model=asr_model, qa_mos="off", min_eval_clips=0)
    before = digest(out)
    for path, _ in piper_sentences[2:]:  # more recordings: the dataset grows
        shutil.copyfile(path, src / path.name)
    if disk is not None:
        fill(disk, leave=64 << 10)
    else:
        failing_writes(monkeypatch, free=0)
        import voicetune.audio.io as audio_io

        monkeypatch.setattr(audio_io, "atomic_path", _enospc_path)
    with pytest.raises(OSError) as e:
        prepare(src, out, asr_model=asr_model, qa_mos="off", min_eval_clips=0)
    msg = str(e.value)
    assert msg.startswith("disk full: the dataset") and str(out) in msg and "needs about" in msg, msg
    assert _without_cache(digest(out)) == _without_cache(before)  # the earlier dataset is intact
    assert not leftovers(out)


def _without_cache(d: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in d.items() if "/cache/" not in k and not k.endswith("/cache")}


def _enospc_path(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_export_to_a_full_disk_is_refused_before_writing_and_names_the_space_needed(
    disk, run_copy, tmp_path, monkeypatch
):
    from voicetune.packaging import export

    run = run_copy()
    out = (disk or tmp_path) / "pkg"
    if disk is None:
        failing_writes(monkeypatch, free=10 * MB)
    with pytest.raises(OSError) as e:
        export(run, out)
    msg = str(e.value)
    assert msg.startswith("disk full: the model package") and "needs about" in msg, msg
    assert not out.exists() and not leftovers(out)


def test_export_that_fills_the_disk_while_writing_leaves_no_partial_package(
    disk, run_copy, tmp_path, monkeypatch
):
    from voicetune import packaging

    run = run_copy()
    out = (disk or tmp_path) / "pkg"
    monkeypatch.setattr(packaging, "ensure_free_space", lambda *a, **k: None)
    if disk is None:
        failing_writes(monkeypatch, free=0)
    with pytest.raises(OSError) as e:
        packaging.export(run, out)
    assert "disk full: the model package" in str(e.value)
    assert not out.exists() and not leftovers(out)
    assert json.loads((run / "run.json").read_text())  # the run is untouched
