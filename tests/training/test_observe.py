"""What training reports: per-step rates, ETA, memory and MFU in the log, metrics.jsonl, TensorBoard,
run.json."""

from __future__ import annotations

import json
import re

import pytest
import torch

from voicetune.run import RunInfo
from voicetune.training.observe import format_duration, mem_line, peak_flops, progress_text, step_flops

STEP_FIELDS = {
    "loss",
    "text_ce",
    "mel_ce",
    "lr",
    "grad_norm",
    "samples_per_s",
    "audio_s_per_s",
    "tokens",
    "eta_s",
    "epoch",
    "micro_batch",
    "step_seconds",
    "mem_rss_gib",
}


def test_every_logged_step_carries_rates_eta_and_memory(reference_run):
    result, _ = reference_run
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for r in records:
        assert STEP_FIELDS <= set(r), STEP_FIELDS - set(r)
        assert r["samples_per_s"] > 0 and r["audio_s_per_s"] > 0 and r["tokens"] > 2 * 32
        assert r["mem_rss_gib"] > 0.1 and r["micro_batch"] == 2
    assert records[-1]["eta_s"] == 0 and records[0]["eta_s"] > 0
    # 2 clips per step, 4 clips: the epoch counter advances by half an epoch per step
    assert [r["epoch"] for r in records] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])


def test_the_console_gets_a_line_every_n_steps_the_log_file_every_step(reference_run):
    import logging

    _, records = reference_run
    steps = [(level, line) for level, line in records if line.startswith("step ")]
    assert [int(line.split()[1].split("/")[0]) for _, line in steps] == [1, 2, 3, 4, 5, 6]
    # console_every=4: the first step, every 4th and the last at INFO (console); others at DEBUG (log file)
    assert [line.split()[1] for level, line in steps if level == logging.INFO] == ["1/6", "4/6", "6/6"]
    assert re.search(r"loss \d+\.\d{3} \(text \d+\.\d{3}, mel \d+\.\d{3}\) · lr [\d.]+e-\d\d · "
                     r"[\d.]+ samples/s · [\d.]+ audio-s/s · ETA \d+ s$", steps[0][1]), steps[0][1]
    lines = [line for _, line in records]
    mem = [line for line in lines if line.startswith("[mem]")]
    assert [int(re.match(r"\[mem\] step=(\d+) rss_gib=\d+\.\d\d$", m).group(1)) for m in mem] == [2, 4, 6]
    assert any("global batch 2 = batch 2 x accumulation 1 x 1 process" in line for line in lines)
    assert not any("SpeedSettings(" in line for line in lines)  # no raw dataclass dumps


def test_tensorboard_gets_the_same_fields(reference_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference_run[0].run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"train/{k}" for k in STEP_FIELDS - {"epoch"}} <= tags
    assert [e.step for e in acc.Scalars("train/samples_per_s")] == list(range(1, 7))


def test_run_json_reports_clips_padding_and_batch_geometry(reference_run):
    training = RunInfo.load(reference_run[0].run_dir).training
    assert training["clips"] == training["clips_used"] == 4 and training["clips_dropped"] == {}
    assert training["global_batch"] == 2 and training["world_size"] == 1
    pad = training["padding_fraction"]
    assert 0 <= pad["bucketed"] <= pad["shuffled"] < 1 and pad["in_use"] == pad["bucketed"]
    assert training["model"]["finetune"] == "full" and training["model"]["trainable_params"] > 0


def test_memory_line_and_progress_text_formats():
    cuda = {"mem_alloc_gib": 3.214, "mem_peak_gib": 4.05, "mem_reserved_gib": 5.0}
    assert mem_line(100, cuda) == "[mem] step=100 alloc_gib=3.21 peak_gib=4.05 reserved_gib=5.00"
    text = progress_text({"loss": 1.5, "text_ce": 2.0, "mel_ce": 1.4, "lr": 5e-6, "samples_per_s": 30.0,
                          "audio_s_per_s": 200.0, "eta_s": 3725, **cuda, "mfu": 0.42},
                         {"text_ce": "text", "mel_ce": "mel"})  # the backend's loss parts, name -> label
    assert text == ("loss 1.500 (text 2.000, mel 1.400) · lr 5.0e-06 · 30.0 samples/s · 200.0 audio-s/s · "
                    "ETA 1 h 02 min · mem 3.2/4.0 GiB · MFU 42%")
    assert [format_duration(s) for s in (0, 8.4, 200, 3725)] == ["0 s", "8 s", "3 min 20 s", "1 h 02 min"]


def test_model_flops_follow_six_times_params_times_tokens_for_full_training():
    assert step_flops(params=100, trainable=100, tokens=10) == 6 * 100 * 10
    # frozen weights: no weight gradients
    assert step_flops(params=100, trainable=0, tokens=10) == 4 * 100 * 10
    assert peak_flops(torch.device("cpu"), "fp32")[0] is None


def test_meter_rates_eta_and_mfu_follow_the_wall_clock():
    """A fake clock: step 1 ends 5 s after the start (compiling), then a step every second, step 4 taking 3 s
    (an evaluation); rates are over the last 3 steps, the ETA leaves the first step out once it can."""
    from voicetune.training.observe import Meter

    now = [100.0]
    meter = Meter(total_steps=10, start_step=0, params=10, trainable=10, peak=1000.0, window=3,
                  clock=lambda: now[0])
    meter.restart()
    out = []
    for step, seconds in ((1, 5.0), (2, 1.0), (3, 1.0), (4, 3.0), (5, 1.0)):
        now[0] += seconds
        out.append(meter.record(step, samples=4, audio_seconds=2.0, tokens=50, world=2))
    assert [o["step_seconds"] for o in out] == [5.0, 1.0, 1.0, 3.0, 1.0]
    # samples/s over the last min(steps, 3) steps, all ranks (world 2): 8 samples a step
    assert [o["samples_per_s"] for o in out] == pytest.approx([8 / 5, 16 / 6, 24 / 7, 24 / 5, 24 / 5])
    assert [o["audio_s_per_s"] for o in out] == pytest.approx([4 / 5, 8 / 6, 12 / 7, 12 / 5, 12 / 5])
    assert out[-1]["tokens"] == 100
    # MFU: 6 x 10 params x 100 tokens per step, 3 steps in 5 s, peak 1000 FLOP/s
    assert out[-1]["mfu"] == pytest.approx(6 * 10 * 100 * 3 / 5 / 1000)
    # ETA: step 1 alone gives 5 s/step; then the mean since step 1 ended: (1 + 1 + 3 + 1) / 4 = 1.5 s/step
    assert out[0]["eta_s"] == pytest.approx(9 * 5.0)
    assert out[1]["eta_s"] == pytest.approx(8 * 1.0)
    assert out[-1]["eta_s"] == pytest.approx(5 * 1.5)
    # a resumed run (start_step 6) measures from its own restart
    resumed = Meter(total_steps=10, start_step=6, params=10, trainable=10, peak=None, window=3,
                    clock=lambda: now[0])
    now[0] += 2.0
    first = resumed.record(7, samples=4, audio_seconds=2.0, tokens=50, world=1)
    assert first["step_seconds"] == 2.0 and first["samples_per_s"] == 2.0 and "mfu" not in first
    assert first["eta_s"] == pytest.approx(3 * 2.0)
