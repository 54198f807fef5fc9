"""The packed Tortoise loss (voicetune.backends.tortoise.speed on the shared gpt_tts code) gives
UnifiedVoice.forward's losses and gradients, padding included, and trains on the shared speed work."""

from __future__ import annotations

import pytest
import torch

from voicetune.backends.registry import train_config
from voicetune.backends.tortoise import speed
from voicetune.config import RECOMPUTE_MODES


@pytest.fixture
def batch(tortoise_backend, tortoise_clips, tmp_path):
    """Four clips of different lengths, collated as the loop does (not packed: no speed settings yet)."""
    store = tortoise_backend.build_features(tortoise_clips[:4], tmp_path / "features")
    return tortoise_backend.collate([store[i] for i in range(len(store))])


def _coqui(gpt, batch):
    latent = gpt.get_conditioning(batch["cond_mels"])
    return gpt(latent, batch["text_inputs"], batch["text_lengths"], batch["audio_codes"].clone(),
               batch["wav_lengths"])[:2]


@pytest.mark.parametrize("pad_multiple", [1, 64])
@pytest.mark.parametrize("sdpa", [True, False])
def test_packed_loss_equals_unified_voice_forward(tortoise_backend, batch, pad_multiple, sdpa):
    gpt = tortoise_backend.gpt.eval()
    packed = speed.pack_batch(batch, speed.TortoiseConstants.of(gpt), pad_multiple)
    with torch.no_grad():
        ref = _coqui(gpt, batch)
        ours = speed.packed_loss(gpt, packed, sdpa=sdpa)
    for a, b in zip(ours, ref):
        assert abs(float(a) - float(b)) < 1e-5


def test_packed_gradients_equal_unified_voice_gradients(tortoise_backend, batch):
    gpt = tortoise_backend.gpt.eval()
    names = ["text_embedding.weight", "mel_head.weight", "gpt.h.0.attn.c_attn.weight",
             "conditioning_encoder.init.weight", "mel_pos_embedding.emb.weight", "final_norm.weight"]
    params = dict(gpt.named_parameters())
    packed = speed.pack_batch(batch, speed.TortoiseConstants.of(gpt), 64)
    grads = []
    for fn in (lambda: _coqui(gpt, batch), lambda: speed.packed_loss(gpt, packed)):
        gpt.zero_grad(set_to_none=True)
        text_ce, mel_ce = fn()
        (0.01 * text_ce + mel_ce).backward()
        grads.append([params[n].grad.clone() for n in names])
    for name, a, b in zip(names, *grads):
        assert b.abs().max() > 0, name
        assert (a - b).norm() <= 1e-4 * b.norm(), name


def test_rows_keep_coquis_layout_and_count_its_padding(tortoise_backend, batch):
    c = speed.TortoiseConstants.of(tortoise_backend.gpt)
    coqui = speed.coqui_inputs(batch, c)
    packed = speed.pack_batch(batch, c, 64)
    b, length = packed["text_targets"].shape
    n_text, n_mel = coqui["text_tg"].shape[1], coqui["mel_tg"].shape[1]
    assert length % 64 == 0 and length >= 1 + n_text + n_mel
    for row in range(b):  # every text and code position counts, padding included (as UnifiedVoice.forward)
        assert torch.equal(packed["text_targets"][row, 1 : 1 + n_text], coqui["text_tg"][row])
        assert torch.equal(packed["mel_targets"][row, 1 + n_text : 1 + n_text + n_mel], coqui["mel_tg"][row])
    assert (packed["text_targets"][:, 1 + n_text + n_mel :] == -1).all()  # only the tail is ignored
    lengths = batch["wav_lengths"] // c.code_stride
    short = int(lengths.argmin())
    assert (coqui["mel_in"][short, 2 + int(lengths[short]) :] == c.stop_audio).all()  # set_mel_padding


@pytest.mark.slow  # the recomputation itself is shared code, tested on XTTS in the fast suite
def test_recomputation_gives_the_same_loss_and_gradients(tortoise_backend, batch):
    gpt = tortoise_backend.gpt.train()  # dropout on: recomputation must not change the masks
    packed = speed.pack_batch(batch, speed.TortoiseConstants.of(gpt), 64)
    names = ["gpt.h.0.mlp.c_fc.weight", "gpt.h.1.attn.c_attn.weight", "conditioning_encoder.init.weight"]
    params = dict(gpt.named_parameters())
    results = {}
    for mode in RECOMPUTE_MODES:
        gpt.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        text_ce, mel_ce = speed.packed_loss(gpt, packed, checkpointing=mode)
        (text_ce + mel_ce).backward()
        results[mode] = (float(mel_ce.detach()), [params[n].grad.clone() for n in names])
    for mode in ("mlp", "layer"):
        assert results[mode][0] == pytest.approx(results["none"][0], abs=1e-6), mode
        for a, b in zip(results[mode][1], results["none"][1]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _bf16(tortoise_backend, tortoise_clips, tmp_path):
    from voicetune.training.optim import build_optimizer

    cfg = train_config(backend="tortoise", precision="bf16", param_dtype="bf16", optimizer_state_dtype="bf16",
                       compile="off", dropout=0.0, checkpoint_mlp=True)
    store = tortoise_backend.build_features(tortoise_clips[:4], tmp_path / "features")
    tortoise_backend.configure_training(cfg)
    optimizer = build_optimizer(tortoise_backend.param_groups(cfg), cfg, torch.device("cpu"))
    return cfg, store, optimizer


def test_bf16_flat_weights_give_the_module_loss(tortoise_backend, tortoise_clips, tmp_path):
    from voicetune.training.optim import FlatAdamW

    b = tortoise_backend
    cfg, store, optimizer = _bf16(b, tortoise_clips, tmp_path)
    assert isinstance(optimizer, FlatAdamW) and b._speed._flat_loss() is not None
    assert b.gpt.mel_head.weight.dtype == torch.bfloat16 and b.gpt.final_norm.weight.dtype == torch.float32
    batch = b.collate([store[i] for i in range(len(store))])
    b.gpt.eval()
    results = []
    for use_flat in (True, False):
        b._speed._flat_allowed = use_flat
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = b.loss(batch, cfg)
        out["loss"].backward()
        results.append((float(out["loss"].detach()),
                        [p.grad.float().clone() for g in optimizer.param_groups for p in g["params"]]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, c in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    before = b.gpt.gpt.h[0].attn.c_attn.weight.detach().clone()
    optimizer.step()
    assert (b.gpt.gpt.h[0].attn.c_attn.weight != before).float().mean() > 0.01


@pytest.mark.slow  # bf16 autocast on a CPU is slow
def test_bf16_weights_still_synthesize_float32_audio(tortoise_backend, tortoise_clips, tmp_path):
    _bf16(tortoise_backend, tortoise_clips, tmp_path)
    wav = tortoise_backend.synthesize("Hello there.", [tortoise_clips[0].audio_path], "en", seed=0)
    assert wav.audio.dtype.name == "float32" and wav.audio.size > 0


@pytest.mark.gpu
def test_compiled_graphed_loss_matches_eager_on_cuda(tortoise_base, tortoise_clips, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from voicetune.backends.base import get_backend

    b = get_backend("tortoise")
    b.load_base(tortoise_base, torch.device("cuda"))
    store = b.build_features(tortoise_clips[:4], tmp_path / "f")
    b.configure_training(train_config(backend="tortoise", compile="on"))
    gpt = b.gpt.eval()
    batch = {k: v.cuda() for k, v in b.collate([store[i] for i in range(len(store))]).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        compiled = b._speed.loss(batch)
        eager = speed.packed_loss(gpt, batch)
    for a, e in zip(compiled, eager):
        assert abs(float(a) - float(e)) < 2e-2
