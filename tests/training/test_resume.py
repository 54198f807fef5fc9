"""Never lose work: a resumed run continues exactly; Ctrl+C/SIGTERM save and stop; checkpoints stay sound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from voicetune.run import latest_checkpoint, list_checkpoints, set_best
from voicetune.training.errors import TrainError
from voicetune.training.loop import train
from voicetune.training.resume import resume_config

TOLERANCE = 1e-6


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _assert_same_trajectory(run: Path, reference: Path) -> None:
    got, want = _metrics(run), _metrics(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 7))
    for a, b in zip(got, want):
        for key in ("loss", "text_ce", "mel_ce", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= TOLERANCE * max(1.0, abs(b[key])), (a["step"], key, a[key], b[key])
    ours, theirs = (torch.load(r / "checkpoints" / "step_6" / "trainable.pt") for r in (run, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_resumed_run_computes_the_same_losses_as_an_uninterrupted_one(tiny_dataset, tiny_base, tmp_path,
                                                                         reference_run, train_options):
    reference, _ = reference_run
    run = tmp_path / "run"
    first = train(tiny_dataset, tiny_base, run, max_steps=3, **train_options)
    assert first.steps == 3 and latest_checkpoint(run).name == "step_3"
    second = train(resume=run, max_steps=6, save_every=3)
    assert second.resumed_from == 3 and [h["loss"] for h in second.losses] == [
        h["loss"] for h in reference.losses[3:]]
    _assert_same_trajectory(run, reference.run_dir)
    assert resume_config(run, {}).max_steps == 6  # the run remembers its new length for the next resume


def test_a_run_of_an_earlier_version_resumes_exactly(tiny_dataset, tiny_base, tmp_path, reference_run,
                                                      train_options):
    """Earlier versions wrote every option flat into config.yaml (and num_workers, since removed): it still
    loads,
    the resumed run continues exactly, and its config.yaml is rewritten in the grouped layout."""
    import yaml

    from voicetune.config import flatten

    reference, _ = reference_run
    run = tmp_path / "run"
    train(tiny_dataset, tiny_base, run, max_steps=3, **train_options)
    flat = {**flatten(resume_config(run, {})), "num_workers": 0}
    (run / "config.yaml").write_text(yaml.safe_dump(flat, sort_keys=False))
    train(resume=run, max_steps=6, save_every=3)
    _assert_same_trajectory(run, reference.run_dir)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert "eval" in saved and "xtts" in saved and "dropout" not in saved and "num_workers" not in saved


def _cli(dataset: Path, base: Path, run: Path, steps: int, options: dict, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "voicetune.cli",
        "train",
        str(dataset),
        "--base",
        str(base),
        "--out",
        str(run),
        "--max-steps",
        str(steps),
        *(f"--{k.replace('_', '-')}={v}" for k, v in options.items()),
        *extra,
    ]


def test_sigterm_mid_run_finishes_the_step_saves_and_exits_then_resume_matches(
    tiny_dataset, tiny_base, tmp_path, reference_run, train_options
):
    reference, _ = reference_run
    run = tmp_path / "run"
    cmd = _cli(tiny_dataset, tiny_base, run, 6, train_options)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while (
        not (metrics.is_file() and metrics.read_text().strip())
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    exit_seconds = time.time() - sent
    assert proc.returncode == 143, out[-3000:]
    assert exit_seconds < 15, exit_seconds
    ckpt = latest_checkpoint(run)
    stopped_at = int(ckpt.name.split("_")[1])
    assert 1 <= stopped_at < 6 and "--resume" in out
    print(f"SIGTERM -> exit in {exit_seconds:.2f} s, checkpoint {ckpt.name}")
    train(resume=run, save_every=3)
    _assert_same_trajectory(run, reference.run_dir)


def test_first_signal_asks_to_stop_and_a_second_one_interrupts_at_once():
    from voicetune.training.signals import GracefulStop

    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_under_a_launcher_a_forwarded_copy_of_the_signal_does_not_count_as_the_second_one():
    from voicetune.training.signals import GracefulStop

    with GracefulStop(debounce_s=0.3) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # torchrun forwards the terminal's Ctrl+C to its workers
        time.sleep(0.05)
        assert stop.requested == "SIGINT"
        time.sleep(0.3)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)


def test_a_second_ctrl_c_stops_the_cli_at_once_leaving_only_complete_checkpoints(
    tiny_dataset, tiny_base, tmp_path, train_options
):
    run, log = tmp_path / "run", tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(_cli(tiny_dataset, tiny_base, run, 200, train_options, "--save-every", "1"),
                                stdout=out, stderr=subprocess.STDOUT)
        metrics, deadline = run / "metrics.jsonl", time.time() + 240
        while (
            not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2) and time.time() < deadline
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        while "SIGINT received" not in log.read_text() and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        sent = time.time()
        proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "second SIGINT: stopping now" in text
    assert time.time() - sent < 10
    ckpts = list_checkpoints(run)
    assert ckpts and latest_checkpoint(run) == ckpts[-1]
    for ckpt in ckpts:  # every checkpoint that counts as complete loads
        assert {"trainable.pt", "state.pt", "meta.json"} <= {p.name for p in ckpt.iterdir()}
        torch.load(ckpt / "trainable.pt", weights_only=True)
        torch.load(ckpt / "state.pt", weights_only=True)  # nothing pickled


def test_resume_refuses_options_that_would_change_the_run_and_accepts_a_longer_one(reference_run):
    run = reference_run[0].run_dir
    with pytest.raises(TrainError, match="--batch-size"):
        resume_config(run, {"batch_size": 4})
    with pytest.raises(TrainError, match="--lr"):
        resume_config(run, {"lr": 1e-5})
    assert resume_config(run, {"max_steps": 50, "keep_last": 9}).max_steps == 50


def test_resume_without_a_checkpoint_says_to_start_again(tiny_dataset, tmp_path, reference_run):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((reference_run[0].run_dir / "config.yaml").read_text())
    with pytest.raises(TrainError, match="no complete checkpoint"):
        train(resume=run)


def test_pruning_keeps_the_last_n_and_whatever_best_points_at(tmp_path):
    from backends.fake import FakeBackend

    from voicetune.training.checkpoint import save_checkpoint

    # checkpoint.py is the component under test: the smallest backend writes its state
    backend = FakeBackend()
    backend.load_base(FakeBackend.make_tiny_base(tmp_path / "base"), torch.device("cpu"))
    opt = torch.optim.SGD(backend.trainable().parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    for step in range(1, 7):
        ckpt = save_checkpoint(tmp_path, step, backend, opt, sched, {}, {}, keep_last=2)
        if step == 2:
            set_best(tmp_path, ckpt)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step_2", "step_5", "step_6"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
