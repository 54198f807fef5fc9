"""The Tortoise feature cache: what the autoregressive loss needs, computed once per clip and stored on disk.

DL-Art-School recomputes these at every step (its ``torch_mel_spectrogram`` and ``discrete_token`` injectors);
here they are computed once per clip:

* ``text_tokens``: tortoise's ``VoiceBpeTokenizer.encode(text)`` (English cleaners; the tokenizer coqui-tts
  and tortoise-tts ship).
* ``mel``: the clip's log-mel (``TorchMelSpectrogram`` at 22.05 kHz, hop 256) divided by the base's
  mel_norms.pth, the input of both the DVAE and the conditioning encoder.
* ``audio_codes``: ``dvae.get_codebook_indices(mel)`` (one code per 1024 samples). DL-Art-School codes the
  zero-padded batch; per clip is the same except for the code or two at the end of a shorter clip, which the
  loss replaces by the stop code anyway.
* ``wav_length``: samples at 22.05 kHz (sets the number of codes the loss reads).

Conditioning: DL-Art-School gives each clip ``num_conditioning_candidates`` (2) random ``conditioning_length``
(44,000-sample) crops of other clips of the same speaker (``load_similar_clips``, the clip itself when it is
alone). The store draws them in ``__getitem__`` from the cached mels, seeded by (seed, epoch, item, reads), so
that every epoch sees new crops and a rerun the same ones; a crop is padded with the mel of silence, as
DL-Art-School pads the waveform with zeros, up to a multiple of 8 frames (:func:`cond_frames`).

Cache key: sha256 of (audio file content, text, dvae.pth + mel_norms.pth hashes, FEATURE_VERSION). One
``<key>.pt`` file per clip, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from voicetune.backends.base import Progress
from voicetune.backends.gpt_tts.features import CachedFeatureStore, Computed, collate_codes, compute_features
from voicetune.backends.gpt_tts.files import load_wav_tensor
from voicetune.data.manifest import Clip

logger = logging.getLogger(__name__)

FEATURE_VERSION = 1
SAMPLE_RATE = 22050
HOP = 256
MAX_WAV_LENGTH = 255995  # ~11.6 s: DL-Art-School's max_wav_length in ai-voice-cloning's training YAML
MAX_TEXT_LENGTH = 200  # its max_text_length
MIN_WAV_LENGTH_S = 0.5
SILENCE_LOG = math.log(1e-5)  # TorchMelSpectrogram clamps the mel power at 1e-5 before the log
COND_FRAME_MULTIPLE = 8
UNK = 1  # tortoise tokenizer: [STOP]=0, [UNK]=1, [SPACE]=2


@dataclass
class FeatureSettings:
    """What the features depend on; ``base_hashes`` (dvae.pth, mel_norms.pth) and the version make the key.
    The length limits and the conditioning crops apply when the cache is read."""

    max_wav_length: int = MAX_WAV_LENGTH
    max_text_length: int = MAX_TEXT_LENGTH
    code_stride: int = 1024
    cond_clips: int = 2
    cond_length: int = 44000
    base_hashes: dict[str, str] = field(default_factory=dict)

    def key(self, audio_hash: str, text: str) -> str:
        payload = json.dumps(
            {"v": FEATURE_VERSION, "audio": audio_hash, "text": text, "base": self.base_hashes},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cond_frames(cond_length: int) -> int:
    """Frames of a conditioning crop: the mel of ``cond_length`` samples (172 at 44,000) rounded up to a
    multiple of 8 with silence (aligned strides for the GPU kernels; the crops of shorter clips are padded
    with the same silence)."""
    frames = cond_length // HOP + 1
    return -(-frames // COND_FRAME_MULTIPLE) * COND_FRAME_MULTIPLE


class TortoiseFeatureExtractor:
    """One clip -> tokens, normalised mel and DVAE codes (no caching here)."""

    def __init__(
        self,
        tokenizer: Any,
        dvae: Any,
        mel_norms: torch.Tensor,
        settings: FeatureSettings,
        device: torch.device,
    ):
        from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram

        self.tokenizer, self.dvae, self.settings, self.device = tokenizer, dvae, settings, device
        self.mel_norms = mel_norms.float().cpu()
        # mel_norm_file=None: its default is a URL; the normaliser is the base folder's mel_norms.pth instead.
        self.mel = TorchMelSpectrogram(mel_norm_file=None, sampling_rate=SAMPLE_RATE)
        self.mel.mel_norms = self.mel_norms.to(device)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def max_wav_length(self) -> int:
        return self.settings.max_wav_length

    def tokens(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(text.strip()), dtype=torch.int32)

    def tokens_of(self, clip: Clip) -> torch.Tensor:
        return self.tokens(clip.text)

    def cache_key(self, audio_hash: str, clip: Clip) -> str:
        return self.settings.key(audio_hash, clip.text)

    def load_wav(self, path: Path) -> torch.Tensor:
        return load_wav_tensor(path, SAMPLE_RATE)

    def record_extra(self, clip: Clip) -> dict[str, Any]:
        return {}

    def text_problem(self, tokens: torch.Tensor) -> str | None:
        if tokens.numel() == 0:
            return "empty transcript"
        if tokens.numel() > self.settings.max_text_length:
            limit = self.settings.max_text_length
            return f"transcript is {tokens.numel()} tokens, more than max_text_length={limit}"
        if bool((tokens == UNK).any()):
            return "transcript has characters the model's vocabulary cannot encode ([UNK])"
        return None

    def wav_problem(self, n_samples: int) -> str | None:
        if n_samples < MIN_WAV_LENGTH_S * SAMPLE_RATE:
            return f"clip is shorter than {MIN_WAV_LENGTH_S} s"
        if n_samples > self.settings.max_wav_length:
            return (f"clip is {n_samples / SAMPLE_RATE:.2f} s, longer than max_wav_length "
                    f"({self.settings.max_wav_length / SAMPLE_RATE:.2f} s)")
        return None

    @torch.no_grad()
    def audio_features(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """The normalised mel [80, frames] and the DVAE codes [n] of a [1, T] waveform at 22.05 kHz."""
        mel = self.mel(wav.to(self.device))
        codes = self.dvae.get_codebook_indices(mel)[0]
        return {"mel": mel[0].float().cpu(), "audio_codes": codes.to(torch.int32).cpu()}


class TortoiseFeatureStore(CachedFeatureStore):
    """Cached per-clip features; ``__getitem__`` loads one clip and draws its conditioning crops (module doc).

    ``random_crop`` False (an evaluation's fixed conditioning): the first crop of the speaker's next clip(s).
    """

    def __init__(self, found: Computed, settings: FeatureSettings, mel_norms: torch.Tensor, seed: int = 0):
        super().__init__(found, settings.code_stride / SAMPLE_RATE, seed)
        self.settings = settings
        self.silence = (SILENCE_LOG / mel_norms.float().cpu())[:, None]  # [80, 1]: mel of digital silence
        by_speaker: dict[str, list[int]] = {}
        speakers = [c.speaker for c in found.clips]
        for i, speaker in enumerate(speakers):
            by_speaker.setdefault(speaker, []).append(i)
        self._others = [[j for j in by_speaker[s] if j != i] or [i] for i, s in enumerate(speakers)]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self._read(i)
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}/{self._reads[i]}") if self.random_crop else None
        others = self._others[i]
        n = self.settings.cond_clips
        sources = (
            [rng.choice(others) for _ in range(n)] if rng else [others[k % len(others)] for k in range(n)]
        )
        cond = torch.stack([self._crop(self._load(j)["mel"], rng) for j in sources])
        return {
            "text_tokens": item["text_tokens"].long(),
            "audio_codes": item["audio_codes"].long(),
            "wav_length": torch.tensor(int(item["wav_length"]), dtype=torch.long),
            "cond_mels": cond,
        }

    def _crop(self, mel: torch.Tensor, rng: random.Random | None) -> torch.Tensor:
        """A conditioning_length crop of a clip's mel (a random start, or the start), padded with silence."""
        frames = self.settings.cond_length // HOP + 1
        start = rng.randint(0, mel.shape[1] - frames) if rng and mel.shape[1] > frames else 0
        crop = mel[:, start : start + frames]
        total = cond_frames(self.settings.cond_length)
        pad = total - crop.shape[1]
        if pad > 0:
            crop = torch.cat([crop, self.silence.expand(-1, pad)], dim=1)
        return crop.contiguous()


def collate(items: list[dict[str, torch.Tensor]], stop_audio_token: int) -> dict[str, torch.Tensor]:
    """Pad items into the batch ``UnifiedVoice.forward`` takes (text padded with 0, as DL-Art-School's
    collate)."""
    return {
        **collate_codes(items, stop_audio_token),
        "cond_mels": torch.stack([it["cond_mels"] for it in items]),  # [B, n, 80, frames]
    }


def build_feature_store(clips: Sequence[Clip], cache: Path, extractor: TortoiseFeatureExtractor,
                        progress: Progress | None = None, seed: int = 0) -> TortoiseFeatureStore:
    """Compute (or reuse) the features of every clip; unusable clips are skipped with a warning each."""
    found = compute_features(clips, cache, extractor, FEATURE_VERSION, "Tortoise features", progress)
    return TortoiseFeatureStore(found, extractor.settings, extractor.mel_norms, seed)
