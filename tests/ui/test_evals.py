"""The Evaluate tab's reading of a run's evaluations: the checkpoint table with deltas and the best marked,
the sentences with the recording / base / checkpoint audio, and the verdict when the evaluation wrote one."""

from __future__ import annotations

import json
from pathlib import Path

from voicetune.ui import evals as E
from voicetune.utils.io import atomic_write_json


def _model(sim: float, wer: float, folder: str, n: int = 2) -> dict:
    per = [
        {
            "index": i,
            "text": f"sentence {i}",
            "group": "eval" if i == 0 else "probe",
            "speaker_similarity": sim,
            "wer": wer,
            "mos": 3.0,
            "flags": [],
            "hypothesis": f"sentence {i}",
            "audio_file": f"{folder}/{i:02d}.wav",
        }
        for i in range(n)
    ]
    return {
        "aggregate": {"speaker_similarity": sim, "wer": wer, "mos": 3.0, "failure_rate": 0.0},
        "per_sentence": per,
    }


def _run(tmp_path: Path, steps: tuple[int, ...] = (2, 4), best: int = 4) -> Path:
    """A run folder laid out as in-loop evaluation writes it (eval/baseline, eval/step_N,
    checkpoints/best)."""
    run = tmp_path / "run"
    protocol = {"key": "k1"}
    base = _model(0.5, 0.4, "base")
    real = {
        "aggregate": {"speaker_similarity": 0.9},
        "per_sentence": [
            {
                "index": 0,
                "text": "sentence 0",
                "group": "eval",
                "speaker_similarity": 0.9,
                "audio_file": "real/00.wav",
            }
        ],
    }
    atomic_write_json(
        run / "eval" / "baseline" / "metrics.json",
        {"kind": "baseline", "name": "baseline", "step": 0, "protocol": protocol, "base": base, "real": real},
    )
    for folder in ("base", "real"):
        (run / "eval" / "baseline" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(2 if folder == "base" else 1):
            (run / "eval" / "baseline" / folder / f"{i:02d}.wav").write_bytes(b"RIFF")
    for step in steps:
        name = f"step_{step}"
        atomic_write_json(run / "eval" / name / "metrics.json", {
            "kind": "eval", "name": name, "step": step, "protocol": protocol, "composite": 0.1 * step,
            "finetuned": _model(0.5 + 0.05 * step, 0.4 - 0.05 * step, "finetuned"), "base": base})
        (run / "eval" / name / "finetuned").mkdir()
        (run / "eval" / name / "finetuned" / "00.wav").write_bytes(b"RIFF")
        ckpt = run / "checkpoints" / name
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_text(json.dumps({"step": step}))
    (run / "checkpoints" / "best").write_text(f"step_{best}\n")
    atomic_write_json(run / "best.json", {"checkpoint": f"step_{best}", "step": best, "composite": 0.1 * best,
                                          "beats_baseline": True})
    return run


def test_the_checkpoint_table_shows_deltas_against_the_baseline_and_marks_the_best(tmp_path):
    r = E.load(_run(tmp_path))
    rows = E.rows(r)
    assert [x.name for x in rows] == ["baseline", "step_2", "step_4"]
    assert [x.best for x in rows] == [False, False, True]
    assert abs(rows[2].deltas["speaker_similarity"] - 0.2) < 1e-9 and abs(rows[2].deltas["wer"] + 0.2) < 1e-9
    html = E.table_html(r)
    assert "step_4 <span class='vt-badge vt-best'>best</span>" in html
    assert "<span class='vt-better'>(+0.200)</span>" in html  # similarity up
    assert "<span class='vt-better'>(-0.200)</span>" in html  # WER down is better too
    assert "(±0)" in html  # MOS unchanged


def test_the_same_sentence_from_recording_base_and_checkpoint(tmp_path):
    run = _run(tmp_path)
    r = E.load(run)
    assert E.sentences(r) == [("eval 0: sentence 0", 0), ("probe 1: sentence 1", 1)]
    takes = {t.who: t for t in E.takes(r, 0, "step_4")}
    assert takes["recording"].audio == run / "eval" / "baseline" / "real" / "00.wav"
    assert takes["base model"].audio == run / "eval" / "baseline" / "base" / "00.wav"
    assert takes["step_4"].audio == run / "eval" / "step_4" / "finetuned" / "00.wav"
    assert "similarity 0.70" in takes["step_4"].caption()
    probe = {t.who: t for t in E.takes(r, 1, "step_4")}
    assert "recording" not in probe and probe["step_4"].audio is None  # no recording; its wav is missing here


def test_the_verdict_is_shown_only_when_the_evaluation_wrote_one(tmp_path):
    run = _run(tmp_path)
    assert E.verdict(run) is None
    doc = json.loads((run / "eval" / "step_4" / "metrics.json").read_text())
    atomic_write_json(run / "eval" / "step_4" / "metrics.json",
                      {**doc, "verdict": {"text": "Use step_4: similarity +0.20."}})
    assert E.verdict(run) == "Use step_4: similarity +0.20."
    best = json.loads((run / "best.json").read_text())
    atomic_write_json(run / "best.json", {**best, "verdict": "Finetuning raised speaker similarity."})
    assert E.verdict(run) == "Finetuning raised speaker similarity."  # the run's own decision comes first
