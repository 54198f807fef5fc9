"""Batched XTTS-v2 synthesis: several sentences in one generation pass, each as if rendered alone.

coqui-tts's ``Xtts.inference`` renders one text at a time: ``GPT.generate`` (transformers' ``generate`` on
``GPT2InferenceModel``, sampling with ``torch.multinomial`` from the global RNG after the caller's
``torch.manual_seed``), then the GPT's latents of the codes, then the HiFi-GAN decoder. Generation is one
transformer pass per audio token (~21.5 a second of speech), and at batch 1 each pass is bound by kernel
launches, not arithmetic: a batch of sentences costs about as many passes as its longest sentence.

Here the rows of one ``generate`` call are the sentences:

* **Layout.** Each row's prefix is built exactly as ``GPT.compute_embeddings`` builds it (conditioning
  latents, then start + text + stop with the text's own positions), and rows are padded on the LEFT to the
  longest prefix, with an attention mask that hides the padding: every row ends with its start-of-audio
  token in the same column, so the audio positions coqui's inference model derives from the cache length
  are each row's own. The padded ids are 1, as coqui's dummy prefix ids are, so the repetition penalty sees
  the same tokens.
* **Sampling.** transformers' own processors (repetition penalty, temperature, top-k, top-p, in the order
  ``generate`` applies them when sampling) shape the scores; then each row draws its token with
  ``torch.multinomial`` from its own generator, seeded with the row's seed (the global RNG is not used), and
  the scores become that one token (``generate`` runs greedy on them). A row's draws are those of a single
  render with ``torch.manual_seed(seed)``: the same tokens whenever the row's scores are the same. A
  finished row draws nothing more, so a text's next piece continues from where its generator stood.
* **The loop.** By default the tokens after the prefix come from decode.py's static-buffer loop (one CUDA
  graph replay per token on a GPU: 5.4 ms instead of 26-30 ms a token for 8 rows on an H200), which applies
  the same processors and makes the same draws; ``loop="transformers"`` runs ``generate`` with
  :class:`PerRowSampler`, the reference the static loop is tested against (and the path for attention
  implementations the static loop builds no mask for).
* **After generation**, each row's codes (up to and including its first stop token) go through coqui's own
  latent pass and HiFi-GAN decoder one row at a time, exactly as ``Xtts.inference`` does (their cost is small
  next to generation; batching the decoder would change each waveform's end, where the zero padding enters
  the convolutions' receptive field).

Equality with one-at-a-time rendering: a batch of one is bit-identical to ``Xtts.inference`` after
``torch.manual_seed(seed)`` (tested). In a larger batch the padding mask changes the attention kernels'
arithmetic, so logits differ in the last bits; a draw changes only when such a difference moves a sampling
boundary, which is rare but possible, so renders are equal token for token almost always and their audio
differs by float rounding otherwise (tests/backends/xtts/test_batched.py states the tolerance).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

LOOP = "static"
"""The generation loop :func:`generate` uses unless told: ``"static"`` (decode.py) or ``"transformers"``."""


@dataclass(frozen=True)
class Sampling:
    """Xtts.inference's sampling settings (the model config's)."""

    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float


class PerRowSampler:
    """The last logits processor: samples each unfinished row's token from ``softmax(scores)`` with the row's
    own generator (as ``generate`` samples a batch of one), and leaves only that token possible, so that
    greedy decoding picks it."""

    def __init__(self, generators: Sequence[torch.Generator], eos: int,
                 carry_on: Sequence[bool] | None = None):
        """``carry_on[i]``: row i's generator is used again after this call (the text has another piece), so
        it must stop drawing exactly when the row ends; knowing that takes a device read per step, which the
        other rows do not need (what they draw after their end is discarded)."""
        self.generators, self.eos = list(generators), int(eos)
        self.carry_on = list(carry_on) if carry_on is not None else [True] * len(self.generators)
        self.done = [False] * len(self.generators)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = torch.full((scores.shape[0],), self.eos, dtype=torch.long, device=scores.device)
        for i, g in enumerate(self.generators):
            if not self.done[i]:  # a finished row's token is replaced by padding; it draws nothing
                probs = F.softmax(scores[i : i + 1], dim=-1)
                tokens[i] = torch.multinomial(probs, num_samples=1, generator=g).view(())
        if any(self.carry_on):
            for i, t in enumerate(tokens.tolist()):
                self.done[i] = self.done[i] or (self.carry_on[i] and t == self.eos)
        only = torch.full_like(scores, float("-inf")).scatter_(1, tokens.view(-1, 1), 0.0)
        return typing.cast(torch.FloatTensor, only)  # (transformers' LogitsProcessor signature)


def warpers(sampling: Sampling) -> Any:
    """transformers' processors in the order ``generate`` applies them when sampling."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out = LogitsProcessorList()
    if sampling.repetition_penalty is not None and sampling.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty=float(sampling.repetition_penalty)))
    if sampling.temperature is not None and sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(float(sampling.temperature)))
    if sampling.top_k is not None and sampling.top_k != 0:
        out.append(TopKLogitsWarper(top_k=int(sampling.top_k), min_tokens_to_keep=1))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=float(sampling.top_p), min_tokens_to_keep=1))
    return out


def processors(sampling: Sampling, generators: Sequence[torch.Generator], eos: int,
               carry_on: Sequence[bool] | None = None) -> Any:
    """:func:`warpers`, then the per-row sampler (for transformers' ``generate``)."""
    out = warpers(sampling)
    out.append(PerRowSampler(generators, eos, carry_on))
    return out


def prefix(gpt: Any, cond_latents: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """One row's prefix embeddings ``[1, L, D]``, as ``GPT.compute_embeddings`` computes them."""
    text = F.pad(text_tokens, (0, 1), value=gpt.stop_text_token)
    text = F.pad(text, (1, 0), value=gpt.start_text_token)
    emb = gpt.text_embedding(text) + gpt.text_pos_embedding(text)
    return torch.cat([cond_latents, emb], dim=1)


def generate(gpt: Any, cond_latents: torch.Tensor, texts: Sequence[torch.Tensor],
             generators: Sequence[torch.Generator], sampling: Sampling,
             carry_on: Sequence[bool] | None = None, loop: str | None = None) -> list[torch.Tensor]:
    """Audio codes ``[1, n]`` of each text (``[1, t]`` token ids), generated in one batch; each ends with the
    stop token unless it reached ``gpt.max_gen_mel_tokens``. ``carry_on``: which generators draw again later
    (default all). ``loop`` (default :data:`LOOP`): ``"static"``, fixed buffers and a CUDA graph per token
    on a GPU (decode.py), or ``"transformers"``, transformers' ``generate`` with :class:`PerRowSampler`; the
    static loop is used only with an attention implementation it supports (decode.SUPPORTED_ATTENTION)."""
    from voicetune.backends.xtts import decode as static

    loop = LOOP if loop is None else loop
    if loop not in ("static", "transformers"):
        raise ValueError(f"generate: loop must be 'static' or 'transformers', not {loop!r}")
    rows = [prefix(gpt, cond_latents, t) for t in texts]
    width = max(r.shape[1] for r in rows)
    device = rows[0].device
    emb = torch.cat([F.pad(r, (0, 0, width - r.shape[1], 0)) for r in rows])  # left padding
    inputs = torch.ones((len(rows), width + 1), dtype=torch.long, device=device)
    inputs[:, -1] = gpt.start_audio_token
    mask = torch.ones_like(inputs)
    for i, r in enumerate(rows):
        mask[i, : width - r.shape[1]] = 0
    gpt.gpt_inference.store_prefix_emb(emb)
    eos = int(gpt.stop_audio_token)
    carry = list(carry_on) if carry_on is not None else [True] * len(rows)
    attention = gpt.gpt_inference.transformer.config._attn_implementation
    if loop == "static" and attention in static.SUPPORTED_ATTENTION:
        return _generate_static(gpt, inputs, mask, generators, sampling, carry)
    out = gpt.gpt_inference.generate(
        inputs, bos_token_id=gpt.start_audio_token, pad_token_id=eos, eos_token_id=eos,
        max_length=gpt.max_gen_mel_tokens + inputs.shape[-1], attention_mask=mask, do_sample=False,
        num_beams=1, num_return_sequences=1, logits_processor=processors(sampling, generators, eos, carry),
        output_attentions=False,
    )
    return _codes(out[:, inputs.shape[1]:], eos)


def _generate_static(gpt: Any, inputs: torch.Tensor, mask: torch.Tensor,
                     generators: Sequence[torch.Generator], sampling: Sampling,
                     carry: list[bool]) -> list[torch.Tensor]:
    """The static loop (decode.py): the prefix through coqui's inference model as ``generate``'s first step,
    its token sampled here, the rest by :func:`decode.run`; carried generators rewound to a lone render's
    place."""
    from voicetune.backends.xtts import decode as static

    eos, max_new, device = int(gpt.stop_audio_token), int(gpt.max_gen_mel_tokens), inputs.device
    states = [g.get_state() if c else None for g, c in zip(generators, carry, strict=True)]
    out = gpt.gpt_inference(input_ids=inputs, attention_mask=mask, use_cache=True, return_dict=True)
    warp = warpers(sampling)
    scores = warp(inputs, out.logits[:, -1].float())
    vocab = int(scores.shape[-1])
    noise = static.draw_noise(generators, 1, vocab, device, [True] * len(generators))[0]
    first = static.sample(scores, noise, torch.zeros_like(inputs[:, 0], dtype=torch.bool), eos)
    decoder = static.Decoder(gpt, out.past_key_values, inputs, mask, first, warp, max_new, vocab)
    codes = _codes(static.run(decoder, generators, max_new), eos)
    for g, state, c in zip(generators, states, codes, strict=True):
        if state is not None:
            static.rewind(g, state, int(c.shape[1]), vocab, device)
    return codes


def _codes(generated: torch.Tensor, eos: int) -> list[torch.Tensor]:
    """Each row's codes ``[1, n]``, up to and including its first stop token."""
    codes = []
    for row in generated:
        stops = (row == eos).nonzero()
        end = int(stops[0]) + 1 if len(stops) else row.shape[0]
        codes.append(row[:end].unsqueeze(0))
    return codes


def decode(model: Any, cond_latents: torch.Tensor, speaker: torch.Tensor, text_tokens: torch.Tensor,
           codes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(waveform on the CPU, number of latent frames) of one row, as ``Xtts.inference`` computes them."""
    gpt = model.gpt
    expected = torch.tensor([codes.shape[-1] * gpt.code_stride_len], device=text_tokens.device)
    text_len = torch.tensor([text_tokens.shape[-1]], device=text_tokens.device)
    latents = gpt(text_tokens, text_len, codes, expected, cond_latents=cond_latents, return_attentions=False,
                  return_latent=True)
    return model.hifigan_decoder(latents, g=speaker).cpu().squeeze(), int(latents.shape[1])


def text_tokens(model: Any, text: str, language: str) -> torch.Tensor:
    """A text piece's token ids ``[1, t]`` on the model's device, as ``Xtts.inference`` tokenizes it."""
    ids = model.tokenizer.encode(text.strip().lower(), lang=language.split("-")[0])
    return torch.IntTensor(ids).unsqueeze(0).to(model.device)
