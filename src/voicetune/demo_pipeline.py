"""`voicetune demo` (what `make demo` runs): the whole pipeline on generated recordings.

recordings (Piper voice) → prepare → make-tiny-base → train → evaluate → export → synthesize.
The tiny base is UNTRAINED: the pipeline is real, the resulting voice is not usable.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from voicetune.backends.base import Progress

logger = logging.getLogger(__name__)

MARKER = ".voicetune-demo"
DEMO_STEPS = 200
DISCLAIMER = (
    "NOTE: the demo trains an UNTRAINED, tiny, randomly initialised base model, so the voice it produces is "
    "noise-like and NOT usable. Everything around it (data preparation, training loop, evaluation, export, "
    "synthesis) is the real pipeline. For real use, download an XTTS-v2 base folder (config.json, model.pth, "
    "dvae.pth, mel_stats.pth, vocab.json) and run: voicetune train DATASET --base XTTS_V2_DIR --out RUN"
)


@dataclass
class DemoResult:
    workdir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    eval_table: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = ["", "voicetune demo finished", ""]
        lines += [f"  {name:<12} {path}" for name, path in self.outputs.items()]
        lines += ["", "  time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.timings.items())]
        lines += self.notes
        if self.eval_table:
            lines += ["", self.eval_table]
        lines += ["", DISCLAIMER, ""]
        return "\n".join(lines)


def _fresh_workdir(workdir: Path) -> None:
    """Reuse the generated recordings; clear outputs of an earlier demo run in the same folder."""
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise FileExistsError(
            f"{workdir} exists and was not made by `voicetune demo`; choose another --workdir"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by voicetune demo\n")
    for sub in ("dataset", "tiny_base", "run", "package", "samples"):
        if (workdir / sub).exists():
            shutil.rmtree(workdir / sub)


def demo(
    workdir: Path | str = "demo_run", max_steps: int | None = None, progress: Progress | None = None
) -> DemoResult:
    from voicetune.backends.tiny import make_tiny_base
    from voicetune.data.prepare import prepare
    from voicetune.demo_audio import generate_recordings
    from voicetune.evaluation.report import text_report
    from voicetune.finetune import train
    from voicetune.packaging import export
    from voicetune.synthesis import synthesize

    workdir = Path(workdir)
    _fresh_workdir(workdir)
    res = DemoResult(workdir)
    logger.warning(DISCLAIMER)

    def stage(name: str) -> None:
        res.timings[name] = time.time() - t
        logger.info("demo: %s done in %.0f s", name, res.timings[name])

    t = time.time()
    rec_dir = workdir / "recordings"
    if not (rec_dir / "transcripts.json").is_file():
        generate_recordings(rec_dir, total_seconds=180.0, n_files=3, seed=0, progress=progress)
    res.outputs["recordings"] = rec_dir
    stage("recordings")

    t = time.time()
    prepared = prepare(rec_dir, workdir / "dataset", progress=progress)
    res.outputs["dataset"] = workdir / "dataset"
    res.notes.append(f"  prepare: {prepared.summary().splitlines()[0] if prepared.summary() else ''}")
    stage("prepare")

    t = time.time()
    base = make_tiny_base("xtts", workdir / "tiny_base", dataset=workdir / "dataset", seed=0)
    res.outputs["tiny base"] = base
    stage("tiny base")

    t = time.time()
    steps = max_steps or DEMO_STEPS
    # In-loop evaluation: the baseline, then two evaluations (half-way and at the end) decide the best
    # checkpoint. Shown whatever they cost (no overhead cap) and never stopped early: it is a demo.
    trained = train(workdir / "dataset", base, workdir / "run", max_steps=steps, batch_size=2,
                    lr=2e-4, warmup_steps=5, save_every=max(10, steps // 2), progress=progress,
                    eval_every=max(1, steps // 2), eval_max_overhead=0.0, eval_num_references=2,
                    early_stop_patience=0, wer_guard="warn")
    res.outputs["run"] = trained.run_dir
    res.notes.append(f"  train: loss {trained.losses[0]['loss']:.3f} → {trained.losses[-1]['loss']:.3f} "
                     f"over {trained.steps} steps")
    stage("train (with evaluation)")
    res.eval_table = text_report(trained.run_dir)
    if (trained.run_dir / "report.html").is_file():
        res.outputs["report"] = trained.run_dir / "report.html"

    t = time.time()
    best = (trained.run_dir / "checkpoints" / "best").is_file()
    res.outputs["package"] = export(
        workdir / "run", workdir / "package", checkpoint="best" if best else "latest"
    )
    stage("export")

    t = time.time()
    out_wav = workdir / "samples" / "hello.wav"
    synthesize(workdir / "package", "Hello, this is my own voice, finetuned with voicetune.", out_wav)
    res.outputs["sample wav"] = out_wav
    stage("synthesize")
    return res
