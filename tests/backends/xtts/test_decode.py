"""The static-buffer generation loop (backends/xtts/decode.py) against transformers' ``generate``.

Tolerance: the loops run the same model code and processors; tokens are equal whenever the logits are, and
on a CPU they are equal for every row and step here. Attention over the N fixed columns (the unwritten ones
masked) may round differently from attention over the written ones in the last bits; on a GPU a draw can
then differ where such a difference moves a sampling boundary (the GPU test allows none at these sizes).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import LogitsProcessorList

from voicetune.backends.xtts import batched, decode

TEXTS = ["Good morning.", "The garden looks wonderful after a week of gentle rain.", "Where is the station?"]
SAMPLING = batched.Sampling(0.75, 50, 0.85, 10.0)


def test_the_exponential_argmax_is_the_draw_multinomial_makes():
    """decode.sample's argmax over probs/noise equals torch.multinomial(probs, 1) from the same generator,
    and draw_noise leaves the generator where that many multinomial calls leave it."""
    torch.manual_seed(0)
    scores = torch.randn(3, 40) * 3
    probs = torch.softmax(scores, -1)
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    noise = decode.draw_noise(gens, 20, 40, torch.device("cpu"), [True, True, True])
    drawn = [decode.sample(scores, noise[s], torch.zeros(3, dtype=torch.bool), eos=-1).tolist()
             for s in range(20)]
    for i, seed in enumerate((11, 12, 13)):
        g = torch.Generator().manual_seed(seed)
        alone = [int(torch.multinomial(probs[i : i + 1], 1, generator=g)) for _ in range(20)]
        assert [d[i] for d in drawn] == alone
        assert torch.equal(g.get_state(), gens[i].get_state())


def test_rewind_puts_a_generator_where_n_draws_leave_it():
    g = torch.Generator().manual_seed(5)
    start = g.get_state()
    decode.draw_noise([g], 9, 7, torch.device("cpu"), [True])
    decode.rewind(g, start, 4, 7, torch.device("cpu"))
    expected = torch.Generator().manual_seed(5)
    decode.draw_noise([expected], 4, 7, torch.device("cpu"), [True])
    assert torch.equal(g.get_state(), expected.get_state())


class Recorder:
    """A last processor that keeps what the sampler is given at each step: the scores and each row's set of
    ids (what the repetition penalty saw)."""

    def __init__(self):
        self.scores, self.ids = [], []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().float().cpu().clone())
        self.ids.append([set(row.tolist()) for row in input_ids])
        return scores


CPU = torch.device("cpu")


def _codes_both_ways(backend, clips, carry_on, monkeypatch, device=CPU, record=True):
    gpt = backend.model.gpt
    own = batched.warpers
    out = {}
    with torch.inference_mode():
        latents, _ = backend._conditioning([clips[0].audio_path])
        tokens = [batched.text_tokens(backend.model, t, "en") for t in TEXTS]
        for loop in ("static", "transformers"):
            recorder = Recorder()
            if record:  # (not in a captured graph: the recorder reads the device)
                monkeypatch.setattr(batched, "warpers",
                                    lambda sampling, r=recorder: LogitsProcessorList([*own(sampling), r]))
            gens = [torch.Generator(device=device).manual_seed(s) for s in (1, 2, 3)]
            codes = batched.generate(gpt, latents, tokens, gens, SAMPLING, carry_on, loop=loop)
            out[loop] = (codes, [g.get_state() for g in gens], recorder)
    monkeypatch.setattr(batched, "warpers", own)
    return out


def _assert_same_steps(out, atol):
    """Every step of every row up to its stop: the same scores (to ``atol``) and the same ids seen."""
    codes, _, static = out["static"]
    _, _, generated = out["transformers"]
    assert static.scores, "the recorder saw no step"
    for row, c in enumerate(codes):
        for step in range(c.shape[1]):
            a, b = static.scores[step][row], generated.scores[step][row]
            assert torch.equal(torch.isinf(a), torch.isinf(b)), (row, step)
            finite = ~torch.isinf(a)
            torch.testing.assert_close(a[finite], b[finite], rtol=0, atol=atol)
            assert static.ids[step][row] == generated.ids[step][row], (row, step)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_static_loop_generates_the_tokens_generate_does(xtts_backend, xtts_clips, attention, monkeypatch):
    """Rows of different lengths that stop at different steps (the stop token made likely), with the chunked
    end check running past them: the same codes as transformers' generate, and the carried generators left
    where generate leaves them."""
    b = xtts_backend
    b.set_train(False)
    gpt = b.model.gpt
    gpt.gpt_inference.transformer.config._attn_implementation = attention
    with torch.no_grad():
        gpt.mel_head.bias[gpt.stop_audio_token] += 2.0  # the rows stop after a few to a few tens of tokens
    gpt.max_gen_mel_tokens = decode.CHUNK + 9
    out = _codes_both_ways(b, xtts_clips, [True, False, True], monkeypatch)
    (static, static_states, _), (generated, states, _) = out["static"], out["transformers"]
    lengths = [c.shape[1] for c in generated]
    assert len(set(lengths)) > 1 and max(lengths) < decode.CHUNK, lengths  # the end check runs past them
    for s, g in zip(static, generated, strict=True):
        assert torch.equal(s, g)
    assert torch.equal(static_states[0], states[0]) and torch.equal(static_states[2], states[2])
    _assert_same_steps(out, atol=1e-5)


def test_rows_that_reach_the_cap_stop_there(xtts_backend, xtts_clips, monkeypatch):
    """Rows that never stop: generated up to the cap, across a chunk boundary, as generate does."""
    b = xtts_backend
    b.set_train(False)
    gpt = b.model.gpt
    with torch.no_grad():
        gpt.mel_head.bias[gpt.stop_audio_token] -= 50.0  # never stops
    gpt.max_gen_mel_tokens = cap = decode.CHUNK + 5
    out = _codes_both_ways(b, xtts_clips, None, monkeypatch)
    for s, g in zip(out["static"][0], out["transformers"][0], strict=True):
        assert s.shape == (1, cap) and torch.equal(s, g)
    for a, c in zip(out["static"][1], out["transformers"][1], strict=True):
        assert torch.equal(a, c)
    _assert_same_steps(out, atol=1e-5)


def test_an_unknown_loop_is_refused(xtts_shared_backend, xtts_clips):
    with pytest.raises(ValueError, match="loop must be"):
        batched.generate(xtts_shared_backend.model.gpt, None, [], [], SAMPLING, loop="fast")


def test_under_bf16_autocast_the_static_loop_generates_the_tokens_generate_does(xtts_backend, xtts_clips,
                                                                              monkeypatch):
    """bf16 weights synthesize under autocast (gpt_tts/speed.py inference_context): the key/value buffers take
    the prefix cache's dtype and the loop still makes generate's tokens."""
    b = xtts_backend
    b.set_train(False)
    gpt = b.model.gpt
    with torch.no_grad():
        gpt.mel_head.bias[gpt.stop_audio_token] += 2.0
    gpt.max_gen_mel_tokens = decode.CHUNK + 9
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _codes_both_ways(b, xtts_clips, [True, True, True], monkeypatch)
    for s, g in zip(out["static"][0], out["transformers"][0], strict=True):
        assert torch.equal(s, g)
    _assert_same_steps(out, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_the_captured_loop_on_a_gpu_generates_the_tokens_generate_does(xtts_base, xtts_clips, monkeypatch,
                                                                       bf16):
    """The CUDA-graph replay of the step (captured under autocast with its cache off, bf16 key/value
    buffers, for bf16 weights): the same codes and generator states as generate on the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from voicetune.backends.base import get_backend

    b = get_backend("xtts")
    b.load_base(xtts_base, torch.device("cuda"))
    b.set_train(False)
    gpt = b.model.gpt
    with torch.no_grad():
        gpt.mel_head.bias[gpt.stop_audio_token] += 2.0
    gpt.max_gen_mel_tokens = decode.CHUNK + 9
    replays, capture = [], decode.capture
    monkeypatch.setattr(decode, "capture", lambda d: replays.append(capture(d)) or replays[-1])
    context = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with context:
        out = _codes_both_ways(b, xtts_clips, [True, True, True], monkeypatch, device=torch.device("cuda"),
                               record=False)
    assert replays and all(isinstance(r.__self__, torch.cuda.CUDAGraph) for r in replays)  # not the fallback
    for s, g in zip(out["static"][0], out["transformers"][0], strict=True):
        assert torch.equal(s, g)
    for a, c in zip(out["static"][1], out["transformers"][1], strict=True):
        assert torch.equal(a, c)
