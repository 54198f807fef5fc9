"""End to end through the CLI, on real components: Piper recordings → prepare → tiny base (XTTS, Tortoise,
CSM) → train → evaluate → export → load with coqui-tts → synthesize. CPU only, a few training steps; the
recordings are prepared once for all backends."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
import yaml

from voicetune.cli import main
from voicetune.data.manifest import Dataset, read_clips_jsonl
from voicetune.evaluation.metrics import normalize_text


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def prepared(piper_recordings: Path, tmp_path_factory) -> Path:
    """``voicetune prepare`` on the Piper recordings, once for every backend below."""
    before = _tree_digest(piper_recordings)
    data = tmp_path_factory.mktemp("e2e") / "data"
    assert main(["prepare", str(piper_recordings), "--out", str(data)]) == 0
    assert _tree_digest(piper_recordings) == before, "the user's input files must never change"
    return data


def test_prepare_cuts_transcribes_and_splits_the_recordings(piper_recordings: Path, prepared: Path):
    ds = Dataset.load(prepared)
    known = json.loads((piper_recordings / "transcripts.json").read_text())
    n_sentences = sum(len(v) for v in known.values())
    kept = [r for r in read_clips_jsonl(prepared / "clips.jsonl") if r.status == "kept"]
    assert len(ds.train) + len(ds.eval) == len(kept) >= 0.4 * n_sentences  # clips hold 1-3 sentences
    assert ds.eval, "the eval split must not be empty"
    for rec in kept:
        assert 1.0 <= rec.duration <= 11.6 + 1e-6, rec
    heard = normalize_text(" ".join(r.text for r in sorted(kept, key=lambda r: (r.source_file, r.start))))
    said = normalize_text(" ".join(" ".join(v) for _, v in sorted(known.items())))
    assert jiwer.wer(said, heard) < 0.3


def _train_evaluate_export(data: Path, tmp_path: Path, backend: str, lr: str,
                           capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """make-tiny-base -> train (in-loop evaluation on) -> evaluate -> export, with the checks every backend
    passes; returns (run, package)."""
    base, run, pkg = tmp_path / "base", tmp_path / "run", tmp_path / "pkg"
    assert main(["make-tiny-base", "--backend", backend, "--out", str(base), "--dataset", str(data)]) == 0
    capsys.readouterr()
    assert main(["train", str(data), "--backend", backend, "--base", str(base), "--out", str(run),
                 "--max-steps", "6", "--batch-size", "2", "--lr", lr, "--eval-max-sentences", "1",
                 "--eval-probes", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    # the last lines say what to run next, with this run's paths
    best = (run / "checkpoints" / "best").read_text().strip()
    voice = tmp_path / "run-voice"
    evaluate = f"  voicetune evaluate {run}                 # score checkpoints against the base model"
    export = f"  voicetune export {run} --out {voice} --checkpoint best   # {best}, the best evaluation"
    synthesize = f"  voicetune synthesize {voice} --text \"Hello, this is my voice.\" --out hello.wav"
    assert out[-4:] == ["next:", evaluate, export, synthesize]
    assert out[-5].startswith("verdict: ")  # the plain verdict ends the report (evaluation/verdict.py)
    assert (run / "train.log").is_file() and "step 2/6" in (run / "train.log").read_text()
    # a run folder is not a package: say so, with the export command
    assert main(["synthesize", str(run), "--text", "Hi.", "--out", str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err
    assert "is a training run, not a model package; export it first" in err
    assert f"voicetune export {run} --out {voice}" in err and not (tmp_path / "x.wav").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") != "eval"]
    # in-loop evaluation is on by default: the base model's baseline first, the last step always evaluated
    eval_steps = [r["step"] for r in records if r.get("kind") == "eval"]
    assert eval_steps[0] == 0 and eval_steps[-1] == 6
    assert (run / "report.html").is_file() and (run / "checkpoints" / "best").is_file()
    assert len(losses) == 6 and all(math.isfinite(v) and v < 1e4 for v in losses)

    assert main(["evaluate", str(run)]) == 0  # re-scores the latest checkpoint with the run's protocol
    metrics = json.loads((run / "eval" / "step_6" / "metrics.json").read_text())
    assert {"base", "finetuned"} <= set(metrics)

    assert main(["export", str(run), "--out", str(pkg)]) == 0
    manifest = json.loads((pkg / "voicetune.json").read_text())
    assert manifest["steps"] == 6 and manifest["untrained_base"] is True and manifest["backend"] == backend
    refs = [pkg / r for r in manifest["references"]]
    durations = [sf.info(str(r)).duration for r in refs]
    assert durations == sorted(durations, reverse=True) and durations
    card = (pkg / "README.md").read_text()  # prose with rounded numbers, not a JSON dump
    assert "{" not in card and "How it compares with the base model" in card and "Speaker similarity" in card
    assert not re.search(r"\d\.\d{4,}", card)
    return run, pkg


def _synthesize(pkg: Path, out: Path, *flags: str) -> None:
    assert (
        main(["synthesize", str(pkg), "--text", "Hello there, how are you?", "--out", str(out), *flags]) == 0
    )
    info = sf.info(str(out))
    assert info.samplerate == 24000 and 0.1 < info.duration < 60


def test_xtts_recordings_to_exported_model_and_speech(prepared: Path, tmp_path: Path, capsys):
    _, pkg = _train_evaluate_export(prepared, tmp_path, "xtts", "5e-4", capsys)

    # the package loads in coqui-tts unchanged, strictly
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    cfg = XttsConfig()
    cfg.load_json(str(pkg / "config.json"))
    model = Xtts(cfg)
    model.load_checkpoint(cfg, checkpoint_dir=str(pkg), strict=True, eval=True)
    _synthesize(pkg, tmp_path / "hello.wav")


def test_tortoise_recordings_to_exported_model_and_speech(prepared: Path, tmp_path: Path, capsys):
    import torch

    run, pkg = _train_evaluate_export(prepared, tmp_path, "tortoise", "1e-3", capsys)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["grad_clip"] == 4.0 and config["scheduler"] == "multistep"  # the ai-voice-cloning recipe

    # coqui-tts's Tortoise loads the package and its autoregressive.pth is the trained one, tensor for tensor
    from TTS.tts.configs.tortoise_config import TortoiseConfig
    from TTS.tts.models.tortoise import Tortoise

    cfg = TortoiseConfig()
    cfg.load_json(str(pkg / "config.json"))
    model = Tortoise(cfg)
    model.load_checkpoint(cfg, checkpoint_dir=str(pkg), eval=True)
    exported = torch.load(pkg / "autoregressive.pth", weights_only=True)
    trained = torch.load(run / "checkpoints" / "step_6" / "trainable.pt", weights_only=True)
    theirs = model.autoregressive.state_dict()
    assert exported.keys() == trained.keys() and all(torch.equal(v, theirs[k]) and torch.equal(v, trained[k])
                                                      for k, v in exported.items())
    with torch.inference_mode():  # and speaks through coqui-tts's own chain
        latents = model.get_conditioning_latents([[torch.randn(1, 22050) * 0.1, torch.randn(1, 24000) * 0.1]])
        wav = model.inference(
            "Hello.",
            conditioning_latents=latents,
            verbose=False,
            num_autoregressive_samples=2,
            diffusion_iterations=2,
            max_mel_tokens=8,
            half=False,
        )["wav"]
    assert wav.numel() > 0
    _synthesize(pkg, tmp_path / "hello.wav")  # the default preset (fast)


def test_recordings_to_a_csm_finetune_that_transformers_loads(prepared: Path, tmp_path: Path):
    import torch
    from transformers import AutoProcessor, CsmForConditionalGeneration

    data, base, lora, full, pkg = (
        prepared,
        tmp_path / "base",
        tmp_path / "lora",
        tmp_path / "full",
        tmp_path / "pkg",
    )
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
