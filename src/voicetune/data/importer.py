"""`voicetune dataset import SRC --out DATASET_DIR`: an existing transcribed dataset in, the voicetune layout
out.

Accepted layouts of SRC:

* LJSpeech: ``metadata.csv`` without header, ``id|text[|normalized text]``, audio in ``wavs/<id>.wav``;
* Coqui / AllTalk: ``metadata_train.csv`` and/or ``metadata_eval.csv`` (or ``metadata.csv``) with the
  header ``audio_file|text|speaker_name``, audio paths relative to SRC.

Each listed file becomes one clip (not re-segmented) and goes through the same pipeline as `prepare`:
resampling, loudness, every QA check, and ASR, which here checks the given transcript: when the ASR hears
something else (WER above ``max_asr_disagreement``), the clip needs review. The same audio listed more
than once is one clip: identical transcripts are merged; different ones are resolved by the ASR when
exactly one of them matches it, else the clip needs review with every candidate in the reason. All of it
is reported (``PrepareResult.duplicates``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from voicetune.config import PrepareConfig, merge
from voicetune.data.cache import StageCache
from voicetune.data.manifest import ClipRecord
from voicetune.data.pipeline import ClipJob, SourceFile
from voicetune.data.prepare import (
    PrepareError,
    PrepareResult,
    Progress,
    build_dataset,
    check_output,
    unique_stems,
)
from voicetune.data.quality import transcript_disagreement
from voicetune.data.segment import ClipSpan
from voicetune.data.textnorm import clean_text, normalize_transcript
from voicetune.data.transcribe import Asr
from voicetune.utils.paths import UnsafePathError, display_name, inside

logger = logging.getLogger(__name__)

Row = tuple[str, str, str]  # (text, normalized text or "", speaker)


def read_metadata_text(path: Path, warnings: list[str] | None = None) -> str:
    """A metadata file's text: UTF-8 (with or without BOM); else Windows-1252 / Latin-1, with a warning naming
    the first line that is not UTF-8 (spreadsheet exports on Windows write these)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        for encoding in ("cp1252", "latin-1"):
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        msg = (f"{path.name}:{line}: not UTF-8; read as {encoding} (check accented characters, or save the "
               "file as UTF-8)")
        logger.warning("%s", msg)
        if warnings is not None:
            warnings.append(msg)
        return text


def read_listing(
    src: Path, default_speaker: str, problems: dict[str, str] | None = None, warnings: list[str] | None = None
) -> dict[Path, list[Row]]:
    """Audio file -> the rows that list it, from an LJSpeech or Coqui/AllTalk metadata folder.

    A row that cannot be used (too few columns, a path that leaves ``src``) is left out and named in
    ``problems`` (``"metadata.csv:12" -> reason``); the other rows are read.
    """
    src = Path(src).resolve()
    problems = {} if problems is None else problems
    coqui = [src / n for n in ("metadata_train.csv", "metadata_eval.csv") if (src / n).is_file()]
    plain = src / "metadata.csv"
    if not coqui and not plain.is_file():
        raise PrepareError(
            f"{src}: no metadata.csv (LJSpeech) or metadata_train.csv / metadata_eval.csv (Coqui/AllTalk) "
            "found"
        )
    listing: dict[Path, list[Row]] = {}
    for path in coqui or [plain]:
        lines = read_metadata_text(path, warnings).splitlines()
        header = [c.strip() for c in lines[0].split("|")] if lines else []
        has_header = header[:2] == ["audio_file", "text"]
        for n, line in enumerate(lines[1:] if has_header else lines, 2 if has_header else 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            cols = line.split("|")
            if len(cols) < 2:
                problems[where] = (f"expected at least two '|'-separated columns, got {line[:80]!r}; "
                                   "row skipped")
                logger.warning("%s: %s", where, problems[where])
                continue
            try:
                if has_header:
                    audio = inside(src, cols[0].strip(), where)
                    speaker = cols[2].strip() if len(cols) > 2 else ""
                    row = (cols[1], "", speaker or default_speaker)
                else:
                    name = cols[0].strip()
                    wav = name if name.lower().endswith(".wav") else f"{name}.wav"
                    audio = inside(src, f"wavs/{wav}", where)
                    row = (cols[1], cols[2] if len(cols) > 2 else "", default_speaker)
            except UnsafePathError as e:
                problems[where] = str(e).split(": ", 1)[1]
                logger.warning("%s", e)
                continue
            listing.setdefault(audio, []).append(row)
    return listing


def _import_jobs(listing: dict[Path, list[Row]], cfg: PrepareConfig, notes: list[str]):
    def make(sf: SourceFile, asr: Asr, cache: StageCache) -> list[ClipJob]:
        rows = listing[sf.path]
        sf.language = cfg.language if cfg.language != "auto" else "en"
        duration = float(sf.analysis["duration"])
        reason = ""
        if duration < cfg.min_seconds:
            reason = f"shorter than min_seconds ({duration:.2f} s < {cfg.min_seconds:g} s)"
        elif duration > cfg.max_seconds:
            reason = f"longer than max_seconds ({duration:.2f} s > {cfg.max_seconds:g} s)"
        span = ClipSpan(0.0, round(duration, 4), 1, reason)
        texts = list(dict.fromkeys(clean_text(t) for t, _, _ in rows if clean_text(t)))
        rec = ClipRecord(
            id=sf.stem,
            audio_file="",
            source_file=sf.rel,
            start=0.0,
            end=span.end,
            duration=span.end,
            text="",
            language=sf.language,
            speaker=sf.speaker,
            split="",
            status="quarantined",
            source_sha256=sf.sha,
            raw_text=texts[0] if texts else "",
        )
        rec.asr["model"] = asr.name
        normalized = next((clean_text(nt) for _, nt, _ in rows if clean_text(nt)), "")
        rec.text = normalized or normalize_transcript(rec.raw_text, sf.language, cfg.text_normalization)
        if len(rows) > 1 and len(texts) == 1:
            notes.append(f"{sf.rel}: listed {len(rows)} times with the same transcript (merged)")
        if not texts:
            reason = reason or "no transcript in the metadata"
        if reason:
            rec.reasons = [reason]
            span = ClipSpan(span.start, span.end, 1, reason)
        return [ClipJob(sf, span, rec, given_texts=texts)]

    return make


def _check_given(cfg: PrepareConfig, notes: list[str]):
    """After ASR: pick among duplicate transcripts, and flag given transcripts the ASR does not hear."""

    def check(jobs: list[ClipJob]) -> None:
        for j in jobs:
            heard = j.tr.text if j.tr else ""
            if not j.given_texts or not heard.strip():
                continue
            scored = sorted((transcript_disagreement(t, heard, j.rec.language), t) for t in j.given_texts)
            best_wer, best = scored[0]
            rec = j.rec
            if len(scored) > 1:
                clear = best_wer <= cfg.max_asr_disagreement and scored[1][0] > best_wer
                listing = " | ".join(repr(t) for _, t in scored)
                if clear:
                    notes.append(
                        f"{j.file.rel}: {len(scored)} different transcripts; kept the one the ASR hears "
                        f"(WER {best_wer:.2f}): {best!r}"
                    )
                else:
                    notes.append(
                        f"{j.file.rel}: {len(scored)} different transcripts, none clearly right: needs review"
                    )
                    rec.needs_review = True
                    rec.reasons.append(
                        f"needs review: {len(scored)} different transcripts for the same audio: {listing}"
                    )
                rec.raw_text = best
                rec.text = normalize_transcript(best, rec.language, cfg.text_normalization)
            elif best_wer > cfg.max_asr_disagreement:
                rec.needs_review = True
                rec.reasons.append(
                    f"needs review: given transcript differs from the ASR (WER {best_wer:.2f}): heard "
                    f"{heard.strip()!r}"
                )
            rec.asr["given_vs_asr_wer"] = round(best_wer, 3)

    return check


def import_dataset(
    src: Path | str,
    out_dir: Path | str,
    cfg: PrepareConfig | None = None,
    progress: Progress | None = None,
    **overrides: Any,
) -> PrepareResult:
    """Import an LJSpeech or Coqui/AllTalk dataset folder ``src`` into ``out_dir`` (see the module doc)."""
    cfg = merge(cfg or PrepareConfig(), overrides)
    src, out = Path(src).expanduser(), Path(out_dir).expanduser()
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder")
    src = src.resolve()
    if out.resolve() == src or src in out.resolve().parents:
        raise PrepareError(f"output folder {out} must not be inside the dataset being imported ({src})")
    check_output(out.resolve(), [src])
    skipped: dict[str, str] = {}
    missing: dict[str, str] = {}
    warnings: list[str] = []
    listing = read_listing(src, cfg.speaker_name, skipped, warnings)
    files = []
    for p, rows in listing.items():
        rel = display_name(p.relative_to(src))
        if p.is_file():
            files.append(p)
        else:
            why = "is not a regular file" if p.exists() else "does not exist"
            missing[rel] = f"listed in the metadata ({len(rows)} row(s)) but the file {why}"
            logger.warning("skipping %s: %s", rel, missing[rel])
    if not files:
        raise PrepareError(
            f"{src}: none of the {len(listing)} listed audio files exist"
            + "".join(f"\n  {k}: {v}" for k, v in list({**skipped, **missing}.items())[:10])
        )
    sources = [
        SourceFile(p, display_name(p.relative_to(src)), stem, listing[p][0][2])
        for p, stem in zip(files, unique_stems(files))
    ]
    notes: list[str] = []
    result = build_dataset(
        sources,
        out,
        cfg,
        _import_jobs(listing, cfg, notes),
        progress,
        "imported",
        after_batch=_check_given(cfg, notes),
        notes=notes,
        skipped=skipped,
        failed=missing,
        warnings=warnings,
        inputs=[src],
    )
    if result.n_kept == 0:
        raise PrepareError(f"no usable clip in {src}; see {result.clips_jsonl} and {result.report_html}")
    return result
