"""The training loop on a tiny XTTS base and real speech: it learns, logs and checkpoints safely."""

from __future__ import annotations

import json

import pytest
import torch

from voicetune.run import RunInfo, latest_checkpoint, list_checkpoints
from voicetune.training.loop import TrainError, train

NO_EVAL = {"eval_every": 0, "eval_every_epochs": 0}  # these tests are about the loop; tests/evaluate covers evaluation


def test_loss_is_finite_and_decreases_on_a_repeated_batch(tiny_dataset, tiny_base, tmp_path):
    # batch 4 = the whole train split, so every step sees the same batch
    res = train(tiny_dataset, tiny_base, tmp_path / "run", max_steps=12, batch_size=4, lr=1e-3, seed=3, **NO_EVAL)
    losses = [h["loss"] for h in res.losses]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    assert {"text_ce", "mel_ce", "lr", "grad_norm"} <= set(res.losses[0])


def test_run_folder_has_config_metrics_tensorboard_and_checkpoints(tiny_dataset, tiny_base, tmp_path):
    run = tmp_path / "run"
    train(tiny_dataset, tiny_base, run, max_steps=4, batch_size=2, save_every=1, keep_last=2, lr=1e-4, **NO_EVAL)
    assert (run / "config.yaml").is_file()
    info = RunInfo.load(run)
    assert info.backend == "xtts" and info.base.endswith("base")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert [p.name for p in list_checkpoints(run)] == ["step_3", "step_4"]  # keep_last=2 pruned the rest
    latest = latest_checkpoint(run)
    assert latest.name == "step_4"
    assert {p.name for p in latest.iterdir()} == {"trainable.pt", "state.pt", "meta.json"}
    state = torch.load(latest / "state.pt", weights_only=False)
    assert state["step"] == 4 and "optimizer" in state and "rng" in state
    # no temporary folders left behind
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_features_are_cached_once_per_run_folder(tiny_dataset, tiny_base, tmp_path):
    run = tmp_path / "run"
    train(tiny_dataset, tiny_base, run, max_steps=1, batch_size=2, **NO_EVAL)
    cached = sorted(p for p in (run / "features").rglob("*") if p.is_file())
    assert len(cached) >= 4
    mtimes = [p.stat().st_mtime_ns for p in cached]
    # a new run pointed at a copy of the feature cache reuses it untouched
    import shutil

    run2 = tmp_path / "run2"
    shutil.copytree(run / "features", run2 / "features")
    train(tiny_dataset, tiny_base, run2, max_steps=1, batch_size=2, **NO_EVAL)
    cached2 = sorted(p for p in (run2 / "features").rglob("*") if p.is_file())
    assert [p.name for p in cached2] == [p.name for p in cached]
    assert [p.stat().st_mtime_ns for p in cached2] == mtimes  # copytree kept mtimes; nothing rewritten


def test_existing_run_is_never_overwritten(tiny_dataset, tiny_base, tmp_path):
    run = tmp_path / "run"
    train(tiny_dataset, tiny_base, run, max_steps=1, batch_size=2, **NO_EVAL)
    with pytest.raises(TrainError, match="already holds checkpoints"):
        train(tiny_dataset, tiny_base, run, max_steps=1, batch_size=2, **NO_EVAL)
