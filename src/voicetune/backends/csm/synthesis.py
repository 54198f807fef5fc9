"""CSM synthesis: voice prompting with the reference clips as context, capped length, fixed seeds.

CSM clones a voice from context: the prompt is a conversation whose earlier turns are the reference clips of
the speaker (their transcript and their audio, under the speaker's id) and whose last turn is the text to
speak, under the same id (``CsmProcessor``'s chat template). Without that context a finetuned voice drifts
(users of the community finetuners report it), so every render here carries it. A reference clip needs its
transcript: voicetune knows those of the clips it trained on (by content hash; an export carries them), reads
``CLIP.txt`` next to any other clip, and otherwise gives the clip with an empty transcript (a weaker prompt,
logged).

Generation is transformers' ``CsmForConditionalGeneration.generate`` (backbone frame by frame, the depth
decoder per frame), sampling with a fixed seed in a forked RNG, codes outside the codebook suppressed, and
capped at a length derived from the text; the audio comes from the Mimi decoder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicetune.utils.io import file_sha256

logger = logging.getLogger(__name__)

SECONDS_PER_CHARACTER = 0.25  # the length cap: 2 s + this per character (about 3x a normal speaking rate)
BASE_SECONDS = 2.0


@dataclass
class Reference:
    audio: np.ndarray  # float32 mono at the codec's rate
    text: str
    path: Path


def transcript_of(path: Path, known: dict[str, str]) -> str | None:
    """The transcript of a reference clip: known by content hash, else ``CLIP.txt`` beside it, else None."""
    text = known.get(file_sha256(path))
    if text is not None:
        return text
    side = Path(path).with_suffix(".txt")
    if side.is_file():
        return side.read_text(encoding="utf-8").strip()
    return None


def load_references(refs: Sequence[Path], known: dict[str, str], sample_rate: int,
                    max_seconds: float) -> list[Reference]:
    """The reference clips that fit in ``max_seconds`` of context, in the given order (at least the first one,
    cut to the limit without its transcript if it alone is longer)."""
    from voicetune.audio.io import load_audio

    out: list[Reference] = []
    total = 0.0
    for path in refs:
        audio, _ = load_audio(path, sr=sample_rate)
        seconds = len(audio) / sample_rate
        text = transcript_of(Path(path), known)
        if out and total + seconds > max_seconds:
            continue
        if not out and seconds > max_seconds:
            audio, text = audio[: int(max_seconds * sample_rate)], ""
        if text is None:
            logger.info(
                "no transcript for reference %s (put it in %s): it prompts the voice with an empty text",
                path,
                Path(path).with_suffix(".txt").name,
            )
            text = ""
        out.append(Reference(np.asarray(audio, dtype=np.float32), text, Path(path)))
        total += len(audio) / sample_rate
    return out


def conversation(refs: Sequence[Reference], speaker: int, text: str) -> list[dict[str, Any]]:
    """The chat-template conversation: each reference as a turn of ``speaker`` with its audio, then the
    text."""
    turns = [{"role": str(speaker), "content": [{"type": "text", "text": r.text},
                                                {"type": "audio", "audio": r.audio}]} for r in refs]
    return [*turns, {"role": str(speaker), "content": [{"type": "text", "text": text}]}]


def max_frames(text: str, frame_rate: float, cap_seconds: float) -> int:
    """Generation length cap in frames: ``min(cap_seconds, 2 s + 0.25 s x characters)``."""
    seconds = min(cap_seconds, BASE_SECONDS + SECONDS_PER_CHARACTER * len(text))
    return max(1, math.ceil(seconds * frame_rate))


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_k: int
    seed: int


class _PadToken:
    """Batched prompts are left-padded; a pad token equal to the audio token would be read as audio frames.
    Uses the end-of-text token for padding while active (the tokenizer is restored afterwards)."""

    def __init__(self, tokenizer: Any, audio_ids: tuple[int, ...]):
        self.tokenizer, self.audio_ids = tokenizer, audio_ids
        self.saved: Any = None
        self.changed = False

    def __enter__(self) -> None:
        if self.tokenizer.pad_token_id is None or self.tokenizer.pad_token_id in self.audio_ids:
            self.saved, self.changed = self.tokenizer.pad_token, True
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def __exit__(self, *exc: object) -> None:
        if self.changed:
            self.tokenizer.pad_token = self.saved


def generate(model: Any, processor: Any, conversations: list[list[dict[str, Any]]], caps: Sequence[int],
             sampling: Sampling, device: torch.device) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """Render each conversation's last turn (one batch; left-padded), each capped at its own number of frames.
    Returns (audio, meta) per conversation; meta: ``num_frames``, ``hit_max_length`` (no end frame before the
    cap: usually babble), ``max_frames``."""
    config = model.config
    codebook = int(config.codec_config.codebook_size)
    suppress = list(range(codebook, int(config.vocab_size)))  # padding/special ids are never valid codes
    audio_ids = (int(config.audio_token_id), int(config.audio_eos_token_id))
    with _PadToken(processor.tokenizer, audio_ids):
        inputs = processor.apply_chat_template(conversations if len(conversations) > 1 else conversations[0],
                                               tokenize=True, return_dict=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    limit = int(config.max_position_embeddings) - int(inputs["input_ids"].shape[1])
    if limit < 1:
        raise ValueError(f"the prompt takes {inputs['input_ids'].shape[1]} of the model's "
                         f"{config.max_position_embeddings} positions; use fewer or shorter references "
                         "(--context-seconds)")
    frames = min(max(caps), limit)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(sampling.seed)
        out = model.generate(
            **inputs,
            max_new_tokens=frames,
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            suppress_tokens=suppress,
            depth_decoder_do_sample=True,
            depth_decoder_temperature=sampling.temperature,
            depth_decoder_top_k=sampling.top_k,
            depth_decoder_suppress_tokens=suppress,
            return_dict_in_generate=True,
        )
        sequences = out.sequences  # [batch, frames, codebooks]
        results = []
        for row, cap in enumerate(caps):
            cap = min(cap, frames)
            codes = sequences[row, :cap]
            ended = (codes == int(config.codebook_eos_token_id)).all(dim=-1).nonzero()
            n = int(ended.min()) if ended.numel() else int(codes.shape[0])
            audio = np.zeros(0, dtype=np.float32)
            if n:
                wav = model.codec_model.decode(codes[:n].T[None].to(device)).audio_values[0, 0]
                audio = np.clip(wav.float().cpu().numpy(), -1.0, 1.0).astype(np.float32)
            results.append((audio, {"num_frames": n, "hit_max_length": not ended.numel(), "max_frames": cap}))
    return results
