"""End to end through the CLI, on real components: Piper recordings → prepare → tiny XTTS base → train →
evaluate → export → load with coqui-tts (strict) → synthesize. CPU only, a few training steps."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jiwer
import soundfile as sf

from voicetune.cli import main
from voicetune.data.manifest import Dataset, read_clips_jsonl
from voicetune.evaluation.metrics import normalize_text


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_recordings_to_exported_model_and_speech(piper_recordings: Path, tmp_path: Path, capsys):
    before = _tree_digest(piper_recordings)
    data, base, run, pkg = tmp_path / "data", tmp_path / "base", tmp_path / "run", tmp_path / "pkg"

    assert main(["prepare", str(piper_recordings), "--out", str(data)]) == 0
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
    capsys.readouterr()
    assert main(["train", str(data), "--base", str(base), "--out", str(run), "--max-steps", "6",
                 "--batch-size", "2", "--lr", "5e-4", "--eval-max-sentences", "1", "--eval-probes", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    # the last lines say what to run next, with this run's paths
    best = (run / "checkpoints" / "best").read_text().strip()
    voice = tmp_path / "run-voice"
    evaluate = f"  voicetune evaluate {run}                 # score checkpoints against the base model"
    export = f"  voicetune export {run} --out {voice} --checkpoint best   # {best}, the best evaluation"
    synthesize = f"  voicetune synthesize {voice} --text \"Hello, this is my voice.\" --out hello.wav"
    assert out[-4:] == ["next:", evaluate, export, synthesize]
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
    card = (pkg / "README.md").read_text()  # prose with rounded numbers, not a JSON dump
    assert "{" not in card and "How it compares with the base model" in card and "Speaker similarity" in card
    assert not re.search(r"\d\.\d{4,}", card)

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
