"""`voicetune prepare`: a folder of recordings in, a Coqui/AllTalk-format dataset folder out.

For every audio file (any format/rate/channel count), one at a time: decode, resample to 16 kHz, find
speech (Silero VAD), plan clips within [min_seconds, max_seconds] (merge / split at pauses / extend),
transcribe each clip (faster-whisper), quarantine clips with no usable transcript, loudness-normalise
the rest and write them as ``wavs/<source>_<NNNN>.wav``. Then split train/eval and write
``metadata_train.csv``, ``metadata_eval.csv``, ``clips.jsonl``, ``prepare.yaml`` and
``prepare_result.json``. The dataset folder is built under a temporary name and moved into place when
complete; the input folder is only ever read.

Transcripts are the expensive part, so each one is appended to ``OUT/asr_cache.jsonl`` as soon as it
exists, keyed by the source file's content hash, the clip's span and the ASR settings: an interrupted or
repeated run (e.g. with another eval split or loudness target) transcribes only what is new.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import (
    AUDIO_EXTENSIONS,
    AudioDecodeError,
    find_audio_files,
    load_audio,
    resample,
    write_wav,
)
from voicetune.audio.loudness import normalize_loudness
from voicetune.config import PrepareConfig, merge, save_yaml
from voicetune.data.manifest import ClipRecord, write_clips_jsonl, write_metadata_csv
from voicetune.data.segment import ClipSpan, Envelope, plan_clips
from voicetune.data.split import split_train_eval
from voicetune.data.transcribe import Asr, Transcript, load_asr
from voicetune.data.vad import VAD_SAMPLE_RATE, detect_speech
from voicetune.utils.io import (
    append_jsonl,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    read_jsonl,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # same shape as voicetune.backends.base.Progress

MAX_CHARS_PER_SECOND = 25.0  # faster than any human speech: the transcript is a hallucination
MAX_COMPRESSION_RATIO = 2.4  # Whisper's own threshold for repetitive (looping) output
FADE_SECONDS = 0.005
ASR_CACHE = "asr_cache.jsonl"


class PrepareError(ValueError):
    """prepare cannot run (bad folders, nothing usable); the message says what to change."""


@dataclass
class PrepareResult:
    """What `prepare` did: counts, minutes, the ASR model used, per-file errors and the written paths."""

    out_dir: Path
    asr_model: str
    n_files: int = 0
    n_files_failed: int = 0
    n_clips: int = 0
    n_kept: int = 0
    n_quarantined: int = 0
    n_train: int = 0
    n_eval: int = 0
    minutes_input: float = 0.0
    minutes_kept: float = 0.0
    n_asr_cached: int = 0  # clips whose transcript came from asr_cache.jsonl of an earlier run
    seconds_elapsed: float = 0.0
    real_time_factor: float = 0.0  # processing seconds per second of input audio
    errors: dict[str, str] = field(default_factory=dict)  # input file -> why it was skipped
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def metadata_train(self) -> Path:
        return self.out_dir / "metadata_train.csv"

    @property
    def metadata_eval(self) -> Path:
        return self.out_dir / "metadata_eval.csv"

    @property
    def clips_jsonl(self) -> Path:
        return self.out_dir / "clips.jsonl"

    @property
    def config_path(self) -> Path:
        return self.out_dir / "prepare.yaml"

    @property
    def wavs_dir(self) -> Path:
        return self.out_dir / "wavs"

    def summary(self) -> str:
        """Human-readable report: one summary line, the dataset folder, then reasons, skips and warnings."""
        lines = [
            f"{self.n_kept} clip(s) kept ({self.minutes_kept:.1f} min of {self.minutes_input:.1f} min input; "
            f"{self.n_train} train / {self.n_eval} eval), {self.n_quarantined} quarantined, "
            f"{self.n_files - self.n_files_failed}/{self.n_files} file(s) used, {self.seconds_elapsed:.0f} s "
            f"(real-time factor {self.real_time_factor:.2f}); ASR: {self.asr_model}",
            f"dataset: {self.out_dir}",
        ]
        lines += [f"  quarantined {n}x: {reason}" for reason, n in sorted(self.quarantine_reasons.items())]
        lines += [f"  skipped {name}: {why}" for name, why in self.errors.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


# ------------------------------------------------------------------------------------------------- checks


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_folders(input_dir: Path, out_dir: Path) -> None:
    """Refuse output folders that could touch the input or overwrite something prepare did not write."""
    src = Path(input_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if not src.exists():
        raise PrepareError(f"{input_dir}: input folder does not exist")
    src_folder = src if src.is_dir() else src.parent
    if _is_within(out, src_folder):
        raise PrepareError(
            f"output folder {out} is inside the input folder {src_folder}; prepare never writes "
            "into the recordings folder: choose an output folder outside it"
        )
    if _is_within(src, out):
        raise PrepareError(
            f"input {src} is inside the output folder {out}; the output folder is replaced "
            "as a whole: choose an output folder that does not contain the recordings"
        )
    if out.exists():
        if not out.is_dir():
            raise PrepareError(f"{out}: exists and is not a folder")
        names = {p.name for p in out.iterdir()}
        if names - {ASR_CACHE} and not (out / "prepare.yaml").is_file():
            raise PrepareError(
                f"{out}: folder is not empty and was not written by `voicetune prepare` (no "
                "prepare.yaml); choose a new or empty output folder"
            )


def unique_stems(files: list[Path]) -> list[str]:
    """Filesystem-safe, unique clip-name prefixes (``talk``, ``talk_2`` for talk.mp3 and talk.wav)."""
    used: set[str] = set()
    out = []
    for f in files:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", f.stem).strip("_") or "audio"
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        out.append(stem)
    return out


def clean_text(text: str) -> str:
    """One line of text safe for the '|'-separated metadata (Coqui's formatter splits on '|' naively)."""
    return re.sub(r"\s+", " ", text.replace("|", " ")).strip()


def compression_ratio(text: str) -> float:
    """zlib compression ratio of ``text``: high for looping, repeated ASR output."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


def quality_reasons(tr: Transcript, duration: float, cfg: PrepareConfig) -> list[str]:
    """Why a transcribed clip should not be used for training (empty list: keep it)."""
    reasons = []
    text = clean_text(tr.text)
    if not re.search(r"\w", text):
        reasons.append("empty transcript")
    if tr.no_speech_prob > cfg.max_no_speech_prob:
        reasons.append(
            f"no speech detected by ASR (no_speech_prob {tr.no_speech_prob:.2f} > {cfg.max_no_speech_prob:g})"
        )
    if tr.avg_logprob < cfg.min_avg_logprob:
        reasons.append(f"low ASR confidence (avg_logprob {tr.avg_logprob:.2f} < {cfg.min_avg_logprob:g})")
    if len(text) >= 40 and compression_ratio(text) > MAX_COMPRESSION_RATIO:
        reasons.append(f"repetitive transcript (compression ratio {compression_ratio(text):.1f})")
    if duration > 0 and len(text) / duration > MAX_CHARS_PER_SECOND:
        reasons.append(f"implausible transcript ({len(text) / duration:.0f} characters per second)")
    return reasons


def _fade(audio: np.ndarray, sr: int) -> np.ndarray:
    n = min(int(sr * FADE_SECONDS), len(audio) // 2)
    if n > 1:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        audio[:n] *= ramp
        audio[-n:] *= ramp[::-1]
    return audio


# ---------------------------------------------------------------------------------------------- ASR cache


class _AsrCache:
    """Transcripts of earlier (possibly interrupted) runs, appended to ``OUT/asr_cache.jsonl`` one by one."""

    def __init__(self, path: Path, asr: Asr, cfg: PrepareConfig) -> None:
        self.path = path
        self.settings = f"{asr.path}|beam={cfg.asr_beam_size}|lang={cfg.language}"
        self.entries = {e["key"]: e for e in read_jsonl(path) if isinstance(e, dict) and "key" in e}
        self.used: dict[str, dict[str, Any]] = {}
        self.hits = 0

    def key(self, source_sha: str, span: ClipSpan) -> str:
        return f"{source_sha}|{span.start:.3f}|{span.end:.3f}|{self.settings}"

    def get(self, key: str) -> Transcript | None:
        e = self.entries.get(key)
        if e is None:
            return None
        self.used[key], self.hits = e, self.hits + 1
        words = [(str(w), float(a), float(b)) for w, a, b in e["words"]]
        return Transcript(e["text"], e["language"], e["avg_logprob"], e["no_speech_prob"], words)

    def put(self, key: str, tr: Transcript) -> None:
        entry = {"key": key, **dataclasses.asdict(tr)}
        self.entries[key] = self.used[key] = entry
        append_jsonl(self.path, entry)

    def export(self, dest: Path) -> None:
        """Write the entries this run used (so the cache does not grow without bound)."""
        atomic_write_text(dest, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.used.values()))


# ----------------------------------------------------------------------------------------------- per file


@dataclass
class _FileContext:
    path: Path
    rel: str
    stem: str
    cfg: PrepareConfig
    asr: Asr
    out: Path
    cache: _AsrCache
    source_sha: str = ""


def _plan(audio16: np.ndarray, cfg: PrepareConfig) -> list[ClipSpan]:
    vad = detect_speech(audio16, cfg.vad_threshold, cfg.min_speech_ms, cfg.min_silence_ms)
    return plan_clips(
        vad.spans,
        vad.duration,
        Envelope(vad.probs, vad.frame_seconds),
        min_seconds=cfg.min_seconds,
        max_seconds=cfg.max_seconds,
        pad_seconds=cfg.pad_ms / 1000,
        max_merge_gap=cfg.merge_gap_ms / 1000,
        pause_threshold=max(0.01, cfg.vad_threshold - 0.15),
    )


def _clip_record(
    ctx: _FileContext, k: int, span: ClipSpan, audio: np.ndarray, sr: int, audio16: np.ndarray
) -> ClipRecord:
    """Transcribe, check and write one planned clip; returns its record (kept or quarantined)."""
    cfg = ctx.cfg
    cid = f"{ctx.stem}_{k:04d}"
    rec = ClipRecord(
        id=cid,
        audio_file="",
        source_file=ctx.rel,
        start=span.start,
        end=span.end,
        duration=round(span.duration, 4),
        text="",
        language=cfg.language,
        speaker=cfg.speaker_name,
        split="",
        status="quarantined",
    )
    if not span.ok:
        rec.reasons = [span.reason]
        return rec
    key = ctx.cache.key(ctx.source_sha, span)
    tr = ctx.cache.get(key)
    if tr is None:
        tr = ctx.asr.transcribe(
            audio16[int(span.start * VAD_SAMPLE_RATE) : int(span.end * VAD_SAMPLE_RATE)], cfg.language
        )
        ctx.cache.put(key, tr)
    rec.raw_text, rec.text, rec.language = tr.text, clean_text(tr.text), tr.language or cfg.language
    rec.asr = {
        "model": ctx.asr.name,
        "avg_logprob": round(tr.avg_logprob, 4),
        "no_speech_prob": round(tr.no_speech_prob, 4),
        "words": [[w, round(s, 3), round(e, 3)] for w, s, e in tr.words],
    }
    rec.reasons = quality_reasons(tr, span.duration, cfg)
    clip = resample(audio[int(round(span.start * sr)) : int(round(span.end * sr))], sr, cfg.sample_rate)
    clip, info = normalize_loudness(clip, cfg.sample_rate, cfg.target_lufs)
    rec.quality = {
        "input_lufs": None if info.input_lufs is None else round(info.input_lufs, 2),
        "gain_db": round(info.gain_db, 2),
        "peak_dbfs": round(info.output_peak_dbfs, 2),
        "limited": info.limited,
    }
    if info.input_lufs is None and "empty transcript" not in rec.reasons:
        rec.reasons.append("silent audio")
    rec.status = "quarantined" if rec.reasons else "kept"
    rec.audio_file = f"{'quarantine' if rec.reasons else 'wavs'}/{cid}.wav"
    write_wav(ctx.out / rec.audio_file, _fade(clip, cfg.sample_rate), cfg.sample_rate)
    return rec


def _process_file(
    ctx: _FileContext, progress: Progress | None, done: int, total: int
) -> tuple[list[ClipRecord], float]:
    """All clips of one source file, and its duration in seconds. Raises AudioDecodeError for bad files."""
    audio, sr = load_audio(ctx.path)
    ctx.source_sha = file_sha256(ctx.path)
    duration = len(audio) / sr
    audio16 = resample(audio, sr, VAD_SAMPLE_RATE)
    spans = _plan(audio16, ctx.cfg)
    logger.info("%s: %.1f s, %d clip(s) planned", ctx.rel, duration, len(spans))
    records = []
    for k, span in enumerate(spans):
        if progress is not None:
            progress(done, total, f"{ctx.rel}: clip {k + 1}/{len(spans)}")
        records.append(_clip_record(ctx, k, span, audio, sr, audio16))
    return records, duration


# ------------------------------------------------------------------------------------------------- driver


def _finish(tmp: Path, records: list[ClipRecord], cfg: PrepareConfig, result: PrepareResult) -> None:
    """Split the kept clips and write the metadata files into the (temporary) dataset folder."""
    kept = [r for r in records if r.status == "kept"]
    split = split_train_eval([r.duration for r in kept], cfg.eval_fraction, cfg.min_eval_clips, cfg.seed)
    for i in split.train:
        kept[i].split = "train"
    for i in split.eval:
        kept[i].split = "eval"
    result.warnings.extend(split.warnings)
    write_metadata_csv(
        tmp / "metadata_train.csv", [(r.audio_file, r.text, r.speaker) for r in kept if r.split == "train"]
    )
    write_metadata_csv(
        tmp / "metadata_eval.csv", [(r.audio_file, r.text, r.speaker) for r in kept if r.split == "eval"]
    )
    write_clips_jsonl(tmp / "clips.jsonl", records)
    save_yaml(cfg, tmp / "prepare.yaml")
    result.n_clips, result.n_kept = len(records), len(kept)
    result.n_quarantined = len(records) - len(kept)
    result.n_train, result.n_eval = len(split.train), len(split.eval)
    result.minutes_kept = round(sum(r.duration for r in kept) / 60, 3)
    result.quarantine_reasons = dict(Counter(reason.split(" (")[0] for r in records for reason in r.reasons))


def _process_all(
    files: list[Path],
    base: Path,
    cfg: PrepareConfig,
    asr: Asr,
    tmp: Path,
    cache: _AsrCache,
    result: PrepareResult,
    progress: Progress | None,
) -> tuple[list[ClipRecord], float]:
    """Process every file (skipping undecodable ones into ``result.errors``); records and input seconds."""
    records: list[ClipRecord] = []
    input_seconds = 0.0
    for i, (path, stem) in enumerate(zip(files, unique_stems(files))):
        rel = str(path.relative_to(base))
        if progress is not None:
            progress(i, len(files), f"{rel}: decoding")
        try:
            ctx = _FileContext(path, rel, stem, cfg, asr, tmp, cache)
            recs, seconds = _process_file(ctx, progress, i, len(files))
        except AudioDecodeError as e:
            logger.warning("skipping %s: %s", rel, e)
            result.errors[rel] = str(e)
            continue
        records.extend(recs)
        input_seconds += seconds
    result.n_files_failed = len(result.errors)
    if not records and result.errors:
        raise PrepareError(
            f"none of the {len(files)} audio file(s) in {base} could be decoded: "
            + "; ".join(f"{k}: {v}" for k, v in result.errors.items())
        )
    return records, input_seconds


def prepare(
    input_dir: Path | str,
    out_dir: Path | str,
    cfg: PrepareConfig | None = None,
    progress: Progress | None = None,
    **overrides: Any,
) -> PrepareResult:
    """Build a dataset folder in ``out_dir`` from the recordings in ``input_dir`` (a folder or one file).

    ``cfg`` defaults to :class:`PrepareConfig`; ``overrides`` (e.g. ``language="de"``) replace its fields
    (None values are ignored). ``progress(done_files, total_files, what)`` is called as work proceeds.
    Unreadable files are skipped with a warning and listed in ``result.errors``. Raises
    :class:`PrepareError` for unusable folders or when no clip survives.
    """
    t0 = time.monotonic()
    cfg = merge(cfg or PrepareConfig(), overrides)
    input_dir, out_dir = Path(input_dir).expanduser(), Path(out_dir).expanduser()
    check_folders(input_dir, out_dir)
    files = find_audio_files(input_dir)
    if not files:
        raise PrepareError(f"{input_dir}: no audio files found (looked for {', '.join(AUDIO_EXTENSIONS)})")
    asr = load_asr(cfg.asr_model, cfg.language, cfg.device, beam_size=cfg.asr_beam_size)
    result = PrepareResult(out_dir=out_dir.resolve(), asr_model=asr.name, n_files=len(files))
    base = input_dir if input_dir.is_dir() else input_dir.parent
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = _AsrCache(out_dir / ASR_CACHE, asr, cfg)
    try:
        with atomic_dir(out_dir) as tmp:
            records, input_seconds = _process_all(files, base, cfg, asr, tmp, cache, result, progress)
            _finish(tmp, records, cfg, result)
            cache.export(tmp / ASR_CACHE)
            result.n_asr_cached = cache.hits
            result.minutes_input = round(input_seconds / 60, 3)
            result.seconds_elapsed = round(time.monotonic() - t0, 2)
            result.real_time_factor = round(result.seconds_elapsed / max(input_seconds, 1e-9), 4)
            atomic_write_json(tmp / "prepare_result.json", result.to_json())
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # failed before anything worth keeping: leave no empty folder behind
    if progress is not None:
        progress(len(files), len(files), "done")
    logger.info(
        "prepared %s: %d clip(s) kept (%.1f min, %d train / %d eval), %d quarantined, %d file(s) "
        "skipped; %.1f s for %.1f min of audio (real-time factor %.3f) with ASR %s",
        result.out_dir,
        result.n_kept,
        result.minutes_kept,
        result.n_train,
        result.n_eval,
        result.n_quarantined,
        result.n_files_failed,
        result.seconds_elapsed,
        result.minutes_input,
        result.real_time_factor,
        result.asr_model,
    )
    if result.n_kept == 0:
        raise PrepareError(
            f"no usable clip in {input_dir}: {result.n_quarantined} clip(s) quarantined "
            f"({result.quarantine_reasons or 'no speech found'}); see {result.clips_jsonl}"
        )
    return result
