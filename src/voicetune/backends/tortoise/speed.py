"""Tortoise's UnifiedVoice in the shared packed training path (:mod:`voicetune.backends.gpt_tts.speed`).

What is Tortoise's own: one conditioning latent per clip (``UnifiedVoice.get_conditioning`` over the
conditioning mels, averaged), and a loss that counts the padding. ``UnifiedVoice.forward`` (coqui-tts, as
DL-Art-School) lays a batch out as ``[cond | start, text + 0-padding, stop | start, codes + stop-padding,
stop]`` and takes the cross-entropy over every position of both segments, padding included (text padding
targets the stop token 0, audio padding the stop code). So the packed rows keep exactly that layout, which
already has no padding inside (every row has the same segment lengths), and only the multiple-of-64 tail
that the packing adds is ignored (targets -1)::

    row:  [cond (1) | start, text_1..text_T (0-padded), 0 | start, code_1..code_M (stop-padded), stop
           | pad ...]

``T`` is the longest transcript of the batch and ``M`` = the longest clip's samples // 1024 (coqui's
``clip_inputs``); codes after each clip's ``samples // 1024 + 1`` are the stop code (``set_mel_padding``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from voicetune.backends.gpt_tts import layers as shared
from voicetune.backends.gpt_tts.layers import round_up
from voicetune.backends.gpt_tts.speed import PACKED_KEYS, GptFamily, GptTrainingSpeed
from voicetune.backends.gpt_tts.speed import configure_training as _configure
from voicetune.backends.gpt_tts.speed import packed_loss as _packed_loss


@dataclass(frozen=True)
class TortoiseConstants:
    """The token ids and limits of a coqui-tts ``UnifiedVoice`` that the packing needs."""

    start_text: int
    stop_text: int
    start_audio: int
    stop_audio: int
    code_stride: int  # mel_length_compression: samples per audio code (1024)
    max_text_positions: int
    max_mel_positions: int
    cond_tokens: int = 1

    @classmethod
    def of(cls, gpt: Any) -> TortoiseConstants:
        if not isinstance(gpt.mel_embedding, torch.nn.Embedding):  # a MelEncoder: raw mels in, no codes
            raise ValueError(  # noqa: TRY004 - the speed settings report unusable options as ValueError"the packed Tortoise loss needs audio codes as inputs (use_mel_codes_as_input); "
                             "set fast_loss: false")
        return cls(
            start_text=int(gpt.start_text_token), stop_text=int(gpt.stop_text_token),
            start_audio=int(gpt.start_mel_token), stop_audio=int(gpt.stop_mel_token),
            code_stride=int(gpt.mel_length_compression),
            max_text_positions=int(gpt.text_pos_embedding.emb.num_embeddings),
            max_mel_positions=int(gpt.mel_pos_embedding.emb.num_embeddings),
        )


def coqui_inputs(batch: dict[str, torch.Tensor], c: TortoiseConstants) -> dict[str, torch.Tensor]:
    """Text and audio-code inputs and targets ``[B, T+2]`` / ``[B, M+2]`` exactly as ``UnifiedVoice.forward``
    builds them (``clip_inputs=True``), on the host, without changing the batch."""
    text_lengths = batch["text_lengths"].long().cpu()
    wav_lengths = batch["wav_lengths"].long().cpu()
    t_max = int(text_lengths.max())
    text = F.pad(batch["text_inputs"].long().cpu()[:, :t_max], (0, 1), value=c.stop_text)
    text_in = F.pad(text, (1, 0), value=c.start_text)
    text_tg = F.pad(text, (0, 1), value=c.stop_text)
    mel_lengths = wav_lengths // c.code_stride
    m_max = int(mel_lengths.max())
    codes = batch["audio_codes"].long().cpu()[:, :m_max].clone()
    if m_max > codes.shape[-1]:
        codes = F.pad(codes, (0, m_max - codes.shape[-1]), value=c.stop_audio)
    codes[torch.arange(m_max)[None, :] >= (mel_lengths + 1)[:, None]] = c.stop_audio  # set_mel_padding
    codes = F.pad(codes, (0, 1), value=c.stop_audio)
    mel_in = F.pad(codes, (1, 0), value=c.start_audio)
    mel_tg = F.pad(codes, (0, 1), value=c.stop_audio)
    return {"text_in": text_in, "text_tg": text_tg, "mel_in": mel_in, "mel_tg": mel_tg}


def pack_batch(
    batch: dict[str, torch.Tensor], c: TortoiseConstants, pad_multiple: int = 64
) -> dict[str, torch.Tensor]:
    """Add the packed-layout tensors (see the module doc) to a batch from ``features.collate``."""
    t = coqui_inputs(batch, c)
    n_text, n_mel = t["text_in"].shape[1], t["mel_in"].shape[1]
    if n_text > c.max_text_positions or n_mel > c.max_mel_positions:
        raise ValueError(f"a batch needs {n_text} text / {n_mel} audio positions; the model has "
                         f"{c.max_text_positions} / {c.max_mel_positions}")
    b = t["text_in"].shape[0]
    length = round_up(c.cond_tokens + n_text + n_mel, pad_multiple)
    q = torch.arange(length - c.cond_tokens)[None, :].expand(b, -1)
    is_text = q < n_text
    mel_q = q - n_text
    is_mel = (mel_q >= 0) & (mel_q < n_mel)
    text_pos = torch.where(is_text, q, 0)
    mel_pos = torch.where(is_mel, mel_q, 0)
    ignore = torch.full((b, c.cond_tokens), -1, dtype=torch.long)
    packed = {
        "text_ids": torch.where(is_text, t["text_in"].gather(1, text_pos), 0),
        "text_pos": text_pos,
        "mel_ids": torch.where(is_mel, t["mel_in"].gather(1, mel_pos), 0),
        "mel_pos": mel_pos,
        "is_text": is_text,
        "text_targets": torch.cat(
            [ignore, torch.where(is_text, t["text_tg"].gather(1, text_pos), -1)], dim=1
        ),
        "mel_targets": torch.cat([ignore, torch.where(is_mel, t["mel_tg"].gather(1, mel_pos), -1)], dim=1),
    }
    return {**batch, **packed}


def conditioning(gpt: Any, cond_mels: torch.Tensor) -> torch.Tensor:
    """The conditioning token ``[B, 1, D]`` of ``[B, n, 80, frames]`` conditioning mels (the mean of the
    conditioning encoder's first output frame over the n clips: ``UnifiedVoice.get_conditioning``)."""
    return gpt.get_conditioning(cond_mels)[:, None]


def head_loss(gpt: Any, h: torch.Tensor, text_targets: torch.Tensor,
              mel_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared heads and cross-entropies (no label smoothing, as UnifiedVoice.forward)."""
    return shared.head_loss(gpt, h, text_targets, mel_targets)


FAMILY = GptFamily(
    name="Tortoise",
    conditioning=conditioning,
    head_loss=head_loss,
    constants=TortoiseConstants.of,
    pack=pack_batch,
)
"""Tortoise's UnifiedVoice for the shared packed loss and speed work."""


def packed_loss(gpt: Any, batch: dict[str, torch.Tensor], sdpa: bool = True, checkpointing: str = "none",
                fns: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text CE, mel CE) of ``UnifiedVoice.forward`` computed on a :func:`pack_batch` batch."""
    return _packed_loss(gpt, batch, sdpa, checkpointing, {**FAMILY.fns(), **(fns or {})})


def configure_training(
    gpt: Any, cfg: Any, device: torch.device, cuda_graphs: bool = False
) -> GptTrainingSpeed:
    """Resolve ``cfg``'s speed options for ``device`` and apply them to ``gpt`` (before the optimizer)."""
    from voicetune.backends.tortoise.options import TortoiseOptions

    return _configure(FAMILY, gpt, cfg, device, cuda_graphs, TortoiseOptions.of(cfg))


__all__ = ["FAMILY", "PACKED_KEYS", "TortoiseConstants", "conditioning", "configure_training", "coqui_inputs",
           "head_loss", "pack_batch", "packed_loss"]
