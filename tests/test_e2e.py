"""End to end through the CLI, on real components: Piper recordings → prepare → tiny XTTS base → train →
evaluate → export → load with coqui-tts (strict) → synthesize; and the same recordings → tiny CSM base → train
(LoRA and full) → evaluate → export → load with transformers' from_pretrained → synthesize. CPU only, a few
training steps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jiwer
import pytest
import soundfile as sf

from voicetune.cli import main
from voicetune.data.manifest import Dataset, read_clips_jsonl
from voicetune.evaluation.metrics import normalize_text


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def prepared(piper_recordings: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`voicetune prepare` of the Piper recordings (once for the module; the recordings must not change)."""
    before = _tree_digest(piper_recordings)
    data = tmp_path_factory.mktemp("e2e") / "data"
    assert main(["prepare", str(piper_recordings), "--out", str(data)]) == 0
    assert _tree_digest(piper_recordings) == before, "the user's input files must never change"
    return data


def test_recordings_to_exported_model_and_speech(piper_recordings: Path, prepared: Path, tmp_path: Path):
    before = _tree_digest(piper_recordings)
    data, base, run, pkg = prepared, tmp_path / "base", tmp_path / "run", tmp_path / "pkg"

    ds = Dataset.load(data)
    known = json.loads((piper_recordings / "transcripts.json").read_text())
    n_sentences = sum(len(v) for v in known.values())
    kept = [r for r in read_clips_jsonl(data / "clips.jsonl") if r.status == "kept"]
    assert len(ds.train) + len(ds.eval) == len(kept) >= 0.4 * n_sentences  # clips hold 1-3 sentences
    assert ds.eval, "the eval split must not be empty"
    for rec in kept:
        assert 1.0 <= rec.duration <= 11.6 + 1e-6, rec
    heard = normalize_text(" ".join(r.text for r in sorted(kept, key=lambda r: (r.source_file, r.start))))
    said = normalize_text(" ".join(" ".join(v) for _, v in sorted(known.items())))
    assert jiwer.wer(said, heard) < 0.3

    assert main(["make-tiny-base", "--backend", "xtts", "--out", str(base), "--dataset", str(data)]) == 0
    assert main(["train", str(data), "--base", str(base), "--out", str(run), "--max-steps", "6",
                 "--batch-size", "2", "--lr", "5e-4", "--eval-max-sentences", "1", "--eval-probes", "1"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") != "eval"]
    # in-loop evaluation is on by default: the base model's baseline first, the last step always evaluated
    eval_steps = [r["step"] for r in records if r.get("kind") == "eval"]
    assert eval_steps[0] == 0 and eval_steps[-1] == 6
    assert (run / "report.html").is_file() and (run / "checkpoints" / "best").is_file()
    assert len(losses) == 6 and all(v == v and v < 1e4 for v in losses)  # finite

    assert main(["evaluate", str(run)]) == 0  # re-scores the latest checkpoint with the run's protocol
    metrics = json.loads((run / "eval" / "step_6" / "metrics.json").read_text())
    assert {"base", "finetuned"} <= set(metrics)

    assert main(["export", str(run), "--out", str(pkg)]) == 0
    manifest = json.loads((pkg / "voicetune.json").read_text())
    assert manifest["steps"] == 6 and manifest["untrained_base"] is True
    refs = [pkg / r for r in manifest["references"]]
    durations = [sf.info(str(r)).duration for r in refs]
    assert durations == sorted(durations, reverse=True) and durations

    # the package loads in coqui-tts unchanged, strictly
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    cfg = XttsConfig()
    cfg.load_json(str(pkg / "config.json"))
    model = Xtts(cfg)
    model.load_checkpoint(cfg, checkpoint_dir=str(pkg), strict=True, eval=True)

    out = tmp_path / "hello.wav"
    assert main(["synthesize", str(pkg), "--text", "Hello there, how are you?", "--out", str(out)]) == 0
    info = sf.info(str(out))
    assert info.samplerate == 24000 and 0.1 < info.duration < 60

    assert _tree_digest(piper_recordings) == before, "the user's input files must never change"


def test_recordings_to_a_csm_finetune_that_transformers_loads(prepared: Path, tmp_path: Path):
    import torch
    from transformers import AutoProcessor, CsmForConditionalGeneration

    data, base, lora, full, pkg = prepared, tmp_path / "base", tmp_path / "lora", tmp_path / "full", tmp_path / "pkg"
    assert main(["make-tiny-base", "--backend", "csm", "--out", str(base), "--dataset", str(data)]) == 0
    common = ["--backend", "csm", "--max-steps", "3", "--batch-size", "2"]
    assert main(["train", str(data), "--base", str(base), "--out", str(lora), *common, "--finetune", "lora",
                 "--lr", "1e-3", "--eval-max-sentences", "1", "--eval-probes", "1"]) == 0
    records = [json.loads(line) for line in (lora / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") == "eval"] == [0, 3]  # baseline, then the last step
    steps = [r for r in records if r.get("kind") != "eval"]
    assert len(steps) == 3 and all(r["backbone_ce"] > 0 and r["depth_ce"] > 0 for r in steps)
    report = (lora / "report.html").read_text()
    assert "c0 (backbone_ce" in report  # the loss panel says how to read a flat total
    assert main(["train", str(data), "--base", str(base), "--out", str(full), *common, "--finetune", "full",
                 "--lr", "1e-4", "--eval-every-epochs", "0"]) == 0

    assert main(["export", str(lora), "--out", str(pkg)]) == 0
    manifest = json.loads((pkg / "voicetune.json").read_text())
    assert manifest["backend"] == "csm" and manifest["untrained_base"] is True and manifest["references"]
    assert (pkg / "adapter" / "adapter_config.json").is_file()
    model = CsmForConditionalGeneration.from_pretrained(pkg).eval()  # unchanged transformers
    processor = AutoProcessor.from_pretrained(pkg)
    inputs = processor.apply_chat_template([{"role": "0", "content": [{"type": "text", "text": "Hello."}]}],
                                           tokenize=True, return_dict=True)
    invalid = list(range(model.config.codec_config.codebook_size, model.config.vocab_size))
    torch.manual_seed(0)
    audio = model.generate(**inputs, output_audio=True, max_new_tokens=4, suppress_tokens=invalid,
                           depth_decoder_suppress_tokens=invalid)
    assert audio[0].numel() > 0

    out = tmp_path / "hello.wav"
    assert main(["synthesize", str(pkg), "--text", "Hello there, how are you?", "--out", str(out)]) == 0
    info = sf.info(str(out))
    assert info.samplerate == 24000 and 0 < info.duration <= 2.1
