"""One optimizer step: out-of-memory recovery, fp16 loss scaling, non-finite steps never reach the weights."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from voicetune.training import oom
from voicetune.training.loop import train


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def simulated_gpu_limit():
    oom.simulate_limit(1)  # micro-batches of more than one clip "run out of memory"
    yield
    oom.simulate_limit(None)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(
        tiny_dataset, tiny_base, tmp_path, train_options, simulated_gpu_limit, caplog):
    caplog.set_level(logging.WARNING, logger="voicetune.training.oom")
    recovered = train(tiny_dataset, tiny_base, tmp_path / "oom", max_steps=3, **train_options)
    assert [h["micro_batch"] for h in recovered.losses] == [1, 1, 1]
    assert sum("out of memory at step 1 with micro-batch 2" in r.getMessage() for r in caplog.records) == 1
    # the same computation as a run configured with micro-batch 1 x accumulation 2 from the start
    oom.simulate_limit(None)
    planned = train(tiny_dataset, tiny_base, tmp_path / "planned", max_steps=3,
                    **{**train_options, "batch_size": 1, "grad_accum": 2})
    assert _losses(tmp_path / "oom") == pytest.approx(_losses(tmp_path / "planned"), abs=1e-6)
    assert planned.steps == recovered.steps == 3


def test_out_of_memory_at_one_clip_stops_with_advice(tiny_dataset, tiny_base, tmp_path, train_options):
    from voicetune.training.errors import TrainError

    oom.simulate_limit(0)
    try:
        with pytest.raises(TrainError, match="gradient-checkpointing"):
            train(tiny_dataset, tiny_base, tmp_path / "run", max_steps=1, **train_options)
    finally:
        oom.simulate_limit(None)


def test_fp16_scales_the_loss_and_skips_steps_whose_gradients_overflow(tiny_dataset, tiny_base, tmp_path,
                                                                       train_options):
    result = train(tiny_dataset, tiny_base, tmp_path / "run", max_steps=3, precision="fp16", **train_options)
    scales = [h["loss_scale"] for h in result.losses]
    skipped = [h["skipped"] for h in result.losses]
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in result.losses])))
    assert scales[0] == 65536.0  # GradScaler's initial scale
    # an overflow halves the scale and skips that step; a clean step keeps the scale
    for s0, s1, skip in zip(scales, scales[1:], skipped):
        assert (s1 == s0 / 2) if skip else (s1 == s0)
    assert result.steps == 3


class _Diverging:
    """The real backend whose loss turns NaN while ``diverged`` is set (as after a bad update)."""

    def __init__(self, backend):
        self.backend, self.diverged = backend, False

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def loss(self, batch, cfg):
        out = self.backend.loss(batch, cfg)
        return {**out, "loss": out["loss"] * float("nan")} if self.diverged else out


def test_a_non_finite_loss_skips_the_step_and_a_streak_of_them_stops_training(tiny_dataset, tiny_base,
                                                                             xtts_for_training, caplog):
    from voicetune.backends.registry import train_config
    from voicetune.training.distributed import Dist
    from voicetune.training.errors import TrainError
    from voicetune.training.optim import build_optimizer
    from voicetune.training.step import MAX_SKIPPED_IN_A_ROW, StepEngine

    caplog.set_level(logging.WARNING, logger="voicetune.training.step")
    cfg = train_config(batch_size=2, precision="fp32", dropout=0.0)
    device = torch.device("cpu")
    real, store = xtts_for_training(tiny_base, tiny_dataset, cfg, device)
    backend = _Diverging(real)
    optimizer = build_optimizer(real.param_groups(cfg), cfg, device)
    engine = StepEngine(
        backend, store, optimizer, cfg, device, "fp32", Dist(), oom.MicroBatchPlan(per_rank=2, size=2)
    )
    weights = lambda: [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    share = [(0, 0), (1, 0)]

    before = weights()
    backend.diverged = True
    logged = engine.run(1, share)
    assert logged["skipped"] == 1.0 and all(torch.equal(a, b) for a, b in zip(before, weights()))
    assert "step 1 skipped: loss became nan" in caplog.text
    backend.diverged = False
    logged = engine.run(2, share)
    assert logged["skipped"] == 0.0 and torch.isfinite(torch.tensor(logged["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, weights()))
    backend.diverged = True
    for step in range(3, 3 + MAX_SKIPPED_IN_A_ROW - 1):
        engine.run(step, share)
    with pytest.raises(TrainError, match="non-finite"):
        engine.run(99, share)


def test_the_next_steps_first_micro_batch_is_collated_during_this_step(tiny_dataset, tiny_base,
                                                                       xtts_for_training):
    """With ``upcoming``, a step collates the next step's first micro-batch before it waits for the device,
    and the next step uses it: one collate per micro-batch, and the same weights as steps that do not look
    ahead."""
    from voicetune.backends.registry import train_config
    from voicetune.training.distributed import Dist
    from voicetune.training.optim import build_optimizer
    from voicetune.training.sampler import StepSampler
    from voicetune.training.step import StepEngine

    cfg = train_config(batch_size=2, precision="fp32", dropout=0.0)
    device = torch.device("cpu")
    weights = {}
    for ahead in (False, True):
        torch.manual_seed(0)
        backend, store = xtts_for_training(tiny_base, tiny_dataset, cfg, device)
        optimizer = build_optimizer(backend.param_groups(cfg), cfg, device)
        engine = StepEngine(backend, store, optimizer, cfg, device, "fp32", Dist(),
                            oom.MicroBatchPlan(per_rank=2, size=1))  # two micro-batches a step
        collated = []
        collate = backend.collate
        backend.collate = lambda items, c=collated, f=collate: c.append(len(items)) or f(items)
        sampler = StepSampler(store.lengths(), step_size=2, seed=1)
        for step in range(1, 4):
            share = sampler.next_step()
            engine.run(step, share, sampler.peek_step() if ahead and step < 3 else None)
            assert (engine.ahead is not None) == (ahead and step < 3)
        assert collated == [1] * 6  # no micro-batch collated twice
        weights[ahead] = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(weights[False], weights[True], strict=True))
