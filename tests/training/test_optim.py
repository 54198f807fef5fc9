"""FlatAdamW: the AdamW for bf16 weights (flat buffers, stochastic rounding) and its choice by
build_optimizer."""

from __future__ import annotations

import copy

import pytest
import torch

from voicetune.config import TrainConfig
from voicetune.training.optim import FlatAdamW, build_optimizer, stochastic_round


def _model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Tanh(), torch.nn.Linear(48, 8)).to(dtype)


def _groups(m: torch.nn.Module) -> list[dict]:
    return [{"params": [m[0].weight, m[2].weight], "weight_decay": 0.1},
            {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0}]


def _backward(m: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 32, generator=g).to(m[0].weight.dtype)
    m(x).float().pow(2).mean().backward()


def test_fp32_weights_follow_torch_adamw_exactly():
    ours, ref = _model(), _model()
    opt = FlatAdamW(_groups(ours), lr=1e-2, betas=(0.9, 0.96), compiled=False)
    ref_opt = torch.optim.AdamW(_groups(ref), lr=1e-2, betas=(0.9, 0.96), foreach=False)
    for step in range(4):
        for m, o in ((ours, opt), (ref, ref_opt)):
            _backward(m, step)
            o.step()
            o.zero_grad()
    for a, b, start in zip(ours.parameters(), ref.parameters(), _model().parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert not torch.equal(a, start)


def test_bf16_weights_move_at_lr_5e_6_and_the_update_is_unbiased():
    """Round-to-nearest drops a 5e-6 update on weights ~0.02 (bf16 spacing there is ~1e-4); stochastic
    rounding moves a few percent of them by one spacing, so that the mean update is exact."""
    torch.manual_seed(0)
    w0 = (torch.randn(200_000) * 0.02).to(torch.bfloat16)
    grad = torch.randn(200_000).to(torch.bfloat16)
    ours = torch.nn.Parameter(w0.clone())
    plain = torch.nn.Parameter(w0.clone())
    opt = FlatAdamW([ours], lr=5e-6, weight_decay=0.0, compiled=False)
    ours.grad.copy_(grad)
    opt.step()
    plain.grad = grad.clone()
    torch.optim.AdamW([plain], lr=5e-6, weight_decay=0.0).step()

    big = w0.float().abs() > 0.01  # bf16 spacing >= 6e-5 here: 12x the update
    # the problem: with round-to-nearest none of these weights ever moves
    assert torch.equal(plain.detach()[big], w0[big])
    delta = (ours.detach().float() - w0.float())[big]
    moved = (delta != 0).float().mean().item()
    assert 0.01 < moved < 0.2
    mean_step = (delta * grad.float()[big].sign()).mean().item()  # Adam's first step is lr * sign(g)
    assert mean_step == pytest.approx(-5e-6, rel=0.05)


def test_stochastic_round_is_unbiased_and_exact_on_representable_values():
    torch.manual_seed(0)
    x = torch.full((100_000,), 1.0 + 2**-10)  # between two bf16 values (spacing 2**-7 at 1.0)
    r = stochastic_round(x, torch.bfloat16).float()
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert r.mean().item() == pytest.approx(1.0 + 2**-10, rel=1e-4)
    exact = torch.tensor([0.5, -3.0, 0.0, 1024.0])
    assert torch.equal(stochastic_round(exact, torch.bfloat16).float(), exact)


def test_grads_live_in_one_buffer_accumulate_and_are_zeroed():
    m = _model(torch.bfloat16)
    opt = FlatAdamW(_groups(m), lr=1e-3, state_dtype=torch.bfloat16, compiled=False)
    flat = [p for g in opt.param_groups for p in g["params"]]
    assert len(flat) == 2 and all(p.dim() == 1 for p in flat)  # the loop clips 2 tensors, not 4
    assert sum(p.numel() for p in flat) == sum(p.numel() for p in m.parameters())
    _backward(m, 0)
    once = m[0].weight.grad.clone()
    _backward(m, 0)
    torch.testing.assert_close(m[0].weight.grad, 2 * once)
    assert torch.equal(flat[0].grad[: m[0].weight.numel()], m[0].weight.grad.reshape(-1))
    opt.zero_grad(set_to_none=True)
    assert m[0].weight.grad is not None and not m[0].weight.grad.any()


def test_state_dict_round_trip_continues_identically():
    m = _model(torch.bfloat16)
    opt = FlatAdamW(_groups(m), lr=1e-3, state_dtype=torch.bfloat16, compiled=False)
    for step in range(2):
        _backward(m, step)
        opt.step()
        opt.zero_grad()
    saved = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(m)
    twin_opt = FlatAdamW(_groups(twin), lr=1e-3, state_dtype=torch.bfloat16, compiled=False)
    twin_opt.load_state_dict(saved)
    for model, o in ((m, opt), (twin, twin_opt)):
        _backward(model, 7)
        torch.manual_seed(3)  # the same rounding noise
        o.step()
    for a, b in zip(m.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not a FlatAdamW state"):
        FlatAdamW(_groups(_model(torch.bfloat16)), compiled=False).load_state_dict(
            torch.optim.AdamW(_model().parameters()).state_dict())


def test_build_optimizer_uses_flat_adamw_for_bf16_weights():
    m = _model(torch.bfloat16)
    cfg = TrainConfig(precision="bf16", param_dtype="bf16", optimizer_state_dtype="bf16", compile="off")
    opt = build_optimizer(_groups(m), cfg, torch.device("cpu"))
    assert isinstance(opt, FlatAdamW) and opt.state_dtype == torch.bfloat16
    assert isinstance(
        build_optimizer(_groups(_model()), TrainConfig(), torch.device("cpu")), torch.optim.AdamW
    )


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clipping_folded_into_the_step_equals_clip_grad_norm_then_adamw(max_norm):
    ours, ref = _model(), _model()
    opt = FlatAdamW(_groups(ours), lr=1e-2, compiled=False)
    ref_opt = torch.optim.AdamW(_groups(ref), lr=1e-2, foreach=False)
    for step in range(3):
        _backward(ours, step)
        _backward(ref, step)
        norm = opt.clip_gradients(max_norm)
        ref_norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), max_norm)
        assert float(norm) == pytest.approx(float(ref_norm), rel=1e-5)
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the scale applies to one step only: after it (or zero_grad) the next step is unclipped
    assert opt._grad_scale is None


def test_a_skipped_step_forgets_its_clipping():
    m = _model()
    opt = FlatAdamW(_groups(m), lr=1e-2, compiled=False)
    _backward(m, 0)
    opt.clip_gradients(1e-9)  # would scale the next update to almost nothing
    opt.zero_grad()  # the loop skips this step
    assert opt._grad_scale is None
