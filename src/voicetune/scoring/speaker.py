"""Speaker similarity: Resemblyzer d-vectors (GE2E LSTM, weights shipped in the package), one clip or many."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from voicetune.scoring.common import AudioLike, audio_at, cached, device_name, nanmean, rms_dbfs


def voice_encoder(device: str) -> Any:
    """The Resemblyzer ``VoiceEncoder`` on ``device`` ("cpu" or "cuda..."), loaded once per process."""
    def build():
        from resemblyzer import VoiceEncoder

        return VoiceEncoder(device=device, verbose=False)

    return cached(("resemblyzer", device_name(device)), build)


def speaker_embedding(audio: AudioLike, sr: int | None = None, device: str = "cpu") -> np.ndarray | None:
    """L2-normalised 256-d Resemblyzer embedding; None for digital silence or clips under 0.1 s."""
    from resemblyzer import preprocess_wav

    wav = audio_at(audio, sr, 16000)
    if rms_dbfs(wav) < -80.0:  # digital silence: resemblyzer's volume normalisation would divide by zero
        return None
    trimmed = preprocess_wav(wav)  # 16 kHz already: only volume norm + silence trim
    if len(trimmed) < 1600:
        # Resemblyzer's VAD found (almost) no speech: embed the volume-normalised clip untrimmed, so that a
        # noise-like or mumbled rendering gets a (low) similarity instead of no score at all.
        from resemblyzer.audio import normalize_volume
        from resemblyzer.hparams import audio_norm_target_dBFS

        trimmed = normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
        if len(trimmed) < 1600:  # < 0.1 s of audio: nothing to embed
            return None
    wav = trimmed
    emb = voice_encoder(device).embed_utterance(wav)
    return emb if np.all(np.isfinite(emb)) else None


def speaker_centroid(
    references: Sequence[AudioLike], sr: int | None = None, device: str = "cpu"
) -> np.ndarray:
    """L2-normalised mean Resemblyzer embedding of a speaker's real clips (clips without speech skipped)."""
    if not references:
        raise ValueError("a speaker centroid needs at least one reference clip")
    embs = [e for e in (speaker_embedding(r, sr, device) for r in references) if e is not None]
    if not embs:
        raise ValueError("no reference clip contains detectable speech")
    centroid = np.mean(embs, axis=0)
    return centroid / np.linalg.norm(centroid)


def speaker_similarity(
    generated: Sequence[AudioLike],
    references: Sequence[AudioLike],
    sr: int | None = None,
    device: str = "cpu",
    centroid: np.ndarray | None = None,
) -> dict[str, Any]:
    """Cosine similarity of each generated clip to the centroid of real (held-out) clips of the speaker.

    Embeddings are Resemblyzer d-vectors (GE2E LSTM, weights shipped in the package). Range [0, 1]
    in practice (the embeddings are non-negative), HIGHER is better: clips of the same voice score
    ~0.9+, another voice ~0.5 (Piper vs espeak-ng measurements). Clips with no speech that the VAD
    finds are embedded untrimmed (they score low); digital silence gets NaN. ``centroid`` (from
    :func:`speaker_centroid`) skips re-embedding the references.

    Returns ``{"mean": float, "per_clip": [float], "n_references": int}``.
    """
    if centroid is None:
        centroid = speaker_centroid(references, sr, device)
    per_clip = []
    for g in generated:
        emb = speaker_embedding(g, sr, device)
        per_clip.append(float(np.dot(emb, centroid)) if emb is not None else float("nan"))
    return {"mean": nanmean(per_clip), "per_clip": per_clip, "n_references": len(references)}


def speaker_embeddings(
    audios_16k: Sequence[np.ndarray], device: str = "cpu", pool: Executor | None = None
) -> list[np.ndarray | None]:
    """Resemblyzer embeddings of many 16 kHz clips in one batched forward pass.

    The same numbers as :func:`speaker_embedding` per clip (same preprocessing,
    partial windows and averaging), but all partial windows of all clips go through the network
    together, ~10x faster on CPU. None for clips without speech. ``pool`` computes the mel spectrograms
    in parallel.
    """
    import torch
    from resemblyzer import preprocess_wav
    from resemblyzer.audio import wav_to_mel_spectrogram

    encoder = voice_encoder(device)

    def partials(audio: np.ndarray) -> list[np.ndarray]:
        wav = np.asarray(audio, dtype=np.float32)
        if wav.size == 0 or rms_dbfs(wav) < -80.0:
            return []
        wav = preprocess_wav(wav)
        if len(wav) < 1600:
            return []
        wav_slices, mel_slices = encoder.compute_partial_slices(len(wav), 1.3, 0.75)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
        mel = wav_to_mel_spectrogram(wav)
        return [mel[s] for s in mel_slices]

    per_clip = list(pool.map(partials, audios_16k)) if pool is not None else [partials(a) for a in audios_16k]
    mels = [m for ms in per_clip for m in ms]
    owner = [i for i, ms in enumerate(per_clip) for _ in ms]
    out: list[np.ndarray | None] = [None] * len(audios_16k)
    if not mels:
        return out
    parts = []
    with torch.no_grad():
        for b in range(0, len(mels), 64):  # 64 partials: most of the speed-up, bounded activation memory
            batch = torch.from_numpy(np.stack(mels[b : b + 64])).to(encoder.device)
            parts.append(encoder(batch).cpu().numpy())
    partial = np.concatenate(parts)
    owners = np.asarray(owner)
    for i in set(owner):
        e = partial[owners == i].mean(axis=0)
        norm = float(np.linalg.norm(e))
        if norm > 0 and np.all(np.isfinite(e)):
            out[i] = (e / norm).astype(np.float32)
    return out
