"""The XTTS GPT in the shared packed training path (:mod:`voicetune.backends.gpt_tts.speed`).

What is XTTS's own: the perceiver conditioning (32 latents per clip), the token ids and limits of its GPT
(:class:`GptConstants`), and the packed layout of its batches. XTTS's ``GPT.forward`` ignores the padding of
the text and audio segments (targets -1), so each clip's conditioning latents, text and audio codes sit side
by side, with all padding at the END of the row::

    clip i:  [cond (32) | start, text_1..text_t | start, code_1..code_c, stop x 3 | pad ...]

Everything else (the GPT-2 layers on SDPA, recomputation, the heads, compile, flat weight buffers, bf16
weights) is shared with Tortoise in ``backends/gpt_tts/``.
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
class GptConstants:
    """The token ids and limits of a coqui-tts ``GPT`` that the packing needs."""

    start_text: int
    stop_text: int
    start_audio: int
    stop_audio: int
    code_stride: int
    cond_tokens: int  # perceiver latents (32 in XTTS-v2)
    max_text_positions: int
    max_mel_positions: int

    @classmethod
    def of(cls, gpt: Any) -> GptConstants:
        if not getattr(gpt, "use_perceiver_resampler", False):
            raise ValueError(
                "the packed XTTS loss needs the perceiver conditioning of XTTS-v2; set fast_loss: false"
            )
        return cls(
            start_text=int(gpt.start_text_token), stop_text=int(gpt.stop_text_token),
            start_audio=int(gpt.start_audio_token), stop_audio=int(gpt.stop_audio_token),
            code_stride=int(gpt.code_stride_len),
            cond_tokens=int(gpt.conditioning_perceiver.latents.shape[0]),
            max_text_positions=int(gpt.text_pos_embedding.emb.num_embeddings),
            max_mel_positions=int(gpt.mel_pos_embedding.emb.num_embeddings),
        )


def coqui_targets(batch: dict[str, torch.Tensor], c: GptConstants) -> dict[str, torch.Tensor]:
    """Inputs and targets exactly as ``GPT.forward`` builds them (padded layout), vectorised on the host.

    Returns text/mel inputs and targets ``[B, T+2]`` / ``[B, M+2]`` (targets -1 where ignored) and the
    per-clip counts of valid positions (``text_lengths + 1``, ``code_lengths + 1``).
    """
    text_lengths = batch["text_lengths"].long().cpu()
    wav_lengths = batch["wav_lengths"].long().cpu()
    t_max = int(text_lengths.max())
    text = F.pad(batch["text_inputs"].long().cpu()[:, :t_max], (0, 1), value=c.stop_text)
    text_in = F.pad(text, (1, 0), value=c.start_text)
    text_tg = F.pad(text, (0, 1), value=c.stop_text)
    n_text = text_lengths + 1
    text_tg[torch.arange(t_max + 2)[None, :] >= n_text[:, None]] = -1

    code_lengths = (wav_lengths + c.code_stride - 1) // c.code_stride + 3  # ceil(wav / stride) + 3
    m_max = int(code_lengths.max())
    codes = batch["audio_codes"].long().cpu()
    if m_max > codes.shape[-1]:
        codes = F.pad(codes, (0, m_max - codes.shape[-1]))
    codes = F.pad(codes[:, :m_max], (0, 1), value=c.stop_audio)
    codes[torch.arange(m_max + 1)[None, :] >= (code_lengths - 3)[:, None]] = c.stop_audio
    mel_in = F.pad(codes, (1, 0), value=c.start_audio)
    mel_tg = F.pad(codes, (0, 1), value=c.stop_audio)
    n_mel = code_lengths + 1
    mel_tg[torch.arange(m_max + 2)[None, :] >= n_mel[:, None]] = -1
    return {"text_in": text_in, "text_tg": text_tg, "mel_in": mel_in, "mel_tg": mel_tg,
            "n_text": n_text, "n_mel": n_mel}


def pack_batch(
    batch: dict[str, torch.Tensor], c: GptConstants, pad_multiple: int = 64
) -> dict[str, torch.Tensor]:
    """Add the packed-layout tensors (see the module doc) to a batch from ``features.collate``.

    Every packed tensor is ``[B, L]`` (``L`` = the longest clip's cond + text + audio positions, rounded up
    to ``pad_multiple``); ``text_*``/``mel_*`` ids and positions cover the ``L - cond_tokens`` positions after
    the conditioning; targets cover all ``L`` positions, -1 where ignored.
    """
    t = coqui_targets(batch, c)
    n_text, n_mel = t["n_text"], t["n_mel"]
    if int(n_text.max()) > c.max_text_positions or int(n_mel.max()) > c.max_mel_positions:
        raise ValueError(
            f"a clip needs {int(n_text.max())} text / {int(n_mel.max())} audio positions; the model has "
            f"{c.max_text_positions} / {c.max_mel_positions}")
    b = n_text.shape[0]
    length = round_up(c.cond_tokens + int((n_text + n_mel).max()), pad_multiple)
    span = length - c.cond_tokens
    q = torch.arange(span)[None, :].expand(b, span)
    is_text = q < n_text[:, None]
    mel_q = q - n_text[:, None]
    is_mel = (mel_q >= 0) & (mel_q < n_mel[:, None])
    text_pos = torch.where(is_text, q, 0)
    mel_pos = torch.where(is_mel, mel_q, 0)
    text_ids = torch.where(is_text, t["text_in"].gather(1, text_pos.clamp(max=t["text_in"].shape[1] - 1)), 0)
    mel_ids = torch.where(is_mel, t["mel_in"].gather(1, mel_pos.clamp(max=t["mel_in"].shape[1] - 1)), 0)
    ignore = torch.full((b, c.cond_tokens), -1, dtype=torch.long)
    text_tg = torch.where(is_text, t["text_tg"].gather(1, text_pos.clamp(max=t["text_tg"].shape[1] - 1)), -1)
    mel_tg = torch.where(is_mel, t["mel_tg"].gather(1, mel_pos.clamp(max=t["mel_tg"].shape[1] - 1)), -1)
    packed = {
        "text_ids": text_ids,
        "text_pos": text_pos,
        "mel_ids": mel_ids,
        "mel_pos": mel_pos,
        "is_text": is_text,
        "text_targets": torch.cat([ignore, text_tg], dim=1),
        "mel_targets": torch.cat([ignore, mel_tg], dim=1),
    }
    return {**batch, **packed}


def conditioning(gpt: Any, cond_mels: torch.Tensor) -> torch.Tensor:
    """Perceiver conditioning latents ``[B, 32, D]`` of ``[B, 1, 80, frames]`` conditioning mels."""
    return gpt.get_style_emb(cond_mels).transpose(1, 2)


def head_loss(gpt: Any, h: torch.Tensor, text_targets: torch.Tensor,
              mel_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared heads and cross-entropies with XTTS's label smoothing."""
    return shared.head_loss(gpt, h, text_targets, mel_targets, float(gpt.label_smoothing))


FAMILY = GptFamily(name="XTTS", conditioning=conditioning, head_loss=head_loss, constants=GptConstants.of,
                   pack=pack_batch)
"""The XTTS GPT for the shared packed loss and speed work."""


def packed_loss(gpt: Any, batch: dict[str, torch.Tensor], sdpa: bool = True, checkpointing: str = "none",
                fns: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text CE, mel CE) of coqui-tts's ``GPT.forward`` computed on a :func:`pack_batch` batch.

    ``fns`` may replace the pieces (``conditioning``, ``block``, ``head_loss``) by compiled versions.
    """
    return _packed_loss(gpt, batch, sdpa, checkpointing, {**FAMILY.fns(), **(fns or {})})


def configure_training(
    gpt: Any, cfg: Any, device: torch.device, cuda_graphs: bool = False
) -> GptTrainingSpeed:
    """Resolve ``cfg``'s speed options for ``device`` and apply them to the XTTS ``gpt`` (before the optimizer
    is built); ``cuda_graphs``: whether the training loop will capture micro-batches in CUDA graphs."""
    from voicetune.backends.xtts.options import XttsOptions

    return _configure(FAMILY, gpt, cfg, device, cuda_graphs, XttsOptions.of(cfg))


__all__ = ["FAMILY", "PACKED_KEYS", "GptConstants", "conditioning", "configure_training", "coqui_targets",
           "head_loss", "pack_batch", "packed_loss"]
