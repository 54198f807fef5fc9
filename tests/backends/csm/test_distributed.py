"""CSM under data parallelism (2 CPU processes with gloo, as on 2 GPUs with NCCL) follows the one-process
trajectory, and torch.compile of the layers gives the eager loss and gradients."""

from __future__ import annotations

import json

import pytest
import torch
from _ddp import train_on_two_processes

from voicetune.training.loop import train

COMMON = {"backend": "csm", "finetune": "lora", "lora_dropout": 0.0, "max_steps": 3, "seed": 5, "lr": 1e-3,
          "device": "cpu", "eval_every": 0, "eval_every_epochs": 0, "save_every": 3, "batch_size": 2}


@pytest.mark.slow
def test_two_cpu_processes_follow_the_one_process_loss_trajectory(spanish_dataset, csm_base, tmp_path):
    two = tmp_path / "two"
    done = train_on_two_processes(spanish_dataset, csm_base, two, COMMON, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    one = train(spanish_dataset, csm_base, tmp_path / "one", grad_accum=2, **COMMON)
    two_losses = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(two_losses) == len(one.losses) == 3
    for a, b in zip(two_losses, one.losses, strict=True):
        for key in ("loss", "backbone_ce", "depth_ce"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a, b)
    assert json.loads((two / "run.json").read_text())["training"]["world_size"] == 2


@pytest.mark.slow
def test_compiled_layers_give_the_eager_loss_and_gradients(csm_base, spanish_dataset, tmp_path):
    from voicetune.backends.csm.loss import csm_loss
    from voicetune.backends.registry import get_backend, train_config
    from voicetune.data.manifest import Dataset

    backend = get_backend("csm")
    backend.load_base(csm_base, torch.device("cpu"))
    cfg = train_config(backend="csm", finetune="lora", lora_dropout=0.0, compile="on", device="cpu")
    backend.configure_model(cfg)
    store = backend.build_features(Dataset.load(spanish_dataset).train, tmp_path / "features")
    backend.configure_training(cfg)
    batch = backend.collate([store[0], store[1]])
    compiled = backend.loss(batch, cfg)
    compiled["loss"].backward()
    grads = {n: p.grad.clone() for n, p in backend.model.named_parameters() if p.grad is not None}
    backend.model.zero_grad(set_to_none=True)
    eager = csm_loss(backend.model, batch)
    eager["loss"].backward()
    for key in ("loss", "backbone_ce", "depth_ce"):
        assert compiled[key].item() == pytest.approx(eager[key].item(), rel=1e-5)
    assert grads and all(
        torch.allclose(grads[n], p.grad, atol=1e-6)
        for n, p in backend.model.named_parameters()
        if p.grad is not None
    )
