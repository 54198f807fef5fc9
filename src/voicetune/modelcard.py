"""The model card (README.md) of an exported package: prose with rounded numbers, from voicetune.json."""

from __future__ import annotations

import math
from typing import Any, TypeGuard

# (summary key, name in prose, how to show a value, a difference smaller than this counts as unchanged)
_METRICS: list[tuple[str, str, str, float]] = [
    ("speaker_similarity", "Speaker similarity to the real recordings (higher is better)", "{:.2f}", 0.005),
    ("wer", "Word error rate of a speech recognizer listening to it (lower is better)", "pct", 0.005),
    ("mos", "Predicted naturalness, MOS on a 1-5 scale (higher is better)", "{:.1f}", 0.05),
    ("mcd", "Mel-cepstral distortion against the recordings, dB (lower is better)", "{:.1f}", 0.05),
    ("pesq", "PESQ against the recordings, 1-4.5 (higher is better)", "{:.1f}", 0.05),
    ("stoi", "STOI intelligibility against the recordings, 0-1 (higher is better)", "{:.2f}", 0.005),
    ("failure_rate", "Sentences flagged by the failure detectors (lower is better)", "pct", 0.005),
]
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
             "pt": "Portuguese", "pl": "Polish", "tr": "Turkish", "ru": "Russian", "nl": "Dutch",
             "cs": "Czech", "ar": "Arabic", "zh-cn": "Chinese", "hu": "Hungarian", "ko": "Korean",
             "ja": "Japanese", "hi": "Hindi"}
BACKENDS = {"xtts": "XTTS-v2"}


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _show(v: Any, fmt: str) -> str:
    if not _finite(v):
        return "n/a"
    return f"{100 * v:.0f}%" if fmt == "pct" else fmt.format(v)


def _verdict(s: dict[str, Any], tolerance: float) -> str:
    delta = s.get("delta")
    if not _finite(delta) or abs(delta) < tolerance:
        return "about the same as the base model"
    return "better than the base model" if s.get("better") else "worse than the base model"


def _evaluation(metrics: dict[str, Any]) -> list[str]:
    summary = metrics.get("summary") or {}
    sentences = metrics.get("sentences") or []
    n_eval = sum(1 for x in sentences if x.get("group") == "eval")
    n_probe = len(sentences) - n_eval
    which = metrics.get("checkpoint") or metrics.get("name") or "this checkpoint"
    lines = ["## How it compares with the base model", ""]
    if sentences:
        lines += [(f"The base model and this model ({which}) each spoke the same {len(sentences)} sentences "
                   f"({n_eval} held out from the speaker's recordings, {n_probe} fixed probe sentences) with "
                   "the same reference clips and the same random seed; voicetune then measured:"), ""]
    for key, label, fmt, tol in _METRICS:
        s = summary.get(key)
        if not s or not _finite(s.get("finetuned")):
            continue
        real = f"; the real recordings: {_show(s.get('real'), fmt)}" if _finite(s.get("real")) else ""
        lines.append(f"- {label}: {_show(s['finetuned'], fmt)}, base model {_show(s.get('base'), fmt)}"
                     f"{real}. {_verdict(s, tol).capitalize()}.")
    composite = metrics.get("composite")
    if _finite(composite):
        verdict = "better than the base model." if composite > 0 else "not better than the base model."
        lines += ["", ("Overall (the composite score voicetune selects checkpoints by, where 0 is the base "
                       f"model and above 0 is better): {composite:+.2f}, {verdict}")]
    if metrics.get("error"):
        lines += ["", f"**This evaluation failed:** {metrics['error']}"]
    return lines + [""]


def model_card(manifest: dict[str, Any], package_name: str = "THIS_FOLDER",
               usage: list[str] | None = None) -> str:
    """README.md of a package from its manifest (voicetune.json's content); ``usage``: the backend's lines on
    loading it outside voicetune (Backend.usage)."""
    usage = list(usage or [])
    backend = BACKENDS.get(manifest.get("backend", ""), manifest.get("backend", "?"))
    language = manifest.get("language") or "en"
    speakers = manifest.get("speakers") or []
    voice = f"the voice of {', '.join(repr(s) for s in speakers)}" if speakers else "a voice"
    steps = manifest.get("steps")
    choice = f", {manifest['checkpoint_choice']}" if manifest.get("checkpoint_choice") else ""
    lines = [
        f"# {package_name}: a voicetune model package ({backend})",
        "",
        (
            f"A text-to-speech model ({backend}) finetuned by voicetune on {voice}, speaking "
            f"{LANGUAGES.get(language, language)} ({language}). It was trained for {steps} steps "
            f"(checkpoint {manifest.get('checkpoint', '?')}{choice}) on {manifest.get('train_clips', '?')} "
            f"clips of the dataset `{manifest.get('dataset')}`, starting from the base model "
            f"`{manifest.get('base')}`."
        ),
        "",
    ]
    if manifest.get("untrained_base"):
        lines += [("**Warning:** the base was an UNTRAINED tiny test model (the demo's): this package cannot "
                  "produce usable speech. For a real voice, train from a real base model."), ""]
    metrics = manifest.get("metrics")
    if metrics:
        lines += _evaluation(metrics)
    else:
        lines += [("This checkpoint was not evaluated: `voicetune evaluate RUN_DIR --checkpoint "
                  f"{manifest.get('checkpoint', 'NAME')}` measures it against the base model."), ""]
    refs = manifest.get("references") or []
    lines += [
        "## How to use it", "",
        "With voicetune:", "",
        f"    voicetune synthesize {package_name} --text \"Hello, this is my voice.\" --out hello.wav", "",
        *[line.replace("THIS_FOLDER", package_name) for line in usage], "",
        "## What is in this folder", "",
        f"- the model in {backend}'s own layout (the files other tools load);",
        f"- `reference/`: {len(refs)} of the speaker's recordings, longest first, used as voice references;",
        "- `voicetune.json`: the same facts as this card, and the training settings, for programs.", "",
    ]
    versions = manifest.get("versions") or {}
    if versions:
        lines += ["Made with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    return "\n".join(lines)

