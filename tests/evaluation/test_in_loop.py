"""In-loop evaluation on a tiny (untrained) XTTS base and real Piper speech: baseline, evaluations,
best checkpoint, early stopping, overhead cap, report, re-scoring after the fact, and no effect on training.

Every component is real (backend, metrics, ASR, training loop); the evaluation protocol is shrunk
(1 eval-split sentence + 1 probe) to keep the module around a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from voicetune.audio.io import load_audio
from voicetune.cli import main
from voicetune.evaluation.selection import replay
from voicetune.evaluation.suite import selection_rules
from voicetune.finetune import train  # the loop with the in-loop evaluator (voicetune.train)
from voicetune.run import best_checkpoint, latest_checkpoint, list_checkpoints
from voicetune.utils.io import read_jsonl

TRAIN = {
    "max_steps": 4,
    "batch_size": 2,
    "lr": 5e-4,
    "seed": 3,
    "device": "cpu",
    "save_every": 1,
    "keep_last": 1,
}
SMALL_EVAL = {"eval_max_sentences": 1, "eval_probes": 1, "eval_num_references": 2, "eval_max_overhead": 0.0}


@pytest.fixture(scope="module")
def dataset(tiny_dataset) -> Path:
    """4 train + 2 eval clips of real Piper speech."""
    return tiny_dataset


@pytest.fixture(scope="module")
def base(tiny_base) -> Path:
    return tiny_base


@pytest.fixture(scope="module")
def evaluated_run(dataset, base, asr_model, tmp_path_factory):
    """4 steps, evaluations at steps 2 and 4, a checkpoint every step and keep_last=1."""
    run = tmp_path_factory.mktemp("in_loop_run") / "run"
    result = train(dataset, base, run, eval_every=2, eval_asr_model=asr_model, early_stop_patience=0,
                   **TRAIN, **SMALL_EVAL)
    return run, result


def _doc(path: Path) -> dict:
    return json.loads(
        path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {path}")
    )


def test_baseline_and_step_evaluations_are_written_with_audio_and_deltas(evaluated_run):
    run, _ = evaluated_run
    baseline = _doc(run / "eval" / "baseline" / "metrics.json")
    assert baseline["kind"] == "baseline" and baseline["step"] == 0
    assert [s["group"] for s in baseline["sentences"]] == ["eval", "probe"]
    for i in range(2):
        assert load_audio(run / "eval" / "baseline" / "base" / f"{i:02d}.wav")[0].size > 0
    assert (run / "eval" / "baseline" / "real" / "00.wav").is_file()
    assert not (run / "eval" / "baseline" / "real" / "01.wav").exists()  # probes have no recording
    assert baseline["real"]["aggregate"]["wer"] < 0.3  # the real recordings are intelligible
    for step in (2, 4):
        doc = _doc(run / "eval" / f"step_{step}" / "metrics.json")
        assert doc["kind"] == "eval" and doc["step"] == step
        assert doc["protocol"]["key"] == baseline["protocol"]["key"]
        rows = doc["finetuned"]["per_sentence"]  # each sentence with 2 seeds (--eval-seeds), seed-major
        assert [r["audio_file"] for r in rows] == ["finetuned/00.wav", "finetuned/01.wav",
                                                   "finetuned/00_seed1.wav", "finetuned/01_seed1.wav"]
        assert [(r["sentence"], r["seed"]) for r in rows] == [(0, 0), (1, 0), (0, 1), (1, 1)]
        assert all((run / "eval" / f"step_{step}" / r["audio_file"]).is_file() for r in rows)
        assert doc["selection"]["seeds"] == 2 and doc["selection"]["interval"] is None  # 2 sentences: too few
        assert "too few for an interval" in doc["selection"]["note"] or doc["step"] != 2
        sim = doc["summary"]["speaker_similarity"]
        assert sim["base"] == baseline["base"]["aggregate"]["speaker_similarity"]
        assert sim["delta"] == pytest.approx(sim["finetuned"] - sim["base"])
        assert isinstance(doc["composite"], float) and set(doc["composite_parts"]) == {
            "similarity", "wer", "cer", "mos", "failures"}
        assert {"mcd", "pesq", "stoi"} <= set(doc["finetuned"]["groups"]["eval"])  # intrusive: eval split
        assert "mcd" not in doc["finetuned"]["groups"]["probe"]
    assert not [p for p in (run / "eval").iterdir() if p.name.startswith(".")]  # no temporary folders


def test_metrics_jsonl_and_tensorboard_get_eval_records(evaluated_run):
    run, result = evaluated_run
    records = read_jsonl(run / "metrics.jsonl")
    evals = [r for r in records if r.get("kind") == "eval"]
    assert [(r["name"], r["step"]) for r in evals] == [("baseline", 0), ("step_2", 2), ("step_4", 4)]
    assert evals[0]["composite"] == 0.0 and "speaker_similarity" in evals[1] and "wer" in evals[1]["delta"]
    assert [r["step"] for r in records if "kind" not in r] == [1, 2, 3, 4]
    assert len(result.losses) == 4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "audio": 0})
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("eval/speaker_similarity")] == [0, 2, 4]
    assert [e.step for e in acc.Scalars("eval/composite")] == [0, 2, 4]
    assert any(t.startswith("eval/audio_") for t in tags["audio"])


def test_best_marker_points_to_a_kept_checkpoint_chosen_by_the_composite(evaluated_run):
    from voicetune.backends.registry import load_train_config

    run, _ = evaluated_run
    best = best_checkpoint(run)
    assert best is not None and best in list_checkpoints(run)
    assert latest_checkpoint(run).name == "step_4"
    docs = [_doc(run / "eval" / f"step_{s}" / "metrics.json") for s in (2, 4)]
    baseline = _doc(run / "eval" / "baseline" / "metrics.json")
    cfg = load_train_config(run / "config.yaml")
    sel, _ = replay(baseline["base"]["aggregate"], [(d["step"], d["finetuned"]["aggregate"]) for d in docs],
                    selection_rules(cfg.eval), baseline["real"]["aggregate"]["speaker_similarity"])
    assert best.name == f"step_{sel.best_step}"
    info = _doc(run / "best.json")
    assert info["checkpoint"] == best.name and info["step"] == sel.best_step
    assert info["composite"] == pytest.approx(
        next(d["composite"] for d in docs if d["step"] == sel.best_step)
    )
    assert info["beats_baseline"] == (info["composite"] > 0)


def test_report_has_curves_table_audio_and_cost(evaluated_run):
    run, _ = evaluated_run
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # metric curves + loss curves, inline
    assert "<table>" in html and "★ best" in html and ">step_2" in html and ">step_4" in html
    assert "speaker similarity ↑" in html and "WER ↓" in html
    import re

    links = re.findall(r'<audio controls preload="none" src="([^"]+)"', html)
    assert len(links) == 5 and any("/real/" in x for x in links) and any("/finetuned/" in x for x in links)
    assert all((run / link).is_file() for link in links)  # relative to the run folder, where the report is
    cost = _doc(run / "eval" / "in_loop.json")
    assert [e["step"] for e in cost["evaluations"]] == [2, 4] and cost["skipped_steps"] == []
    assert 0 < cost["overhead_fraction"] <= 1 and cost["baseline_seconds"] > 0


def test_evaluation_does_not_change_the_training_trajectory(evaluated_run, dataset, base, tmp_path):
    run, with_eval = evaluated_run
    without = train(dataset, base, tmp_path / "plain", eval_every=0, eval_every_epochs=0, **TRAIN)
    assert [h["loss"] for h in without.losses] == [h["loss"] for h in with_eval.losses]
    assert not (tmp_path / "plain" / "eval").exists()
    a = torch.load(latest_checkpoint(run) / "trainable.pt", weights_only=True)
    b = torch.load(latest_checkpoint(tmp_path / "plain") / "trainable.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rescoring_reproduces_in_loop_renders_and_scores_a_base_alone(evaluated_run, dataset, base, asr_model,
                                                                      tmp_path):
    """`voicetune evaluate RUN --checkpoints all`: the kept checkpoints rendered after the fact sound exactly
    like their in-loop evaluation (which therefore used that step's weights); the baseline is reused."""
    run = tmp_path / "run"
    shutil.copytree(evaluated_run[0], run)
    before = {s: _doc(run / "eval" / s / "metrics.json") for s in ("baseline", "step_2", "step_4")}
    baseline_mtime = (run / "eval" / "baseline" / "metrics.json").stat().st_mtime_ns
    kept = [c.name for c in list_checkpoints(run)]
    assert main(["evaluate", str(run), "--checkpoints", "all", "--device", "cpu"]) == 0
    assert (run / "eval" / "baseline" / "metrics.json").stat().st_mtime_ns == baseline_mtime
    for name in kept:
        after = _doc(run / "eval" / name / "metrics.json")
        assert after["composite"] == pytest.approx(before[name]["composite"], abs=1e-9)
        for i in range(2):
            old = load_audio(evaluated_run[0] / "eval" / name / "finetuned" / f"{i:02d}.wav")[0]
            new = load_audio(run / "eval" / name / "finetuned" / f"{i:02d}.wav")[0]
            np.testing.assert_array_equal(old, new)
    assert best_checkpoint(run).name == best_checkpoint(evaluated_run[0]).name

    out = tmp_path / "base_scores"
    assert (
        main(
            [
                "evaluate",
                "--base",
                str(base),
                "--dataset",
                str(dataset),
                "--out",
                str(out),
                "--asr-model",
                asr_model,
                "--max-sentences",
                "1",
                "--probes",
                "1",
                "--num-references",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    doc = _doc(out / "metrics.json")
    # n_sentences counts renders: 2 sentences x 2 seeds
    assert doc["kind"] == "baseline" and doc["base"]["aggregate"]["n_sentences"] == 4
    assert (out / "base" / "00.wav").is_file() and (out / "real" / "00.wav").is_file()
    # the base's validation losses on the eval split: those the run's in-loop baseline computed
    in_loop = before["baseline"]["validation"]
    assert in_loop and doc["validation"] == pytest.approx(in_loop, rel=1e-4)
    assert {p.name for p in out.iterdir()} == {".voicetune-output.json", "base", "metrics.json", "real"}


def test_early_stopping_stops_when_the_score_stops_improving_and_keeps_the_best(
    dataset, base, asr_model, tmp_path
):
    """patience 1 with an unreachable min_delta: the first evaluation is the best, the second stops training.
    keep_last=1 would prune step_1 when step_2 is saved, but the best checkpoint is protected."""
    run = tmp_path / "run"
    result = train(dataset, base, run, eval_every=1, early_stop_patience=1, early_stop_min_delta=100.0,
                   eval_asr_model=asr_model, eval_max_sentences=1, eval_probes=1, eval_num_references=1,
                   eval_max_overhead=0.0, **{**TRAIN, "max_steps": 8, "save_every": 0})
    assert result.steps == 2
    assert sorted(p.name for p in (run / "eval").iterdir() if p.name.startswith("step_")) == [
        "step_1",
        "step_2",
    ]
    assert [c.name for c in list_checkpoints(run)] == ["step_1", "step_2"]
    assert best_checkpoint(run).name == "step_1" and latest_checkpoint(run).name == "step_2"
    cost = _doc(run / "eval" / "in_loop.json")
    assert "did not improve" in cost["stop_reason"]
    assert "training stopped early" in (run / "report.html").read_text()


def test_overhead_cap_skips_scheduled_evaluations_but_always_evaluates_the_last_step(dataset, base, asr_model,
                                                                                     tmp_path):
    run = tmp_path / "run"
    train(dataset, base, run, eval_every=1, eval_max_overhead=0.01, eval_asr_model=asr_model,
          eval_max_sentences=1, eval_probes=1, eval_num_references=1, **{**TRAIN, "max_steps": 3})
    cost = _doc(run / "eval" / "in_loop.json")
    assert cost["skipped_steps"] == [1, 2] and [e["step"] for e in cost["evaluations"]] == [3]
    assert best_checkpoint(run).name == "step_3"
    assert "skipped to keep evaluation under 1%" in (run / "report.html").read_text()


def test_a_resumed_run_reuses_its_baseline_and_continues_the_selection(dataset, base, asr_model, tmp_path):
    run = tmp_path / "run"
    options = {
        **TRAIN,
        "save_every": 0,
        "eval_every": 2,
        "eval_asr_model": asr_model,
        "eval_max_sentences": 1,
        "eval_probes": 1,
        "eval_num_references": 1,
        "eval_max_overhead": 0.0,
        "early_stop_patience": 0,
    }
    train(dataset, base, run, **{**options, "max_steps": 2})
    baseline = run / "eval" / "baseline" / "metrics.json"
    mtime = baseline.stat().st_mtime_ns
    train(resume=run, max_steps=4)
    assert baseline.stat().st_mtime_ns == mtime  # same protocol: not rendered again
    cost = _doc(run / "eval" / "in_loop.json")
    assert [e["step"] for e in cost["evaluations"]] == [2, 4]
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]  # one baseline record
    docs = [_doc(run / "eval" / f"step_{s}" / "metrics.json") for s in (2, 4)]
    base_doc = _doc(baseline)
    from voicetune.backends.registry import load_train_config

    sel, _ = replay(base_doc["base"]["aggregate"], [(d["step"], d["finetuned"]["aggregate"]) for d in docs],
                    selection_rules(load_train_config(run / "config.yaml").eval),
                    base_doc["real"]["aggregate"]["speaker_similarity"])
    assert best_checkpoint(run).name == f"step_{sel.best_step}"  # as if the run had never stopped


def test_the_verdict_heads_the_report_and_is_recorded_for_the_ui(evaluated_run):
    from voicetune.ui.evals import verdict as ui_verdict

    run, _ = evaluated_run
    html = (run / "report.html").read_text()
    assert html.index("class='verdict") < html.index("<table")  # at the top, before everything else
    said = _doc(run / "best.json")["verdict"]
    assert said["kind"] in ("improved", "no_improvement") and said["text"]
    assert "too few for an interval" in said["text"]  # 2 sentences: no interval is claimed, and it says so
    assert _doc(run / "eval" / "in_loop.json")["verdict"] == said
    assert ui_verdict(run) == said["text"]
