"""The probe-set evaluation shared by in-loop evaluation, `voicetune evaluate` re-scoring and base scoring.

Protocol (fixed per run, so every checkpoint is rendered on the same inputs):

* the sentences: up to ``max_sentences`` EVAL-split clips of the speaker (text + real recording, so the
  intrusive metrics MCD/PESQ/STOI can compare with the recording), then the first ``probes`` fixed probe
  sentences of the language (:mod:`voicetune.evaluation.probes`: short, numbers/names, questions, long);
* the conditioning: the speaker's ``num_references`` longest TRAIN clips; every sentence rendered ``seeds``
  times, with sampling seeds ``seed``, ``seed + 1``, ... (the intervals of :mod:`.stats` resample sentences
  with their seeds);
* the metrics (:mod:`voicetune.evaluation.metrics`, models loaded once per process and reused): speaker
  similarity to the centroid of the speaker's held-out clips (Resemblyzer, and a second opinion from another
  encoder as ``speaker_similarity_dv``: :mod:`.encoders`), ASR round-trip WER/CER, predicted MOS and
  failure flags on every sentence; MCD/PESQ/STOI on the eval-split sentences only (``intrusive``).
* one speaker: the one with the most training clips; :mod:`.speakers` evaluates every speaker of a
  multi-speaker dataset on its own probe set (``build_probe_set(..., speaker=S)``).

On disk (``RUN_DIR/eval/``)::

    baseline/metrics.json    kind "baseline": the base model zero-shot ("base") and the real recordings
                             ("real", eval split only), the protocol and its key
    baseline/base/NN.wav     base renders (NN: index in the probe set, eval sentences first; NN_seedS.wav:
                             the render with sampling seed S, for every seed after the first)
    baseline/real/NN.wav     copies of the real recordings of the eval sentences
    step_N/metrics.json      kind "eval": "finetuned" (this step), "base"/"real" (copied from the
                             baseline), "summary" (per metric: base, finetuned, delta, better),
                             "composite" and "selection" (see selection.py)
    step_N/finetuned/NN.wav  this step's renders

Each scored model is ``{"aggregate", "per_sentence", "groups": {"eval": aggregate, "probe": aggregate}}``;
``aggregate`` covers all sentences (WER/CER corpus-level), except MCD/PESQ/STOI (eval sentences only).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from voicetune.audio.io import load_audio, write_wav
from voicetune.backends.base import Backend, Progress
from voicetune.config import EvalOptions
from voicetune.data.manifest import Clip, Dataset
from voicetune.evaluation import metrics as M
from voicetune.evaluation.encoders import add_dvector_scores, dvector_centroid, encoder_note
from voicetune.evaluation.harness import (
    EvalError,
    EvalMaterial,
    Render,
    aggregate,
    json_safe,
    model_scores,
    render,
    score,
    select_material,
    summarize,
)
from voicetune.evaluation.probes import PROBES_VERSION, probe_sentences
from voicetune.evaluation.selection import Decision, ScoreWeights, SelectionRules, Selector
from voicetune.evaluation.stats import SentenceScores
from voicetune.utils.io import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 3  # 2: ASR in batched passes, each clip in its own window; 3: K seeds per sentence
BASELINE = "baseline"
INTRUSIVE = ("mcd", "pesq", "stoi")
LOGGED_METRICS = ("speaker_similarity", "speaker_similarity_dv", "wer", "cer", "mos", "mcd", "pesq", "stoi",
                  "failure_rate")


@dataclass(frozen=True)
class Protocol:
    """What an evaluation renders and how it scores it: the protocol fields of :class:`EvalOptions` (their
    docs, defaults and checks live there), frozen. Its fields are hashed into :meth:`ProbeSet.key`."""

    max_sentences: int
    probes: int
    num_references: int
    seed: int
    seeds: int
    asr_model: str
    intrusive: bool

    @classmethod
    def of(cls, options: EvalOptions) -> Protocol:
        return cls(**{name: getattr(options, name) for name in EvalOptions.PROTOCOL})


def selection_rules(options: EvalOptions) -> SelectionRules:
    """The composite-score weights, early stopping and WER guard of the evaluation options."""
    weights = ScoreWeights(
        similarity=options.weight_similarity, wer=options.weight_wer, cer=options.weight_cer,
        mos=options.weight_mos, failures=options.weight_failures,
    )
    return SelectionRules(weights, patience=options.early_stop_patience,
                          min_delta=options.early_stop_min_delta,
                          wer_guard=options.wer_guard, wer_margin=options.wer_guard_margin,
                          similarity_guard=options.similarity_guard)


def sentence_scores(scored: dict[str, Any] | None, language: str) -> SentenceScores | None:
    """A scored model's per-sentence scores (:class:`.stats.SentenceScores`), None when it has none."""
    rows = (scored or {}).get("per_sentence") or []
    return SentenceScores.from_rows(rows, language) if rows else None


@dataclass
class ProbeSet:
    """The fixed inputs of every evaluation of a run."""

    material: EvalMaterial  # speaker, references, eval-split sentences (with recordings), held-out clips
    probes: list[str]
    protocol: Protocol

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.material.sentences] + list(self.probes)

    @property
    def groups(self) -> list[str]:
        return ["eval"] * len(self.material.sentences) + ["probe"] * len(self.probes)

    @property
    def n_eval(self) -> int:
        return len(self.material.sentences)

    @property
    def seeds(self) -> list[int]:
        """The sampling seeds every sentence is rendered with (``seed``, ``seed + 1``, ...)."""
        return [self.protocol.seed + j for j in range(self.protocol.seeds)]

    def key(self) -> str:
        """Hash of everything a score depends on: equal keys mean comparable evaluations."""
        blob = json.dumps(
            {
                "v": PROTOCOL_VERSION, "probes_version": PROBES_VERSION, "texts": self.texts,
                "references": [str(p) for p in self.material.references], "language": self.material.language,
                "protocol": dataclasses.asdict(self.protocol),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        m = self.material
        return {
            "protocol": {
                **dataclasses.asdict(self.protocol),
                "key": self.key(),
                "probes_version": PROBES_VERSION,
            },
            "speaker": m.speaker,
            "language": m.language,
            "chars_per_second": m.chars_per_second,
            "references": [str(p) for p in m.references],
            "held_out_clips": len(m.held_out),
            "seeds": self.seeds,
            "sentences": [
                {
                    "index": i,
                    "text": t,
                    "group": g,
                    "real_audio": str(m.sentences[i].audio_path) if g == "eval" else None,
                }
                for i, (t, g) in enumerate(zip(self.texts, self.groups, strict=True))
            ],
        }


def build_probe_set(dataset: Dataset, protocol: Protocol, speaker: str | None = None) -> ProbeSet:
    """Select the speaker (``speaker``, else the one with the most training clips), references and eval
    sentences (:func:`harness.select_material`) and the probes.

    Raises :class:`EvalError` when the dataset has no eval clips of the speaker (the similarity centroid
    and the intrusive metrics need real held-out recordings).
    """
    material = select_material(dataset, protocol.num_references, protocol.max_sentences, speaker)
    probes = probe_sentences(dataset.language, protocol.probes) if protocol.probes else []
    if not material.sentences and not probes:
        raise EvalError(
            "the evaluation protocol has no sentences: set eval_max_sentences or eval_probes >= 1"
        )
    return ProbeSet(material, probes, protocol)


# ------------------------------------------------------------------------------------------- scoring


class Scorer:
    """The metric models (ASR, speaker encoder, MOS predictor) and the speaker centroid, loaded once.

    ``device``: "cuda" or "cpu" for the speaker encoder and MOS model; ``asr_device``: as in prepare.
    """

    def __init__(self, probe_set: ProbeSet, device: str = "cpu", asr_device: str = "auto"):
        self.probe_set = probe_set
        self.device = device
        lang = probe_set.material.language
        self.asr = M.get_asr(probe_set.protocol.asr_model, lang, asr_device)
        self.centroid = M.speaker_centroid(probe_set.material.held_out, device=device)
        self.dv_centroid = dvector_centroid(probe_set.material.held_out)  # None: no second opinion here

    @property
    def asr_name(self) -> str:
        return getattr(self.asr, "name", str(self.asr))

    def score(self, renders: list[Render], progress: Progress | None = None, what: str = "score") -> dict:
        """Every metric of every render: ``{"aggregate", "per_sentence", "groups"}``.

        ``renders``: the probe set's texts once per seed, seed-major (as :func:`run_evaluation` renders them:
        every text with the first seed, then every text with the second...)."""
        ps, m = self.probe_set, self.probe_set.material
        n, n_eval, total = len(ps.texts), ps.n_eval, len(renders)
        k = total // n
        if k * n != total:
            raise ValueError(f"{total} renders for {n} sentences: expected a multiple of {n}")
        tick = _ticker(progress, total, what)
        part_eval = [renders[j * n + i] for j in range(k) for i in range(n_eval)]
        material = dataclasses.replace(m, sentences=m.sentences * k)
        eval_part = score(part_eval, material, self.asr, self.centroid, self.device,
                          intrusive=ps.protocol.intrusive, progress=tick) if n_eval else None
        probe_part = None
        if ps.probes:
            # probe sentences have no recording: Clip.audio_path is never read with intrusive=False
            clips = [Clip(None, t, m.speaker, m.language) for t in ps.probes]  # type: ignore[arg-type]
            probe_material = dataclasses.replace(m, sentences=clips * k)
            part_probe = [renders[j * n + i] for j in range(k) for i in range(n_eval, n)]
            probe_part = score(part_probe, probe_material, self.asr, self.centroid, self.device,
                               intrusive=False, progress=_offset(tick, len(part_eval)))
        scored = combine(eval_part, probe_part, ps.texts, m.language, ps.seeds[:k])
        return add_dvector_scores(scored, renders, self.dv_centroid)

    def score_real(self) -> dict:
        """The real recordings of the eval sentences, scored like renders (the ceiling of each metric)."""
        m = self.probe_set.material
        if not m.sentences:
            return {"aggregate": {}, "per_sentence": [], "groups": {}}
        real = [Render(*load_audio(c.audio_path)) for c in m.sentences]
        part = score(real, m, self.asr, self.centroid, self.device, intrusive=False)
        for row in part["per_sentence"]:
            row["group"] = "eval"
        return add_dvector_scores({**part, "groups": {"eval": part["aggregate"]}}, real, self.dv_centroid)


def _ticker(progress: Progress | None, total: int, what: str) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _total, _what: progress(done, total, what)


def _offset(tick: Progress | None, offset: int) -> Progress | None:
    if tick is None:
        return None
    return lambda done, total, what: tick(offset + done, total, what)


def combine(eval_part: dict | None, probe_part: dict | None, texts: list[str], language: str,
            seeds: list[int] | None = None) -> dict:
    """One scored model from its eval-split and probe parts: overall aggregate + per-group aggregates.

    With ``seeds`` (k of them), each part holds its sentences once per seed, seed-major; the rows come out
    in render order (every text with the first seed, then with the second...), each with its ``sentence``
    (index in ``texts``) and ``seed``: rows ``0..len(texts)-1`` are the first seed's."""
    seeds = list(seeds or [None])  # type: ignore[list-item]
    k, n = len(seeds), len(texts)
    rows: list[dict[str, Any]] = [{} for _ in range(n * k)]
    groups, offset = {}, 0
    for name, part in (("eval", eval_part), ("probe", probe_part)):
        if part is None:
            continue
        groups[name] = part["aggregate"]
        size = len(part["per_sentence"]) // k
        for r, row in enumerate(part["per_sentence"]):
            j, i = divmod(r, size)
            rows[j * n + offset + i] = {**row, "index": j * n + offset + i, "sentence": offset + i,
                                        "seed": seeds[j], "group": name}
        offset += size
    overall = aggregate(rows, texts * k, language, intrusive=False)
    overall["seeds"] = k
    if eval_part is not None:
        for key in INTRUSIVE:
            if key in eval_part["aggregate"]:
                overall[key] = eval_part["aggregate"][key]
    return {"aggregate": overall, "per_sentence": rows, "groups": groups}


# ------------------------------------------------------------------------------------- evaluations


@dataclass
class Evaluation:
    """One model rendered and scored on the probe set."""

    name: str  # "baseline" or "step_N"
    step: int
    scores: dict[str, Any]
    renders: list[Render]
    render_seconds: float = 0.0
    score_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.render_seconds + self.score_seconds

    @property
    def aggregate(self) -> dict[str, Any]:
        return self.scores["aggregate"]


def run_evaluation(
    backend: Backend, probe_set: ProbeSet, scorer: Scorer, name: str, step: int,
    progress: Progress | None = None,
) -> Evaluation:
    """Render the probe set with the backend's CURRENT weights (inference mode, each sentence once per seed of
    the protocol) and score it.

    ``progress`` counts sentences: ``(done, n, "eval NAME: rendering")``, then
    ``(done, n, "eval NAME: scoring")``.
    The backend is left in inference mode; callers switch it back (the training loop does).
    """
    ps = probe_set
    texts = ps.texts * len(ps.seeds)  # seed-major: every text with the first seed, then the second...
    seeds = [seed for seed in ps.seeds for _ in ps.texts]
    n, label = len(texts), f"eval {name}"
    if progress:
        progress(0, n, f"{label}: rendering")
    t0 = time.perf_counter()
    renders = render(backend, texts, ps.material.references, ps.material.language, seeds,
                     progress=progress, total=n, what=f"{label}: rendering")
    t1 = time.perf_counter()
    if progress:
        progress(0, n, f"{label}: scoring")
    scores = scorer.score(renders, progress, what=f"{label}: scoring")
    t2 = time.perf_counter()
    return Evaluation(name, step, scores, renders, t1 - t0, t2 - t1)


def synthesis_failure(ev: Evaluation, backend: str) -> str:
    """The software error of an evaluation in which EVERY sentence failed to synthesize ("" otherwise).

    Such an evaluation measures nothing about voice quality: the callers stop (training) or fail (re-scoring)
    instead of scoring it, and it never becomes the best checkpoint.
    """
    errors = [r.error for r in ev.renders]
    if not errors or not all(errors):
        return ""
    common, count = collections.Counter(errors).most_common(1)[0]
    also = "" if count == len(errors) else f" ({count} of them; others: {min(set(errors) - {common})})"
    name = "the baseline" if ev.name == BASELINE else ev.name
    rows = ev.scores.get("per_sentence") or []
    n = len({r.get("sentence", r.get("index")) for r in rows}) or len(errors)
    what = (f"{n} sentences" if n == len(errors)
            else f"{len(errors)} renders ({n} sentences x {len(errors) // n} seeds)")
    return (f"{name} evaluation: all {what} failed to synthesize (component: synthesis, "
            f"{backend} backend): {common}{also}. This is a software error (a bug or a broken installation; "
            "`voicetune doctor` checks the stack), not a voice quality result")


def partial_errors(name: str, aggregate: dict[str, Any]) -> str:
    """"step 100: 3 of 8 sentences failed to synthesize: ERROR (3)" when some, not all, failed; else ""
    (with several seeds per sentence: "3 of 16 renders")."""
    n, errors = aggregate.get("n_sentences") or 0, aggregate.get("errors") or {}
    count = sum(errors.values())
    if not count or count >= n:
        return ""
    why = "; ".join(f"{e} ({k}x)" for e, k in sorted(errors.items(), key=lambda t: -t[1]))
    what = "renders" if (aggregate.get("seeds") or 1) > 1 else "sentences"
    return f"{name}: {count} of {n} {what} failed to synthesize: {why}"


def warm_up(backend: Backend, probe_set: ProbeSet, scorer: Scorer) -> float:
    """Render and score the shortest sentence once, unrecorded; returns the seconds it took.

    The first render and score of a process pay one-time costs (kernel selection, lazily loaded metric
    models, JIT compilation); after this, an evaluation's timing is its steady cost, which the in-loop
    overhead cap plans with.
    """
    t0 = time.perf_counter()
    m = probe_set.material
    text = min(probe_set.texts, key=len)
    r = render(backend, [text], m.references, m.language, probe_set.protocol.seed, what="eval warm-up")[0]
    if r.audio is not None and r.audio.size:
        model_scores([r], scorer.asr, scorer.centroid, scorer.device, m.language)
        M.detect_failures(r.audio, r.sample_rate, text, m.chars_per_second, language=m.language)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ writing


def _timing(ev: Evaluation) -> dict[str, float]:
    return {"render": round(ev.render_seconds, 3), "score": round(ev.score_seconds, 3),
            "total": round(ev.seconds, 3)}


def write_baseline(
    out: Path, probe_set: ProbeSet, ev: Evaluation, real: dict, info: dict[str, Any] | None = None,
    folder: Callable[[Path], AbstractContextManager[Path]] = atomic_dir,
) -> dict[str, Any]:
    """Write ``out/`` (metrics.json, base/NN.wav, real/NN.wav) atomically; return the document. ``folder``
    builds it (a run's own eval/baseline: :func:`atomic_dir`; a user's --out:
    :func:`voicetune.utils.outputs.output_dir`)."""
    m = probe_set.material
    base = json.loads(json.dumps(json_safe(ev.scores)))  # a copy the writer may annotate
    real = json.loads(json.dumps(json_safe(real)))
    with folder(out) as tmp:
        for i, clip in enumerate(m.sentences):
            (tmp / "real").mkdir(exist_ok=True)
            shutil.copyfile(clip.audio_path, tmp / "real" / f"{i:02d}.wav")
            real["per_sentence"][i]["audio_file"] = f"real/{i:02d}.wav"
        _write_renders(tmp, "base", ev.renders, base)
        doc = {
            "kind": "baseline", "name": BASELINE, "step": 0, **(info or {}), **probe_set.describe(),
            "seconds": _timing(ev), "base": base, "real": real,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(tmp / "metrics.json", json_safe(doc))
    return doc


def write_evaluation(
    out: Path,
    probe_set: ProbeSet,
    ev: Evaluation,
    baseline_doc: dict[str, Any],
    selection: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out/`` (metrics.json, finetuned/NN.wav) atomically; return the document.

    ``base`` and ``real`` are copied from ``baseline_doc`` with audio paths relative to ``out``
    (``../baseline/...``), so each step's metrics.json reads on its own.
    """
    finetuned = json.loads(json.dumps(json_safe(ev.scores)))
    models = {"finetuned": finetuned}
    for name in ("base", "real"):
        copy = json.loads(json.dumps(baseline_doc.get(name) or {"aggregate": {}, "per_sentence": []}))
        for row in copy.get("per_sentence", []):
            if row.get("audio_file"):
                row["audio_file"] = f"../{BASELINE}/{row['audio_file']}"
        models[name] = copy
    summary = summarize(models)
    with atomic_dir(out) as tmp:
        _write_renders(tmp, "finetuned", ev.renders, finetuned)
        doc = {
            "kind": "eval", "name": ev.name, "step": ev.step, **(info or {}), **probe_set.describe(),
            "seconds": _timing(ev), "summary": summary, **(selection or {}), **models,
            "speaker_encoders": encoder_note(summary),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(tmp / "metrics.json", json_safe(doc))
    return doc


def _write_renders(folder: Path, name: str, renders: list[Render], scored: dict[str, Any]) -> None:
    """``name/NN.wav`` for the first seed's render of sentence NN, ``name/NN_seedS.wav`` for the others."""
    rows = scored["per_sentence"]
    first = rows[0].get("seed") if rows else None
    for i, r in enumerate(renders):
        path = None
        if r.audio is not None:
            row = rows[i]
            seed = row.get("seed")
            stem = f"{row.get('sentence', i):02d}" + ("" if seed == first else f"_seed{seed}")
            write_wav(folder / name / f"{stem}.wav", r.audio, r.sample_rate)
            path = f"{name}/{stem}.wav"
        rows[i]["audio_file"] = path


def load_doc(path: Path) -> dict[str, Any] | None:
    """A metrics.json written here, or None when it is missing or unreadable (logged)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("%s: unreadable (%s); ignored", path, e)
        return None


def eval_docs(eval_root: Path, key: str | None = None) -> list[dict[str, Any]]:
    """The step evaluations under ``eval_root`` (kind "eval"), in step order; only protocol ``key``'s if
    given."""
    out = []
    root = Path(eval_root)
    for folder in root.glob("step_*") if root.is_dir() else []:
        doc = load_doc(folder / "metrics.json")
        if doc and doc.get("kind") == "eval" and (key is None or doc.get("protocol", {}).get("key") == key):
            out.append(doc)
    return sorted(out, key=lambda d: int(d.get("step") or 0))


def write_best_json(
    path: Path, d: Decision, selector: Selector, checkpoint: str, aggregate: dict[str, Any], decided_by: str
) -> None:
    """``best.json``: which checkpoint is best, its composite score (with its 95 % interval), metrics and
    the baseline's, the changes with their paired intervals, how the decision was made."""
    base = selector.baseline
    atomic_write_json(Path(path), json_safe({
        "checkpoint": checkpoint,
        "step": d.step,
        "composite": d.composite,
        "composite_interval": d.interval,
        "composite_parts": d.parts,
        "beats_baseline": d.composite > 0,
        "beats_baseline_beyond_noise": bool(d.interval and d.interval[0] > 0),
        "deltas": d.deltas,
        "n_sentences": d.n_sentences,
        "seeds": d.seeds,
        "note": d.note,
        "metrics": {k: aggregate.get(k) for k in LOGGED_METRICS},
        "baseline": {k: base.get(k) for k in LOGGED_METRICS},
        "weights": selector.rules.weights.as_dict(),
        "evaluation": f"eval/step_{d.step}/metrics.json",
        "decided_by": decided_by,
    }))
