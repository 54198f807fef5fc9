"""Software errors are not quality results: when every sentence of an evaluation fails to synthesize, training
stops (before the first step for the baseline; after saving the checkpoint for a later evaluation) with a
non-zero exit, the report puts the error at the top, and no best checkpoint is chosen. When only some
sentences fail, the report says how many and why.

Real tiny XTTS model, real metrics; synthesis is broken in a controlled way: as transformers 5.24 broke
coqui-tts's XTTS inference (the ``transformers_5_24`` fixture of conftest.py), or by raising for chosen
sentences.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from voicetune.cli import main
from voicetune.evaluation.selection import Selector, all_failed, best_of, composite_score, replay
from voicetune.finetune import train
from voicetune.run import best_checkpoint, latest_checkpoint, list_checkpoints
from voicetune.training.errors import SoftwareError
from voicetune.utils.io import read_jsonl

SMALL = {"batch_size": 2, "lr": 5e-4, "seed": 3, "device": "cpu", "eval_max_sentences": 1, "eval_probes": 1,
         "eval_num_references": 2, "eval_max_overhead": 0.0, "early_stop_patience": 0,
         "eval_seeds": 1}  # one render per sentence: the counts below are sentences
CAUSE = ("AttributeError: 'NoneType' object has no attribute 'get_seq_length' "
         "(at TTS/tts/layers/xtts/gpt_inference.py:62)")


def _error_first(report: Path, error: str) -> None:
    """The report's first element after the title is the error box, holding ``error``."""
    page = report.read_text()
    box = re.search(r"<div class='error'>(.*?)</div>", page, re.DOTALL)
    assert box and error in box.group(1).replace("&#x27;", "'"), page[:2000]
    assert page.index("<div class='error'>") < page.index("<h2>")


def test_a_baseline_that_synthesizes_nothing_stops_training_before_the_first_step(
        like_transformers_5_24, tiny_dataset, tiny_base, asr_model, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SoftwareError) as info:
        train(tiny_dataset, tiny_base, run, max_steps=4, eval_every=2, eval_asr_model=asr_model, **SMALL)
    message = str(info.value)
    assert ("the baseline evaluation: all 2 sentences failed to synthesize (component: synthesis, "
            "xtts backend)") in message
    assert CAUSE in message and "training did not start" in message
    assert list_checkpoints(run) == [] and not [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    baseline = json.loads((run / "eval" / "baseline" / "metrics.json").read_text())
    assert CAUSE in baseline["error"] and baseline["base"]["aggregate"]["synthesis_errors"] == 2
    _error_first(run / "report.html", CAUSE)
    page = (run / "report.html").read_text()
    assert "No evaluation after the baseline yet: nothing to plot." in page
    assert "No training step was logged: nothing to plot." in page


def test_a_later_evaluation_that_synthesizes_nothing_fails_the_run_after_saving_its_checkpoint(
        transformers_5_24, tiny_dataset, tiny_base, asr_model, tmp_path, monkeypatch, capsys):
    from voicetune.evaluation.in_loop import InLoopEvaluator

    original = InLoopEvaluator.on_train_start

    def baseline_then_break(self, state):  # the baseline renders fine; then the stack breaks as 5.24 did
        original(self, state)
        transformers_5_24()

    monkeypatch.setattr(InLoopEvaluator, "on_train_start", baseline_then_break)
    run = tmp_path / "run"
    code = main(["train", str(tiny_dataset), "--base", str(tiny_base), "--out", str(run), "--max-steps", "4",
                 "--eval-every", "2", "--eval-asr-model", asr_model, "--batch-size", "2", "--device", "cpu",
                 "--eval-max-sentences", "1", "--eval-probes", "1", "--eval-num-references", "2",
                 "--eval-max-overhead", "0", "--early-stop-patience", "0", "--eval-seeds", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "step_2 evaluation: all 2 sentences failed to synthesize" in err and CAUSE in err
    assert "Traceback" not in err  # one line on the console; the traceback is in train.log
    assert latest_checkpoint(run).name == "step_2"  # saved, and the run stopped there
    assert best_checkpoint(run) is None and not (run / "best.json").exists()  # never chosen from it
    doc = json.loads((run / "eval" / "step_2" / "metrics.json").read_text())
    assert CAUSE in doc["error"] and doc["composite"] is None
    assert CAUSE in json.loads((run / "eval" / "in_loop.json").read_text())["error"]
    _error_first(run / "report.html", CAUSE)
    # its metric panels have no data (nothing was synthesized): each says so instead of drawing empty axes
    from voicetune.evaluation.report import collect, metric_figure

    for ax in metric_figure(collect(run)).axes:
        assert not ax.lines and ax.texts[0].get_text().startswith("no data"), ax.get_title()
    log = (run / "train.log").read_text()
    assert "Traceback" in log and "gpt_inference.py" in log  # everything is in the file:
    # every step (the console: every 10th, the first and the last)
    assert "step 2/4 loss" in log and "step 2/4 loss" not in err

    # re-scoring the broken checkpoint fails loudly too
    code = main(["evaluate", str(run), "--checkpoint", "step_2", "--asr-model", asr_model, "--device", "cpu"])
    assert code == 1 and "step_2 evaluation: all 2 sentences failed" in capsys.readouterr().err


def test_some_sentences_failing_is_reported_with_how_many_and_why(tiny_dataset, tiny_base, asr_model,
                                                                   tmp_path, monkeypatch):
    from voicetune.backends.xtts.backend import XttsBackend
    from voicetune.evaluation.probes import probe_sentences

    probe = probe_sentences("en", 1)[0]
    real = XttsBackend.synthesize_batch

    def refuse() -> Exception:
        try:  # raised, so that it carries where it happened, as a real failure does
            raise RuntimeError("probe sentences cannot be spoken today")
        except RuntimeError as e:
            return e

    def no_probes(self, texts, refs, language, seeds):  # the evaluation renders through synthesize_batch
        keep = [i for i, t in enumerate(texts) if t != probe]
        rendered = iter(real(self, [texts[i] for i in keep], refs, language, [seeds[i] for i in keep]))
        return [next(rendered) if t != probe else refuse() for t in texts]

    monkeypatch.setattr(XttsBackend, "synthesize_batch", no_probes)
    run = tmp_path / "run"
    result = train(tiny_dataset, tiny_base, run, max_steps=2, eval_every=2, eval_asr_model=asr_model, **SMALL)
    assert result.steps == 2  # a partial failure is a measured result: training goes on
    agg = json.loads((run / "eval" / "step_2" / "metrics.json").read_text())["finetuned"]["aggregate"]
    assert agg["synthesis_errors"] == 1 and agg["n_sentences"] == 2
    why = "RuntimeError: probe sentences cannot be spoken today"
    page = (run / "report.html").read_text().replace("&#x27;", "'")
    for name in ("baseline", "step 2"):
        pattern = rf"{name}: 1 of 2 sentences failed to synthesize: {re.escape(why)} \(at [^)]+\) \(1x\)"
        assert re.search(pattern, page), page[:3000]
    assert "<div class='error'>" not in page
    # a readable header: the protocol in words, no raw JSON
    assert ("1 eval-split sentence with their recordings + 1 probe sentence, conditioned on 2 reference "
            "clips of the speaker, sampling seed 0") in page
    assert '{"' not in page and "{&quot;" not in page


def test_an_evaluation_where_everything_failed_never_scores_nor_becomes_the_best():
    baseline = {"speaker_similarity": 0.5, "wer": 0.5, "cer": 0.3, "mos": 2.0, "failure_rate": 0.5}
    failed = {"speaker_similarity": math.nan, "wer": 1.0, "cer": 1.0, "mos": math.nan, "failure_rate": 1.0,
              "n_sentences": 8, "synthesis_errors": 8}
    partial = {**baseline, "n_sentences": 8, "synthesis_errors": 3}
    assert all_failed(failed) and not all_failed(partial) and not all_failed(baseline)
    assert math.isnan(composite_score(failed, baseline)[0])
    assert Selector(baseline).update(100, failed).is_best is False
    selector, decisions = replay(baseline, [(100, failed), (200, partial)])
    assert selector.best_step == 200 and best_of(decisions).step == 200
    assert best_of(replay(baseline, [(100, failed)])[1]) is None
