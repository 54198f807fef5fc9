"""The generation loop of batched XTTS synthesis on fixed-shape buffers, one CUDA graph replay per token.

transformers' ``generate`` grows its key/value cache every token, runs the GPT's 30 blocks as Python calls,
and batched.py's sampler reads the device once per row (``torch.multinomial`` checks its input on the host):
on an H200 a batch of 8 rows cost 26-30 ms a token, nearly all of it host time, for a network whose arithmetic
takes about 1 ms. Here the same model code runs on buffers whose shapes never change, so that a GPU replays
the whole token step as one CUDA graph:

* **Prefix.** Coqui's ``GPT2InferenceModel.forward`` runs the left-padded prefixes once, as ``generate``'s
  first step does, and its keys and values are copied into :class:`StaticKV` buffers ``[B, H, N, d]`` (N: the
  prefix plus the token cap).
* **Each further token** goes through the transformer (coqui's ``GPT2Model``, its blocks unchanged) with a
  :class:`StaticKV` that writes the new key/value at a position held on the device, a 4-D mask over the N
  columns (the padding and the columns not yet written hidden), the mel position embedding at that position,
  and the GPT's head.
* **Scores** go through the very processors ``generate`` applies (batched.warpers: repetition penalty,
  temperature, top-k, top-p). The repetition penalty reads a fixed-width id buffer whose unwritten columns
  hold the start-of-audio token, which every row already holds, so it sees the same set of ids as
  ``generate``.
* **Sampling.** For one draw, ``torch.multinomial(p, 1, generator=g)`` computes
  ``argmax(p / q)`` with ``q = torch.empty_like(p).exponential_(1, generator=g)`` (after a check that reads
  the device). The noise ``q`` is drawn ahead, one call per row and token with the row's own generator, so
  each row consumes its generator's stream as a lone render does; the argmax runs in the graph. A finished
  row's token is the stop token, as ``generate`` pads it. Rows are checked for the end every :data:`CHUNK`
  tokens (one host read); a row whose generator is used again (``carry_on``) is rewound to where a lone render
  leaves it: one draw per token up to and including its stop.

On a CPU (and wherever CUDA graphs are not available) the same step runs eagerly. The tokens equal
``generate``'s whenever the logits are the same; the attention over N masked columns can round differently
from ``generate``'s over the written ones in the last bits (tests/backends/xtts/test_decode.py states it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

CHUNK = 32
"""Tokens generated between two checks of whether every row has stopped (each check reads the device)."""

SUPPORTED_ATTENTION = ("sdpa", "eager")
"""The transformer's attention implementations whose 4-D mask form this loop builds (boolean for SDPA,
additive for eager); any other falls back to transformers' ``generate``."""


class StaticKV:
    """Keys and values of every layer in buffers ``[B, H, N, d]``; what GPT2Attention needs of a cache
    (``update``), writing each new key/value at the columns in ``columns`` (a device tensor, so a captured
    graph writes where the step is)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], columns: torch.Tensor):
        self.keys, self.values, self.columns = keys, values, columns

    @classmethod
    def from_prefix(cls, prefix_cache: Any, length: int, columns: torch.Tensor) -> StaticKV:
        """Buffers of ``length`` columns holding a transformers DynamicCache's keys/values at the front."""
        keys, values = [], []
        for layer in prefix_cache.layers:
            k, v = layer.keys, layer.values
            big_k = k.new_zeros((*k.shape[:2], length, k.shape[-1]))
            big_v = v.new_zeros((*v.shape[:2], length, v.shape[-1]))
            big_k[:, :, : k.shape[2]] = k
            big_v[:, :, : v.shape[2]] = v
            keys.append(big_k)
            values.append(big_v)
        return cls(keys, values, columns)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k.index_copy_(2, self.columns, key_states.to(k.dtype))
        v.index_copy_(2, self.columns, value_states.to(v.dtype))
        return k, v


def sample(scores: torch.Tensor, noise: torch.Tensor, done: torch.Tensor, eos: int) -> torch.Tensor:
    """Each row's token: ``torch.multinomial``'s draw from ``softmax(scores)`` given its exponential noise,
    the stop token for a finished row."""
    probs = torch.softmax(scores, dim=-1)
    drawn = torch.argmax(probs / noise, dim=-1)
    return torch.where(done, torch.full_like(drawn, eos), drawn)


def draw_noise(generators: Sequence[torch.Generator], steps: int, width: int, device: torch.device,
               rows: Sequence[bool]) -> torch.Tensor:
    """``[steps, B, width]`` exponential noise: step by step, for each row in ``rows``, the draw one
    ``torch.multinomial`` call would make from the row's generator (other rows get ones)."""
    out = torch.ones((steps, len(generators), width), dtype=torch.float32, device=device)
    for s in range(steps):
        for i, g in enumerate(generators):
            if rows[i]:
                out[s, i : i + 1].exponential_(1, generator=g)
    return out


def rewind(generator: torch.Generator, state: torch.Tensor, draws: int, width: int,
           device: torch.device) -> None:
    """Put ``generator`` where ``draws`` single-sample multinomial calls from ``state`` leave it."""
    generator.set_state(state)
    scratch = torch.empty((1, width), dtype=torch.float32, device=device)
    for _ in range(draws):
        scratch.exponential_(1, generator=generator)


class Decoder:
    """One batch's token loop after the prefix (see the module docstring). ``step`` is a pure function of
    the static buffers, so running it twice at the same position writes the same values (what graph capture's
    warm-up needs)."""

    def __init__(self, gpt: Any, prefix_cache: Any, inputs: torch.Tensor, mask: torch.Tensor,
                 first: torch.Tensor, warpers: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 max_new: int, vocab: int):
        device, batch, width = inputs.device, inputs.shape[0], inputs.shape[1]
        self.gpt, self.warpers, self.eos, self.width = gpt, warpers, int(gpt.stop_audio_token), width
        self.length = width + max_new
        # where the fed token's key/value goes; the token is generated token number column - (width - 1)
        self.column = torch.full((1,), width, dtype=torch.long, device=device)
        self.kv = StaticKV.from_prefix(prefix_cache, self.length, self.column)
        start = int(gpt.start_audio_token)
        self.ids = torch.full((batch, self.length), start, dtype=torch.long, device=device)
        self.ids[:, :width] = inputs
        self.ids[:, width] = first
        self.valid = torch.ones((batch, self.length), dtype=torch.bool, device=device)
        self.valid[:, :width] = mask.bool()
        self.positions = torch.arange(self.length, device=device)
        self.token = first.clone()
        self.done = first == self.eos
        self.noise = torch.ones((batch, vocab), dtype=torch.float32, device=device)
        self.next_token, self.next_done = self.token.clone(), self.done.clone()
        attention = gpt.gpt_inference.transformer.config._attn_implementation
        self.additive_mask = attention == "eager"

    def _mask(self, dtype: torch.dtype) -> torch.Tensor:
        allowed = (self.valid & (self.positions <= self.column)).view(self.valid.shape[0], 1, 1, self.length)
        if not self.additive_mask:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)

    def step(self) -> None:
        """Feed ``token`` (at cache column ``column``), write the next token and done flags."""
        inference = self.gpt.gpt_inference
        position = self.column - (self.width - 1)  # its audio position: 1 for the first generated token
        emb = inference.embeddings(self.token.view(-1, 1)) + inference.pos_embedding.emb(position)
        hidden = inference.transformer(
            inputs_embeds=emb, past_key_values=self.kv, attention_mask=self._mask(emb.dtype),
            position_ids=position.view(1, 1), use_cache=True, return_dict=True,
        ).last_hidden_state
        scores = inference.lm_head(hidden)[:, -1].float()
        self.ids.index_copy_(1, self.column, self.token.view(-1, 1))  # (idempotent: the fed token's column)
        scores = self.warpers(self.ids, scores)
        token = sample(scores, self.noise, self.done, self.eos)
        self.next_token.copy_(token)
        self.next_done.copy_(self.done | (token == self.eos))

    def advance(self) -> None:
        """Move the state to the next token (outside the graph: a graph replays one fixed step)."""
        self.token.copy_(self.next_token)
        self.done.copy_(self.next_done)
        self.column.add_(1)


def capture(decoder: Decoder) -> Callable[[], None]:
    """The decoder's step as a CUDA graph replay (warmed up on a side stream first), or the eager step where
    graphs do not apply (a CPU) or capture fails (logged: the loop then runs at eager speed)."""
    device = decoder.token.device
    if device.type != "cuda":
        return decoder.step
    autocast = {"device_type": "cuda", "dtype": torch.get_autocast_dtype("cuda"),
                "enabled": torch.is_autocast_enabled("cuda"), "cache_enabled": False}
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.autocast(**autocast):  # type: ignore[arg-type]
        for _ in range(2):
            decoder.step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with (torch.cuda.graph(graph, capture_error_mode="thread_local"),
              torch.autocast(**autocast)):  # type: ignore[arg-type]
            decoder.step()
    except RuntimeError as e:
        log.warning("could not capture the synthesis step as a CUDA graph (%s); generating without one, "
                    "several times slower", e)
        return decoder.step
    return graph.replay


def run(decoder: Decoder, generators: Sequence[torch.Generator], max_new: int) -> torch.Tensor:
    """The generated tokens ``[B, n]`` (n ≤ max_new; the first is the prefix step's), stopping at the first
    chunk boundary where every row has stopped. Draws the noise of each chunk ahead with the rows' generators
    (the first token's noise has been drawn by the caller)."""
    width, vocab, device = decoder.width, decoder.noise.shape[1], decoder.token.device
    replay: Callable[[], None] | None = None
    made = 1
    while made < max_new:
        unfinished = (~decoder.done).tolist()
        if not any(unfinished):
            break
        replay = replay or capture(decoder)
        steps = min(CHUNK, max_new - made)
        noise = draw_noise(generators, steps, vocab, device, unfinished)
        for s in range(steps):
            decoder.noise.copy_(noise[s])
            replay()
            decoder.advance()
        made += steps
    decoder.ids.index_copy_(1, decoder.column, decoder.token.view(-1, 1))  # the last token generated
    return decoder.ids[:, width : width + made]
