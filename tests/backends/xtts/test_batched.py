"""Batched XTTS synthesis (backends/xtts/batched.py): each text rendered in a batch as it is rendered alone.

Tolerance: on a CPU every render of a batch equals the one-at-a-time render exactly (tokens and samples).
What the code guarantees, and what the tests assert: identical tokens whenever the row's scores are the same,
and audio equal to 1e-4 (float rounding of the attention over a left-padded batch can differ from a batch of
one in the last bits; a draw changes only if such a difference moves a sampling boundary).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voicetune.backends.xtts import batched

TEXTS = ["Good morning.", "The garden looks wonderful after a week of gentle rain.", "Where is the station?"]


def test_finished_rows_draw_nothing_and_each_row_uses_its_own_generator():
    """The sampler draws row i's token from row i's generator only, and stops drawing once a row has
    emitted the stop token (so a text's next piece continues its generator where a lone render would)."""
    eos = 3
    scores = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    sampler = batched.PerRowSampler(gens, eos)
    steps = [sampler(None, scores.clone()).argmax(-1).tolist() for _ in range(30)]
    alone = []
    g = torch.Generator().manual_seed(7)
    for _ in range(30):
        token = int(torch.multinomial(torch.softmax(scores[:1], -1), 1, generator=g))
        alone.append(token)
        if token == eos:
            break
    assert [s[0] for s in steps[: len(alone)]] == alone  # row 0: the draws of a lone render, up to its stop
    assert all(s[0] == eos for s in steps[len(alone):])  # then padding, and no more draws:
    after = torch.Generator().manual_seed(7)
    for _ in alone:
        torch.multinomial(torch.softmax(scores[:1], -1), 1, generator=after)
    assert torch.equal(gens[0].get_state(), after.get_state())


def test_rows_of_different_lengths_that_stop_at_different_steps_get_their_lone_tokens(xtts_backend,
                                                                                     xtts_clips):
    """Left-padded prefixes of three texts, the stop token made likely so that rows end at different steps:
    every row's codes equal those generated for its text alone with the same seed."""
    b = xtts_backend
    b.set_train(False)
    gpt = b.model.gpt
    with torch.no_grad():
        gpt.mel_head.bias[gpt.stop_audio_token] += 4.0  # about a 1-in-5 chance to stop at each step
    gpt.max_gen_mel_tokens = 24
    sampling = batched.Sampling(0.75, 50, 0.85, 10.0)
    with torch.inference_mode():
        latents, _ = b._conditioning([xtts_clips[0].audio_path])
        tokens = [batched.text_tokens(b.model, t, "en") for t in TEXTS]
        generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        together = batched.generate(gpt, latents, tokens, generators, sampling)
        alone = [batched.generate(gpt, latents, [t], [torch.Generator().manual_seed(s)], sampling)[0]
                 for t, s in zip(tokens, (1, 2, 3), strict=True)]
    lengths = [c.shape[1] for c in together]
    assert len(set(lengths)) > 1 and min(lengths) < 24, lengths  # the rows did stop at different steps
    for a, t in zip(alone, together, strict=True):
        assert torch.equal(a, t)
        assert t[0, -1] == gpt.stop_audio_token or t.shape[1] == 24


def test_synthesize_batch_renders_each_text_as_synthesize_does(xtts_shared_backend, xtts_clips):
    """Texts of different lengths and seeds in one batch: each rendered as synthesize (coqui's Xtts.inference
    after torch.manual_seed) renders it alone, to 1e-4 (the contract test checks that a batch of one is
    bit-identical); a failing text gets its error in its place."""
    b = xtts_shared_backend
    b.synthesis_max_audio_tokens = 6  # short renders: the tiny model's full-size HiFi-GAN is slow on a CPU
    refs = [xtts_clips[0].audio_path]
    try:
        b.set_train(False)
        alone = [b.synthesize(t, refs, "en", seed=s) for t, s in zip(TEXTS[1:], (5, 6), strict=True)]
        together = b.synthesize_batch(TEXTS[1:] + [""], refs, "en", [5, 6, 7])
    finally:
        b.synthesis_max_audio_tokens = None
    assert isinstance(together[2], ValueError) and "empty" in str(together[2])
    for a, t in zip(alone, together[:2], strict=True):
        assert t.meta == a.meta and t.sample_rate == a.sample_rate
        np.testing.assert_allclose(t.audio, a.audio, rtol=0, atol=1e-4)
    assert not np.array_equal(together[0].audio[:1000], together[1].audio[:1000])


def test_synthesize_batch_checks_its_arguments(xtts_shared_backend, xtts_clips):
    b = xtts_shared_backend
    with pytest.raises(ValueError, match="2 texts but 1 seeds"):
        b.synthesize_batch(TEXTS[:2], [xtts_clips[0].audio_path], "en", [1])
    out = b.synthesize_batch(TEXTS[:2], [], "en", [1, 2])
    assert all(isinstance(o, ValueError) and "reference" in str(o) for o in out)
    out = b.synthesize_batch(TEXTS[:1], [xtts_clips[0].audio_path], "xx", [1])
    assert isinstance(out[0], ValueError) and "not supported" in str(out[0])
