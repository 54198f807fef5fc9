"""`voicetune evaluate`: score checkpoints of a run after the fact, or a base model on its own.

* :func:`rescore_run` renders and scores checkpoints of a run on its probe set (the protocol of the
  run's config.yaml, the one in-loop evaluation used), re-decides the best checkpoint among the
  evaluated steps whose checkpoint still exists, and rewrites ``report.html``. Options that change the
  protocol (more sentences, another seed or ASR model...) write a separate, self-contained set under
  ``RUN_DIR/eval/protocol_<key>/`` (baseline, steps, best.json, report.html): results of different
  protocols are never compared, and the run's ``checkpoints/best`` only follows its own protocol.
* Both also compute the validation losses (:mod:`.validation`: the backend's training loss parts,
  teacher-forced on the dataset's eval split) of each checkpoint and of the base model, recorded as
  ``validation`` in each evaluation's metrics.json and shown in the report beside the in-loop ones.
* :func:`evaluate_base` scores a base model alone (zero-shot on a dataset's speaker), as the
  baseline of a run would be.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetune.backends.base import Backend, Progress
from voicetune.backends.registry import detect_backend, get_backend, load_train_config, train_config
from voicetune.config import ConfigError, EvalOptions, TrainConfig
from voicetune.data.manifest import Dataset
from voicetune.evaluation import validation
from voicetune.evaluation.harness import TABLE_METRICS, EvalError
from voicetune.evaluation.selection import Decision, Selector, replay
from voicetune.evaluation.speakers import evaluate_speakers, is_multi_speaker
from voicetune.evaluation.suite import (
    BASELINE,
    ProbeSet,
    Protocol,
    Scorer,
    build_probe_set,
    eval_docs,
    load_doc,
    run_evaluation,
    selection_rules,
    sentence_scores,
    synthesis_failure,
    write_baseline,
    write_best_json,
    write_evaluation,
)
from voicetune.run import (
    RunError,
    RunInfo,
    list_checkpoints,
    read_meta,
    resolve_checkpoint,
    set_best,
    trainable_path,
)
from voicetune.utils.device import pick_device
from voicetune.utils.outputs import check_output, output_dir

logger = logging.getLogger(__name__)



def protocol_options(options: EvalOptions, overrides: dict[str, Any]) -> EvalOptions:
    """``options`` with the protocol ``overrides`` (EvalOptions.PROTOCOL names; None ignored), validated."""
    unknown = sorted(set(overrides) - set(EvalOptions.PROTOCOL))
    if unknown:
        raise ConfigError(f"unknown evaluation option(s) {unknown}; valid: {list(EvalOptions.PROTOCOL)}")
    try:
        return dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as e:
        raise ConfigError(f"evaluation options: {e}") from None


@dataclass
class RescoreResult:
    """What :func:`rescore_run` evaluated and decided."""

    run_dir: Path
    eval_root: Path
    evaluated: list[str]
    best: str | None
    report: Path
    text: str
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdict: str = ""  # the plain verdict (evaluation/verdict.py)


def _run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        logger.warning("%s: missing; scoring with the default evaluation settings", path)
        return TrainConfig()
    try:
        return load_train_config(path)
    except ConfigError as e:
        logger.warning("%s: %s; scoring with the default evaluation settings", path, e)
        return TrainConfig()


def _devices(device: str) -> tuple[Any, str, str]:
    dev = pick_device(device)
    return dev, ("cuda" if dev.type == "cuda" else "cpu"), (str(dev) if dev.type == "cuda" else "cpu")


def _checkpoints(run_dir: Path, checkpoints: str) -> list[Path]:
    if checkpoints == "all":
        found = list_checkpoints(run_dir)
        if not found:
            raise RunError(f"{run_dir / 'checkpoints'}: no complete checkpoint to evaluate")
        return found
    return [resolve_checkpoint(run_dir, name.strip()) for name in checkpoints.split(",") if name.strip()]


def _baseline(
    eval_root: Path, probe_set: ProbeSet, scorer: Scorer, backend: Backend, info: dict[str, Any],
    progress: Progress | None, val: Validation | None = None,
) -> dict[str, Any]:
    """The baseline of this protocol: reused when eval_root holds one with the same key, else rendered
    (with the base model's validation losses when ``val`` is given)."""
    doc = load_doc(eval_root / BASELINE / "metrics.json")
    if doc and doc.get("protocol", {}).get("key") == probe_set.key() and not doc.get("error"):
        logger.info("baseline reused from %s", eval_root / BASELINE)
        return doc
    losses = val.losses(backend) if val else {}
    ev = run_evaluation(backend, probe_set, scorer, BASELINE, 0, progress)
    error = synthesis_failure(ev, backend.name)
    return write_baseline(eval_root / BASELINE, probe_set, ev, scorer.score_real(),
                          {**info, "validation": losses, **({"error": error} if error else {})})


@dataclass
class Validation:
    """The eval split's features and the run's settings: validation losses of whatever weights the backend
    holds (:func:`.validation.validation_losses`)."""

    vs: validation.ValidationSet
    cfg: TrainConfig

    @classmethod
    def build(cls, backend: Backend, dataset: Dataset, cache: Path, cfg: TrainConfig) -> Validation | None:
        """None when the dataset has no usable eval-split clip (the reason is logged)."""
        vs = validation.build_validation_set(backend, dataset.eval, cache, cfg)
        return cls(vs, cfg) if vs is not None else None

    def losses(self, backend: Backend) -> dict[str, float]:
        out = validation.validation_losses(backend, self.vs, self.cfg)
        logger.info("validation loss on the eval split: %s",
                    ", ".join(f"{k.removeprefix(validation.PREFIX)} {v:.3f}" for k, v in out.items()))
        return out


def rescore_run(
    run_dir: Path | str,
    checkpoints: str = "latest",
    progress: Progress | None = None,
    backend: Backend | None = None,
    device: str = "auto",
    **overrides: Any,
) -> RescoreResult:
    """Score ``checkpoints`` ("latest", "best", "all", or names like "step_100,step_200") of a run.

    ``overrides``: evaluation protocol options (``max_sentences``, ``probes``, ``num_references``, ``seed``,
    ``asr_model``, ``intrusive``: :class:`voicetune.config.EvalOptions`); None values are ignored.
    ``backend``: an unloaded backend instance to use instead of the run's registered one. Returns what was
    evaluated, the best and the report's path and text.
    """
    run_dir = Path(run_dir)
    info = RunInfo.load(run_dir)
    cfg = _run_config(run_dir)
    ckpts = _checkpoints(run_dir, checkpoints)
    dataset = Dataset.load(info.dataset)
    run_protocol = Protocol.of(cfg.eval)
    protocol = Protocol.of(protocol_options(cfg.eval, overrides))
    probe_set = build_probe_set(dataset, protocol)
    own = protocol == run_protocol
    eval_root = run_dir / "eval" if own else run_dir / "eval" / f"protocol_{probe_set.key()}"
    if not own:
        logger.info("these options change the run's evaluation protocol: results go to %s", eval_root)

    dev, metric_device, asr_device = _devices(device)
    scorer = Scorer(probe_set, metric_device, asr_device)
    backend = backend or get_backend(info.backend)
    backend.load_base(Path(info.base), dev)
    base_info = {"backend": info.backend, "base_model": info.base, "dataset": info.dataset,
                 "asr_model": scorer.asr_name}
    val = Validation.build(backend, dataset, run_dir / "features", cfg)  # the run's own feature cache
    baseline_doc = _baseline(eval_root, probe_set, scorer, backend, base_info, progress, val)
    if baseline_doc.get("error"):  # nothing to compare the checkpoints with: stop here, loudly
        _fail(run_dir, eval_root, [baseline_doc["error"]])
    rules = selection_rules(cfg.eval)
    lang = probe_set.material.language
    scorer0 = Selector(baseline_doc["base"]["aggregate"], rules, _real_similarity(baseline_doc),
                       sentence_scores(baseline_doc["base"], lang))
    docs, errors = {}, []
    for ckpt in ckpts:
        backend.load_trained(trainable_path(ckpt))
        step = int(read_meta(ckpt).get("step") or 0)
        losses = val.losses(backend) if val else {}
        ev = run_evaluation(backend, probe_set, scorer, ckpt.name, step, progress)
        a = scorer0.assess(ev.aggregate, sentence_scores(ev.scores, lang))
        guard, blocked = scorer0.blocked(a)
        error = synthesis_failure(ev, backend.name)
        if error:
            errors.append(error)
            logger.error("%s", error)
        selection = {"decided_by": "rescore", "interval": a.interval, "deltas": a.deltas, "guard": guard,
                     "blocked": blocked, "n_sentences": a.scores.n if a.scores else 0}
        docs[ckpt.name] = write_evaluation(
            eval_root / ckpt.name, probe_set, ev, baseline_doc,
            selection={"composite": a.composite, "composite_parts": a.parts, "selection": selection},
            info={**base_info, "checkpoint": ckpt.name, **({"error": error} if error else {}),
                  "validation": losses})
        logger.info("%s: composite %+.3f%s", ckpt.name, a.composite, f" ({blocked})" if blocked else "")

    best = _decide_best(run_dir, eval_root, own, baseline_doc, rules, probe_set.key())
    if cfg.eval.per_speaker and not errors and is_multi_speaker(dataset):  # every voice, judged on its own
        target = resolve_checkpoint(run_dir, best) if best else ckpts[-1]
        evaluate_speakers(backend, dataset, protocol, Path(info.base), target, eval_root, rules,
                          (dev, metric_device, asr_device), base_info, progress)
    if errors:
        _fail(run_dir, eval_root, errors)
    from voicetune.evaluation.change import check_run
    from voicetune.evaluation.report import record_verdict, text_report, write_report

    check_run(run_dir, eval_root, metric_device)  # did the finetune change the voice? (EVAL_ROOT/change.json)
    said = record_verdict(run_dir, eval_root)
    report = write_report(run_dir, eval_root)
    return RescoreResult(run_dir, eval_root, [c.name for c in ckpts], best, report,
                         text_report(run_dir, eval_root), docs, said.text)


def score_speakers(
    run_dir: Path | str, checkpoint: str = "best", progress: Progress | None = None,
    backend: Backend | None = None, device: str = "auto",
) -> dict[str, Any] | None:
    """Every voice of a multi-speaker run's dataset, judged on ``checkpoint`` (the run's own protocol), then
    the report rewritten: what `voicetune evaluate` does after its checkpoints, for callers that trained the
    run (its in-loop evaluation scored one speaker). None for a single-speaker dataset or with
    ``eval.per_speaker`` off. ``backend``: an instance to use (it is loaded here)."""
    run_dir = Path(run_dir)
    info, cfg = RunInfo.load(run_dir), _run_config(run_dir)
    dataset = Dataset.load(info.dataset)
    if not cfg.eval.per_speaker or not is_multi_speaker(dataset):
        return None
    dev, metric_device, asr_device = _devices(device)
    backend = backend or get_backend(info.backend)
    target = resolve_checkpoint(run_dir, checkpoint)
    about = {"backend": info.backend, "base_model": info.base, "dataset": info.dataset}
    doc = evaluate_speakers(
        backend,
        dataset,
        Protocol.of(cfg.eval),
        Path(info.base),
        target,
        run_dir / "eval",
        selection_rules(cfg.eval),
        (dev, metric_device, asr_device),
        about,
        progress,
    )
    from voicetune.evaluation.report import write_report

    write_report(run_dir)
    return doc


def _fail(run_dir: Path, eval_root: Path, errors: list[str]) -> None:
    """Write the report (the error at its top) and raise: a software error is never a quality result."""
    from voicetune.evaluation.report import write_report

    report = write_report(run_dir, eval_root)
    raise EvalError(f"{errors[0]}{f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''}; see {report}")


def _real_similarity(baseline_doc: dict[str, Any]) -> float | None:
    return (baseline_doc.get("real") or {}).get("aggregate", {}).get("speaker_similarity")


def _decide_best(
    run_dir: Path, eval_root: Path, own: bool, baseline_doc: dict[str, Any], rules: Any, key: str
) -> str | None:
    """Replay selection (noise rule and guards included) over the evaluations of this protocol whose
    checkpoint still exists; mark the best."""
    docs = eval_docs(eval_root, key)
    lang = baseline_doc.get("language") or "en"
    existing = {int(read_meta(c).get("step") or 0): c for c in list_checkpoints(run_dir)}
    evaluations = [(int(d["step"]), d["finetuned"]["aggregate"], sentence_scores(d["finetuned"], lang))
                   for d in docs if int(d["step"]) in existing and not d.get("error")]
    selector, decisions = replay(baseline_doc["base"]["aggregate"], evaluations, rules,
                                 _real_similarity(baseline_doc), sentence_scores(baseline_doc["base"], lang))
    best: Decision | None = next((d for d in decisions if d.step == selector.best_step), None)
    if best is None:
        return None
    ckpt = existing[best.step]
    aggregate = next(d["finetuned"]["aggregate"] for d in docs if int(d["step"]) == best.step)
    if own:
        set_best(run_dir, ckpt)
        write_best_json(run_dir / "best.json", best, selector, ckpt.name, aggregate, "rescore")
    else:
        write_best_json(eval_root / "best.json", best, selector, ckpt.name, aggregate, "rescore")
    return ckpt.name


BASE_EVAL_ENTRIES = ("metrics.json", "base", "real")  # what `evaluate --base --out DIR` writes


def _is_base_evaluation(folder: Path) -> bool:
    """A base evaluation of an older voicetune (no output marker): metrics.json of kind "baseline"."""
    doc = load_doc(Path(folder) / "metrics.json")
    return isinstance(doc, dict) and doc.get("kind") == "baseline"


@dataclass
class BaseResult:
    """The base model scored alone (:func:`evaluate_base`)."""

    out: Path
    doc: dict[str, Any]
    text: str


def evaluate_base(
    base: Path | str,
    dataset: Path | str,
    out: Path | str,
    backend_name: str | None = None,
    progress: Progress | None = None,
    backend: Backend | None = None,
    device: str = "auto",
    force: bool = False,
    **overrides: Any,
) -> BaseResult:
    """Score a base model zero-shot on a dataset's probe set; write ``out/`` like a run's eval/baseline.

    ``backend_name``: the registered backend to load ``base`` with (default: the one whose native layout
    ``base`` has). ``overrides``: protocol options as for :func:`rescore_run` (defaults:
    :class:`EvalOptions`'s). ``out`` must be new, empty or an earlier base evaluation; another non-empty
    folder only with ``force`` (its files are kept), and never the base model or the dataset.
    """
    inputs = [Path(base), Path(dataset)]
    check_output(out, "base-evaluation", force=force, inputs=inputs, known=BASE_EVAL_ENTRIES,
                 signature=_is_base_evaluation)  # before the evaluation: fail fast
    protocol = Protocol.of(protocol_options(EvalOptions(), overrides))
    data = Dataset.load(dataset)
    probe_set = build_probe_set(data, protocol)
    dev, metric_device, asr_device = _devices(device)
    scorer = Scorer(probe_set, metric_device, asr_device)
    if backend is None:
        backend = get_backend(backend_name or detect_backend(Path(base)))
    backend_name = type(backend).name
    backend.load_base(Path(base), dev)
    with tempfile.TemporaryDirectory(prefix="voicetune-features-") as cache:  # nothing left beside `out`
        val = Validation.build(backend, data, Path(cache), train_config(backend=backend_name))
        losses = val.losses(backend) if val else {}
    ev = run_evaluation(backend, probe_set, scorer, BASELINE, 0, progress)
    info = {"backend": backend_name, "base_model": str(Path(base).resolve()),
            "dataset": str(Path(dataset).resolve()), "asr_model": scorer.asr_name, "validation": losses}
    error = synthesis_failure(ev, backend.name)
    doc = write_baseline(Path(out), probe_set, ev, scorer.score_real(),
                         {**info, "error": error} if error else info,
                         folder=lambda p: output_dir(p, "base-evaluation", force=force, inputs=inputs,
                                                     known=BASE_EVAL_ENTRIES, signature=_is_base_evaluation))
    if error:
        raise EvalError(f"{error}; see {Path(out) / 'metrics.json'}")
    return BaseResult(Path(out), doc, base_table(doc))


def base_table(doc: dict[str, Any]) -> str:
    """metric | base (all sentences) | base (eval split) | base (probes) | real recordings."""
    base, real = doc["base"], doc.get("real") or {}
    cols = [("all", base["aggregate"]), ("eval split", base.get("groups", {}).get("eval", {})),
            ("probes", base.get("groups", {}).get("probe", {})), ("real", real.get("aggregate", {}))]
    header = ["metric"] + [c[0] for c in cols]
    lines = [header]
    for key, label, fmt in TABLE_METRICS:
        cells = [label]
        for _, agg in cols:
            v = agg.get(key)
            cells.append(fmt.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a")
        lines.append(cells)
    widths = [max(len(x[i]) for x in lines) for i in range(len(header))]
    table = "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                enumerate(zip(row, widths, strict=True))) for row in lines)
    val = doc.get("validation") or {}
    if validation.PREFIX + "loss" not in val:
        return table
    parts = ", ".join(f"{k.removeprefix(validation.PREFIX)} {v:.3f}" for k, v in val.items()
                      if k != validation.PREFIX + "loss")
    total = val[validation.PREFIX + "loss"]
    return f"{table}\nvalidation loss on the eval split (teacher-forced): {total:.3f}" + (
        f" ({parts})" if parts else "")
