"""The per-file and per-clip work of `voicetune prepare` (and `voicetune dataset import`).

Per source file (:func:`analyse_source`, :func:`plan_source`): content hash, one streaming pass that
decodes block by block, resamples to 16 kHz and runs Silero VAD (frame probabilities + energies: a few
hundred KB per hour, cached), then the clip plan (pure, from :mod:`.segment`; long stretches without a
pause are cut between words using faster-whisper word timestamps).

Per clip, in batches (:class:`ClipProcessor`): read the clip's samples (seeking in the source; never the
whole file), ASR (packed, batched), a second opinion for uncertain transcripts, audio measures, batched
speaker embeddings and MOS, loudness normalisation + true-peak limiting, and the wav. Every stage result
is looked up in / added to :class:`~voicetune.data.cache.StageCache` first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import resample, write_wav
from voicetune.audio.loudness import normalize_loudness
from voicetune.audio.stream import AudioSource, open_source
from voicetune.config import PrepareConfig
from voicetune.data import quality as qa
from voicetune.data.cache import StageCache, clip_key, link_or_copy
from voicetune.data.manifest import ClipRecord
from voicetune.data.segment import ClipSpan, Envelope, plan_clips, split_at_words
from voicetune.data.textnorm import normalize_transcript
from voicetune.data.transcribe import Asr, Transcript, effective_batch_size
from voicetune.data.vad import FRAME_SECONDS, VAD_SAMPLE_RATE, VadStream, vad_result
from voicetune.scoring.mos import predicted_mos_batch
from voicetune.scoring.speaker import speaker_embeddings

logger = logging.getLogger(__name__)

FADE_SECONDS = 0.005
QA_VERSION = "qa-v2"  # audio measures
SPEAKER_VERSION = "spk-v1"  # Resemblyzer embedding
MOS_VERSION = "mos-v1"  # DistillMOS
WAV_VERSION = "wav-v1"


@dataclass
class SourceFile:
    """One input recording and what is known about it."""

    path: Path
    rel: str  # as shown to the user and stored in ClipRecord.source_file
    stem: str  # clip-id prefix
    speaker: str
    sha: str = ""
    analysis: dict[str, Any] | None = None
    language: str = ""
    source: AudioSource | None = None
    pending: int = 0  # clips not yet processed (the spooled copy is deleted at 0)
    scratch: Path | None = None  # where non-seekable sources are spooled

    def audio(self, start: float, end: float) -> tuple[np.ndarray, int]:
        """Source samples (mono, native rate) of [start, end)."""
        if self.source is None:
            self.source = open_source(self.path)
        if self.scratch is not None:
            self.source.ensure_readable(self.scratch, f"{self.sha}.wav")
        return self.source.read(start, end), self.source.sr

    def release(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None


@dataclass
class ClipJob:
    """A clip on its way through ASR, QA and writing."""

    file: SourceFile
    span: ClipSpan
    rec: ClipRecord
    given_texts: list[str] = field(default_factory=list)  # import: transcripts the metadata gave
    native: np.ndarray | None = None
    sr: int = 0
    audio16: np.ndarray | None = None
    tr: Transcript | None = None
    embedding: np.ndarray | None = None

    @property
    def key(self) -> str:
        return clip_key(self.file.sha, self.span.start, self.span.end)

    def load(self) -> None:
        if self.native is None:
            self.native, self.sr = self.file.audio(self.span.start, self.span.end)
            self.audio16 = resample(self.native, self.sr, VAD_SAMPLE_RATE)


# --------------------------------------------------------------------------------------- per source file


def analyse_source(sf: SourceFile, cache: StageCache, scratch: Path) -> bool:
    """Hash the file and run (or load) its streaming VAD analysis; True when it had to be decoded.
    Raises AudioDecodeError."""
    sf.sha = cache.sha256(sf.path)
    sf.scratch = scratch
    sf.analysis = cache.load_analysis(sf.sha)
    if sf.analysis is not None:
        return False
    import soxr

    src = open_source(sf.path)
    spool = src.spool_to(scratch / f"{sf.sha}.wav")
    stream = VadStream()
    rs = soxr.ResampleStream(src.sr, VAD_SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    n_native = 0
    try:
        for block in src.blocks():
            n_native += block.size
            if spool is not None:
                spool.write(block)
            stream.feed(rs.resample_chunk(block))
        stream.feed(rs.resample_chunk(np.zeros(0, np.float32), last=True))
        stream.finish()
    finally:
        if spool is not None:
            spool.close()
    sf.source = src  # keeps the spooled copy for reading clips
    sf.analysis = {
        "probs": stream.probs,
        "energy_db": stream.energy_db,
        "sr": np.int64(src.sr),
        "n_samples": np.int64(stream.n_samples),
        "duration": np.float64(n_native / src.sr),
    }
    cache.save_analysis(sf.sha, sf.analysis)
    return True


def plan_source(sf: SourceFile, cfg: PrepareConfig, splitter: Callable | None) -> list[ClipSpan]:
    """The clip plan of an analysed file (VAD spans -> split / merge / pad / extend)."""
    a = sf.analysis
    assert a is not None
    vad = vad_result(
        a["probs"], int(a["n_samples"]), cfg.vad_threshold, cfg.min_speech_ms, cfg.min_silence_ms
    )
    return plan_clips(
        vad.spans,
        float(a["duration"]),
        Envelope(a["probs"], FRAME_SECONDS),
        min_seconds=cfg.min_seconds,
        max_seconds=cfg.max_seconds,
        pad_seconds=cfg.pad_ms / 1000,
        max_merge_gap=cfg.merge_gap_ms / 1000,
        pause_threshold=max(0.01, cfg.vad_threshold - 0.15),
        word_splitter=splitter,
    )


def word_splitter(sf: SourceFile, asr: Asr, cache: StageCache, cfg: PrepareConfig) -> Callable:
    """A :data:`~voicetune.data.segment.WordSplitter` for ``sf``: transcribes a pause-less span (at most
    29 s; longer ones return None so the caller cuts at the quietest frame first) and cuts between its
    words, refined on the VAD envelope."""
    env = Envelope(sf.analysis["probs"], FRAME_SECONDS) if sf.analysis else None

    def split(span: tuple[float, float], max_len: float, min_len: float) -> list[tuple[float, float]] | None:
        s, e = span
        if e - s > 29.0:
            return None
        key = f"{clip_key(sf.sha, s, e)}|split|{asr.path}|beam={asr.beam_size}|{sf.language}"
        hit = cache.asr.get(key)
        if hit is None:
            audio, sr = sf.audio(s, e)
            tr = asr.transcribe(resample(audio, sr, VAD_SAMPLE_RATE), sf.language or None)
            hit = {"words": [[w, a, b] for w, a, b in tr.words]}
            cache.asr.put(key, hit)
        words = [(str(w), s + float(a), s + float(b)) for w, a, b in hit["words"]]
        pieces = split_at_words((s, e), words, max_len, min_len, env)
        logger.debug("%s: %.1f-%.1f s has no pause; cut at words into %s", sf.rel, s, e, pieces)
        return pieces

    return split


def detect_language(sf: SourceFile, spans: list[ClipSpan], asr: Asr, cache: StageCache) -> str:
    """Language of a file from (up to) its first 30 s of planned clips, cached per file and model."""
    key = f"{sf.sha}|language|{asr.path}"
    hit = cache.asr.get(key)
    if hit is None:
        parts, total = [], 0.0
        for sp in spans:
            if total >= 30.0:
                break
            audio, sr = sf.audio(sp.start, min(sp.end, sp.start + 30.0 - total))
            parts.append(resample(audio, sr, VAD_SAMPLE_RATE))
            total += sp.duration
        lang, prob = asr.detect_language(np.concatenate(parts) if parts else np.zeros(0, np.float32))
        hit = {"language": lang, "probability": prob}
        cache.asr.put(key, hit)
    logger.info("%s: language %s (p=%.2f)", sf.rel, hit["language"], hit["probability"])
    return str(hit["language"])


# ----------------------------------------------------------------------------------------------- per clip


def confidence(tr: Transcript) -> float:
    """Mean word log-probability (comparable between packed and single-clip decoding)."""
    return tr.word_logprob if tr.word_logprob is not None else tr.avg_logprob


def _tr_to_json(tr: Transcript) -> dict[str, Any]:
    return {
        "text": tr.text,
        "language": tr.language,
        "avg_logprob": tr.avg_logprob,
        "no_speech_prob": tr.no_speech_prob,
        "words": [[w, round(a, 3), round(b, 3)] for w, a, b in tr.words],
        "word_logprob": tr.word_logprob,
    }


def _tr_from_json(e: dict[str, Any]) -> Transcript:
    words = [(str(w), float(a), float(b)) for w, a, b in e.get("words", [])]
    return Transcript(
        e["text"], e["language"], e["avg_logprob"], e["no_speech_prob"], words, 1.0, e.get("word_logprob")
    )


class ClipProcessor:
    """Runs clip jobs through ASR, QA and writing, in batches, with every stage cached."""

    def __init__(
        self,
        cfg: PrepareConfig,
        asr: Asr,
        verify_asr: Asr | None,
        cache: StageCache,
        out: Path,
        previous_wavs: dict[str, Path],
        mos_on: bool,
    ) -> None:
        self.cfg, self.asr, self.verify_asr, self.cache, self.out = cfg, asr, verify_asr, cache, out
        self.previous_wavs = previous_wavs
        self.mos_on = mos_on
        self.settings1 = f"{asr.path}|packed|beam={asr.beam_size}"
        second = verify_asr or asr
        self.settings2 = f"{second.path}|" + ("beam" if verify_asr else "greedy-fallback")
        self.embeddings: dict[str, np.ndarray | None] = {}
        self.n_asr_cached = 0
        self.n_wavs_reused = 0
        self.n_verified = 0
        self.seconds: dict[str, float] = {}
        # per-clip audio work (reading, resampling, loudness, writing) runs in threads: soxr, soundfile,
        # numpy and the filters release the GIL, so a many-core GPU box keeps the GPU fed
        self.pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="voicetune-clip")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _timed(self, stage: str, t0: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.monotonic() - t0

    def run(self, jobs: list[ClipJob], on_transcribed: Callable[[list[ClipJob]], None] | None = None) -> None:
        """Process one batch of jobs (records are filled in place; audio is dropped afterwards).
        ``on_transcribed(jobs)`` is called as first-pass transcripts become available (progress)."""
        self._prefetch(jobs)
        self._asr_first_pass(jobs, on_transcribed)
        self._asr_second_pass(jobs)
        self._quality(jobs)
        self._write(jobs)
        for j in jobs:
            j.native = j.audio16 = None
            j.file.pending -= 1
            if j.file.pending <= 0:
                j.file.release()

    def _wav_key(self, j: ClipJob) -> str:
        cfg = self.cfg
        return f"{j.key}|sr={cfg.sample_rate}|lufs={cfg.target_lufs:g}|peak={cfg.peak_dbfs:g}|{WAV_VERSION}"

    def _prefetch(self, jobs: list[ClipJob]) -> None:
        """Read (in parallel) the audio of every job that some stage cannot take from the cache."""
        t0 = time.monotonic()

        def needs_audio(j: ClipJob) -> bool:
            wav = self.previous_wavs.get(self._wav_key(j))
            return (
                f"{j.key}|{self.settings1}|{j.file.language}" not in self.cache.asr.entries
                or f"{j.key}|{QA_VERSION}" not in self.cache.qa.entries
                or (self.cfg.qa_speaker and f"{j.key}|{SPEAKER_VERSION}" not in self.cache.qa.entries)
                or (self.mos_on and f"{j.key}|{MOS_VERSION}" not in self.cache.qa.entries)
                or wav is None
                or f"{self._wav_key(j)}|loudness" not in self.cache.qa.entries
            )

        todo = [j for j in jobs if needs_audio(j)]
        for j in todo:  # open each source once, in this thread (spooling a non-seekable one if needed)
            if j.file.source is None or not j.file.source.seekable:
                j.file.audio(j.span.start, j.span.start)
        list(self.pool.map(ClipJob.load, todo))
        self._timed("decode", t0)

    def _asr_first_pass(self, jobs: list[ClipJob],
                        on_transcribed: Callable[[list[ClipJob]], None] | None) -> None:
        t0 = time.monotonic()
        todo: dict[str, list[ClipJob]] = {}
        cached = []
        for j in jobs:
            hit = self.cache.asr.get(f"{j.key}|{self.settings1}|{j.file.language}")
            if hit is not None:
                j.tr = _tr_from_json(hit)
                self.n_asr_cached += 1
                cached.append(j)
            else:
                todo.setdefault(j.file.language, []).append(j)
        if on_transcribed is not None and cached:
            on_transcribed(cached)
        for lang, group in todo.items():
            for j in group:
                j.load()
            self._timed("decode", t0)
            t1 = time.monotonic()
            done = None if on_transcribed is None else (lambda n, g=group: on_transcribed(g[:n]))
            results = self.asr.transcribe_packed(
                [j.audio16 for j in group], lang or None,
                batch_size=effective_batch_size(self.cfg.asr_batch_size, self.asr.device), on_done=done,
            )
            for j, tr in zip(group, results):
                j.tr = tr
                self.cache.asr.put(f"{j.key}|{self.settings1}|{lang}", _tr_to_json(tr))
            self._timed("asr", t1)
            t0 = time.monotonic()

    def _asr_second_pass(self, jobs: list[ClipJob]) -> None:
        if self.cfg.asr_verify == "off":
            return
        t0 = time.monotonic()
        for j in jobs:
            assert j.tr is not None
            why = qa.is_uncertain(j.tr, j.span.duration, self.cfg)
            # import: a given transcript the ASR disagrees with
            if j.given_texts and not why and min(
                qa.transcript_disagreement(t, j.tr.text, j.rec.language) for t in j.given_texts
            ) > self.cfg.max_asr_disagreement:
                why = "given transcript differs from the ASR"
            if self.cfg.asr_verify != "all" and not why:
                continue
            key = f"{j.key}|{self.settings2}|{j.file.language}"
            hit = self.cache.asr.get(key)
            if hit is None:
                j.load()
                second = self.verify_asr or self.asr
                lang = j.file.language or None
                tr2 = (
                    second.transcribe(j.audio16, lang)
                    if self.verify_asr
                    else second.transcribe_careful(j.audio16, lang)
                )
                hit = _tr_to_json(tr2)
                self.cache.asr.put(key, hit)
            self.n_verified += 1
            self._resolve(j, _tr_from_json(hit), why)
        self._timed("asr_verify", t0)

    def _resolve(self, j: ClipJob, tr2: Transcript, why: str) -> None:
        """Pick the better of two transcripts; flag the clip for review when they disagree or stay unsure."""
        tr1 = j.tr
        assert tr1 is not None
        c1, c2 = confidence(tr1), confidence(tr2)
        wer = qa.transcript_disagreement(tr1.text, tr2.text, j.rec.language)
        best = tr2 if (c2 > c1 or not tr1.text.strip()) else tr1
        j.rec.asr["second_opinion"] = {
            "why": why or "asr_verify=all",
            "text": tr2.text,
            "word_logprob": round(c2, 4),
            "disagreement_wer": round(wer, 3),
            "chosen": "second" if best is tr2 else "first",
        }
        j.tr = best
        if not best.text.strip():
            return  # nothing heard twice: the transcript checks quarantine it as empty
        review = ""
        if tr1.text.strip() and wer > self.cfg.max_asr_disagreement:
            review = f"ASR passes disagree (WER {wer:.2f}): {tr1.text.strip()!r} vs {tr2.text.strip()!r}"
        elif confidence(best) < self.cfg.asr_recheck_logprob:
            review = f"still uncertain after re-transcription (mean word log-prob {confidence(best):.2f})"
        if review:
            j.rec.needs_review = True
            j.rec.reasons.append(f"needs review: {review}")

    def _quality(self, jobs: list[ClipJob]) -> None:
        """Audio measures, speaker embedding and MOS of each clip (each cached under its own key)."""
        t0 = time.monotonic()
        need_emb, need_mos = [], []
        for j in jobs:
            hit = self.cache.qa.get(f"{j.key}|{QA_VERSION}")
            if hit is None:
                j.load()
                a = j.file.analysis
                m = qa.measure_clip(
                    j.native, a["probs"], a["energy_db"], FRAME_SECONDS, j.span.start, j.span.end,
                    self.cfg.vad_threshold,
                )  # fmt: skip
                hit = {"measures": {k: _round(v) for k, v in vars(m).items()}}
                self.cache.qa.put(f"{j.key}|{QA_VERSION}", hit)
            j.rec.quality.update(hit["measures"])
            if self.cfg.qa_speaker:
                emb = self.cache.qa.get(f"{j.key}|{SPEAKER_VERSION}")
                if emb is None:
                    j.load()
                    need_emb.append(j)
                elif emb["embedding"] is not None:
                    j.embedding = np.asarray(emb["embedding"], np.float32)
            if self.mos_on:
                mos = self.cache.qa.get(f"{j.key}|{MOS_VERSION}")
                if mos is None:
                    j.load()
                    need_mos.append(j)
                else:
                    j.rec.quality["mos"] = mos["mos"]
        if need_emb:
            t1 = time.monotonic()
            audios = [j.audio16 for j in need_emb]
            for j, e in zip(need_emb, speaker_embeddings(audios, self._device(), pool=self.pool)):
                j.embedding = e
                vec = None if e is None else [round(float(v), 5) for v in e]
                self.cache.qa.put(f"{j.key}|{SPEAKER_VERSION}", {"embedding": vec})
            self._timed("speaker", t1)
        for j in jobs:
            self.embeddings[j.rec.id] = j.embedding
        if need_mos:
            t1 = time.monotonic()
            scores = predicted_mos_batch([j.audio16 for j in need_mos], self._device())
            for j, score in zip(need_mos, scores):
                j.rec.quality["mos"] = round(score, 3)
                self.cache.qa.put(f"{j.key}|{MOS_VERSION}", {"mos": round(score, 3)})
            self._timed("mos", t1)
        self._timed("quality", t0)

    def _device(self) -> str:
        return "cuda" if self.asr.device.startswith("cuda") else "cpu"

    def _write(self, jobs: list[ClipJob]) -> None:
        t0 = time.monotonic()
        render = []
        for j in jobs:
            rec = j.rec
            rec.audio_key = self._wav_key(j)
            rec.audio_file = f"wavs/{rec.id}.wav"
            prev = self.previous_wavs.get(rec.audio_key)
            loud = self.cache.qa.get(f"{rec.audio_key}|loudness")
            if prev is not None and prev.is_file() and loud is not None:
                link_or_copy(prev, self.out / rec.audio_file)
                self.n_wavs_reused += 1
                rec.quality.update(loud["loudness"])
            else:
                render.append(j)
        for j, loudness in zip(render, self.pool.map(self._render, render)):
            j.rec.quality.update(loudness)
            self.cache.qa.put(f"{j.rec.audio_key}|loudness", {"loudness": loudness})
        self._timed("write", t0)

    def _render(self, j: ClipJob) -> dict[str, Any]:
        """Resample, loudness-normalise, limit, fade and write one clip (runs in a worker thread)."""
        cfg = self.cfg
        j.load()
        clip = resample(j.native, j.sr, cfg.sample_rate)
        clip, info = normalize_loudness(clip, cfg.sample_rate, cfg.target_lufs, cfg.peak_dbfs)
        write_wav(self.out / j.rec.audio_file, _fade(clip, cfg.sample_rate), cfg.sample_rate)
        return {
            "input_lufs": None if info.input_lufs is None else round(info.input_lufs, 2),
            "gain_db": round(info.gain_db, 2),
            "peak_dbfs": round(info.output_peak_dbfs, 2),
            "limited": info.limited,
        }


def workers() -> int:
    """Threads for per-clip audio work: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def finish_record(j: ClipJob, cfg: PrepareConfig) -> None:
    """Fill in the transcript fields and the per-clip reasons of a processed job."""
    rec, tr = j.rec, j.tr
    assert tr is not None
    rec.language = tr.language or rec.language
    rec.asr.update(
        {
            "model": j.rec.asr.get("model") or "",
            "text": tr.text,
            "avg_logprob": round(tr.avg_logprob, 4),
            "word_logprob": None if tr.word_logprob is None else round(tr.word_logprob, 4),
            "no_speech_prob": round(tr.no_speech_prob, 4),
            "words": [[w, round(s, 3), round(e, 3)] for w, s, e in tr.words],
        }
    )
    if not j.given_texts:
        rec.raw_text = tr.text
        rec.text = normalize_transcript(tr.text, rec.language, cfg.text_normalization)
    reasons = qa.transcript_reasons(tr, j.span.duration, cfg)
    if rec.quality.get("input_lufs") is None and "empty transcript" not in reasons:
        reasons.append("silent audio")
    rec.reasons.extend(reasons + qa.audio_reasons(rec.quality, cfg))
    speech = rec.quality.get("speech_seconds") or j.span.duration
    rates = qa.speaking_rates([rec.text], [speech], rec.language.split("-")[0])
    if rates[0] is not None:
        rec.quality["chars_per_second"] = round(rates[0], 2)


def _round(v: Any) -> Any:
    return round(v, 5) if isinstance(v, float) else v


def _fade(audio: np.ndarray, sr: int) -> np.ndarray:
    n = min(int(sr * FADE_SECONDS), len(audio) // 2)
    if n > 1:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        audio[:n] *= ramp
        audio[-n:] *= ramp[::-1]
    return audio
