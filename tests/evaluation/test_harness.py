"""`voicetune evaluate` (evaluation.rescore on evaluation.harness and suite): run folder in, eval/
(metrics.json +
wavs) out, the best checkpoint re-decided.

The tests drive it with the FakeBackend (tests/backends/fake.py), a small but real backend whose "synthesis"
is the real eval recording of the requested sentence plus white noise at the SNR held in its trained state
(base: heavy noise, finetuned: light noise). They test the bookkeeping; every metric is computed for real. The
wiring to the real backends is in tests/backends/test_contract.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from backends.fake import FakeBackend

from voicetune.audio.io import audio_duration, load_audio
from voicetune.backends.registry import train_config
from voicetune.config import save_yaml
from voicetune.data.manifest import write_metadata_csv
from voicetune.evaluation.harness import EvalError
from voicetune.evaluation.rescore import rescore_run
from voicetune.run import RunError, RunInfo, resolve_checkpoint, set_latest, trainable_path
from voicetune.utils.io import atomic_write_json

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def dataset_dir(piper_sentences, make_piper_dataset, tmp_path_factory) -> Path:
    """A Coqui-format dataset of real Piper speech: 3 train clips, 3 eval clips."""
    return make_piper_dataset(piper_sentences, tmp_path_factory.mktemp("eval_dataset"), n_train=3)


@pytest.fixture(scope="module")
def recordings(piper_sentences) -> dict[str, Path]:
    return {text: path for path, text in piper_sentences}


def _eval_texts(dataset: Path) -> list[str]:
    return [line.split("|")[1] for line in (dataset / "metadata_eval.csv").read_text().splitlines()[1:]]


def make_run(root: Path, dataset: Path, recordings: dict[str, Path], base_snr: float,
             checkpoints: dict[str, float], asr_model: str = "auto", **protocol) -> Path:
    """A run folder of the fake backend: base at ``base_snr`` dB, one checkpoint per {name: snr}, and a
    config.yaml whose evaluation protocol is ``protocol`` (eval_* options)."""
    base = FakeBackend.make_tiny_base(root / "base", recordings=recordings, snr_db=base_snr)
    run = root / "run"
    RunInfo(backend="fake", base=str(base), dataset=str(dataset)).save(run)
    save_yaml(train_config(backend="fake", eval_asr_model=asr_model, **protocol), run / "config.yaml")
    backend = FakeBackend()
    backend.load_base(base, torch.device("cpu"))
    for name, snr in checkpoints.items():
        ckpt = run / "checkpoints" / name
        backend.model.snr_db.fill_(snr)
        backend.save(trainable_path(ckpt))
        atomic_write_json(ckpt / "meta.json", {"step": int(name.split("_")[1])})
        set_latest(run, ckpt)
    return run


PROTOCOL = {"eval_max_sentences": 3, "eval_probes": 0, "eval_num_references": 2, "eval_seed": 3,
            "eval_seeds": 1}  # one render per sentence: the counts below are sentences


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, dataset_dir, recordings, asr_model):
    """One evaluation: base at 0 dB SNR, finetuned checkpoint step_10 at 30 dB SNR."""
    run = make_run(tmp_path_factory.mktemp("run_a"), dataset_dir, recordings, 0.0, {"step_10": 30.0},
                   asr_model,
                   **PROTOCOL)
    backend = FakeBackend()
    progress: list[tuple[int, int, str]] = []
    result = rescore_run(run, "latest", progress=lambda d, t, w: progress.append((d, t, w)), backend=backend,
                         device="cpu")
    return run, result, backend, progress


def _doc(path: Path) -> dict:
    return json.loads(path.read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {path}"))


# ----------------------------------------------------------------------------------------------- tests


def test_evaluate_writes_metrics_json_and_all_wavs(evaluated, dataset_dir, asr_model):
    run, result, _, progress = evaluated
    assert result.eval_root == run / "eval" and result.evaluated == ["step_10"] and result.best == "step_10"
    doc = _doc(run / "eval" / "step_10" / "metrics.json")
    baseline = _doc(run / "eval" / "baseline" / "metrics.json")
    for i in range(3):
        for folder in ("baseline/base", "baseline/real", "step_10/finetuned"):
            assert audio_duration(run / "eval" / folder / f"{i:02d}.wav") > 1.0
        assert doc["finetuned"]["per_sentence"][i]["audio_file"] == f"finetuned/{i:02d}.wav"
        assert doc["base"]["per_sentence"][i]["audio_file"] == f"../baseline/base/{i:02d}.wav"
    assert [s["text"] for s in doc["sentences"]] == _eval_texts(dataset_dir)
    assert doc["protocol"]["seed"] == 3 and doc["checkpoint"] == "step_10" and doc["step"] == 10
    assert Path(asr_model).name in baseline["asr_model"]  # which ASR model scored the round trip
    assert set(doc["summary"]) >= {"speaker_similarity", "wer", "cer", "mos", "mcd", "pesq", "stoi",
                                   "failure_rate"}
    # references: the 2 longest TRAIN clips, longest first
    train = [dataset_dir / line.split("|")[0]
             for line in (dataset_dir / "metadata_train.csv").read_text().splitlines()[1:]]
    longest = sorted(train, key=lambda p: -audio_duration(p))[:2]
    assert [Path(p).name for p in doc["references"]] == [p.name for p in longest]
    # no temporary folders left behind; every evaluation's progress reached its total
    assert not [p for p in (run / "eval").iterdir() if p.name.startswith(".")]
    # progress counts sentences (3), rendering then scoring, each phase of each evaluation reaching its end
    for phase in ("rendering", "scoring"):
        for name in ("baseline", "step_10"):
            calls = [(d, t) for d, t, w in progress if w == f"eval {name}: {phase}"]
            assert calls[0] == (0, 3) and calls[-1] == (3, 3), (name, phase, calls)
    assert (run / "checkpoints" / "best").read_text().strip() == "step_10" and result.report.is_file()


def test_finetuned_with_less_noise_beats_base_on_every_quality_metric(evaluated):
    run, result, _, _ = evaluated
    s = result.docs["step_10"]["summary"]
    for key in ("speaker_similarity", "mos", "mcd", "pesq", "stoi"):
        assert s[key]["better"] is True, (key, s[key])
    assert s["wer"]["finetuned"] <= s["wer"]["base"]
    assert s["mos"]["finetuned"] > s["mos"]["base"] + 1.0
    assert s["stoi"]["finetuned"] > 0.95 and s["pesq"]["finetuned"] > 2.0
    # the real recordings: near-perfect intelligibility, no failure flags
    real = _doc(run / "eval" / "baseline" / "metrics.json")["real"]["aggregate"]
    assert real["wer"] < 0.2 and real["failure_rate"] == 0.0
    assert "sim" in result.text and "step_10" in result.text


def test_sampling_seed_is_passed_and_the_baseline_is_reused_across_checkpoints(
    tmp_path, dataset_dir, recordings, asr_model
):
    run = make_run(tmp_path, dataset_dir, recordings, 0.0, {"step_5": 10.0, "step_9": 40.0}, asr_model,
                   **{**PROTOCOL, "eval_max_sentences": 2, "eval_num_references": 1})
    first_backend = FakeBackend()
    first = rescore_run(run, "step_5", backend=first_backend, device="cpu")
    assert [snr for _, snr in first_backend.calls] == [0.0, 0.0, 10.0, 10.0]
    second_backend = FakeBackend()
    second = rescore_run(run, "latest", backend=second_backend, device="cpu")
    assert second.evaluated == ["step_9"]
    assert [snr for _, snr in second_backend.calls] == [40.0, 40.0]  # the baseline came from eval/baseline
    assert second.docs["step_9"]["base"]["per_sentence"] == first.docs["step_5"]["base"]["per_sentence"]
    assert (
        second.docs["step_9"]["finetuned"]["aggregate"]["mos"]
        > first.docs["step_5"]["finetuned"]["aggregate"]["mos"]
    )
    assert second.best == "step_9"  # re-decided over both evaluations of this protocol


def test_a_sentence_that_fails_to_synthesize_is_reported_not_fatal(tmp_path, dataset_dir, recordings,
                                                                   asr_model):
    run = make_run(tmp_path, dataset_dir, recordings, 20.0, {"step_1": 20.0}, asr_model,
                   **{**PROTOCOL, "eval_max_sentences": 2, "eval_num_references": 1})
    eval_texts = _eval_texts(dataset_dir)

    class FailsWhenFinetuned(FakeBackend):
        def load_trained(self, path: Path) -> None:
            super().load_trained(path)
            self.fail_texts = {eval_texts[1]}

    result = rescore_run(run, "latest", backend=FailsWhenFinetuned(), device="cpu")
    doc = result.docs["step_1"]
    bad = doc["finetuned"]["per_sentence"][1]
    assert bad["flags"] == ["synthesis_error"] and "inf, nan" in bad["error"] and bad["audio_file"] is None
    assert (
        doc["finetuned"]["aggregate"]["failure_rate"] == 0.5
        and doc["base"]["aggregate"]["failure_rate"] == 0.0
    )
    assert not (run / "eval" / "step_1" / "finetuned" / "01.wav").exists()
    assert np.isfinite(doc["summary"]["speaker_similarity"]["finetuned"])  # still averages the good sentence


def test_missing_run_checkpoint_or_eval_split_give_clear_errors(tmp_path, dataset_dir, recordings):
    with pytest.raises(RunError, match="run.json"):
        rescore_run(tmp_path / "nothing")
    run = make_run(tmp_path / "a", dataset_dir, recordings, 0.0, {})
    with pytest.raises(RunError, match="no complete checkpoint"):
        rescore_run(run, backend=FakeBackend(), device="cpu")
    with pytest.raises(RunError, match="step_7"):
        resolve_checkpoint(run, "step_7")
    with pytest.raises(RunError, match="best"):
        resolve_checkpoint(run, "best")
    no_eval = tmp_path / "no_eval"
    shutil.copytree(dataset_dir, no_eval)
    write_metadata_csv(no_eval / "metadata_eval.csv", [])
    run = make_run(tmp_path / "b", no_eval, recordings, 0.0, {"step_1": 10.0})
    with pytest.raises(EvalError, match="eval-fraction"):
        rescore_run(run, backend=FakeBackend(), device="cpu")


def test_protocol_options_are_validated_and_name_their_flag(tmp_path, dataset_dir, recordings):
    from voicetune.config import ConfigError

    run = make_run(tmp_path, dataset_dir, recordings, 0.0, {"step_1": 10.0})
    with pytest.raises(ConfigError, match="--eval-num-references"):
        rescore_run(run, backend=FakeBackend(), device="cpu", num_references=0)


def test_load_audio_of_a_render_matches_what_was_scored(evaluated):
    run, _, _, _ = evaluated
    audio, sr = load_audio(run / "eval" / "step_10" / "finetuned" / "00.wav")
    assert sr == 22050 and np.abs(audio).max() <= 1.0
