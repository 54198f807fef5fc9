"""CSM training features: Mimi codes computed once per clip (cached by content hash), prompts, batches.

A training sequence is what ``CsmProcessor`` builds from a conversation, with the audio already turned into
codes: for each segment (the context clips, if any, then the clip that is learned)::

    <bos>[speaker]text<eos> | frame_1 ... frame_T | <audio_eos>

The text part is the base model's own chat template rendered for one message (so a base with another template
or tokenizer is followed exactly); each audio position holds one Mimi frame (all codebooks), and the
``<audio_eos>`` position the all-zero frame CSM ends an utterance with. The frames of the learned clip and its
end frame are the targets; context segments are only read.

transformers' recipe encodes the audio with Mimi inside ``forward`` on every step; here each clip is encoded
once (``build_features``), the codes are cached under the run folder by the audio's content hash and the
codec's weights, and training never runs Mimi (it stays on the CPU).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicetune.backends.base import FeatureStore, Progress
from voicetune.data.manifest import Clip
from voicetune.utils.io import atomic_torch_save, file_sha256

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


def codec_fingerprint(codec: torch.nn.Module, num_codebooks: int) -> str:
    """A content hash of the codec's weights (and the number of codebooks used): cached codes are reused only
    for the very same codec, whatever folder it was loaded from."""
    h = hashlib.sha256(f"mimi|{num_codebooks}|{CACHE_FORMAT}".encode())
    for name, t in sorted(codec.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def encode_audio(codec: Any, audio: np.ndarray, num_codebooks: int) -> torch.Tensor:
    """Mimi codes ``[frames, num_codebooks]`` (int16) of one mono 24 kHz clip (``codec``: transformers'
    ``MimiModel``, whose encode returns a tuple or an output object: typed Any here)."""
    p = next(codec.parameters())
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None].to(p.device, p.dtype)
    codes = codec.encode(x, num_quantizers=num_codebooks).audio_codes[0]  # [codebooks, frames]
    return codes.T.to("cpu", torch.int16).contiguous()


@dataclass(frozen=True)
class Prompt:
    """Token ids of a segment around its audio: ``prefix`` (``<bos>[speaker]text<eos>``) and ``suffix``
    (starting with ``<audio_eos>``)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]


class PromptFormat:
    """The base model's prompt format, read from its processor (chat template + tokenizer)."""

    def __init__(self, processor: Any, audio_token_id: int, audio_eos_token_id: int):
        self.processor, self.audio_id, self.audio_eos_id = (
            processor,
            int(audio_token_id),
            int(audio_eos_token_id),
        )

    def prompt(self, speaker: int, text: str) -> Prompt:
        """The segment prompt of ``text`` said by ``speaker`` (the chat template of one message with
        audio)."""
        message = [{"role": str(speaker), "content": [{"type": "text", "text": text},
                                                      {"type": "audio", "path": "<audio>"}]}]
        rendered = self.processor.apply_chat_template(message, tokenize=False)
        if isinstance(rendered, list):
            rendered = rendered[0]
        ids = list(self.processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        where = [i for i, t in enumerate(ids) if t == self.audio_id]
        if len(where) != 1 or where[0] + 1 >= len(ids) or ids[where[0] + 1] != self.audio_eos_id:
            raise ValueError(
                f"the chat template gives {rendered!r}: expected one audio token followed by the "
                "audio end token"
            )
        return Prompt(tuple(ids[: where[0]]), tuple(ids[where[0] + 1:]))


@dataclass
class Segment:
    prompt: Prompt
    codes: torch.Tensor  # [frames, codebooks] int16
    speaker: int
    seconds: float
    sha: str = ""  # content hash of the clip's audio file
    text: str = ""

    @property
    def length(self) -> int:
        return len(self.prompt.prefix) + int(self.codes.shape[0]) + len(self.prompt.suffix)


def segment_tensors(seg: Segment, audio_id: int, target: bool) -> dict[str, torch.Tensor]:
    """One segment's positions: token ids, codes (zeros on text), which positions hold a frame (the end
    frame included) and which are targets."""
    pre, suf, frames = len(seg.prompt.prefix), len(seg.prompt.suffix), int(seg.codes.shape[0])
    n, k = pre + frames + suf, int(seg.codes.shape[1])
    tokens = torch.tensor([*seg.prompt.prefix, *([audio_id] * frames), *seg.prompt.suffix], dtype=torch.long)
    codes = torch.zeros(n, k, dtype=torch.int16)
    codes[pre:pre + frames] = seg.codes  # the end frame (position pre + frames) is all zeros
    is_audio = torch.zeros(n, dtype=torch.bool)
    is_audio[pre:pre + frames + 1] = True
    return {"tokens": tokens, "codes": codes, "is_audio": is_audio, "target": is_audio.clone() if target
            else torch.zeros(n, dtype=torch.bool)}


class CsmFeatureStore(FeatureStore):
    """Cached segments of a split. Item ``i`` is its clip, preceded by up to ``context_clips`` other clips of
    the same speaker (chosen by (seed, epoch, i): resumable and the same on any number of processes)."""

    def __init__(self, segments: list[Segment], audio_id: int, dropped: dict[str, int], seed: int = 0,
                 context_clips: int = 0, context_frames: int = 0, max_positions: int = 2048):
        self.segments, self.audio_id, self.dropped = segments, int(audio_id), dict(dropped)
        self.seed, self.context_clips, self.context_frames = (
            int(seed),
            int(context_clips),
            int(context_frames),
        )
        self.max_positions = int(max_positions)
        self.epoch = 0
        self._by_speaker: dict[int, list[int]] = {}
        for i, s in enumerate(segments):
            self._by_speaker.setdefault(s.speaker, []).append(i)

    def __len__(self) -> int:
        return len(self.segments)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def lengths(self) -> list[int]:
        return [s.length for s in self.segments]

    def durations(self) -> list[float]:
        return [s.seconds for s in self.segments]

    def drop_summary(self) -> dict[str, int]:
        return dict(self.dropped)

    def _context(self, i: int, rng: np.random.Generator) -> list[int]:
        own = self.segments[i]
        others = [j for j in self._by_speaker[own.speaker] if j != i]
        chosen, frames, length = [], 0, own.length
        for j in rng.permutation(others)[: self.context_clips] if others and self.context_clips else []:
            seg = self.segments[int(j)]
            if frames + seg.codes.shape[0] > self.context_frames or length + seg.length > self.max_positions:
                continue
            chosen.append(int(j))
            frames, length = frames + int(seg.codes.shape[0]), length + seg.length
        return chosen

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        parts = [segment_tensors(self.segments[j], self.audio_id, False) for j in self._context(i, rng)]
        parts.append(segment_tensors(self.segments[i], self.audio_id, True))
        item = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        item["key"] = torch.tensor(int(rng.integers(0, 2**62)), dtype=torch.long)  # seeds the depth frames
        return item


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def collate(
    items: list[dict[str, torch.Tensor]],
    pad_id: int,
    pad_multiple: int = 1,
    depth_fraction: float = 1.0,
    depth_multiple: int = 1,
) -> dict[str, torch.Tensor]:
    """Right-pad items into a batch and pick the depth decoder's frames.

    Padding goes at the end of each row, so a plain causal mask serves every real position (no attention mask:
    the flash kernel). ``depth_idx`` holds flat positions (row * length + column) of
    ``ceil(depth_fraction x target frames)`` target frames (rounded up to ``depth_multiple``; the excess, if
    the batch has fewer frames, is marked invalid in ``depth_valid``), chosen at random from the items' keys.
    """
    n = round_up(max(int(it["tokens"].numel()) for it in items), pad_multiple)
    b, k = len(items), int(items[0]["codes"].shape[1])
    tokens = torch.full((b, n), int(pad_id), dtype=torch.long)
    codes = torch.zeros(b, n, k, dtype=torch.long)
    is_audio = torch.zeros(b, n, dtype=torch.bool)
    target = torch.zeros(b, n, dtype=torch.bool)
    for r, it in enumerate(items):
        m = int(it["tokens"].numel())
        tokens[r, :m], codes[r, :m], is_audio[r, :m], target[r, :m] = (it["tokens"], it["codes"].long(),
                                                                     it["is_audio"], it["target"])
    batch = {"tokens": tokens, "codes": codes, "is_audio": is_audio, "target": target}
    frames = target.flatten().nonzero().squeeze(1)
    if depth_fraction > 0:
        size = round_up(max(1, math.ceil(depth_fraction * frames.numel())), depth_multiple)
        gen = torch.Generator().manual_seed(int(sum(int(it["key"]) for it in items) % (2**62)))
        chosen = frames[torch.randperm(frames.numel(), generator=gen)[:size]].sort().values
        valid = torch.zeros(size, dtype=torch.bool)
        valid[: chosen.numel()] = True
        # invalid entries point at position 1 of row 0 (any position with a predecessor): masked in the loss
        batch["depth_idx"] = torch.cat([chosen, torch.ones(size - chosen.numel(), dtype=torch.long)])
        batch["depth_valid"] = valid
    return batch


def build_segments(clips: Sequence[Clip], cache: Path, codec: torch.nn.Module, num_codebooks: int,
                   fingerprint: str, prompts: PromptFormat, speaker_ids: dict[str, int], sample_rate: int,
                   frame_rate: float, limits: dict[str, float], progress: Progress | None = None
                   ) -> tuple[list[Segment], dict[str, int]]:
    """Segments of ``clips``: codes from the cache (``cache/<hash>.pt``) or encoded now; clips over the limits
    (``max_audio_seconds``, ``max_text_tokens``, ``max_positions``) or unreadable are dropped and counted."""
    from voicetune.audio.io import AudioDecodeError, load_audio

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    segments: list[Segment] = []
    dropped: dict[str, int] = {}

    def drop(reason: str, clip: Clip, detail: str = "") -> None:
        dropped[reason] = dropped.get(reason, 0) + 1
        logger.warning("dropping %s: %s%s", clip.audio_path, reason, f" ({detail})" if detail else "")

    for n, clip in enumerate(clips):
        if progress:
            progress(n, len(clips), "Mimi codes")
        try:
            sha = file_sha256(clip.audio_path)
            key = hashlib.sha256(f"{sha}|{fingerprint}".encode()).hexdigest()[:32]
            path = cache / f"{key}.pt"
            codes = None
            if path.is_file():
                try:
                    codes = torch.load(path, map_location="cpu", weights_only=True)["codes"]
                except (OSError, RuntimeError, EOFError, KeyError, ValueError) as e:
                    logger.warning("%s: unreadable cached codes (%s); encoding again", path, e)
            if codes is None:
                audio, _ = load_audio(clip.audio_path, sr=sample_rate)
                codes = encode_audio(codec, audio, num_codebooks)
                atomic_torch_save({"codes": codes, "format": CACHE_FORMAT}, path)
        except (OSError, AudioDecodeError, RuntimeError) as e:
            drop("unreadable audio", clip, str(e)[:200])
            continue
        seconds = codes.shape[0] / frame_rate
        prompt = prompts.prompt(speaker_ids[clip.speaker], clip.text)
        seg = Segment(prompt, codes, speaker_ids[clip.speaker], seconds, sha, clip.text)
        if limits.get("max_audio_seconds") and seconds > limits["max_audio_seconds"]:
            drop("audio too long", clip, f"{seconds:.1f} s")
        elif limits.get("max_text_tokens") and len(prompt.prefix) > limits["max_text_tokens"]:
            drop("text too long", clip, f"{len(prompt.prefix)} tokens")
        elif seg.length > limits["max_positions"]:
            drop(
                "sequence too long for the model",
                clip,
                f"{seg.length} > {int(limits['max_positions'])} positions",
            )
        else:
            segments.append(seg)
    if progress:
        progress(len(clips), len(clips), "Mimi codes")
    return segments, dropped
