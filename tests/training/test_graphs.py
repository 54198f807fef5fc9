"""CUDA graphs of a micro-batch's forward + backward: when they apply, and that replays train like eager
steps."""

from __future__ import annotations

import pytest
import torch
from backends.fake import FakeBackend

from voicetune.backends.registry import train_config
from voicetune.config import ConfigError, TrainConfig
from voicetune.training import graphs
from voicetune.training.optim import FlatAdamW


class _NoGraphs(FakeBackend):
    supports_cuda_graphs = False  # as a backend whose loss no CUDA graph may capture


def _flat_optimizer():
    return FlatAdamW([torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))], compiled=False)


def test_graphs_are_off_where_they_cannot_apply_and_on_says_why():
    cpu = torch.device("cpu")
    auto, on = (
        TrainConfig(param_dtype="bf16", precision="bf16"),
        TrainConfig(param_dtype="bf16", precision="bf16", cuda_graphs="on"),
    )
    assert graphs.build(FakeBackend(), _flat_optimizer(), auto, cpu, "bf16") is None
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        graphs.build(FakeBackend(), _flat_optimizer(), on, cpu, "bf16")
    cuda = torch.device("cuda")
    reasons = [
        graphs._unsupported(FakeBackend(), torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]), auto,
                            cuda,
                            "bf16"),
        graphs._unsupported(_NoGraphs(), _flat_optimizer(), auto, cuda, "bf16"),
        graphs._unsupported(FakeBackend(), _flat_optimizer(),
                            TrainConfig(compile_mode="reduce-overhead", param_dtype="bf16", precision="bf16"),
                            cuda, "bf16"),
    ]
    assert "--param-dtype bf16" in reasons[0] and "does not capture its loss" in reasons[1]
    assert "captures its own CUDA graphs" in reasons[2]
    assert graphs.build(FakeBackend(), _flat_optimizer(), TrainConfig(cuda_graphs="off"), cpu, "bf16") is None
    # the decision the backend is told before the optimizer exists (Backend.configure_training)
    assert graphs.planned(FakeBackend(), auto, cuda) and not graphs.planned(_NoGraphs(), auto, cuda)
    assert not graphs.planned(FakeBackend(), auto, cpu)


def test_config_refuses_cuda_graphs_on_without_fixed_gradient_buffers():
    with pytest.raises(ConfigError, match="param-dtype bf16"):
        TrainConfig(cuda_graphs="on")
    with pytest.raises(ConfigError, match="compile-mode default"):
        TrainConfig(cuda_graphs="on", param_dtype="bf16", precision="bf16", compile_mode="reduce-overhead")


@pytest.mark.gpu
# compile scope (off: none) + recompute
@pytest.mark.parametrize("variant", ["off", "model", "layers", "model+mlp"])
def test_graph_replays_train_like_eager_steps_on_cuda(tone_dataset, xtts_for_training, tmp_path, variant):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from voicetune.backends.tiny import make_tiny_base
    from voicetune.training.distributed import Dist
    from voicetune.training.oom import MicroBatchPlan
    from voicetune.training.optim import build_optimizer
    from voicetune.training.step import StepEngine

    base = make_tiny_base("xtts", tmp_path / "base", dataset=tone_dataset, seed=0)
    device = torch.device("cuda")
    losses = {}
    for setting in ("off", "on"):
        torch.manual_seed(0)
        cfg = train_config(batch_size=2, grad_accum=2, precision="bf16", param_dtype="bf16", dropout=0.0,
                           compile="off" if variant == "off" else "on",
                           checkpoint_mlp=variant.endswith("+mlp"),
                           compile_scope="layers" if variant == "layers" else "model",
                           cuda_graphs=setting)
        backend, store = xtts_for_training(base, tone_dataset, cfg, device)
        optimizer = build_optimizer(backend.param_groups(cfg), cfg, device)
        engine = StepEngine(
            backend, store, optimizer, cfg, device, "bf16", Dist(), MicroBatchPlan(per_rank=4, size=2)
        )
        assert (engine.graphs is not None) == (setting == "on")
        losses[setting] = [engine.run(step, [(i % len(store), 0) for i in range(step, step + 4)])["loss"]
                           for step in range(1, 6)]
        if setting == "on":
            assert engine.graphs.graphs  # at least one shape was captured and replayed
    assert losses["on"] == pytest.approx(losses["off"], rel=2e-2)
    assert losses["on"][-1] < losses["on"][0]


def test_checkpointing_and_fp32_weights_rule_graphs_out_before_the_optimizer_exists():
    cuda = torch.device("cuda")
    assert graphs.config_allows(TrainConfig(param_dtype="bf16", precision="bf16"), cuda) == ""
    assert "checkpointing" in graphs.config_allows(
        TrainConfig(param_dtype="bf16", precision="bf16", gradient_checkpointing=True), cuda)
    assert "bf16" in graphs.config_allows(TrainConfig(), cuda)
    with pytest.raises(ConfigError, match="gradient-checkpointing"):
        TrainConfig(param_dtype="bf16", precision="bf16", cuda_graphs="on", gradient_checkpointing=True)
