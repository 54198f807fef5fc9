"""What the validation losses and the no-effect check add to an in-loop evaluation (and the export check to an
export), next to what the evaluation itself costs, on one backend and dataset.

Measured in one process, after a warm-up, as wall seconds and CPU seconds of this process (all its threads:
on a shared machine the CPU seconds are the stable figure): ``evaluation`` is ``suite.run_evaluation`` with
the
default protocol (4 eval-split sentences + 4 probes, the packaged tiny.en ASR); ``validation_losses`` is what
every in-loop evaluation adds (teacher-forced losses on the whole eval split, in batches of --batch-size);
``change_check`` is what the end of training and ``voicetune evaluate`` add once (8 pairs of renders
compared);
``export_check`` is what ``voicetune export`` adds once (2 sentences rendered by three models, models
loaded). The one-time features of the eval split are reported apart.

    .venv/bin/voicetune demo --workdir /tmp/demo      # a prepared dataset and the tiny XTTS base
    .venv/bin/python benchmarks/evalcheck_cost.py --dataset /tmp/demo/dataset --base /tmp/demo/tiny_base \
        --out benchmarks/results/evalcheck_cost_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from provenance import git_commit


def measure(fn, repeat: int) -> dict[str, Any]:
    """Median wall and CPU seconds of ``repeat`` calls of ``fn`` (after the caller's warm-up)."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {
        "wall_s": round(statistics.median(walls), 4),
        "cpu_s": round(statistics.median(cpus), 4),
        "wall_all": [round(x, 4) for x in walls],
        "cpu_all": [round(x, 4) for x in cpus],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--backend", default="xtts")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from voicetune.backends.registry import get_backend, train_config
    from voicetune.data.manifest import Dataset
    from voicetune.data.transcribe import packaged_model_path
    from voicetune.evaluation import change, suite
    from voicetune.evaluation.harness import render
    from voicetune.evaluation.validation import build_validation_set, validation_losses
    from voicetune.packaging import check_export

    data = Dataset.load(args.dataset)
    cfg = train_config(
        backend=args.backend,
        device="cpu",
        batch_size=args.batch_size,
        eval_asr_model=str(packaged_model_path()),
    )
    backend = get_backend(args.backend)
    backend.load_base(Path(args.base), torch.device("cpu"))
    work = Path(tempfile.mkdtemp(prefix="evalcheck_cost_"))
    backend.configure_model(cfg, work, [(c.text, c.language) for c in data.train])
    probe_set = suite.build_probe_set(data, suite.Protocol.of(cfg.eval))
    scorer = suite.Scorer(probe_set, "cpu", "cpu")
    t = time.perf_counter()
    vs = build_validation_set(backend, data.eval, work / "features", cfg)
    features_s = time.perf_counter() - t
    assert vs is not None, "the dataset has no usable eval split"

    suite.warm_up(backend, probe_set, scorer)
    validation_losses(backend, vs, cfg)
    renders: list = []

    def evaluation() -> None:
        renders[:] = suite.run_evaluation(backend, probe_set, scorer, "step_1", 1).renders

    evaluation()
    clips = [(r.audio, r.sample_rate) if r.audio is not None else None for r in renders]
    other = [
        (r.audio, r.sample_rate) if r.audio is not None else None
        for r in render(
            backend,
            probe_set.texts,
            probe_set.material.references,
            probe_set.material.language,
            probe_set.protocol.seed + 1,
        )
    ]
    change.compare(clips, other)  # warm-up: the speaker encoder
    result: dict[str, Any] = {
        "benchmark": "evalcheck_cost",
        "command": " ".join([sys.executable, *sys.argv]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "device": platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "backend": args.backend,
        "eval_split_clips": len(vs),
        "sentences": len(probe_set.texts),
        "batch_size": args.batch_size,
        "eval_split_features_once_s": round(features_s, 3),
        "evaluation": measure(evaluation, args.repeat),
        "validation_losses": measure(lambda: validation_losses(backend, vs, cfg), args.repeat),
        "change_check": measure(lambda: change.compare(clips, other), args.repeat),
    }
    refs = list(probe_set.material.references)
    result["export_check"] = measure(
        lambda: check_export(backend, Path(args.base), Path(args.base), refs, data.language, "base"), 1
    )
    ev, val = result["evaluation"], result["validation_losses"]
    result["validation_share_of_evaluation_cpu"] = round(val["cpu_s"] / ev["cpu_s"], 4)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("command",)}, indent=2))


if __name__ == "__main__":
    main()
