"""`voicetune evaluate RUN_DIR`: the base model vs a finetuned checkpoint, on held-out sentences.

Protocol (fixed, so checkpoints and runs are comparable):

1. The speaker is the one with the most training clips; its ``num_references`` longest TRAIN clips
   condition every synthesis; its first ``max_sentences`` EVAL clips give the sentences (and the
   real recordings of them).
2. Each sentence is rendered with ``seed`` by the base model, then by the base with the checkpoint's
   trainable state loaded.
3. For the real recordings, the base renders and the finetuned renders, each scored with the metrics of
   :mod:`voicetune.evaluation.metrics`: speaker similarity to the centroid of ALL held-out eval clips of
   the speaker, ASR round-trip WER/CER (the ``asr_model`` of prepare), predicted MOS, failure flags,
   and for renders MCD/PESQ/STOI against the real recording of the same sentence. (The real clips'
   own similarity is optimistic, as they are part of the centroid: read it as a ceiling.)
4. ``RUN_DIR/eval/<checkpoint>/`` receives ``metrics.json`` and ``real/NN.wav``, ``base/NN.wav``,
   ``finetuned/NN.wav``; the folder is built aside and moved into place only when complete.
   metrics.json: run/checkpoint facts (``checkpoint``, ``step``, ``seed``, ``asr_model``, ``speaker``,
   ``references``, ``sentences``, ``config``, ``versions``...), ``summary`` (per table metric: base,
   finetuned, delta, direction, better, real) and ``real`` / ``base`` / ``finetuned``, each
   ``{"aggregate": {...}, "per_sentence": [...]}``. NaN is written as null.

The base renders do not depend on the checkpoint, so they are cached under ``RUN_DIR/eval/.base_cache/``
keyed by everything they depend on (base folder, references, sentences, seed, language).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import audio_duration, load_audio, write_wav
from voicetune.backends.base import Backend, Progress, get_backend
from voicetune.config import EvalConfig, merge, to_dict
from voicetune.data.manifest import Clip, Dataset
from voicetune.evaluation import metrics as M
from voicetune.run import RunError, RunInfo, checkpoints_dir, latest_checkpoint, read_meta, software_versions
from voicetune.utils.io import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)

MODELS = ("real", "base", "finetuned")
TABLE_METRICS: list[tuple[str, str, str]] = [
    # (aggregate key, label, format)
    ("speaker_similarity", "speaker similarity", "{:.3f}"),
    ("wer", "WER", "{:.3f}"),
    ("cer", "CER", "{:.3f}"),
    ("mos", "predicted MOS", "{:.2f}"),
    ("mcd", "MCD (dB)", "{:.2f}"),
    ("pesq", "PESQ-WB", "{:.2f}"),
    ("stoi", "STOI", "{:.3f}"),
    ("failure_rate", "failure rate", "{:.2f}"),
]
_BASE_CACHE_VERSION = 1


class EvalError(ValueError):
    """The run or its dataset cannot be evaluated; the message says what is missing."""


@dataclass
class EvalMaterial:
    """What every model is scored on: the speaker, its references and the held-out sentences."""

    speaker: str
    language: str
    references: list[Path]
    sentences: list[Clip]
    held_out: list[Path]  # all eval clips of the speaker (speaker-similarity centroid)
    chars_per_second: float


@dataclass
class Render:
    """One synthesized sentence (``audio`` is None when synthesis failed)."""

    audio: np.ndarray | None
    sample_rate: int
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


@dataclass
class EvalResult:
    """Where the evaluation was written and what it measured."""

    eval_dir: Path
    metrics_path: Path
    checkpoint: str
    models: dict[str, dict[str, Any]]  # "real" / "base" / "finetuned" -> {"aggregate", "per_sentence"}
    info: dict[str, Any]  # asr_model, seed, speaker, references, sentences, ...

    @property
    def base(self) -> dict[str, Any]:
        return self.models["base"]["aggregate"]

    @property
    def finetuned(self) -> dict[str, Any]:
        return self.models["finetuned"]["aggregate"]

    @property
    def real(self) -> dict[str, Any]:
        return self.models["real"]["aggregate"]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric: base, finetuned, delta, direction, better (True/False/None) and the real value."""
        return summarize(self.models)

    def table(self) -> str:
        """A compact text table: metric | base | finetuned | delta | better? | real."""
        return format_table(self.summary(), self.checkpoint)


# ----------------------------------------------------------------------------------------- selection


def resolve_checkpoint(run_dir: Path, checkpoint: str = "latest") -> Path:
    """'latest', 'best' (when training marked one), a folder name like 'step_100', or a path."""
    run_dir = Path(run_dir)
    if checkpoint == "latest":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise RunError(
                f"{checkpoints_dir(run_dir)}: no complete checkpoint; has training finished a step?"
            )
        return ckpt
    if checkpoint == "best":
        marker = checkpoints_dir(run_dir) / "best"
        if not marker.is_file():
            raise RunError(f"{marker}: missing; this run marked no best checkpoint (use --checkpoint latest)")
        checkpoint = marker.read_text().strip()
    ckpt = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints_dir(run_dir) / checkpoint
    if not (ckpt / "meta.json").is_file():
        raise RunError(f"{ckpt}: not a complete checkpoint (no meta.json)")
    return ckpt


def select_material(dataset: Dataset, cfg: EvalConfig) -> EvalMaterial:
    """Pick the speaker, its ``num_references`` longest train clips and up to ``max_sentences`` eval clips."""
    counts = collections.Counter(c.speaker for c in dataset.train)
    speaker = sorted(counts, key=lambda s: (-counts[s], s))[0]
    if len(counts) > 1:
        logger.info("dataset has %d speakers; evaluating %r (most training clips)", len(counts), speaker)
    train = [c for c in dataset.train if c.speaker == speaker]
    held_out = [c for c in dataset.eval if c.speaker == speaker and c.text.strip()]
    if not held_out:
        raise EvalError(
            f"{dataset.root / 'metadata_eval.csv'}: no eval clips of speaker {speaker!r}; "
            "re-run `voicetune prepare` with --eval-fraction > 0"
        )
    durations = {c.audio_path: audio_duration(c.audio_path) for c in train}
    longest = sorted(train, key=lambda c: (-durations[c.audio_path], str(c.audio_path)))
    rate = M.speaking_rate([(durations[c.audio_path], c.text) for c in train], dataset.language)
    return EvalMaterial(
        speaker=speaker,
        language=dataset.language,
        references=[c.audio_path for c in longest[: cfg.num_references]],
        sentences=held_out[: cfg.max_sentences],
        held_out=[c.audio_path for c in held_out],
        chars_per_second=rate,
    )


# ----------------------------------------------------------------------------------------- rendering


def render(
    backend: Backend,
    texts: Sequence[str],
    refs: Sequence[Path],
    language: str,
    seed: int,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
    what: str = "synthesize",
) -> list[Render]:
    """Synthesize every text (inference mode, fixed seed); a failing sentence is recorded, not fatal.

    Audio is clipped to [-1, 1] (as every writer does), so scores and the cache see what is written.
    """
    backend.set_train(False)
    out = []
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        try:
            wav = backend.synthesize(text, list(refs), language, seed=seed)
            audio = np.asarray(wav.audio, dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(audio)):
                raise ValueError("synthesized audio contains NaN or infinite samples")
            audio = np.clip(audio, -1.0, 1.0)  # the Waveform contract; scored exactly as it is written
            out.append(Render(audio, int(wav.sample_rate), dict(wav.meta or {}), time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001 - any backend error on one sentence (e.g. NaN weights in a
            # diverged checkpoint) is a measured failure of that model, reported per sentence
            logger.warning("%s: sentence %d failed to synthesize: %s: %s", what, i, type(e).__name__, e)
            out.append(Render(None, 0, {}, time.perf_counter() - t0, f"{type(e).__name__}: {e}"))
        if progress:
            progress(done + i + 1, total or len(texts), f"{what} {i + 1}/{len(texts)}")
    return out


def _base_cache_key(info: RunInfo, material: EvalMaterial, seed: int) -> str:
    def stamp(p: Path) -> list[Any]:
        st = Path(p).stat()
        return [str(p), st.st_size, int(st.st_mtime)]

    base = Path(info.base)
    files = sorted(p for p in base.iterdir() if p.is_file()) if base.is_dir() else []
    blob = json.dumps(
        {
            "v": _BASE_CACHE_VERSION,
            "backend": info.backend,
            "base": [stamp(p) for p in files],
            "refs": [stamp(p) for p in material.references],
            "texts": [c.text for c in material.sentences],
            "language": material.language,
            "seed": seed,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_cached_base(folder: Path, n: int) -> list[Render] | None:
    index = folder / "renders.json"
    if not index.is_file():
        return None
    try:
        entries = json.loads(index.read_text())
        renders = []
        for i, e in enumerate(entries[:n]):
            audio = load_audio(folder / f"{i:02d}.wav")[0] if e["error"] == "" else None
            renders.append(Render(audio, e["sample_rate"], e["meta"], e["seconds"], e["error"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.info("base render cache %s unusable (%s); rendering again", folder, e)
        return None
    return renders if len(renders) == n else None


def _save_cached_base(folder: Path, renders: list[Render]) -> None:
    with atomic_dir(folder) as tmp:
        for i, r in enumerate(renders):
            if r.audio is not None:
                write_wav(tmp / f"{i:02d}.wav", r.audio, r.sample_rate, subtype="FLOAT")
        atomic_write_json(
            tmp / "renders.json",
            [
                {"sample_rate": r.sample_rate, "meta": r.meta, "seconds": r.seconds, "error": r.error}
                for r in renders
            ],
        )


# ------------------------------------------------------------------------------------------- scoring


def score(
    renders: Sequence[Render],
    material: EvalMaterial,
    asr: Any,
    centroid: np.ndarray,
    device: str,
    intrusive: bool = True,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
    what: str = "",
) -> dict[str, Any]:
    """Every metric of every render, plus aggregates. ``intrusive``: also MCD/PESQ/STOI vs the real clip."""
    lang, cps = material.language, material.chars_per_second
    rows = []
    for i, (r, clip) in enumerate(zip(renders, material.sentences, strict=True)):
        row: dict[str, Any] = {
            "index": i,
            "text": clip.text,
            "hit_max_length": bool(r.meta.get("hit_max_length")),
            "synthesis_seconds": round(r.seconds, 3),
        }
        if r.audio is None or r.audio.size == 0:
            row.update(
                duration=0.0,
                speaker_similarity=math.nan,
                hypothesis="",
                wer=1.0,
                cer=1.0,
                mos=math.nan,
                mcd=math.nan,
                pesq=math.nan,
                stoi=math.nan,
                duration_ratio=0.0,
                flags=["synthesis_error" if r.error else "too_short"],
                error=r.error,
            )
            rows.append(row)
            continue
        audio, sr = r.audio, r.sample_rate
        hyp = M.transcribe_text(asr, M.audio_at(audio, sr, 16000), lang)
        err = M.wer_cer(clip.text, hyp, lang)
        row.update(
            duration=round(len(audio) / sr, 3),
            duration_ratio=M.duration_ratio(len(audio) / sr, clip.text, cps, lang),
            speaker_similarity=M.speaker_similarity([audio], [], sr, device, centroid=centroid)["per_clip"][
                0
            ],
            hypothesis=hyp,
            wer=err["wer"],
            cer=err["cer"],
            mos=M.predicted_mos(audio, sr, device),
        )
        if intrusive:
            row.update(
                mcd=M.mcd_dtw(audio, clip.audio_path, sr),
                pesq=M.pesq_wb(audio, clip.audio_path, sr),
                stoi=M.stoi(audio, clip.audio_path, sr),
            )
        row["flags"] = M.detect_failures(
            audio, sr, clip.text, cps, row["hit_max_length"], transcript=hyp, language=lang
        )
        rows.append(row)
        if progress:
            progress(done + i + 1, total or len(renders), f"score {what} {i + 1}/{len(renders)}")
    return {
        "aggregate": aggregate(rows, [c.text for c in material.sentences], lang, intrusive),
        "per_sentence": rows,
    }


def aggregate(
    rows: list[dict[str, Any]], texts: list[str], language: str, intrusive: bool = True
) -> dict[str, Any]:
    """Means over sentences (NaN-aware); WER/CER are corpus-level over all sentences."""
    corpus = M.wer_cer(texts, [r["hypothesis"] for r in rows], language)
    flags = collections.Counter(f for r in rows for f in r["flags"])
    agg: dict[str, Any] = {
        "speaker_similarity": M.nanmean([r["speaker_similarity"] for r in rows]),
        "wer": corpus["wer"],
        "cer": corpus["cer"],
        "mos": M.nanmean([r["mos"] for r in rows]),
    }
    if intrusive:
        agg.update({k: M.nanmean([r[k] for r in rows]) for k in ("mcd", "pesq", "stoi")})
    agg.update(
        {
            "failure_rate": sum(1 for r in rows if r["flags"]) / max(1, len(rows)),
            "failures": dict(flags),
            "duration_ratio": M.nanmean([r["duration_ratio"] for r in rows]),
            "n_sentences": len(rows),
        }
    )
    audio_s = sum(r["duration"] for r in rows)
    synth_s = sum(r["synthesis_seconds"] for r in rows)
    if synth_s > 0 and audio_s > 0:
        agg["real_time_factor"] = synth_s / audio_s
    return agg


def summarize(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per table metric: base, finetuned, delta (finetuned - base), direction, better, real."""
    out = {}
    for key, _, _ in TABLE_METRICS:
        b = models["base"]["aggregate"].get(key, math.nan)
        f = models["finetuned"]["aggregate"].get(key, math.nan)
        r = models.get("real", {}).get("aggregate", {}).get(key, math.nan)
        delta = f - b if _finite(b) and _finite(f) else math.nan
        direction = M.DIRECTIONS[key]
        better = None if not _finite(delta) or delta == 0 else (delta > 0) == (direction == "higher")
        out[key] = {
            "base": b,
            "finetuned": f,
            "delta": delta,
            "direction": direction,
            "better": better,
            "real": r,
        }
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def format_table(summary: dict[str, dict[str, Any]], checkpoint: str = "finetuned") -> str:
    """metric | base | finetuned | delta | better? | real, with ↑/↓ marking the better direction."""
    header = ["metric", "base", checkpoint, "delta", "better?", "real"]
    lines = []
    for key, label, fmt in TABLE_METRICS:
        s = summary[key]
        arrow = "↑" if s["direction"] == "higher" else "↓"
        better = {True: "yes", False: "no", None: "same" if s["delta"] == 0 else "-"}[s["better"]]
        lines.append(
            [
                f"{label} {arrow}",
                _cell(s["base"], fmt),
                _cell(s["finetuned"], fmt),
                _cell(s["delta"], fmt, signed=True),
                better,
                _cell(s["real"], fmt),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def row(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)
        return "  ".join(padded)

    return "\n".join([row(header), "  ".join("-" * w for w in widths)] + [row(r) for r in lines])


def _cell(v: Any, fmt: str, signed: bool = False) -> str:
    if not _finite(v):
        return "n/a"
    return ("+" if signed and v > 0 else "") + fmt.format(v)


def _json_safe(obj: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python: metrics.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------ harness


def evaluate(
    run_dir: Path | str,
    cfg: EvalConfig | None = None,
    checkpoint: str = "latest",
    progress: Progress | None = None,
    backend: Backend | None = None,
    **overrides: Any,
) -> EvalResult:
    """Score the base model and ``checkpoint`` of ``run_dir`` on the eval split; write ``eval/compare_<checkpoint>/``.

    A one-off side-by-side comparison on the eval split alone (the CLI's ``evaluate`` re-scores with the run's
    in-loop protocol instead, :func:`voicetune.evaluation.rescore.rescore_run`); its folder name never collides
    with the in-loop ``eval/step_N/`` folders.

    ``overrides`` are EvalConfig fields (e.g. ``max_sentences=4``). ``backend`` is an unloaded backend
    instance to use instead of the run's registered one (in-process callers, tests).
    Raises :class:`RunError` / :class:`EvalError` / ``DatasetError`` / ``AsrError`` naming what is wrong.
    """
    from voicetune.utils.device import pick_device

    run_dir = Path(run_dir)
    cfg = merge(cfg or EvalConfig(), overrides)
    info = RunInfo.load(run_dir)
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    trainable = ckpt / "trainable.pt"
    if not trainable.is_file():
        raise RunError(f"{trainable}: missing; the checkpoint is incomplete")
    material = select_material(Dataset.load(info.dataset), cfg)
    asr = M.get_asr(cfg.asr_model, material.language, cfg.device)  # fails fast, before any synthesis
    device = pick_device(cfg.device)
    n = len(material.sentences)
    logger.info("evaluating %s on %d eval sentences of %r (%d references, seed %d)", ckpt.name, n,
                material.speaker, len(material.references), cfg.seed)

    backend = backend or get_backend(info.backend)
    backend.load_base(Path(info.base), device)
    renders = _render_models(backend, info, material, cfg.seed, trainable, run_dir, progress)

    metric_device = "cuda" if device.type == "cuda" else "cpu"
    centroid = M.speaker_centroid(material.held_out, device=metric_device)
    renders_real = [Render(*load_audio(c.audio_path)) for c in material.sentences]
    models = {}
    for k, (name, rs) in enumerate([("real", renders_real), *renders.items()]):
        models[name] = score(rs, material, asr, centroid, metric_device, intrusive=name != "real",
                             progress=progress, done=(2 + k) * n, total=5 * n, what=name)
    eval_dir = run_dir / "eval" / f"compare_{ckpt.name}"
    info_out = _run_info(info, ckpt, cfg, material, asr, run_dir)
    _write(eval_dir, models, info_out, renders, material)
    if progress:
        progress(5 * n, 5 * n, "evaluation written")
    metrics_path = eval_dir / "metrics.json"
    result = EvalResult(eval_dir, metrics_path, ckpt.name, _json_safe(models), _json_safe(info_out))
    logger.info("evaluation of %s:\n%s", ckpt.name, result.table())
    return result


def _render_models(
    backend: Backend, info: RunInfo, material: EvalMaterial, seed: int, trainable: Path, run_dir: Path,
    progress: Progress | None,
) -> dict[str, list[Render]]:
    """Base renders (from the cache when they exist), then the finetuned ones (progress 0..2n of 5n)."""
    texts, refs, lang = [c.text for c in material.sentences], material.references, material.language
    n = len(texts)
    cache = run_dir / "eval" / ".base_cache" / _base_cache_key(info, material, seed)
    base = _load_cached_base(cache, n)
    if base is None:
        base = render(backend, texts, refs, lang, seed, progress, 0, 5 * n, "base")
        _save_cached_base(cache, base)
    else:
        logger.info("base renders reused from %s", cache)
    backend.load_trained(trainable)
    finetuned = render(backend, texts, refs, lang, seed, progress, n, 5 * n, "finetuned")
    return {"base": base, "finetuned": finetuned}


def _run_info(
    info: RunInfo, ckpt: Path, cfg: EvalConfig, material: EvalMaterial, asr: Any, run_dir: Path
) -> dict:
    return {
        "checkpoint": ckpt.name,
        "checkpoint_path": str(ckpt),
        "step": read_meta(ckpt).get("step"),
        "run_dir": str(run_dir.resolve()),
        "backend": info.backend,
        "base": info.base,
        "dataset": info.dataset,
        "speaker": material.speaker,
        "language": material.language,
        "seed": cfg.seed,
        "asr_model": getattr(asr, "name", str(asr)),
        "chars_per_second": material.chars_per_second,
        "references": [str(p) for p in material.references],
        "held_out_clips": len(material.held_out),
        "sentences": [
            {"index": i, "text": c.text, "real_audio": str(c.audio_path)}
            for i, c in enumerate(material.sentences)
        ],
        "config": to_dict(cfg),
        "directions": dict(M.DIRECTIONS),
        "versions": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write(
    eval_dir: Path,
    models: dict[str, Any],
    info: dict[str, Any],
    renders: dict[str, list[Render]],
    material: EvalMaterial,
) -> None:
    """Build the eval folder aside (wavs + metrics.json) and move it into place when complete."""
    with atomic_dir(eval_dir) as tmp:
        for i, clip in enumerate(material.sentences):
            (tmp / "real").mkdir(exist_ok=True)
            shutil.copyfile(clip.audio_path, tmp / "real" / f"{i:02d}.wav")
            models["real"]["per_sentence"][i]["audio_file"] = f"real/{i:02d}.wav"
        for name, rs in renders.items():
            for i, r in enumerate(rs):
                if r.audio is not None:
                    write_wav(tmp / name / f"{i:02d}.wav", r.audio, r.sample_rate)
                models[name]["per_sentence"][i]["audio_file"] = (
                    f"{name}/{i:02d}.wav" if r.audio is not None else None
                )
        summary = summarize(models)
        doc = {**info, "summary": summary, **models}  # "real", "base", "finetuned" at the top level
        atomic_write_json(tmp / "metrics.json", _json_safe(doc))
