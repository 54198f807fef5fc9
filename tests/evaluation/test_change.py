"""The no-effect check (voicetune.evaluation.change): a finetune whose output is the base model's is flagged,
a
finetune that changed the model is not.

Known answers: the same audio (flagged), the same audio with noise at 30 dB SNR (not flagged); a tiny XTTS
whose LoRA weights are zero (flagged) and the same LoRA after real training steps (not flagged); and the
wiring
into ``voicetune evaluate`` (change.json, the report's section, the verdict's note) on the fake backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from backends.fake import FakeBackend
from evaluation.test_harness import PROTOCOL, make_run

from voicetune.audio.io import load_audio
from voicetune.backends.registry import get_backend
from voicetune.data.manifest import Dataset
from voicetune.evaluation import change
from voicetune.evaluation.harness import render
from voicetune.evaluation.rescore import rescore_run
from voicetune.run import latest_checkpoint, trainable_path


def _clips(piper_sentences, n: int = 3) -> list[tuple[np.ndarray, int]]:
    return [load_audio(p) for p, _ in piper_sentences[:n]]


def test_the_same_audio_is_indistinguishable_and_noise_at_30_db_is_not(piper_sentences):
    clips = _clips(piper_sentences)
    same = change.compare(clips, [(a.copy(), sr) for a, sr in clips])
    assert same is not None and same.indistinguishable and same.identical == same.pairs == 3
    assert same.speaker_distance == 0.0 and same.spectral_distance == 0.0
    assert (
        "indistinguishable from the base model" in same.message
        and "adapter was not applied" in same.message
    )
    rng = np.random.default_rng(0)
    noisy = [
        (a + rng.normal(0, np.sqrt(np.mean(a**2)) * 10 ** (-30 / 20), a.shape).astype(np.float32), sr)
        for a, sr in clips
    ]
    moved = change.compare(clips, noisy)
    assert moved is not None and not moved.indistinguishable and moved.identical == 0
    assert moved.spectral_distance > change.SPECTRAL_DISTANCE_MAX
    assert change.notes(moved.as_dict()) == [] and change.notes(same.as_dict())


def test_failed_renders_are_left_out_and_nothing_to_compare_is_none(piper_sentences):
    clips = _clips(piper_sentences, 2)
    result = change.compare([clips[0], None], [clips[0], clips[1]])
    assert result is not None and result.pairs == 1 and result.per_sentence[0]["index"] == 0
    assert change.compare([None, None], clips) is None


def _renders(
    tiny_base: Path, tiny_dataset: Path, weights: Path | None = None
) -> list[tuple[np.ndarray, int] | None]:
    """Renders of an eval sentence (seed 7) by the base, or by the base with trained ``weights``."""
    backend = get_backend("xtts")
    backend.load_base(tiny_base, torch.device("cpu"))
    if weights is not None:
        backend.load_trained(weights)  # the checkpoint's structure (its LoRA) comes with it
    data = Dataset.load(tiny_dataset)
    out = render(backend, [data.eval[0].text], [c.audio_path for c in data.train[:2]], "en", seed=7)
    return [(r.audio, r.sample_rate) if r.audio is not None else None for r in out]


def test_a_zero_weight_lora_is_flagged_and_a_trained_one_is_not(
    tiny_lora_run, tiny_base, tiny_dataset, tmp_path
):
    trained_weights = trainable_path(latest_checkpoint(tiny_lora_run))
    state = torch.load(trained_weights, weights_only=True)
    lora = [k for k in state if "lora_" in k]
    assert lora and any(state[k].any() for k in lora if "lora_B" in k)  # training moved the adapter
    zeroed = {k: (torch.zeros_like(v) if k in lora else v) for k, v in state.items()}
    torch.save(zeroed, tmp_path / "zero_lora.pt")  # the same adapter, every weight zero
    base = _renders(tiny_base, tiny_dataset)
    zero = change.compare(
        base, _renders(tiny_base, tiny_dataset, tmp_path / "zero_lora.pt"), finetuned_name="zero LoRA"
    )
    trained = change.compare(
        base, _renders(tiny_base, tiny_dataset, trained_weights), finetuned_name="trained LoRA"
    )
    assert zero is not None and zero.indistinguishable, zero
    assert trained is not None and not trained.indistinguishable, trained
    assert trained.spectral_distance > change.SPECTRAL_DISTANCE_MAX and trained.identical == 0


@pytest.mark.parametrize("snr, flagged", [(0.0, True), (30.0, False)])
def test_evaluate_writes_change_json_and_the_report_section(
    snr, flagged, tmp_path, tiny_dataset, piper_sentences, asr_model
):
    """``voicetune evaluate`` on the fake backend: a checkpoint equal to the base (0 dB, the base's) is
    flagged; one at 30 dB SNR is not."""
    recordings = {t: p for p, t in piper_sentences}
    run = make_run(
        tmp_path,
        tiny_dataset,
        recordings,
        0.0,
        {"step_10": snr},
        asr_model,
        **{**PROTOCOL, "eval_max_sentences": 2},
    )
    result = rescore_run(run, "latest", backend=FakeBackend(), device="cpu")
    doc = json.loads((result.eval_root / change.CHANGE_FILE).read_text())
    assert doc["finetuned"] == "step_10" and doc["pairs"] == 2 and doc["indistinguishable"] is flagged
    html = result.report.read_text()
    assert "Did the finetune change the voice?" in html
    assert ("indistinguishable from the base model" in html) is flagged
    assert bool(change.notes(change.load(result.eval_root))) is flagged
