"""The web UI used as a person would, in headless Chromium: upload recordings → prepare → edit a transcript →
doctor → train (stop, reload the page, resume) → curves → listen → synthesize → export → download the zip.

Everything is real: the Piper recordings, prepare (VAD, Whisper tiny.en, QA), the tiny XTTS base, `voicetune
train` in its own process with in-loop evaluation (one sentence), export. Screenshots of every tab go to
``$VOICETUNE_UI_ARTIFACTS``. A second test shows what the UI refuses.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from voicetune.ui import process

from .conftest import start_app

RUN = "first"
NEW_TEXT = "A corrected transcript, typed by a person."


class _Clock:
    """Wall time of each phase of the test, printed (pytest -s, or with a failure's report)."""

    def __init__(self) -> None:
        self.t0 = self.t = time.time()

    def __call__(self, what: str) -> None:
        now = time.time()
        print(f"[ui e2e] {what}: {now - self.t:.1f} s (total {now - self.t0:.1f} s)", flush=True)
        self.t = now


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _text_input(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def _fill(page: Any, elem_id: str, value: str) -> None:
    box = _text_input(page, elem_id)
    box.fill(value)
    box.press("Tab")  # commits the value (Gradio updates its state on input/blur)


def _choose(page: Any, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio drop-down as a person does: open it, click the option."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).first.click()


def _tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _wait_text(page: Any, selector: str, pattern: str, timeout_s: float) -> str:
    """Poll ``selector``'s text until it matches ``pattern``; the text (or a failure with the last text)."""
    deadline, text = time.time() + timeout_s, ""
    while time.time() < deadline:
        loc = page.locator(selector)
        if loc.count():
            text = loc.first.inner_text()
            if re.search(pattern, text):
                return text
        time.sleep(0.25)
    shown = (
        page.locator(selector).first.inner_html()[-2000:] if page.locator(selector).count() else "(absent)"
    )
    raise AssertionError(f"{selector}: no {pattern!r} within {timeout_s:.0f} s; it says: {text[-1500:]!r}; "
                         f"html: {shown}")


def _run_state(page: Any) -> str:
    loc = page.locator("#vt-run-status [data-state]")
    return loc.first.get_attribute("data-state") if loc.count() else ""


def _wait_state(page: Any, states: tuple[str, ...], timeout_s: float, run_dir: Path) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if _run_state(page) in states:
            return _run_state(page)
        time.sleep(0.5)
    log = process.log_path(run_dir).read_text()[-3000:] if process.log_path(run_dir).is_file() else ""
    raise AssertionError(
        f"run state {_run_state(page)!r}, not {states}, after {timeout_s:.0f} s; train.log:\n{log}"
    )


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A person's recordings (two files, ~20 s of Piper speech, FLAC and MP3), outside the workspace."""
    from voicetune.demo_audio import generate_recordings

    folder = tmp_path_factory.mktemp("my_recordings")
    generate_recordings(folder, total_seconds=20, n_files=2, seed=0)
    return folder


def test_a_person_prepares_trains_listens_and_exports(browser, recordings, tiny_base, tmp_path, artifacts):
    ws = tmp_path / "workspace"
    shutil.copytree(tiny_base, ws / "bases" / "tiny")  # the person put a base model in the workspace
    before = _digest(recordings)
    files = sorted(str(p) for p in recordings.iterdir() if p.suffix in (".flac", ".mp3"))
    clock = _Clock()
    demo = start_app(ws, max_upload_mb=16)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(demo.local_url)
        clock("app started, page open")
        # ---------------------------------------------------------------- Dataset: upload, prepare, review
        page.locator("#vt-uploads input[type=file]").set_input_files(files)
        for f in files:
            page.locator("#vt-uploads").get_by_text(Path(f).stem).first.wait_for(timeout=60_000)
        _fill(page, "vt-dataset-name", "voice")
        page.locator("#vt-prepare").click()
        _wait_text(page, "#vt-prepare-status", r"\(\d+(\.\d)?/\d+(\.\d)?\)", 60)  # prepare's progress
        _wait_text(page, "#vt-prepare-status", r"clip\(s\) kept", 300)
        clock("upload + prepare")
        dataset = ws / "datasets" / "voice"
        records = [json.loads(line) for line in (dataset / "clips.jsonl").read_text().splitlines()]
        assert sorted(os.listdir(ws / "recordings" / "voice")) == sorted(Path(f).name for f in files)
        rows = page.locator("#vt-clip-table tr[data-clip-row]")
        rows.first.wait_for(timeout=30_000)
        assert rows.count() == len(records) >= 4  # every clip, kept and quarantined, on one page of 25
        assert page.locator("#vt-clip-table audio").count() == len([r for r in records if r["audio_file"]])

        # sort by a QA score by clicking its column: the table follows the numbers
        page.locator("#vt-clip-table th[data-sort='quality.snr_db']").click()
        page.locator("#vt-clip-table th[data-sort='quality.snr_db']", has_text="▲").wait_for(timeout=15_000)
        snr = {r["id"]: r["quality"]["snr_db"] for r in records}
        shown = [rows.nth(i).get_attribute("data-clip-row") for i in range(rows.count())]
        assert [snr[c] for c in shown] == sorted(snr[c] for c in shown)

        # edit a transcript through the curation functions
        clip = shown[0]
        page.locator(f"#vt-clip-table button.vt-edit[data-clip='{clip}']").click()
        page.wait_for_function(
            "(c) => document.querySelector('#vt-clip-id textarea, #vt-clip-id input').value == c",
            arg=clip,
            timeout=15_000,
        )
        page.locator("#vt-clip-audio").get_by_role("button", name="Play", exact=True).wait_for(timeout=15_000)
        _fill(page, "vt-clip-text", NEW_TEXT)
        page.locator("#vt-save-text").click()
        _wait_text(page, "#vt-edit-msg", "transcript saved", 30)
        edited = next(json.loads(x) for x in (dataset / "clips.jsonl").read_text().splitlines()
                      if json.loads(x)["id"] == clip)
        assert edited["text"] == NEW_TEXT and edited["status"] == "kept"
        metadata = (dataset / "metadata_train.csv").read_text() + (dataset / "metadata_eval.csv").read_text()
        assert NEW_TEXT in metadata
        page.locator(f"#vt-clip-table tr[data-clip-row='{clip}']", has_text=NEW_TEXT).wait_for(timeout=15_000)

        # quarantine another clip, then restore it: the wav moves and the dataset files follow
        other = shown[1]
        page.locator(f"#vt-clip-table button.vt-edit[data-clip='{other}']").click()
        page.wait_for_function(
            "(c) => document.querySelector('#vt-clip-id textarea, #vt-clip-id input').value == c",
            arg=other,
            timeout=15_000,
        )
        page.locator("#vt-quarantine").click()
        _wait_text(page, "#vt-edit-msg", f"{other}: quarantined", 30)
        assert (dataset / "quarantine" / f"{other}.wav").is_file() and not (
            dataset / "wavs" / f"{other}.wav"
        ).exists()
        page.locator(f"#vt-clip-table tr[data-clip-row='{other}']", has_text="quarantined").wait_for(
            timeout=15_000
        )
        page.locator("#vt-filter-status").get_by_label("quarantined", exact=True).check()
        _wait_text(page, "#vt-clip-table", r"1 clip\(s\) match", 15)
        page.locator("#vt-filter-status").get_by_label("all", exact=True).check()
        page.locator("#vt-restore").click()
        _wait_text(page, "#vt-edit-msg", f"{other}: restored", 30)
        assert (dataset / "wavs" / f"{other}.wav").is_file()
        # filter by a score range: only the clips inside it are listed
        _choose(page, "vt-filter-score", "quality.snr_db")
        low = sorted(snr.values())[len(snr) // 2]
        _fill(page, "vt-filter-min", f"{low}")
        expected = sum(1 for v in snr.values() if v >= low)
        _wait_text(page, "#vt-clip-table", rf"^{expected} clip\(s\) match|\n{expected} clip\(s\) match", 15)
        # the dataset report, inline
        page.get_by_text("Dataset report (report.html").click()
        report = page.frame_locator("#vt-dataset-report iframe")
        report.locator("body").get_by_text(re.compile("clip", re.IGNORECASE)).first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "tab1_dataset.png"), full_page=True)
        clock("review: sort, listen, edit")

        # ---------------------------------------------------------------- Train: doctor, start, stop, resume
        _tab(page, "2 · Train")
        _fill(page, "vt-run-name", RUN)
        _choose(page, "vt-train-dataset", "datasets/voice")
        _choose(page, "vt-train-base", "bases/tiny")
        # max steps 5000: long enough to be stopped by hand (typed below with the evaluation options)
        page.get_by_text("Advanced: evaluation").click()
        page.locator("#opt-eval_intrusive input[type=checkbox]").wait_for(timeout=15_000)
        typed = {"max_steps": "5000", "eval_every": "100000", "eval_max_sentences": "1", "eval_probes": "0",
                 "eval_num_references": "1"}  # the baseline, then only the last step, on one sentence
        for _ in range(3):  # a field mounted as its section opens may take its default back: type it again
            for name, value in typed.items():
                if _text_input(page, f"opt-{name}").input_value() != value:
                    _fill(page, f"opt-{name}", value)
            time.sleep(0.5)
        assert {n: _text_input(page, f"opt-{n}").input_value() for n in typed} == typed
        page.locator("#opt-eval_intrusive input[type=checkbox]").uncheck()
        page.locator("#vt-doctor").click()
        _wait_text(page, "#vt-doctor-out", r"Recommended settings", 120)
        clock("train form + doctor")
        assert "base model" in page.locator("#vt-doctor-out").inner_text()
        page.locator("#vt-start").click()
        _wait_text(page, "#vt-start-msg", f"started {RUN}", 30)
        run_dir = ws / "runs" / RUN
        command = json.loads((process.state_dir(run_dir) / process.PROCESS_FILE).read_text())["command"]
        for flag in ("--max-steps 5000", "--eval-every 100000", "--eval-max-sentences 1", "--eval-probes 0",
                     "--eval-num-references 1", "--no-eval-intrusive"):
            assert flag in command, (flag, command)  # what the form said is what training was told
        pid = json.loads((process.state_dir(run_dir) / process.PROCESS_FILE).read_text())["pid"]
        assert os.getsid(pid) == pid  # its own session: a UI crash does not take it down
        _wait_text(page, "#vt-run-status", r"training: step \d+ of 5000.*ETA", 300)
        clock("training process: start-up, features, baseline evaluation")
        assert "process memory" in page.locator("#vt-run-status").inner_text()  # memory (RSS on a CPU)

        page.close()  # the browser is closed mid-run; a new page shows the run as the run folder has it
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(demo.local_url)
        _tab(page, "2 · Train")
        _wait_text(page, "#vt-run-status", rf"{RUN}: training: step \d+", 60)
        page.locator("#vt-stop").click()
        _wait_text(page, "#vt-control-msg", "asked first to stop", 15)
        _wait_state(page, ("stopped",), 120, run_dir)
        clock("reload, stop")
        info = json.loads((process.state_dir(run_dir) / process.PROCESS_FILE).read_text())
        assert info["exit_code"] == 130  # what Ctrl+C gives: a checkpoint, then exit
        stopped = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
        assert "SIGINT received" in process.log_path(run_dir).read_text()
        assert "continue with: voicetune train --resume" in page.locator("#vt-log textarea").input_value()

        _fill(page, "vt-resume-until", str(stopped + 1))
        page.locator("#vt-resume").click()
        _wait_text(page, "#vt-control-msg", f"resuming {RUN} from step_{stopped}", 15)
        _wait_state(page, ("finished",), 300, run_dir)
        clock("resume: one step and its evaluation")
        final = f"step_{stopped + 1}"
        assert (run_dir / "checkpoints" / final / "meta.json").is_file()
        # the curves: training loss with its parts, and the evaluations
        page.locator("#vt-loss-plot svg.marks").wait_for(timeout=30_000)
        legend = page.locator("#vt-loss-plot").inner_text()
        assert "loss" in legend and "mel_ce" in legend
        assert "speaker similarity" in page.locator("#vt-eval-plot").inner_text()
        page.screenshot(path=str(artifacts / "tab2_train.png"), full_page=True)

        # ---------------------------------------------------------------- Evaluate: table, A/B, synthesize
        _tab(page, "3 · Evaluate")
        table = _wait_text(page, "#vt-eval-table", final, 30)
        assert "baseline" in table and "best" in table
        checkpoint_player = page.locator("#vt-ab-checkpoint")
        checkpoint_player.get_by_role("button", name="Play", exact=True).wait_for(timeout=30_000)
        page.locator("#vt-ab-recording").get_by_role("button", name="Play", exact=True).wait_for(
            timeout=30_000
        )
        checkpoint_player.get_by_role("button", name="Play", exact=True).click()
        checkpoint_player.get_by_role("button", name="Pause", exact=True).wait_for(timeout=10_000)  # it plays
        _fill(page, "vt-synth-text", "Hello from the web page.")
        page.locator("#vt-synth").click()
        _wait_text(page, "#vt-synth-msg", rf"{final}: [\d.]+ s of audio", 180)
        assert list((run_dir / "synth").glob(f"{final}_*.wav"))
        page.locator("#vt-synth-audio").get_by_role("button", name="Play", exact=True).wait_for(
            timeout=30_000
        )
        page.screenshot(path=str(artifacts / "tab3_evaluate.png"), full_page=True)
        clock("evaluate: table, A/B, synthesize")

        # ---------------------------------------------------------------- Export: build, download the zip
        _tab(page, "4 · Export")
        page.wait_for_function(
            "() => document.querySelector('#vt-export-name textarea, #vt-export-name input')"
            ".value == 'first-best'",
            timeout=30_000,
        )  # the best checkpoint by default
        page.locator("#vt-export-build").click()
        _wait_text(page, "#vt-export-status", "package exports/", 180)
        with page.expect_download(timeout=60_000) as download:
            page.locator("#vt-export-download").click()
        saved = tmp_path / "downloaded.zip"
        download.value.save_as(saved)
        page.screenshot(path=str(artifacts / "tab4_export.png"), full_page=True)
        clock("export + download")
    finally:
        page.close()
        demo.close()

    with zipfile.ZipFile(saved) as z:
        names = z.namelist()
        top = names[0].split("/")[0]
        manifest = json.loads(z.read(f"{top}/voicetune.json"))
        for required in ("config.json", "model.pth", "vocab.json", "dvae.pth", "mel_stats.pth", "README.md"):
            assert f"{top}/{required}" in names, required
        assert any(n.startswith(f"{top}/reference/01_") for n in names)
    best = (run_dir / "checkpoints" / "best").read_text().strip()
    # default: the best checkpoint
    assert manifest["checkpoint"] == best and manifest["untrained_base"] is True
    assert _digest(recordings) == before, "the person's own files must never change"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloaded.zip", "workspace"]
    with open(dataset / "metadata_train.csv", newline="") as f:
        assert all(len(row) == 3 for row in csv.reader(f, delimiter="|"))


def test_the_ui_refuses_outside_paths_bad_names_and_oversized_uploads(browser, tmp_path, artifacts):
    ws, outside = tmp_path / "workspace", tmp_path / "outside"
    outside.mkdir()
    (outside / "take.wav").write_bytes(b"not audio")
    demo = start_app(ws, max_upload_mb=1)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(demo.local_url)
        for typed in ("/etc", "../outside", str(outside), "recordings/../../outside"):
            _fill(page, "vt-rec-folder", typed)
            page.locator("#vt-prepare").click()
            _wait_text(page, "#vt-prepare-status", re.escape(typed) + r": outside the workspace", 30)
        _fill(page, "vt-rec-folder", "recordings")
        _fill(page, "vt-dataset-name", "../escape")
        page.locator("#vt-prepare").click()
        _wait_text(page, "#vt-prepare-status", r"dataset name '\.\./escape' is refused", 30)
        page.screenshot(path=str(artifacts / "refused_outside_path.png"), full_page=True)

        # A file whose name climbs out of its folder is stored inside the workspace, under its own name only.
        page.reload()
        wav = (outside / "take.wav").read_bytes()
        page.locator("#vt-uploads input[type=file]").set_input_files(
            [{"name": "../../escape.wav", "mimeType": "audio/wav", "buffer": wav}])
        page.locator("#vt-uploads").get_by_text("escape").first.wait_for(timeout=30_000)
        page.locator("#vt-prepare").click()
        _wait_text(page, "#vt-prepare-status", r"saved 1 recording\(s\) to recordings/my_voice", 60)
        assert (ws / "recordings" / "my_voice" / "escape.wav").read_bytes() == wav
        escaped = [p for p in tmp_path.rglob("escape*") if ws not in p.parents]
        assert not escaped and not (tmp_path.parent / "escape.wav").exists()

        # An upload over the size limit never reaches the workspace.
        page.reload()
        page.locator("#vt-uploads input[type=file]").set_input_files(
            [{"name": "big.wav", "mimeType": "audio/wav", "buffer": b"\0" * (2 * 1024 * 1024)}])
        page.get_by_text(re.compile(r"(exceed|larger|too large|maximum)", re.IGNORECASE)).first.wait_for(
            timeout=30_000
        )
        page.screenshot(path=str(artifacts / "refused_upload_size.png"), full_page=True)
        assert not list(ws.rglob("big*"))
    finally:
        page.close()
        demo.close()


def test_with_auth_the_ui_asks_for_the_password_first(browser, tmp_path):
    demo = start_app(tmp_path / "workspace", auth="ann:s3cret")
    page = browser.new_page()
    try:
        page.goto(demo.local_url)
        page.get_by_label("username").fill("ann")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text(re.compile("incorrect", re.IGNORECASE)).first.wait_for(timeout=15_000)
        assert page.locator("#vt-prepare").count() == 0
        page.get_by_label("username").fill("ann")  # the form starts again empty
        page.get_by_label("password").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        page.locator("#vt-prepare").wait_for(timeout=30_000)
    finally:
        page.close()
        demo.close()
