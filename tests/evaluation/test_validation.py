"""Validation losses (voicetune.evaluation.validation): the overfitting rule on records with a known answer,
and
the in-loop wiring on the fake backend (metrics.jsonl, TensorBoard, the report's loss plot and warning).

That every registered backend's ``validation_loss`` gives its declared parts is in
tests/backends/test_contract.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from backends.fake import FakeBackend

from voicetune.evaluation.validation import Point, notes, overfit_text, overfitting, points, run_notes
from voicetune.finetune import train
from voicetune.utils.io import read_jsonl


def _records(train_losses: list[float], val_losses: list[float], every: int = 2) -> list[dict]:
    """Steps 1..N with ``train_losses``; an evaluation (baseline at 0, then every ``every`` steps)."""
    out: list[dict] = [{"step": i + 1, "loss": v} for i, v in enumerate(train_losses)]
    out += [{"kind": "eval", "step": k * every, "val_loss": v} for k, v in enumerate(val_losses)]
    return out


def test_points_average_the_training_loss_between_evaluations():
    pts = points(_records([4.0, 2.0, 3.0, 1.0], [9.0, 5.0, 6.0]))
    assert pts == [Point(2, 3.0, 5.0), Point(4, 2.0, 6.0)]  # the baseline (step 0) has no training window


def test_overfitting_needs_n_consecutive_rises_while_training_falls():
    train_losses = [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]  # falls at every evaluation
    rising = _records(train_losses, [9, 3.0, 3.1, 3.2, 3.3, 3.4])  # evaluations at 2,4,6,8,10
    span = overfitting(points(rising), 3)
    assert span is not None and (span[0].step, span[1].step) == (2, 10)  # four rises: the whole run
    assert overfitting(points(rising), 4) is not None and overfitting(points(rising), 5) is None
    assert overfitting(points(rising), 0) is None  # --eval-overfit-evals 0: off
    text = overfit_text(span)
    assert "step 2 to step 10" in text and "3.000 → 3.400" in text and "5.000 → 1.000" in text
    assert notes(rising, 3) and "overfitting seen in the validation loss" in notes(rising, 3)[0]


@pytest.mark.parametrize(
    "val",
    [
        [9, 3.0, 2.9, 2.8, 2.7, 2.6],  # both fall: learning
        [9, 3.0, 3.1, 3.0, 3.1, 3.0],  # noise around a plateau: never 3 rises in a row
        [9, 3.0, 3.1, 3.2, 2.0, 2.1],  # two rises, then a drop resets the streak
    ],
)
def test_no_overfitting_without_a_streak(val):
    assert overfitting(points(_records([5, 5, 4, 4, 3, 3, 2, 2, 1, 1], val)), 3) is None
    assert notes(_records([5, 5, 4, 4, 3, 3, 2, 2, 1, 1], val), 3) == []


def test_rising_training_loss_is_not_overfitting():
    assert overfitting(points(_records([1, 1, 2, 2, 3, 3, 4, 4], [9, 3.0, 3.1, 3.2, 3.3])), 3) is None


@pytest.fixture(scope="module")
def fake_run(tiny_dataset, piper_sentences, asr_model, tmp_path_factory) -> Path:
    """The fake backend trained 6 steps with an evaluation every 2 (and the baseline)."""
    root = tmp_path_factory.mktemp("val_run")
    base = FakeBackend.make_tiny_base(root / "base", recordings={t: p for p, t in piper_sentences})
    train(
        tiny_dataset,
        base,
        root / "run",
        backend="fake",
        max_steps=6,
        batch_size=2,
        lr=1e-2,
        seed=1,
        device="cpu",
        eval_every=2,
        eval_max_sentences=1,
        eval_probes=1,
        eval_num_references=1,
        eval_asr_model=asr_model,
        eval_max_overhead=0.0,
        early_stop_patience=0,
        eval_overfit_evals=1,
    )
    return root / "run"


def test_every_evaluation_records_validation_losses_beside_the_training_losses(fake_run):
    evals = [r for r in read_jsonl(fake_run / "metrics.jsonl") if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4, 6]
    parts = ["val_loss", *(f"val_{p}" for p in FakeBackend.loss_parts)]
    assert all(isinstance(r.get(k), float) for r in evals for k in parts)
    assert len({r["val_loss"] for r in evals}) > 1  # the weights changed between evaluations
    doc = json.loads((fake_run / "eval" / "step_2" / "metrics.json").read_text())
    assert doc["validation"]["val_loss"] == evals[1]["val_loss"]
    cost = json.loads((fake_run / "eval" / "in_loop.json").read_text())
    assert all(e["val_seconds"] >= 0 for e in cost["evaluations"]) and cost["overfit_evals"] == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(fake_run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/loss")] == [0, 2, 4, 6]
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx([r["val_loss"] for r in evals])
    from tensorboard.plugins.custom_scalar import metadata

    assert acc.Tensors(metadata.CONFIG_SUMMARY_TAG)  # the chart that overlays train/loss and val/loss


def test_the_report_plots_validation_losses_beside_the_training_losses(fake_run):
    from voicetune.evaluation.report import collect, loss_plot

    r = collect(fake_run)
    assert [v["step"] for v in r.val] == [0, 2, 4, 6]
    assert "teacher-forced on the eval split" in (fake_run / "report.html").read_text()
    assert loss_plot(r.train, val=r.val) != loss_plot(r.train)  # the validation curves are drawn


def test_the_report_says_overfitting_in_words_and_shades_it(tmp_path):
    from voicetune.evaluation.report import collect, render_html
    from voicetune.utils.io import append_jsonl, atomic_write_json

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    for record in _records([5, 5, 4, 4, 3, 3, 2, 2, 1, 1], [9, 3.0, 3.1, 3.2, 3.3, 3.4]):
        append_jsonl(run / "metrics.jsonl", record)
    atomic_write_json(run / "eval" / "in_loop.json", {"overfit_evals": 3, "evaluations": []})
    r = collect(run)
    assert any(w.startswith("overfitting: from step 2 to step 10") for w in r.warnings)
    html = render_html(r)
    assert "overfitting: from step 2 to step 10" in html and "Dashed with dots" in html
    assert run_notes(run) and run_notes(run)[0].startswith("overfitting seen in the validation loss")
    atomic_write_json(run / "eval" / "in_loop.json", {"overfit_evals": 5, "evaluations": []})
    assert not any(w.startswith("overfitting") for w in collect(run).warnings)  # 4 rises < 5
    assert run_notes(run) == []


def test_evaluate_records_the_validation_losses_of_each_checkpoint_and_of_the_base(fake_run, tmp_path):
    """`voicetune evaluate` (here with another seed: a fresh baseline in its own protocol folder) computes
    the same validation losses the in-loop evaluation logged for the same weights, and the report shows
    them."""
    import shutil

    from voicetune.evaluation.report import collect
    from voicetune.evaluation.rescore import rescore_run
    from voicetune.run import list_checkpoints, read_meta

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    logged = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "eval"}
    result = rescore_run(run, "all", backend=FakeBackend(), device="cpu", seed=7)
    assert result.eval_root != run / "eval"  # another protocol: its own baseline, rendered again
    steps = [int(read_meta(c)["step"]) for c in list_checkpoints(run)]
    assert steps
    for name, step in [("baseline", 0)] + [(f"step_{s}", s) for s in steps]:
        doc = json.loads((result.eval_root / name / "metrics.json").read_text())
        for key in ("val_loss", *(f"val_{p}" for p in FakeBackend.loss_parts)):
            assert doc["validation"][key] == pytest.approx(logged[step][key], rel=1e-5), (name, key)
    r = collect(run, result.eval_root)
    assert [v["step"] for v in r.val] == [0, *steps]
    assert "val loss" in result.text.splitlines()[0]
    assert "validation loss" in (result.eval_root / "report.html").read_text()
