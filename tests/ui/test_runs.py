"""Training as the UI runs it: a child process in its own session, stopped with SIGINT like Ctrl+C, found
again from the run folder alone; and a run's curves, status and log as the Train tab reads them."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from voicetune.backends.registry import train_config
from voicetune.config import save_yaml
from voicetune.ui import process, runview
from voicetune.utils.io import atomic_write_json

# A stand-in for `voicetune train` with the same contract: it logs steps, and on SIGINT finishes the step,
# says so and exits with 130 (what the CLI returns after Ctrl+C).
CHILD = textwrap.dedent("""
    import signal, sys, time
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    print("starting", flush=True)
    for step in range(1, 10000):
        time.sleep(0.05)
        sys.stderr.write(f"\\rtrain {step}/10000"); sys.stderr.flush()
        if stop:
            print("\\nSIGINT received: stopped by SIGINT", flush=True)
            sys.exit(130)
""")


def test_a_run_started_in_its_own_session_stops_like_ctrl_c_and_is_found_again(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    assert process.process_state(run_dir).state == "none"
    st = process.start(run_dir, [sys.executable, "-c", CHILD], cwd=tmp_path)
    assert st.running and os.getsid(st.pid) == st.pid  # a session of its own: the UI's end is not its end
    with pytest.raises(RuntimeError, match="already training"):
        process.start(run_dir, [sys.executable, "-c", CHILD], cwd=tmp_path)
    deadline = time.time() + 30
    while "starting" not in runview.log_tail(process.log_path(run_dir)) and time.time() < deadline:
        time.sleep(0.1)
    assert process.process_state(run_dir).running  # read back from process.json + the process table
    process.stop(run_dir)
    done = process.wait(run_dir, 30)
    assert done.state == "exited" and done.exit_code == 130 and done.stop_requests == 1
    lines = runview.log_tail(process.log_path(run_dir))
    assert lines[0].startswith("=== ") and "voicetune ui started" in lines[0]
    assert lines[-1] == "SIGINT received: stopped by SIGINT"
    assert lines[-2].startswith("train ") and "\r" not in lines[-2]  # a progress bar shows its last state
    with pytest.raises(RuntimeError, match="not training"):
        process.stop(run_dir)


def test_a_recorded_pid_is_trusted_only_with_its_start_time(tmp_path):
    process.state_dir(tmp_path).mkdir(parents=True)
    atomic_write_json(
        process.state_dir(tmp_path) / process.PROCESS_FILE, {"pid": os.getpid(), "create_time": 1.0}
    )
    assert process.process_state(tmp_path).state == "gone"  # this pid now belongs to another process
    import psutil

    atomic_write_json(process.state_dir(tmp_path) / process.PROCESS_FILE,
                      {"pid": os.getpid(), "create_time": psutil.Process().create_time()})
    assert process.process_state(tmp_path).running


def _run_folder(tmp_path, epochs: int = 0, max_steps: int = 4):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_4").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_4" / "meta.json").write_text('{"step": 4}')
    (run_dir / "checkpoints" / "latest").write_text("step_4\n")
    save_yaml(train_config(max_steps=max_steps, epochs=epochs or 10), run_dir / "config.yaml")
    atomic_write_json(run_dir / "run.json", {"backend": "xtts", "training": {
        "clips_used": 5, "global_batch": 2, "loss_parts": ["text_ce", "mel_ce"]}})
    records = [
        {
            "kind": "eval",
            "name": "baseline",
            "step": 0,
            "speaker_similarity": 0.5,
            "wer": 0.4,
            "mos": 2.0,
            "composite": 0.0,
        }
    ]
    for step in range(1, 5):
        records.append({"step": step, "loss": 5.0 - step, "text_ce": 3.0, "mel_ce": 4.0 - step, "lr": 1e-5,
                        "eta_s": 10.0 * (4 - step), "mem_rss_gib": 1.5, "samples_per_s": 3.0})
    records.append({"kind": "eval", "name": "step_4", "step": 4, "speaker_similarity": 0.6, "wer": 0.3,
                    "mos": 2.5, "composite": 0.1, "val_loss": 3.5, "best": True})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')
    process.state_dir(run_dir).mkdir(parents=True)
    process.log_path(run_dir).write_text("\x1b[32mINFO\x1b[0m step 4/4\nrun folder: x\n")
    return run_dir


def test_a_runs_curves_come_from_metrics_jsonl(tmp_path):
    view = runview.read_run(_run_folder(tmp_path))
    loss = runview.loss_rows(view)
    assert {r["series"] for r in loss} == {"loss", "text_ce", "mel_ce", "val_loss"}
    assert [r["value"] for r in loss if r["series"] == "loss"] == [4.0, 3.0, 2.0, 1.0]
    assert {(r["step"], r["series"]) for r in runview.eval_rows(view)} >= {
        (0, "WER"),
        (4, "speaker similarity"),
    }
    assert {r["series"] for r in runview.quality_rows(view)} == {"predicted MOS", "composite score"}
    assert [r["value"] for r in runview.memory_rows(view)] == [1.5] * 4
    assert view.latest == "step_4" and view.total_steps == 4
    assert runview.memory_text(view.last).startswith("no GPU: process memory 1.50 GiB")
    assert view.log_lines == ["INFO step 4/4", "run folder: x"]  # colour codes removed


def test_the_status_says_what_the_folder_and_the_process_say(tmp_path):
    run_dir = _run_folder(tmp_path)
    # trained with the CLI: no process record
    assert runview.status(runview.read_run(run_dir))[0] == "finished"
    # the UI's records stay out of the run
    assert not any(p.name == "process.json" for p in run_dir.rglob("*"))
    for code, state in ((0, "finished"), (130, "stopped"), (143, "stopped"), (1, "failed")):
        atomic_write_json(process.state_dir(run_dir) / process.PROCESS_FILE, {"pid": 1, "exit_code": code})
        assert runview.status(runview.read_run(run_dir))[0] == state
    import psutil

    atomic_write_json(process.state_dir(run_dir) / process.PROCESS_FILE,
                      {"pid": os.getpid(), "create_time": psutil.Process().create_time()})
    state, text = runview.status(runview.read_run(run_dir))
    assert state == "running" and text.startswith("training: step 4 of 4 (100%), loss 1.0000")
    atomic_write_json(process.state_dir(run_dir) / process.PROCESS_FILE,
                      {"pid": os.getpid(), "create_time": psutil.Process().create_time(), "stop_requests": 1})
    assert runview.status(runview.read_run(run_dir))[0] == "stopping"


def test_total_steps_of_an_epoch_run_follow_the_sampler(tmp_path):
    view = runview.read_run(_run_folder(tmp_path, epochs=3, max_steps=0))
    assert view.total_steps == 9  # ceil(5 clips / global batch 2) = 3 steps per epoch x 3 epochs
