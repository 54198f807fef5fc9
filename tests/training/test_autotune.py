"""Batch size, accumulation, precision and checkpointing from a measured dry run (`doctor --dataset`,
`--auto`)."""

from __future__ import annotations

import pytest
import torch

from voicetune.run import RunInfo
from voicetune.training.loop import train


def test_doctor_on_a_cpu_says_it_cannot_measure_and_recommends_cpu_settings(tiny_dataset, tiny_base):
    from voicetune import preflight as doctor_module

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: see the gpu-marked test")
    report = doctor_module.doctor(base=tiny_base, dataset=tiny_dataset)
    dry = [c for c in report.checks if c.name == "training dry run"]
    assert dry and dry[0].status == "warn" and "cannot measure GPU memory" in dry[0].detail
    assert any("--precision fp32" in r and r.startswith("CPU") for r in report.recommendations)


def test_train_auto_on_a_cpu_applies_cpu_settings_and_keeps_the_effective_batch(
    tiny_dataset, tiny_base, tmp_path
):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: see the gpu-marked test")
    train(tiny_dataset, tiny_base, tmp_path / "run", max_steps=1, batch_size=4, grad_accum=1, auto=True,
          eval_every=0, eval_every_epochs=0)
    training = RunInfo.load(tmp_path / "run").training
    assert (training["batch_size"], training["grad_accum"], training["global_batch"]) == (2, 2, 4)


@pytest.mark.gpu
def test_the_gpu_dry_run_measures_peak_memory_and_recommends_a_batch_that_fits(tone_dataset, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from voicetune.backends.registry import get_backend, train_config
    from voicetune.backends.tiny import make_tiny_base
    from voicetune.data.manifest import Dataset
    from voicetune.training import graphs
    from voicetune.training.autotune import HEADROOM, recommend

    base = make_tiny_base("xtts", tmp_path / "base", dataset=tone_dataset, seed=0)

    cfg = train_config(batch_size=2, grad_accum=4)
    backend = get_backend("xtts")
    backend.load_base(base, torch.device("cuda"))
    backend.configure_model(cfg)
    store = backend.build_features(Dataset.load(tone_dataset).train, tmp_path / "doctor_features")
    backend.configure_training(cfg, cuda_graphs=graphs.planned(backend, cfg, torch.device("cuda")))
    rec = recommend(backend, store, cfg, torch.device("cuda"))
    total = torch.cuda.get_device_properties(0).total_memory / 1024**3
    assert rec.probes and all(p.peak_gib > 0 for p in rec.probes if p.fits)
    assert rec.batch_size * rec.grad_accum >= 8 and rec.precision in ("bf16", "fp16")
    assert all(p.total_gib <= HEADROOM * total for p in rec.probes if p.fits)
    assert [p.batch_size for p in rec.probes] == sorted(p.batch_size for p in rec.probes)


def _probes(fitting: int, mode: str) -> list:
    from voicetune.training.autotune import Probe

    return [Probe(b, 1.0, 2.0, 0.1, b <= fitting, mode) for b in (1, 2, 4) if b <= fitting + 1]


def test_recomputation_escalates_cheapest_first_and_only_while_two_clips_do_not_fit():
    from voicetune.backends.registry import train_config
    from voicetune.config import with_recompute
    from voicetune.training.autotune import escalate

    fits = {"none": 1, "mlp": 4, "layer": 4}
    asked = []

    def measure_at(mode):
        asked.append(mode)
        return _probes(fits[mode], mode)

    assert escalate(measure_at, "none", need=2)[:2] == (4, "mlp") and asked == ["none", "mlp"]
    asked.clear()
    assert escalate(measure_at, "none", need=2, offered=("none", "layer"))[:2] == (4, "layer")  # no MLP mode
    assert asked == ["none", "layer"]
    asked.clear()
    fits.update(none=2)
    best, mode, probes = escalate(measure_at, "none", need=2)
    assert (best, mode, asked) == (2, "none", ["none"]) and all(p.recompute == "none" for p in probes)
    fits.update(none=0, mlp=0, layer=0)  # nothing fits anywhere: stay with the fastest, measured all the way
    asked.clear()
    assert escalate(measure_at, "none", need=2)[:2] == (0, "none") and asked == ["none", "mlp", "layer"]
    mlp = with_recompute(train_config(), "mlp")  # the XTTS options' own recomputation field
    assert mlp.recompute == "mlp" and mlp.backend_options.checkpoint_mlp and not mlp.gradient_checkpointing
    layer = with_recompute(mlp, "layer")
    assert layer.recompute == "layer" and not layer.backend_options.checkpoint_mlp
    assert train_config(fast_loss=False).backend_options.recompute_modes() == ("none", "layer")
