"""The training loop on a tiny XTTS base and real speech: it learns, logs and checkpoints safely."""

from __future__ import annotations

import json

import pytest
import torch

from voicetune.run import RunInfo, latest_checkpoint, list_checkpoints
from voicetune.training.loop import TrainError, train

# these tests are about the loop; tests/evaluate covers evaluation
NO_EVAL = {"eval_every": 0, "eval_every_epochs": 0}


def test_loss_is_finite_and_decreases_on_a_repeated_batch(tiny_dataset, tiny_base, tmp_path):
    # batch 4 = the whole train split, so every step sees the same batch
    res = train(
        tiny_dataset, tiny_base, tmp_path / "run", max_steps=12, batch_size=4, lr=1e-3, seed=3, **NO_EVAL
    )
    losses = [h["loss"] for h in res.losses]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    assert {"text_ce", "mel_ce", "lr", "grad_norm"} <= set(res.losses[0])


def test_run_folder_has_config_metrics_tensorboard_and_checkpoints(tiny_dataset, tiny_base, tmp_path):
    run = tmp_path / "run"
    train(
        tiny_dataset, tiny_base, run, max_steps=4, batch_size=2, save_every=1, keep_last=2, lr=1e-4, **NO_EVAL
    )
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


class _SlowHostAndEvaluation:
    """A callback that stands in for what happens between steps: slow host work after steps 3 and 6 (a
    sleep), an evaluation's switch to inference mode after step 4; it counts the backend's mode switches."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.training_at_step_end: list[bool] = []

    def on_train_start(self, state) -> None:
        backend, original = state.backend, state.backend.set_train
        self.state = state

        def counted(mode: bool) -> None:
            self.calls.append((self.state.step, bool(mode)))
            original(mode)

        backend.set_train = counted  # instance attribute: the loop's calls go through it

    def on_step_end(self, state) -> None:
        import time

        self.training_at_step_end.append(state.backend.trainable().training)
        if state.step in (3, 6):
            time.sleep(0.4)
        if state.step == 4:
            state.backend.set_train(False)

    def on_checkpoint(self, state) -> None: ...

    def on_train_end(self, state) -> None: ...


def test_logged_rates_are_wall_clock_and_the_mode_switches_only_when_a_callback_switched(
        tiny_dataset, tiny_base, tmp_path):
    """samples/s and step_seconds in metrics.jsonl agree with the records' own timestamps within 5 %, slow
    host work between steps included (it used to be left out); set_train(True) runs once at the start and
    once after the callback that switched to inference mode, not on every step."""
    watcher = _SlowHostAndEvaluation()
    run = tmp_path / "run"
    train(tiny_dataset, tiny_base, run, max_steps=8, batch_size=2, lr=1e-4, callbacks=[watcher], **NO_EVAL)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    for k in range(1, 8):  # 2 clips a step
        span = records[k]["time"] - records[0]["time"]
        # the window (20 steps) covers steps 1..k+1 from the loop's start: step 1's own seconds, then the span
        logged, wall = records[k]["samples_per_s"], 2 * (k + 1) / (span + records[0]["step_seconds"])
        assert logged == pytest.approx(wall, rel=0.05), (k, logged, wall)
        interval = records[k]["time"] - records[k - 1]["time"]
        assert records[k]["step_seconds"] == pytest.approx(interval, rel=0.05, abs=0.02)
    assert records[3]["step_seconds"] > 0.4 and records[6]["step_seconds"] > 0.4  # the sleeps after 3 and 6
    assert watcher.calls == [(0, True), (4, False), (4, True)], watcher.calls  # (step, mode)
    assert watcher.training_at_step_end == [True] * 8
