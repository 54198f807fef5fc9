"""The fast XTTS training path (voicetune.backends.xtts.speed on the shared voicetune.backends.gpt_tts) gives
coqui-tts's loss, gradients and behaviour."""

from __future__ import annotations

import pytest
import torch

from voicetune.backends.gpt_tts import layers
from voicetune.backends.gpt_tts import speed as shared
from voicetune.backends.registry import train_config
from voicetune.backends.xtts import speed
from voicetune.config import RECOMPUTE_MODES, ConfigError


@pytest.fixture
def batch(xtts_backend, xtts_clips, tmp_path):
    """Four clips of different lengths, collated as the loop does (not packed yet)."""
    store = xtts_backend.build_features(xtts_clips[:4], tmp_path / "features")
    return xtts_backend.collate([store[i] for i in range(len(store))])


def _coqui(gpt, batch):
    return gpt(batch["text_inputs"], batch["text_lengths"], batch["audio_codes"], batch["wav_lengths"],
               cond_mels=batch["cond_mels"], cond_idxs=None, cond_lens=batch["cond_lens"])[:2]


@pytest.mark.parametrize("pad_multiple", [1, 16, 64])
@pytest.mark.parametrize("sdpa", [True, False])
def test_packed_loss_equals_coqui_forward(xtts_backend, batch, pad_multiple, sdpa):
    gpt = xtts_backend.model.gpt.eval()  # no dropout: both sides compute the same function
    constants = speed.GptConstants.of(gpt)
    packed = speed.pack_batch(batch, constants, pad_multiple)
    with torch.no_grad():
        ref = _coqui(gpt, batch)
        ours = speed.packed_loss(gpt, packed, sdpa=sdpa)
    for a, b in zip(ours, ref):
        assert abs(float(a) - float(b)) < 1e-5


def test_packed_gradients_equal_coqui_gradients(xtts_backend, batch):
    gpt = xtts_backend.model.gpt.eval()
    names = [
        "text_embedding.weight",
        "mel_head.weight",
        "gpt.h.0.attn.c_attn.weight",
        "conditioning_encoder.init.weight",
        "conditioning_perceiver.latents",
        "mel_pos_embedding.emb.weight",
    ]
    params = dict(gpt.named_parameters())
    grads = []
    packed = speed.pack_batch(batch, speed.GptConstants.of(gpt), 64)
    for fn in (lambda: _coqui(gpt, batch), lambda: speed.packed_loss(gpt, packed)):
        gpt.zero_grad(set_to_none=True)
        text_ce, mel_ce = fn()
        (0.01 * text_ce + mel_ce).backward()
        grads.append([params[n].grad.clone() for n in names])
    for name, a, b in zip(names, *grads):
        assert b.abs().max() > 0, name
        assert (a - b).norm() <= 1e-4 * b.norm(), name


def test_packed_rows_are_padded_at_the_end_to_the_multiple(xtts_backend, batch):
    gpt = xtts_backend.model.gpt
    constants = speed.GptConstants.of(gpt)
    coqui = speed.coqui_targets(batch, constants)
    packed = speed.pack_batch(batch, constants, 64)
    b, length = packed["text_targets"].shape
    assert length % 64 == 0 and packed["text_ids"].shape == (b, length - constants.cond_tokens)
    # the same targets, in the same order, as coqui's padded layout
    for row in range(b):
        for ours, theirs in (("text_targets", "text_tg"), ("mel_targets", "mel_tg")):
            mine = packed[ours][row]
            ref = coqui[theirs][row]
            assert torch.equal(mine[mine != -1], ref[ref != -1])
        real = constants.cond_tokens + int(coqui["n_text"][row] + coqui["n_mel"][row])
        assert (packed["text_targets"][row, real:] == -1).all() and (
            packed["mel_targets"][row, real:] == -1
        ).all()
    # one multiple for every batch of the same longest clip: a compiled graph is reused
    assert layers.round_up(1, 64) == 64 and layers.round_up(64, 64) == 64 and layers.round_up(65, 64) == 128


def test_recomputation_gives_the_same_loss_and_gradients(xtts_backend, batch):
    gpt = xtts_backend.model.gpt.train()  # dropout on: recomputation must not change the masks
    packed = speed.pack_batch(batch, speed.GptConstants.of(gpt), 64)
    names = [
        "gpt.h.0.mlp.c_fc.weight",
        "gpt.h.1.ln_2.weight",
        "gpt.h.1.attn.c_attn.weight",
        "text_embedding.weight",
    ]
    params = dict(gpt.named_parameters())
    results = {}
    for checkpointing in RECOMPUTE_MODES:
        gpt.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        text_ce, mel_ce = speed.packed_loss(gpt, packed, checkpointing=checkpointing)
        (text_ce + mel_ce).backward()
        results[checkpointing] = (float(mel_ce.detach()), [params[n].grad.clone() for n in names])
    loss, grads = results["none"]
    for mode in ("mlp", "layer"):
        assert results[mode][0] == pytest.approx(loss, abs=1e-6), mode
        for name, a, b in zip(names, results[mode][1], grads):
            assert b.abs().max() > 0, name
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=f"{mode}: {name}")
    with pytest.raises(ValueError, match="checkpointing"):
        speed.packed_loss(gpt, packed, checkpointing=True)


def test_mlp_recomputation_is_a_speed_setting_that_cuda_graphs_allow():
    from voicetune.training import graphs

    cfg = train_config(param_dtype="bf16", precision="bf16", checkpoint_mlp=True)
    assert shared.SpeedSettings.resolve(cfg, torch.device("cpu")).recompute == "mlp"
    assert graphs.config_allows(cfg, torch.device("cuda")) == ""
    with pytest.raises(ConfigError, match="drop --checkpoint-mlp"):
        train_config(checkpoint_mlp=True, gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="packed loss"):
        train_config(checkpoint_mlp=True, fast_loss=False, compile="off")


def test_sdpa_conditioning_attention_matches_the_original(xtts_backend):
    from TTS.tts.layers.tortoise.arch_utils import AttentionBlock, QKVAttentionLegacy

    gpt = xtts_backend.model.gpt
    keys = set(gpt.state_dict())
    legacy = QKVAttentionLegacy(4)
    qkv = torch.randn(2, 4 * 3 * 16, 50)
    torch.testing.assert_close(layers.SdpaQKVAttention(legacy)(qkv), legacy(qkv), rtol=1e-5, atol=1e-5)
    # evaluation and synthesis run the original kernels: the same audio as the exported model makes
    assert torch.equal(layers.SdpaQKVAttention(legacy).eval()(qkv), legacy(qkv))
    layers.set_attention(gpt, "sdpa")
    blocks = [m for m in gpt.conditioning_encoder.modules() if isinstance(m, AttentionBlock)]
    assert blocks and all(isinstance(b.attention, layers.SdpaQKVAttention) for b in blocks)
    layers.set_attention(gpt, "eager")
    assert all(isinstance(b.attention, QKVAttentionLegacy) for b in blocks)
    assert set(gpt.state_dict()) == keys  # nothing saved changes


def test_speed_settings_resolve_per_device_and_explain_bad_combinations():
    cpu = torch.device("cpu")
    assert shared.SpeedSettings.resolve(train_config(), cpu).compile is False  # auto: only on CUDA
    with pytest.raises(ValueError, match="precision"):
        shared.SpeedSettings.resolve(train_config(param_dtype="bf16"), cpu)  # auto is fp32 on a CPU
    with pytest.raises(ConfigError, match="packed loss"):
        train_config(fast_loss=False, compile="on")
    with pytest.raises(ConfigError, match="param-dtype"):
        train_config(optimizer_state_dtype="bf16")
    with pytest.raises(ConfigError, match="pad-multiple"):
        train_config(pad_multiple=0)


def test_bf16_weights_train_at_a_tiny_lr_and_still_synthesize(xtts_backend, xtts_clips, tmp_path):
    from voicetune.training.optim import FlatAdamW, build_optimizer

    cfg = train_config(precision="bf16", param_dtype="bf16", optimizer_state_dtype="bf16", compile="off",
                       lr=5e-6)
    store = xtts_backend.build_features(xtts_clips[:2], tmp_path / "features")
    xtts_backend.configure_training(cfg)
    gpt = xtts_backend.model.gpt
    assert gpt.mel_head.weight.dtype == torch.bfloat16 and gpt.final_norm.weight.dtype == torch.float32
    optimizer = build_optimizer(xtts_backend.param_groups(cfg), cfg, torch.device("cpu"))
    assert isinstance(optimizer, FlatAdamW)
    before = gpt.gpt.h[0].attn.c_attn.weight.detach().clone()
    batch = xtts_backend.collate([store[0], store[1]])
    assert "text_targets" in batch  # packed at collate time
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = xtts_backend.loss(batch, cfg)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    optimizer.step()
    assert (gpt.gpt.h[0].attn.c_attn.weight != before).float().mean() > 0.01
    wav = xtts_backend.synthesize("Hello there.", [xtts_clips[0].audio_path], "en", seed=0)
    assert wav.audio.dtype.name == "float32" and wav.audio.size > 0


@pytest.mark.gpu
def test_compiled_loss_matches_eager_on_cuda(xtts_base, xtts_clips, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from voicetune.backends.base import get_backend

    b = get_backend("xtts")
    b.load_base(xtts_base, torch.device("cuda"))
    store = b.build_features(xtts_clips[:4], tmp_path / "f")
    b.configure_training(train_config(compile="on"))
    gpt = b.model.gpt.eval()
    batch = {k: v.cuda() for k, v in b.collate([store[i] for i in range(len(store))]).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        compiled = b._speed.loss(batch)
        eager = speed.packed_loss(gpt, batch)
    for a, e in zip(compiled, eager):
        assert abs(float(a) - float(e)) < 2e-2


def _flat_setup(xtts_backend, xtts_clips, tmp_path, **overrides):
    from voicetune.training.optim import build_optimizer

    cfg = train_config(precision="bf16", param_dtype="bf16", compile="off", dropout=0.0, **overrides)
    store = xtts_backend.build_features(xtts_clips[:4], tmp_path / "features")
    xtts_backend.configure_training(cfg)
    xtts_backend.model.gpt.eval()  # no dropout: both paths compute the same function
    optimizer = build_optimizer(xtts_backend.param_groups(cfg), cfg, torch.device("cpu"))
    return cfg, xtts_backend.collate([store[i] for i in range(len(store))]), optimizer


def _grads(optimizer):
    return [p.grad.detach().float().clone() for g in optimizer.param_groups for p in g["params"]]


@pytest.mark.parametrize("recompute", ["none", "mlp", "layer"])
def test_the_loss_on_flat_weight_buffers_equals_the_loss_on_the_modules(xtts_backend, xtts_clips, tmp_path,
                                                                       recompute):
    cfg, batch, optimizer = _flat_setup(xtts_backend, xtts_clips, tmp_path, checkpoint_mlp=recompute == "mlp",
                                         gradient_checkpointing=recompute == "layer")
    fast = xtts_backend._speed
    assert fast._flat_loss() is not None  # FlatAdamW's buffers are found
    results = []
    for use_flat in (True, False):
        fast._flat_allowed = use_flat
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = xtts_backend.loss(batch, cfg)
        out["loss"].backward()
        results.append((float(out["loss"].detach()), _grads(optimizer)))
    (flat_loss, flat_grads), (module_loss, module_grads) = results
    assert flat_loss == pytest.approx(module_loss, rel=1e-6)
    assert len(flat_grads) <= 8 < sum(1 for p in xtts_backend.model.gpt.parameters() if p.requires_grad)
    for a, b in zip(flat_grads, module_grads):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same kernels on the same values
    # the per-parameter gradient views see the flat gradient
    w = xtts_backend.model.gpt.gpt.h[0].attn.c_attn.weight
    assert w.grad is not None and w.grad.abs().max() > 0


def test_a_new_optimizer_moves_the_weights_and_the_flat_loss_follows(xtts_backend, xtts_clips, tmp_path):
    from voicetune.training.optim import build_optimizer

    cfg, batch, _ = _flat_setup(xtts_backend, xtts_clips, tmp_path)
    fast = xtts_backend._speed
    old_layout = fast._flat_loss()[0]
    second = build_optimizer(xtts_backend.param_groups(cfg), cfg, torch.device("cpu"))  # flattens again
    second.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xtts_backend.loss(batch, cfg)["loss"].backward()
    assert fast._flat is not old_layout and fast._flat.current()
    assert all(g.abs().max() > 0 for g in _grads(second))  # the gradients reached the new buffers


def test_without_flat_buffers_the_loss_runs_on_the_modules(xtts_backend, xtts_clips, tmp_path):
    cfg = train_config(precision="bf16", compile="off")  # fp32 weights: torch AdamW, no flat buffers
    xtts_backend.configure_training(cfg)
    torch.optim.AdamW(xtts_backend.param_groups(cfg))
    assert xtts_backend._speed._flat_loss() is None


def test_aligned_linear_gives_the_heads_outputs_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 13)  # an odd output size, like XTTS's 6681 text tokens
    x = torch.randn(5, 16, requires_grad=True)
    ours = layers.aligned_linear(x, head, multiple=8)
    ours.sum().backward()
    grads = (x.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    x.grad = head.weight.grad = head.bias.grad = None
    ref = head(x)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, (x.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(a, b)
    assert ours.shape == (5, 13)


def test_sdpa_conditioning_attention_keeps_no_attention_matrix_for_backward():
    from TTS.tts.layers.tortoise.arch_utils import QKVAttentionLegacy

    def saved_bytes(attention, qkv):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            attention(qkv)
        return sum(storages.values())

    heads, ch, length = 4, 16, 256
    qkv = torch.randn(2, heads * 3 * ch, length, requires_grad=True)
    matrix = 2 * heads * length * length * 4  # one float32 [T, T] matrix per head
    legacy = QKVAttentionLegacy(heads)
    assert saved_bytes(legacy, qkv) >= matrix
    assert saved_bytes(layers.SdpaQKVAttention(legacy), qkv) < matrix / 2
