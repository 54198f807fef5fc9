"""The XTTS feature cache: everything the GPT loss needs, computed once per clip and stored on disk.

Per clip (what Coqui's GPTTrainer recomputes at every step, done here once):

* ``text_tokens``: ``VoiceBpeTokenizer.encode(text, language)`` exactly as XTTSDataset.get_text
  (the tokenizer's cleaners lowercase and expand numbers).
* ``audio_codes``: the DVAE codes of the clip: resampled to the DVAE rate with the Kaiser filter of
  GPTTrainer.format_batch_on_device, log-mel by TorchMelSpectrogram normalised by mel_stats,
  ``dvae.get_codebook_indices``. Coqui computes them on the zero-padded batch; per clip is the same
  except for the code or two at the end of a shorter clip, which the loss masks anyway.
* ``cond_mel``: the style-encoder mel of the WHOLE clip (80 x frames). XTTS-v2 trains with the
  "masking ground-truth prompt" approach: the conditioning is a random 3-6 s crop of the same clip
  (XTTSDataset.get_prompt_slice), drawn anew every time the clip is used. We store the full mel and crop
  in ``__getitem__`` with a seeded RNG rather than precompute one fixed crop: a fixed crop would turn
  that augmentation off (the model could learn to copy one segment), and cropping the mel is cheap and
  exact up to the one frame at each crop edge. Crops are padded to the 6 s maximum with the mel of
  silence, as Coqui pads the conditioning waveform with zeros (and 3 frames more: :func:`cond_frames`).
* ``wav_length``: samples at the model's sample rate (22050 Hz), which sets the GPT's code lengths.

Cache key: sha256 of (audio file content, text, language, dvae.pth + mel_stats.pth + vocab.json hashes,
the audio/mel settings of config.json, FEATURE_VERSION). One ``<key>.pt`` file per clip, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
# Coqui GPTArgs training limits (at the 22050 Hz model rate).
MAX_WAV_LENGTH = 255995  # ~11.6 s
MAX_TEXT_LENGTH = 200
MIN_WAV_LENGTH_S = 0.5  # XTTSDataset: "ultra short clips are also useless"
MIN_CONDITIONING_LENGTH = 66150  # 3 s
MAX_CONDITIONING_LENGTH = 132300  # 6 s
SILENCE_LOG = math.log(1e-5)  # TorchMelSpectrogram clamps the mel power at 1e-5 before the log


# Limits applied when reading the cache, not when computing it: changing them does not invalidate features.
_NOT_IN_KEY = ("max_wav_length", "max_text_length", "min_cond_length", "max_cond_length")


@dataclass
class FeatureSettings:
    """Everything about the base model that changes the features (part of the cache key)."""

    sample_rate: int
    dvae_sample_rate: int
    code_stride: int
    use_perceiver: bool
    max_wav_length: int
    max_text_length: int
    min_cond_length: int = MIN_CONDITIONING_LENGTH
    max_cond_length: int = MAX_CONDITIONING_LENGTH
    base_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def style_hop(self) -> int:
        return 256 if self.use_perceiver else 1024

    def key(self, audio_hash: str, text: str, language: str) -> str:
        payload = json.dumps(
            {"v": FEATURE_VERSION, "audio": audio_hash, "text": text, "language": language,
             "settings": {k: v for k, v in self.__dict__.items() if k not in _NOT_IN_KEY}},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class XttsFeatureExtractor:
    """Turns one clip into tokens, DVAE codes and the conditioning mel (no caching here)."""

    def __init__(self, tokenizer: Any, dvae: Any, mel_stats: torch.Tensor,
                 settings: FeatureSettings, device: torch.device):
        from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram

        self.tokenizer, self.dvae, self.settings, self.device = tokenizer, dvae, settings, device
        self.mel_stats = mel_stats.float().cpu()
        s = settings
        # mel_norm_file=None (its default is a URL); the normaliser is set from mel_stats.pth instead.
        self.dvae_mel = TorchMelSpectrogram(mel_norm_file=None, sampling_rate=s.dvae_sample_rate)
        if s.use_perceiver:
            self.style_mel = TorchMelSpectrogram(
                filter_length=2048, hop_length=256, win_length=1024, normalize=False,
                sampling_rate=s.sample_rate, mel_fmin=0, mel_fmax=8000, n_mel_channels=80, mel_norm_file=None,
            )
        else:
            self.style_mel = TorchMelSpectrogram(
                filter_length=4096, hop_length=1024, win_length=4096, normalize=False,
                sampling_rate=s.sample_rate, mel_fmin=0, mel_fmax=8000, n_mel_channels=80, mel_norm_file=None,
            )
        for m in (self.dvae_mel, self.style_mel):
            m.mel_norms = self.mel_stats.to(device)
        self.unk_id = tokenizer.tokenizer.token_to_id("[UNK]")

    @property
    def sample_rate(self) -> int:
        return self.settings.sample_rate

    @property
    def max_wav_length(self) -> int:
        return self.settings.max_wav_length

    def tokens(self, text: str, language: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(text.strip(), language), dtype=torch.int32)

    def tokens_of(self, clip: Clip) -> torch.Tensor:
        try:
            return self.tokens(clip.text, clip.language)
        except NotImplementedError as e:  # the tokenizer has no cleaner for this language
            raise ValueError(f"language {clip.language!r} is not supported ({e})") from e

    def cache_key(self, audio_hash: str, clip: Clip) -> str:
        return self.settings.key(audio_hash, clip.text, clip.language)

    def record_extra(self, clip: Clip) -> dict[str, Any]:
        return {"language": clip.language}

    def text_problem(self, tokens: torch.Tensor) -> str | None:
        if tokens.numel() <= 1:  # only the language token
            return "empty transcript"
        if tokens.numel() > self.settings.max_text_length:
            limit = self.settings.max_text_length
            return f"transcript is {tokens.numel()} tokens, more than max_text_length={limit}"
        if self.unk_id is not None and bool((tokens == self.unk_id).any()):
            return "transcript has characters the model's vocabulary cannot encode ([UNK])"
        return None

    def wav_problem(self, n_samples: int) -> str | None:
        s = self.settings
        if n_samples < MIN_WAV_LENGTH_S * s.sample_rate:
            return f"clip is shorter than {MIN_WAV_LENGTH_S} s"
        if n_samples > s.max_wav_length:
            return (f"clip is {n_samples / s.sample_rate:.2f} s, longer than max_wav_length "
                    f"({s.max_wav_length / s.sample_rate:.2f} s)")
        return None

    def load_wav(self, path: Path) -> torch.Tensor:
        return load_wav_tensor(path, self.settings.sample_rate)

    @torch.no_grad()
    def audio_features(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """DVAE codes [n] and the full-clip conditioning mel [80, frames] of a [1, T] waveform."""
        import torchaudio

        s = self.settings
        wav = wav.to(self.device)
        dvae_wav = wav
        if s.dvae_sample_rate != s.sample_rate:
            dvae_wav = torchaudio.functional.resample(
                wav, orig_freq=s.sample_rate, new_freq=s.dvae_sample_rate, lowpass_filter_width=64,
                rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser", beta=14.769656459379492,
            )
        codes = self.dvae.get_codebook_indices(self.dvae_mel(dvae_wav))[0]
        cond_mel = self.style_mel(wav)[0]
        return {"audio_codes": codes.to(torch.int32).cpu(), "cond_mel": cond_mel.float().cpu()}


class XttsFeatureStore(CachedFeatureStore):
    """Cached per-clip features; ``__getitem__`` loads one file and draws the conditioning crop.

    ``random_crop`` (default True, for training) draws a 3-6 s crop at a random position, seeded by
    (seed, epoch, index, how often the item was read in this epoch), so that every epoch sees new crops and a
    rerun sees the same ones. The training loop calls :meth:`set_epoch` before each item, so the crops depend
    only on the data stream: not on how the clips are spread over processes, nor on where a run was resumed.
    False gives Coqui's evaluation crop: 4.5 s from the start.
    """

    def __init__(self, found: Computed, settings: FeatureSettings, mel_stats: torch.Tensor, seed: int = 0):
        super().__init__(found, settings.code_stride / settings.sample_rate, seed)
        self.settings = settings
        self.silence = (SILENCE_LOG / mel_stats.float().cpu())[:, None]  # [80, 1]: mel of digital silence

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self._read(i)
        cond_mel, cond_len = self._crop(item["cond_mel"], int(item["wav_length"]), i)
        return {
            "text_tokens": item["text_tokens"].long(),
            "audio_codes": item["audio_codes"].long(),
            "wav_length": torch.tensor(int(item["wav_length"]), dtype=torch.long),
            "cond_mel": cond_mel,
            "cond_len": torch.tensor(cond_len, dtype=torch.long),
        }

    def _crop(self, mel: torch.Tensor, n_samples: int, i: int) -> tuple[torch.Tensor, int]:
        """XTTSDataset.get_prompt_slice on the mel: a crop, padded with silence to the maximum length."""
        import random

        s, hop = self.settings, self.settings.style_hop
        if self.random_crop:
            rng = random.Random(f"{self.seed}/{self.epoch}/{i}/{self._reads[i]}")
            length = rng.randint(s.min_cond_length, s.max_cond_length)
        else:
            rng, length = None, (s.min_cond_length + s.max_cond_length) // 2
        if n_samples - length < 0:
            length = n_samples // 2
        start = rng.randint(0, n_samples - length) if rng else 0
        f0, n = start // hop, length // hop + 1
        crop = mel[:, f0 : f0 + n]
        total = cond_frames(s.max_cond_length, hop)
        pad = total - crop.shape[1]
        if pad > 0:
            crop = torch.cat([crop, self.silence.expand(-1, pad)], dim=1)
        return crop[:, :total].contiguous(), length


COND_FRAME_MULTIPLE = 8


def cond_frames(max_cond_length: int, hop: int) -> int:
    """Frames of a conditioning crop as training sees it: the mel of ``max_cond_length`` samples (517 at 6 s,
    as Coqui pads), plus silence frames up to a multiple of 8. Conditioning-encoder convolutions over an odd
    number of frames have unaligned strides and fall back to slow GPU kernels; the 3 extra frames are of the
    same silence that already pads every crop shorter than 6 s."""
    frames = max_cond_length // hop + 1
    return -(-frames // COND_FRAME_MULTIPLE) * COND_FRAME_MULTIPLE


def collate(items: list[dict[str, torch.Tensor]], stop_audio_token: int) -> dict[str, torch.Tensor]:
    """Pad items into the batch GPT.forward takes (XTTSDataset.collate_fn + format_batch_on_device)."""
    return {
        **collate_codes(items, stop_audio_token),
        "cond_mels": torch.stack([it["cond_mel"] for it in items])[:, None],  # [B, 1, 80, frames]
        "cond_lens": torch.stack([it["cond_len"] for it in items]),
    }


def build_feature_store(
    clips: Sequence[Clip], cache: Path, extractor: XttsFeatureExtractor, progress: Progress | None = None,
    seed: int = 0,
) -> XttsFeatureStore:
    """Compute (or reuse) the features of every clip; unusable clips are skipped with a warning each."""
    found = compute_features(clips, cache, extractor, FEATURE_VERSION,
                             "features: XTTS audio codes and conditioning", progress)
    return XttsFeatureStore(found, extractor.settings, extractor.mel_stats, seed)
