"""`voicetune prepare`: folders of recordings in, a Coqui/AllTalk-format dataset folder out.

For every audio file (any format/rate/channel count; one or several speakers): hash it, decode it block by
block into a streaming Silero VAD (long recordings are never held in memory whole), plan clips within
[min_seconds, max_seconds] (merge / split at pauses, else between words / extend), then, in batches of
clips: packed + batched faster-whisper ASR, a second opinion for uncertain transcripts (``needs_review``
when they still disagree), text normalisation for the backend, audio QA (clipping, SNR, silence, MOS) and
speaker embeddings, loudness normalisation + true-peak limiting, and the wav. Over the whole dataset:
speaker consistency and speaking-rate outliers per speaker, the manual decisions of ``voicetune dataset
restore/quarantine``, the train/eval split per speaker, and ``report.html``.

Layout written (built under a temporary name, moved into place when complete; inputs are only read)::

    wavs/ quarantine/ metadata_train.csv metadata_eval.csv clips.jsonl prepare.yaml prepare_result.json
    report.html curation.json cache/

``cache/`` (see :mod:`voicetune.data.cache`) makes re-runs incremental: new files are processed, known
ones come from the cache, and a changed setting re-runs only the stages that depend on it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import AUDIO_EXTENSIONS, AudioDecodeError, scan_audio_files, truncation
from voicetune.config import PrepareConfig, merge
from voicetune.data import finalize
from voicetune.data.cache import CACHE_DIR, LEGACY_ASR_CACHE, StageCache
from voicetune.data.manifest import ClipRecord
from voicetune.data.pipeline import (
    ClipJob,
    ClipProcessor,
    SourceFile,
    analyse_source,
    detect_language,
    finish_record,
    plan_source,
    word_splitter,
)
from voicetune.data.progress import AudioProgress
from voicetune.data.quality import compression_ratio, transcript_reasons  # noqa: F401 - public re-exports
from voicetune.data.textnorm import clean_text  # noqa: F401 - public re-export
from voicetune.data.transcribe import Asr, effective_batch_size, load_asr
from voicetune.utils import outputs
from voicetune.utils.disk import disk_full_guard, is_disk_full, warn_if_short
from voicetune.utils.io import atomic_write_json
from voicetune.utils.paths import display_name

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # same shape as voicetune.backends.base.Progress

quality_reasons = transcript_reasons  # the name of the first version

_OWN_NAMES = (CACHE_DIR, LEGACY_ASR_CACHE)  # what prepare writes into the output folder before it is complete
DATASET_ENTRIES = ("wavs", "quarantine", "metadata_train.csv", "metadata_eval.csv", "clips.jsonl",
                   "prepare.yaml", "prepare_result.json", "report.html", "curation.json", *_OWN_NAMES)
MAX_SKIPPED_SHOWN = 20  # entries of the input that are not audio, listed in the summary (the report has all)


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
    n_needs_review: int = 0
    n_train: int = 0
    n_eval: int = 0
    minutes_input: float = 0.0
    minutes_kept: float = 0.0
    minutes_quarantined: float = 0.0
    n_asr_cached: int = 0  # clips whose transcript came from the cache of an earlier run
    n_files_decoded: int = 0  # files that had to be decoded (the rest came from the cache entirely)
    n_second_opinions: int = 0  # clips transcribed a second time (uncertain, or asr_verify=all)
    seconds_elapsed: float = 0.0
    real_time_factor: float = 0.0  # processing seconds per second of input audio
    stage_seconds: dict[str, float] = field(default_factory=dict)
    mos_checked: bool = False
    speakers: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> clips/kept/minutes
    errors: dict[str, str] = field(default_factory=dict)  # input audio file -> why it could not be used
    no_speech: dict[str, str] = field(default_factory=dict)  # input audio file -> why it gave no clip
    skipped_inputs: dict[str, str] = field(default_factory=dict)  # other entries of the input: why not read
    duplicates: list[str] = field(default_factory=list)  # duplicate inputs and how they were resolved
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

    @property
    def report_html(self) -> Path:
        return self.out_dir / "report.html"

    @property
    def speed(self) -> float:
        """Seconds of input audio processed per second (the inverse of the real-time factor)."""
        return 1.0 / self.real_time_factor if self.real_time_factor > 0 else 0.0

    def summary(self) -> str:
        """Human-readable report: one summary line, the dataset folder, then reasons, skips and warnings."""
        lines = [
            (
                f"{self.n_kept} clip(s) kept ({self.minutes_kept:.1f} min of {self.minutes_input:.1f} min "
                f"input; {self.n_train} train / {self.n_eval} eval), {self.n_quarantined} quarantined "
                f"({self.minutes_quarantined:.1f} min; {self.n_needs_review} need review), "
                f"{self.n_files - self.n_files_failed - len(self.no_speech)}/{self.n_files} audio file(s) "
                f"used ({len(self.no_speech)} without speech, {self.n_files_failed} skipped), "
                f"{self.seconds_elapsed:.0f} s (real-time factor {self.real_time_factor:.3f}, "
                f"{self.speed:.0f}x real time); ASR: {self.asr_model}"
            ),
            f"dataset: {self.out_dir}   report: {self.report_html}",
        ]
        if len(self.speakers) > 1:
            lines += [
                f"  speaker {name}: {int(s['kept'])}/{int(s['clips'])} clip(s) kept, "
                f"{s['minutes_kept']:.1f} min"
                for name, s in sorted(self.speakers.items())
            ]
        lines += [f"  quarantined {n}x: {reason}" for reason, n in sorted(self.quarantine_reasons.items())]
        lines += [f"  skipped {name}: {why}" for name, why in self.errors.items()]
        lines += [f"  no clip from {name}: {why}" for name, why in self.no_speech.items()]
        lines += [f"  duplicate: {d}" for d in self.duplicates]
        shown = list(self.skipped_inputs.items())
        lines += [f"  not used: {name}: {why}" for name, why in shown[:MAX_SKIPPED_SHOWN]]
        if len(shown) > MAX_SKIPPED_SHOWN:
            more = len(shown) - MAX_SKIPPED_SHOWN
            lines.append(f"  ... and {more} more entries not used (listed in the report)")
        if self.n_asr_cached or self.n_files_decoded < self.n_files - self.n_files_failed:
            lines.append(
                f"  incremental: {self.n_files_decoded} file(s) decoded, {self.n_asr_cached} transcript(s) "
                "from the cache of an earlier run"
            )
        if not self.mos_checked:
            lines.append("  predicted MOS not checked (CPU; --qa-mos on enables it, ~4x slower)")
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
    check_output(out, [src])


def check_output(out: Path, inputs: list[Path] | tuple[Path, ...] = ()) -> None:
    """Refuse an output folder that is an input, or that is not empty and was not written by prepare."""
    try:
        outputs.check_output(out, "dataset", inputs=inputs, known=DATASET_ENTRIES, signature="prepare.yaml",
                             interim=_OWN_NAMES)
    except outputs.OutputError as e:
        raise PrepareError(str(e)) from None


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


def _safe_speaker(name: str) -> str:
    name = name.strip()
    if not name or "|" in name or "\n" in name:
        raise PrepareError(f"speaker name {name!r} must be non-empty and contain no '|' or newline")
    return name


def discover_inputs(
    input_dir: Path | None,
    speakers: Mapping[str, Path | str] | None,
    cfg: PrepareConfig,
    skipped: dict[str, str] | None = None,
) -> list[tuple[Path, Path, str]]:
    """(file, base folder, speaker) for every audio file: ``input_dir`` (speaker ``cfg.speaker_name``, or
    one speaker per first-level subfolder with ``cfg.speaker_folders``) plus each ``speakers`` entry.

    Every other entry of the input folders (not audio, hidden, dangling or looping symlinks, unreadable
    folders) goes to ``skipped`` with its reason, and to the log."""
    out: list[tuple[Path, Path, str]] = []
    skipped = {} if skipped is None else skipped

    def scan(folder: Path, label: str) -> list[Path]:
        files, why = scan_audio_files(folder)
        for name, reason in why.items():
            skipped[f"{label}{name}"] = reason
            audio_like = Path(name.rstrip("/")).suffix.lower() in AUDIO_EXTENSIONS or name.endswith("/")
            level = logging.WARNING if audio_like else logging.INFO
            logger.log(level, "not used: %s%s: %s", label, name, reason)
        return files

    if input_dir is not None:
        base = input_dir if input_dir.is_dir() else input_dir.parent
        for f in scan(input_dir, ""):
            rel = f.relative_to(base)
            if cfg.speaker_folders and input_dir.is_dir():
                if len(rel.parts) < 2:
                    skipped[display_name(rel)] = "not inside a speaker subfolder (--speaker-folders)"
                    logger.warning("%s: not inside a speaker subfolder; skipped (--speaker-folders)", rel)
                    continue
                out.append((f, base, _safe_speaker(rel.parts[0])))
            else:
                out.append((f, base, cfg.speaker_name))
    for name, folder in (speakers or {}).items():
        folder = Path(folder).expanduser()
        if not folder.exists():
            raise PrepareError(f"{folder}: input folder of speaker {name!r} does not exist")
        base = folder if folder.is_dir() else folder.parent
        out.extend((f, base, _safe_speaker(name)) for f in scan(folder, f"{name}/"))
    return out


def _sources(found: list[tuple[Path, Path, str]]) -> list[SourceFile]:
    multi = len({s for _, _, s in found}) > 1
    stems = unique_stems(
        [Path(f"{re.sub(r'[^A-Za-z0-9_-]+', '_', spk)}_{f.stem}") if multi else f for f, _, spk in found]
    )
    out = []
    for (f, base, spk), stem in zip(found, stems):
        rel = display_name(f.relative_to(base))
        out.append(
            SourceFile(f, f"{spk}/{rel}" if multi and not rel.startswith(f"{spk}/") else rel, stem, spk)
        )
    return out


# ------------------------------------------------------------------------------------------------- driver

JobMaker = Callable[[SourceFile, Asr, StageCache], list[ClipJob]]


def _prepare_jobs(cfg: PrepareConfig) -> JobMaker:
    """Clip jobs of one analysed recording: the clip plan (see :func:`plan_source`)."""

    def make(sf: SourceFile, asr: Asr, cache: StageCache) -> list[ClipJob]:
        sf.language = cfg.language if cfg.language != "auto" else ""
        splitter = word_splitter(sf, asr, cache, cfg)
        spans = plan_source(sf, cfg, splitter)
        if cfg.language == "auto":
            sf.language = detect_language(sf, [s for s in spans if s.ok], asr, cache)
        jobs = []
        for k, span in enumerate(spans):
            rec = ClipRecord(
                id=f"{sf.stem}_{k:04d}",
                audio_file="",
                source_file=sf.rel,
                start=span.start,
                end=span.end,
                duration=round(span.duration, 4),
                text="",
                language=sf.language or "en",
                speaker=sf.speaker,
                split="",
                status="quarantined",
                source_sha256=sf.sha,
            )
            rec.asr["model"] = asr.name
            if not span.ok:
                rec.reasons = [span.reason]
            jobs.append(ClipJob(sf, span, rec))
        return jobs

    return make


def build_dataset(
    sources: list[SourceFile],
    out_dir: Path,
    cfg: PrepareConfig,
    make_jobs: JobMaker,
    progress: Progress | None,
    what: str,
    after_batch: Callable[[list[ClipJob]], None] | None = None,
    notes: list[str] | None = None,
    *,
    skipped: dict[str, str] | None = None,
    failed: dict[str, str] | None = None,
    warnings: list[str] | None = None,
    inputs: list[Path] | tuple[Path, ...] = (),
) -> PrepareResult:
    """Run the pipeline over ``sources`` into ``out_dir`` (shared by prepare and import). ``after_batch``
    sees each processed batch of jobs; ``notes`` (filled as it runs) are reported as duplicates; ``skipped``
    (entries of the input that are not used, with the reason), ``failed`` (audio files that cannot be used,
    found before the run) and ``warnings`` go into the result. ``progress(done, total, "prepare: ...")``
    counts seconds of input audio (:mod:`voicetune.data.progress`)."""
    t0 = time.monotonic()
    tracker = AudioProgress(progress, sources, "import" if what == "imported" else "prepare")
    tracker.report("loading the ASR model")
    asr = load_asr(cfg.asr_model, cfg.language, cfg.device, beam_size=cfg.asr_beam_size)
    verify_asr = (
        load_asr(cfg.asr_verify_model, cfg.language, cfg.device, beam_size=cfg.asr_beam_size)
        if cfg.asr_verify_model and cfg.asr_verify != "off"
        else None
    )
    mos_on = cfg.qa_mos == "on" or (cfg.qa_mos == "auto" and asr.device.startswith("cuda"))
    result = PrepareResult(
        out_dir=out_dir.resolve(), asr_model=asr.name, n_files=len(sources) + len(failed or {}),
        mos_checked=mos_on,
    )
    result.skipped_inputs.update(skipped or {})
    result.errors.update(failed or {})
    result.warnings.extend(warnings or [])
    need = estimated_bytes(sources, cfg)
    warn_if_short(out_dir, need, f"the dataset {out_dir}")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out_dir)
    previous = finalize.previous_dataset(out_dir)
    publish = outputs.output_dir(out_dir, "dataset", inputs=inputs, known=DATASET_ENTRIES,
                                 signature="prepare.yaml", interim=_OWN_NAMES,
                                 complete=("metadata_train.csv", "prepare.yaml"))
    try:
        with disk_full_guard(out_dir, need, f"the dataset {out_dir}"), publish as tmp:
            proc = ClipProcessor(cfg, asr, verify_asr, cache, tmp, previous.wavs, mos_on)
            try:
                records, seconds = _run_sources(
                    sources, cfg, asr, cache, proc, tmp, make_jobs, result, tracker, after_batch
                )
            finally:
                proc.close()
            result.n_asr_cached, result.n_second_opinions = proc.n_asr_cached, proc.n_verified
            result.duplicates.extend(notes or [])
            result.stage_seconds = {k: round(v, 2) for k, v in proc.seconds.items()}
            tracker.report("writing the dataset")
            finalize.finish(tmp, records, proc.embeddings, cfg, result, previous.curation)
            cache.export(tmp)
            result.minutes_input = round(seconds / 60, 3)
            result.seconds_elapsed = round(time.monotonic() - t0, 2)
            result.real_time_factor = round(result.seconds_elapsed / max(seconds, 1e-9), 4)
            finalize.write_report(tmp, records, cfg, result)
            atomic_write_json(tmp / "prepare_result.json", result.to_json())
    except PrepareError:
        if created:  # nothing usable was found: the caches of a folder we created are worth nothing
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # failed before anything worth keeping: leave no empty folder behind
    if progress is not None:
        progress(tracker.total, tracker.total, f"{tracker.stage}: done")
    logger.info("%s %s: %s", what, result.out_dir, result.summary().splitlines()[0])
    return result


def estimated_bytes(sources: list[SourceFile], cfg: PrepareConfig) -> int:
    """Disk space the written clips may take: every input second as 16-bit mono at the output rate (durations
    from the headers where libsndfile reads them; compressed formats counted at 128 kbit/s), plus the
    caches."""
    import soundfile

    seconds = 0.0
    for sf in sources:
        try:
            seconds += soundfile.info(str(sf.path)).duration
        except Exception:  # noqa: BLE001 - any format libsndfile does not read: estimate from the size
            try:
                seconds += sf.path.stat().st_size / 16000
            except OSError:
                continue
    return int(seconds * cfg.sample_rate * 2 * 1.1) + (16 << 20)


def _file_failure(sf: SourceFile, e: BaseException, out: Path) -> str:
    """Why a file could not be used (re-raising when the disk is full: that is not the file's fault)."""
    if is_disk_full(e, out):
        raise e  # disk_full_guard (build_dataset) says how much space is needed where
    if isinstance(e, AudioDecodeError):
        return str(e).replace(f"{sf.path}: ", "")
    if isinstance(e, OSError) and e.strerror:
        return f"cannot read the file ({e.strerror})"
    return f"cannot be processed ({type(e).__name__}: {str(e)[:300]})"


def _fail(sf: SourceFile, why: str, result: PrepareResult) -> None:
    logger.warning("skipping %s: %s", sf.rel, why)
    result.errors[sf.rel] = why
    sf.release()


def _no_speech_reason(sf: SourceFile, cfg: PrepareConfig) -> str:
    """Why an analysed file gave no clip: too short, silent, or no speech found by the VAD."""
    a = sf.analysis or {}
    duration = float(a.get("duration", 0.0))
    energy = np.asarray(a.get("energy_db", []), dtype=np.float32)
    probs = np.asarray(a.get("probs", []), dtype=np.float32)
    if duration < max(cfg.min_speech_ms / 1000, 0.5):
        return f"too short ({duration:.2f} s; a clip needs speech of at least {cfg.min_speech_ms} ms)"
    if not energy.size or float(energy.max()) < -60.0:
        return f"silent ({duration:.1f} s without sound above -60 dBFS)"
    top = float(probs.max()) if probs.size else 0.0
    return (f"no speech found ({duration:.1f} s of sound, highest VAD speech probability {top:.2f} < "
            f"--vad-threshold {cfg.vad_threshold:g}): noise, music or silence")


def _jobs_for(
    sf: SourceFile,
    decoded: bool | BaseException,
    seen: dict[str, str],
    result: PrepareResult,
    make: Callable[[SourceFile], list[ClipJob]],
    cfg: PrepareConfig,
    out: Path,
) -> list[ClipJob] | None:
    """The clip jobs of an analysed source; None (recorded in ``result``) for failed or duplicate ones, [] for
    one without speech. An error of this one file skips the file, naming it and the reason; the run goes
    on."""
    if isinstance(decoded, BaseException):
        _fail(sf, _file_failure(sf, decoded, out), result)
        return None
    if sf.sha in seen:
        result.duplicates.append(f"{sf.rel}: same audio as {seen[sf.sha]} (skipped)")
        sf.release()
        return None
    seen[sf.sha] = sf.rel
    try:
        jobs = make(sf)
    except Exception as e:  # noqa: BLE001 - one file's failure must not stop the run
        _fail(sf, _file_failure(sf, e, out), result)
        return None
    if not jobs:
        result.no_speech[sf.rel] = _no_speech_reason(sf, cfg)
        logger.warning("no clip from %s: %s", sf.rel, result.no_speech[sf.rel])
        sf.release()
        return []
    cut = truncation(sf.path)
    if cut:
        result.warnings.append(f"{sf.rel}: {cut}")
        logger.warning("%s: %s", sf.rel, cut)
        last = max(jobs, key=lambda j: j.span.end)
        if float((sf.analysis or {}).get("duration", 0.0)) - last.span.end < 0.25:  # it may stop mid-word
            last.rec.reasons.append("cut off by the end of a truncated file")
    return jobs


def _run_sources(
    sources: list[SourceFile],
    cfg: PrepareConfig,
    asr: Asr,
    cache: StageCache,
    proc: ClipProcessor,
    tmp: Path,
    make_jobs: JobMaker,
    result: PrepareResult,
    tracker: AudioProgress,
    after_batch: Callable[[list[ClipJob]], None] | None,
) -> tuple[list[ClipRecord], float]:
    """Analyse and plan every source, processing clip jobs in batches as they accumulate."""
    records: list[ClipRecord] = []
    batch: list[ClipJob] = []
    seen: dict[str, str] = {}
    seconds = 0.0
    # ~5 clips fill one packed ASR window
    batch_clips = max(4, effective_batch_size(cfg.asr_batch_size, asr.device) * 6)
    scratch = tmp / ".scratch"

    def run(jobs: list[ClipJob]) -> None:
        proc.run(jobs, on_transcribed=tracker.transcribed)
        for j in jobs:
            finish_record(j, cfg)
        tracker.checked(jobs)
        if after_batch is not None:
            after_batch(jobs)

    def flush(jobs: list[ClipJob]) -> None:
        tracker.report(f"transcribing {jobs[0].file.rel}: clips {jobs[0].rec.id}..{jobs[-1].rec.id}")
        try:
            run(jobs)
        except Exception as e:  # noqa: BLE001 - find the file at fault: each file's clips on their own
            _file_failure(jobs[0].file, e, tmp)  # re-raises when the disk is full
            for f in dict.fromkeys(j.file for j in jobs):
                try:
                    run([j for j in jobs if j.file is f])
                except Exception as e2:  # noqa: BLE001 - this file is skipped, the others go on
                    _fail(f, _file_failure(f, e2, tmp), result)

    def analyse(sf: SourceFile) -> bool | BaseException:
        try:
            return analyse_source(sf, cache, scratch)
        except Exception as e:  # noqa: BLE001 - reported by _jobs_for as this file's failure
            return e

    from voicetune.data.vad import _load_model

    _load_model()  # once, before analysis threads share it
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="voicetune-analyse") as ex:
        # the next file is decoded and analysed while the clips of this one are transcribed (two at most,
        # so spooled copies of non-seekable sources do not pile up on disk)
        for i, sf in enumerate(sources):
            while len(ahead) < 2 and i + len(ahead) < len(sources):
                ahead.append(ex.submit(analyse, sources[i + len(ahead)]))
            tracker.report(f"analysing {sf.rel}")
            decoded = ahead.popleft().result()
            jobs = _jobs_for(sf, decoded, seen, result, lambda f: make_jobs(f, asr, cache), cfg, tmp)
            if jobs is None:
                tracker.file_done(sf.rel)
                continue
            result.n_files_decoded += int(decoded is True)
            seconds += float(sf.analysis["duration"])
            records.extend(j.rec for j in jobs)
            ready = [j for j in jobs if j.span.ok]
            tracker.planned(sf.rel, [j.span.duration for j in ready])
            sf.pending = len(ready)
            if not ready:
                sf.release()
            batch.extend(ready)
            while len(batch) >= batch_clips:
                flush(batch[:batch_clips])
                batch = batch[batch_clips:]
    if batch:
        flush(batch)
    failed = [r for r in records if r.source_file in result.errors]  # a file that failed half-way: none of it
    for r in failed:
        if r.audio_file and (tmp / r.audio_file).is_file():
            (tmp / r.audio_file).unlink()
    records = [r for r in records if r.source_file not in result.errors]
    result.n_files_failed = len(result.errors)
    if not records and result.errors and not result.no_speech:
        raise PrepareError(
            f"none of the {len(sources)} audio file(s) could be used: "
            + "; ".join(f"{k}: {v}" for k, v in result.errors.items())
        )
    return records, seconds


def prepare(
    input_dir: Path | str | None,
    out_dir: Path | str,
    cfg: PrepareConfig | None = None,
    progress: Progress | None = None,
    *,
    speakers: Mapping[str, Path | str] | None = None,
    **overrides: Any,
) -> PrepareResult:
    """Build a dataset folder in ``out_dir`` from the recordings in ``input_dir`` (a folder or one file).

    ``cfg`` defaults to :class:`PrepareConfig`; ``overrides`` (e.g. ``language="de"``) replace its fields
    (None values are ignored). ``speakers`` maps speaker names to more input folders (one dataset, several
    voices); ``input_dir`` may then be None. ``progress(done, total, "prepare: what")`` is called as work
    proceeds, in seconds of input audio (:mod:`voicetune.data.progress`). Unreadable files are skipped with a
    warning and listed in ``result.errors``. Re-running on the same ``out_dir`` reuses every cached stage (new
    files only are processed). Raises
    :class:`PrepareError` for unusable folders or when no clip survives.
    """
    cfg = merge(cfg or PrepareConfig(), overrides)
    out = Path(out_dir).expanduser()
    inputs = [Path(input_dir).expanduser()] if input_dir is not None else []
    inputs += [Path(p).expanduser() for p in (speakers or {}).values()]
    if not inputs:
        raise PrepareError("no input: give an input folder and/or --speaker NAME=FOLDER")
    for folder in inputs:
        check_folders(folder, out)
    skipped: dict[str, str] = {}
    found = discover_inputs(inputs[0] if input_dir is not None else None, speakers, cfg, skipped)
    if not found:
        where = ", ".join(str(p) for p in inputs)
        raise PrepareError(
            f"{where}: no audio files found (looked for {', '.join(AUDIO_EXTENSIONS)})"
            + "".join(f"\n  not used: {k}: {v}" for k, v in list(skipped.items())[:MAX_SKIPPED_SHOWN])
        )
    result = build_dataset(_sources(found), out, cfg, _prepare_jobs(cfg), progress, "prepared",
                           skipped=skipped, inputs=inputs)
    if result.n_kept == 0:
        raise PrepareError(
            f"no usable clip in {', '.join(str(p) for p in inputs)}: {result.n_quarantined} clip(s) "
            f"quarantined ({result.quarantine_reasons or 'no speech found'}); see {result.clips_jsonl} and "
            f"{result.report_html}"
        )
    return result


def reason_counts(records: list[ClipRecord]) -> dict[str, int]:
    """How often each kind of reason occurs (the part before the first parenthesis or colon)."""
    return dict(Counter(re.split(r" \(|: ", reason)[0] for r in records for reason in r.reasons))
