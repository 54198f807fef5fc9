"""The evaluation harness: run folder in, eval/<checkpoint>/ (metrics.json + wavs) out.

Most tests drive it with ``NoisyCopyBackend``, a small but real Backend whose "synthesis" is the real
eval recording of the requested sentence plus white noise at the SNR held in its state (base: heavy
noise, finetuned: light noise). It tests the harness's bookkeeping; every metric is computed for real.
The last test runs the harness on a tiny (untrained) XTTS base to prove the wiring to the real backend.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from voicetune.audio.io import audio_duration, load_audio
from voicetune.backends.base import Waveform
from voicetune.config import EvalConfig
from voicetune.data.manifest import write_metadata_csv
from voicetune.evaluation.harness import EvalError, evaluate, resolve_checkpoint
from voicetune.run import RunError, RunInfo, set_latest
from voicetune.utils.io import atomic_torch_save, atomic_write_json


class NoisyCopyBackend:
    """Returns the real recording of ``text`` plus seeded white noise at ``snr_db`` (its whole state)."""

    name = "noisy-copy"

    def __init__(self, recordings: dict[str, Path], fail_texts: set[str] | None = None):
        self.recordings = recordings
        self.fail_texts = fail_texts or set()
        self.snr_db: float | None = None
        self.training = True
        self.calls: list[tuple[str, float]] = []
        self.device = torch.device("cpu")

    def load_base(self, path: Path, device: torch.device) -> None:
        self.snr_db = float(json.loads((Path(path) / "noisy_copy.json").read_text())["snr_db"])
        self.device = torch.device(device)

    def set_train(self, mode: bool) -> None:
        self.training = mode

    def synthesize(self, text: str, refs, language: str, seed: int) -> Waveform:
        assert not self.training, "the harness must synthesize in inference mode"
        assert refs and all(Path(r).is_file() for r in refs)
        self.calls.append((text, self.snr_db))
        if text in self.fail_texts:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        audio, sr = load_audio(self.recordings[text])
        rng = np.random.default_rng(seed * 7919 + zlib.crc32(text.encode()))
        noise = rng.standard_normal(len(audio)).astype(np.float32)
        noise *= np.sqrt(np.mean(audio**2) / 10 ** (self.snr_db / 10) / np.mean(noise**2))
        return Waveform(audio + noise, sr, {"hit_max_length": False})

    def save(self, path: Path) -> None:
        atomic_torch_save({"snr_db": self.snr_db}, path)

    def load_trained(self, path: Path) -> None:
        self.snr_db = float(torch.load(path, weights_only=True)["snr_db"])


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def dataset_dir(piper_sentences, make_piper_dataset, tmp_path_factory) -> Path:
    """A Coqui-format dataset of real Piper speech: 3 train clips, 3 eval clips."""
    return make_piper_dataset(piper_sentences, tmp_path_factory.mktemp("eval_dataset"), n_train=3)


@pytest.fixture(scope="module")
def recordings(piper_sentences) -> dict[str, Path]:
    return {text: path for path, text in piper_sentences}


def make_run(root: Path, dataset: Path, base_snr: float, checkpoints: dict[str, float]) -> Path:
    """A run folder of the noisy-copy backend: base at ``base_snr``, one checkpoint per {name: snr}."""
    base = root / "base"
    base.mkdir(parents=True)
    atomic_write_json(base / "noisy_copy.json", {"snr_db": base_snr})
    run = root / "run"
    RunInfo(backend="noisy-copy", base=str(base), dataset=str(dataset)).save(run)
    for name, snr in checkpoints.items():
        ckpt = run / "checkpoints" / name
        atomic_torch_save({"snr_db": snr}, ckpt / "trainable.pt")
        atomic_write_json(ckpt / "meta.json", {"step": int(name.split("_")[1])})
        set_latest(run, ckpt)
    return run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, dataset_dir, recordings, asr_model):
    """One evaluation: base at 0 dB SNR, finetuned checkpoint step_10 at 30 dB SNR."""
    run = make_run(tmp_path_factory.mktemp("run_a"), dataset_dir, 0.0, {"step_10": 30.0})
    backend = NoisyCopyBackend(recordings)
    progress: list[tuple[int, int, str]] = []
    cfg = EvalConfig(max_sentences=3, num_references=2, asr_model=asr_model, seed=3, device="cpu")
    result = evaluate(run, cfg, progress=lambda d, t, w: progress.append((d, t, w)), backend=backend)
    return run, result, backend, progress


# ----------------------------------------------------------------------------------------------- tests


def test_evaluate_writes_metrics_json_and_all_wavs(evaluated, dataset_dir, asr_model):
    run, result, _, progress = evaluated
    assert result.eval_dir == run / "eval" / "compare_step_10"  # never an in-loop eval/step_N folder
    doc = json.loads(result.metrics_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    for model in ("base", "finetuned", "real"):
        for i in range(3):
            wav = result.eval_dir / model / f"{i:02d}.wav"
            assert wav.is_file() and audio_duration(wav) > 1.0
            assert doc[model]["per_sentence"][i]["audio_file"] == f"{model}/{i:02d}.wav"
    eval_texts = [
        line.split("|")[1] for line in (dataset_dir / "metadata_eval.csv").read_text().splitlines()[1:]
    ]
    assert [s["text"] for s in doc["sentences"]] == eval_texts
    assert doc["seed"] == 3 and doc["checkpoint"] == "step_10" and doc["step"] == 10
    assert Path(asr_model).name in doc["asr_model"]  # which ASR model scored the round trip
    assert set(doc["summary"]) >= {
        "speaker_similarity",
        "wer",
        "cer",
        "mos",
        "mcd",
        "pesq",
        "stoi",
        "failure_rate",
    }
    # references: the 2 longest TRAIN clips, longest first
    train = [
        dataset_dir / line.split("|")[0]
        for line in (dataset_dir / "metadata_train.csv").read_text().splitlines()[1:]
    ]
    longest = sorted(train, key=lambda p: -audio_duration(p))[:2]
    assert [Path(p).name for p in doc["references"]] == [p.name for p in longest]
    # no temporary folders left behind; progress reached its total
    assert not [p for p in (run / "eval").iterdir() if p.name.startswith(".step_10")]
    assert progress[-1][0] == progress[-1][1] == 15


def test_finetuned_with_less_noise_beats_base_on_every_quality_metric(evaluated):
    _, result, _, _ = evaluated
    s = result.summary()
    for key in ("speaker_similarity", "mos", "mcd", "pesq", "stoi"):
        assert s[key]["better"] is True, (key, s[key])
    assert s["wer"]["finetuned"] <= s["wer"]["base"]
    assert result.finetuned["mos"] > result.base["mos"] + 1.0
    assert result.finetuned["stoi"] > 0.95 and result.finetuned["pesq"] > 2.0
    # the real recordings: near-perfect intelligibility, no failure flags
    assert result.real["wer"] < 0.2 and result.real["failure_rate"] == 0.0
    table = result.table()
    assert table.splitlines()[0].split() == ["metric", "base", "step_10", "delta", "better?", "real"]
    assert "speaker similarity ↑" in table and "WER ↓" in table and "yes" in table


def test_sampling_seed_is_passed_and_base_renders_are_cached_across_checkpoints(
    tmp_path, dataset_dir, recordings, asr_model
):
    run = make_run(tmp_path, dataset_dir, 0.0, {"step_5": 10.0, "step_9": 40.0})
    cfg = EvalConfig(max_sentences=2, num_references=1, asr_model=asr_model, device="cpu")
    first_backend = NoisyCopyBackend(recordings)
    first = evaluate(run, cfg, checkpoint="step_5", backend=first_backend)
    assert [snr for _, snr in first_backend.calls] == [0.0, 0.0, 10.0, 10.0]
    second_backend = NoisyCopyBackend(recordings)
    second = evaluate(run, cfg, checkpoint="latest", backend=second_backend)
    assert second.checkpoint == "step_9"
    assert [snr for _, snr in second_backend.calls] == [40.0, 40.0]  # base came from the cache
    assert second.models["base"]["per_sentence"] == first.models["base"]["per_sentence"]
    a = load_audio(first.eval_dir / "base" / "00.wav")[0]
    b = load_audio(second.eval_dir / "base" / "00.wav")[0]
    np.testing.assert_array_equal(a, b)
    assert second.finetuned["mos"] > first.finetuned["mos"]


def test_a_sentence_that_fails_to_synthesize_is_reported_not_fatal(
    tmp_path, dataset_dir, recordings, asr_model
):
    run = make_run(tmp_path, dataset_dir, 20.0, {"step_1": 20.0})
    eval_texts = [
        line.split("|")[1] for line in (dataset_dir / "metadata_eval.csv").read_text().splitlines()[1:]
    ]

    class FailsWhenFinetuned(NoisyCopyBackend):
        def load_trained(self, path: Path) -> None:
            super().load_trained(path)
            self.fail_texts = {eval_texts[1]}

    result = evaluate(
        run,
        max_sentences=2,
        num_references=1,
        asr_model=asr_model,
        device="cpu",
        backend=FailsWhenFinetuned(recordings),
    )
    bad = result.models["finetuned"]["per_sentence"][1]
    assert bad["flags"] == ["synthesis_error"] and "inf, nan" in bad["error"] and bad["audio_file"] is None
    assert result.finetuned["failure_rate"] == 0.5 and result.base["failure_rate"] == 0.0
    assert not (result.eval_dir / "finetuned" / "01.wav").exists()
    assert "n/a" not in result.table().splitlines()[2]  # speaker similarity still averages the good sentence


def test_missing_run_checkpoint_or_eval_split_give_clear_errors(tmp_path, dataset_dir, recordings):
    with pytest.raises(RunError, match="run.json"):
        evaluate(tmp_path / "nothing")
    run = make_run(tmp_path / "a", dataset_dir, 0.0, {})
    with pytest.raises(RunError, match="no complete checkpoint"):
        evaluate(run, backend=NoisyCopyBackend(recordings))
    with pytest.raises(RunError, match="step_7"):
        resolve_checkpoint(run, "step_7")
    with pytest.raises(RunError, match="best"):
        resolve_checkpoint(run, "best")
    no_eval = tmp_path / "no_eval"
    shutil.copytree(dataset_dir, no_eval)
    write_metadata_csv(no_eval / "metadata_eval.csv", [])
    run = make_run(tmp_path / "b", no_eval, 0.0, {"step_1": 10.0})
    with pytest.raises(EvalError, match="eval-fraction"):
        evaluate(run, backend=NoisyCopyBackend(recordings))


def test_evaluate_runs_on_a_tiny_xtts_base(tmp_path, dataset_dir, asr_model):
    """Wiring to the real backend: an untrained 'finetuned' state equal to the base renders the same audio."""
    from voicetune.backends.base import get_backend
    from voicetune.backends.tiny import make_tiny_base

    base = make_tiny_base("xtts", tmp_path / "base", dataset=dataset_dir, seed=0)
    backend = get_backend("xtts")
    backend.load_base(base, torch.device("cpu"))
    run = tmp_path / "run"
    RunInfo(backend="xtts", base=str(base), dataset=str(dataset_dir)).save(run)
    ckpt = run / "checkpoints" / "step_0"
    backend.save(ckpt / "trainable.pt")
    atomic_write_json(ckpt / "meta.json", {"step": 0})
    set_latest(run, ckpt)

    result = evaluate(run, max_sentences=2, num_references=1, asr_model=asr_model, device="cpu")
    doc = json.loads(result.metrics_path.read_text())
    assert doc["backend"] == "xtts" and len(doc["sentences"]) == 2
    for i in range(2):
        base_wav = load_audio(result.eval_dir / "base" / f"{i:02d}.wav")
        ft_wav = load_audio(result.eval_dir / "finetuned" / f"{i:02d}.wav")
        assert base_wav[1] == ft_wav[1] == 24000 and len(base_wav[0]) > 0
        np.testing.assert_array_equal(base_wav[0], ft_wav[0])  # same state + same seed = same audio
    assert all(s["delta"] == 0.0 or math.isnan(s["delta"]) for s in result.summary().values())
    assert result.base["n_sentences"] == 2
