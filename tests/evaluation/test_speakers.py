"""Every voice of a multi-speaker dataset (evaluation.speakers, through `voicetune evaluate`): each speaker
rendered with its own references, scored against its own held-out clips and baseline, and judged; a finetune
that improves one voice and degrades another says so. Single-speaker datasets are untouched.

The FakeBackend (tests/backends/fake.py) renders the real recording of each sentence plus noise at its
trained SNR; two real voices (Piper's joe, espeak-ng) make the dataset. Every metric is computed for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from backends.fake import FakeBackend

from voicetune.audio.io import write_wav
from voicetune.backends.base import Waveform
from voicetune.backends.registry import train_config
from voicetune.config import save_yaml
from voicetune.data.manifest import Dataset, write_metadata_csv
from voicetune.demo_audio import espeak
from voicetune.evaluation.harness import EvalError, select_material
from voicetune.evaluation.rescore import rescore_run, score_speakers
from voicetune.evaluation.selection import SelectionRules, Selector
from voicetune.evaluation.speakers import (
    DEGRADES,
    IMPROVES,
    NO_CHANGE,
    SpeakerResult,
    dataset_speakers,
    judge,
    speaker_verdict,
)
from voicetune.evaluation.stats import MIN_SENTENCES, SentenceScores
from voicetune.run import RunInfo, set_latest, trainable_path
from voicetune.utils.io import atomic_write_json

ESPEAK_TEXTS = [
    "A small boat drifted slowly towards the rocky shore.",
    "Our neighbours painted their front door bright yellow.",
    "The library closes early on Sundays during the summer.",
    "He forgot his umbrella on the bus again this morning.",
    "Fresh bread from the corner bakery smells wonderful.",
]
PROTOCOL = {"eval_max_sentences": 1, "eval_probes": 0, "eval_num_references": 2, "eval_seed": 1,
            "eval_intrusive": False}


@pytest.fixture(scope="module")
def two_voices(piper_sentences, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A dataset of two real voices: "joe" (Piper, 4 train + 2 eval) and "robo" (espeak-ng, 3 train + 2
    eval), and {text: recording} of every clip."""
    root = tmp_path_factory.mktemp("two_voices")
    (root / "wavs").mkdir()
    recordings, train, evals = {}, [], []
    for i, (path, text) in enumerate(piper_sentences):
        (root / "wavs" / path.name).write_bytes(path.read_bytes())
        recordings[text] = root / "wavs" / path.name
        (train if i < 4 else evals).append((f"wavs/{path.name}", text, "joe"))
    for i, text in enumerate(ESPEAK_TEXTS):
        name = f"robo_{i:02d}.wav"
        write_wav(root / "wavs" / name, *espeak(text, 22050))
        recordings[text] = root / "wavs" / name
        (train if i < 3 else evals).append((f"wavs/{name}", text, "robo"))
    write_metadata_csv(root / "metadata_train.csv", train)
    write_metadata_csv(root / "metadata_eval.csv", evals)
    return root, recordings


def make_run(root: Path, dataset: Path, recordings: dict[str, Path], asr_model: str, base_snr: float = 5.0,
             ckpt_snr: float = 30.0, **options) -> Path:
    """A run of the fake backend: base at ``base_snr`` dB, checkpoint step_10 at ``ckpt_snr`` dB."""
    base = FakeBackend.make_tiny_base(root / "base", recordings=recordings, snr_db=base_snr)
    run = root / "run"
    RunInfo(backend="fake", base=str(base), dataset=str(dataset)).save(run)
    save_yaml(train_config(backend="fake", eval_asr_model=asr_model, **{**PROTOCOL, **options}),
              run / "config.yaml")
    backend = FakeBackend()
    backend.load_base(base, torch.device("cpu"))
    ckpt = run / "checkpoints" / "step_10"
    backend.model.snr_db.fill_(ckpt_snr)
    backend.save(trainable_path(ckpt))
    atomic_write_json(ckpt / "meta.json", {"step": 10})
    set_latest(run, ckpt)
    return run


class ForgetsRobo(FakeBackend):
    """A finetune that helps joe and ruins robo: robo's sentences come out buried in noise (-5 dB SNR)."""

    finetuned = False

    def load_base(self, path: Path, device: torch.device) -> None:
        super().load_base(path, device)
        self.finetuned = False

    def load_trained(self, path: Path) -> None:
        super().load_trained(path)
        self.finetuned = True

    def synthesize(self, text: str, refs, language: str, seed: int) -> Waveform:
        wav = super().synthesize(text, refs, language, seed)
        if not (self.finetuned and text in ESPEAK_TEXTS):
            return wav
        noise = np.random.default_rng(seed).standard_normal(len(wav.audio)).astype(np.float32)
        noise *= np.sqrt(np.mean(wav.audio**2) * 10 ** 0.5 / np.mean(noise**2))
        return Waveform(np.clip(wav.audio + noise, -1, 1), wav.sample_rate, wav.meta)


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, two_voices, asr_model):
    dataset, recordings = two_voices
    run = make_run(tmp_path_factory.mktemp("mixed"), dataset, recordings, asr_model)
    return run, rescore_run(run, "latest", backend=ForgetsRobo(), device="cpu")


@pytest.mark.slow  # ~40 s on 2 cores: 6 evaluations of a two-voice dataset
def test_each_speaker_is_rendered_with_its_own_references_and_scored_on_its_own_clips(mixed):
    run, _ = mixed
    doc = _doc(run / "eval" / "speakers" / "speakers.json")
    assert [s["speaker"] for s in doc["speakers"]] == ["joe", "robo"] and doc["checkpoint"] == "step_10"
    for s in doc["speakers"]:
        folder = run / "eval" / "speakers" / s["folder"]
        base, step = _doc(folder / "baseline" / "metrics.json"), _doc(folder / "step_10" / "metrics.json")
        assert base["speaker"] == step["speaker"] == s["speaker"]
        refs = {Path(r).name for r in base["references"]}
        assert refs and all(r.startswith("robo_") == (s["speaker"] == "robo") for r in refs)
        texts = [x["text"] for x in step["sentences"]]
        assert all((t in ESPEAK_TEXTS) == (s["speaker"] == "robo") for t in texts)
        assert (folder / "step_10" / "finetuned" / "00.wav").is_file()
        assert (folder / "baseline" / "base" / "00.wav").is_file()
    # the main evaluation still scores the speaker with the most training clips, as before
    assert _doc(run / "eval" / "baseline" / "metrics.json")["speaker"] == "joe"


@pytest.mark.slow  # ~40 s on 2 cores: 6 evaluations of a two-voice dataset
def test_a_finetune_that_improves_one_voice_and_degrades_another_says_so(mixed):
    run, result = mixed
    doc = _doc(run / "eval" / "speakers" / "speakers.json")
    by = {s["speaker"]: s for s in doc["speakers"]}
    assert by["joe"]["judgement"] == IMPROVES and by["joe"]["composite"] > 0
    assert by["robo"]["judgement"] == DEGRADES and by["robo"]["composite"] < 0
    assert by["robo"]["summary"]["wer"]["delta"] > 0  # buried in noise: the ASR round trip suffers
    assert doc["verdict"].startswith("The finetune improves joe but degrades robo")
    assert "robo: degrades" in by["robo"]["line"]
    html = result.report.read_text()
    assert "Every voice" in html and "improves joe but degrades robo" in html
    assert "speakers/02_robo/step_10/finetuned/00.wav" in html
    assert "every voice (step_10): The finetune improves joe but degrades robo" in result.text
    assert "  robo: degrades (speaker similarity" in result.text


@pytest.mark.slow  # ~30 s on 2 cores: 4 evaluations
def test_after_training_every_voice_can_be_judged_without_rescoring(tmp_path, two_voices, asr_model):
    dataset, recordings = two_voices
    run = make_run(tmp_path, dataset, recordings, asr_model)
    doc = score_speakers(run, "latest", backend=ForgetsRobo(), device="cpu")
    assert doc["verdict"].startswith("The finetune improves joe but degrades robo")
    assert "improves joe but degrades robo" in (run / "report.html").read_text()
    assert not (run / "eval" / "baseline").exists()  # only the per-speaker evaluations ran


def test_a_single_speaker_dataset_behaves_as_before(tmp_path, piper_sentences, make_piper_dataset, asr_model):
    dataset = make_piper_dataset(piper_sentences, tmp_path / "one", n_train=4)
    run = make_run(tmp_path, dataset, {t: p for p, t in piper_sentences}, asr_model)
    result = rescore_run(run, "latest", backend=FakeBackend(), device="cpu")
    assert not (run / "eval" / "speakers").exists()
    assert "Every voice" not in result.report.read_text()


def test_per_speaker_evaluation_can_be_turned_off(tmp_path, two_voices, asr_model):
    dataset, recordings = two_voices
    run = make_run(tmp_path, dataset, recordings, asr_model, eval_per_speaker=False)
    rescore_run(run, "latest", backend=FakeBackend(), device="cpu")
    assert not (run / "eval" / "speakers").exists()


def test_speakers_without_eval_clips_are_skipped_with_the_reason(tmp_path, two_voices):
    dataset, _ = two_voices
    ds = Dataset.load(dataset)
    ds.eval = [c for c in ds.eval if c.speaker != "robo"]
    ok, skipped = dataset_speakers(ds)
    assert ok == ["joe"] and "eval clips" in skipped["robo"]
    material = select_material(ds, 2, 2, speaker="joe")
    assert material.speaker == "joe" and all(c.speaker == "joe" for c in material.sentences)
    with pytest.raises(EvalError, match="'nobody'.*speakers are"):
        select_material(ds, 2, 2, speaker="nobody")


def _assessed(change: float, n: int, seed: int = 0, rules: SelectionRules | None = None,
              wer: tuple[float, float] = (0.0, 0.0)):
    """One speaker's assessment: ``n`` sentences x 2 seeds whose speaker similarity moves by ``change``
    from the base model's (sentence effects shared, render noise 0.03) and whose WER goes from ``wer[0]``
    to ``wer[1]``, and the similarity guard's message."""
    rng = np.random.default_rng(seed)
    effects = 0.70 + rng.normal(0, 0.05, n)

    def scores(shift: float, w: float) -> SentenceScores:
        return SentenceScores.from_rows(
            [{"sentence": i, "seed": j, "text": "one two three four",
              "speaker_similarity": float(effects[i] + shift + rng.normal(0, 0.03)), "wer": w, "cer": w / 2,
              "mos": 3.0, "flags": []}
             for j in range(2) for i in range(n)])

    base, model = scores(0.0, wer[0]), scores(change, wer[1])
    sel = Selector(base.point(), rules or SelectionRules(), 0.85, base)
    a = sel.assess(model.point(), model)
    guard, message = sel.blocked(a)
    return a, message if guard == "similarity" else ""


def test_a_speaker_is_judged_on_the_interval_of_its_composite_not_on_a_point_above_the_threshold():
    better, guard = _assessed(+0.10, 12)
    assert better.interval[0] > 0 and judge(better, guard, 0.01) == (IMPROVES, "")
    worse, guard = _assessed(-0.10, 12)
    assert worse.interval[1] < 0 and judge(worse, guard, 0.01)[0] == DEGRADES
    # a change inside the noise: its composite is beyond the threshold, yet its interval holds 0
    for seed in range(20):
        noisy, guard = _assessed(+0.01, 6, seed=seed)
        if noisy.interval[0] < 0 < noisy.interval[1] and noisy.composite > 0.01:
            break
    else:
        pytest.fail("no noisy case found")
    assert judge(noisy, guard, 0.01) == (NO_CHANGE, "")


def test_a_voice_whose_similarity_falls_significantly_is_degraded_whatever_its_composite():
    a, guard = _assessed(-0.04, 12, rules=SelectionRules(similarity_guard=True), wer=(0.5, 0.0))
    assert a.interval[0] > 0  # far fewer word errors: the composite alone would say it improves
    assert guard.startswith("similarity guard") and judge(a, guard, 0.01) == (DEGRADES, guard)


def test_with_too_few_sentences_the_point_score_decides_and_the_judgement_says_so():
    a, guard = _assessed(+0.10, MIN_SENTENCES - 1)
    judgement, reason = judge(a, guard, 0.01)
    assert a.interval is None and judgement == IMPROVES and "too few for an interval" in reason
    line = SpeakerResult("alice", "01_alice", {}, a.composite, a.parts, judgement, reason=reason).line()
    assert line.startswith("alice: improves") and "too few for an interval" in line and "95 % CI" not in line
    b, guard = _assessed(+0.10, 12)
    line = SpeakerResult("bob", "02_bob", {}, b.composite, b.parts, IMPROVES, interval=b.interval,
                         deltas=b.deltas).line()
    assert f"95 % CI {b.interval[0]:+.3f} to {b.interval[1]:+.3f}" in line


def _r(name: str, judgement: str) -> SpeakerResult:
    return SpeakerResult(name, name, {}, 0.0, {}, judgement)


@pytest.mark.parametrize(("judgements", "expected"), [
    ({"a": IMPROVES, "b": DEGRADES}, "The finetune improves a but degrades b"),
    ({"a": IMPROVES, "b": IMPROVES}, "The finetune improves every voice (a, b)."),
    ({"a": IMPROVES, "b": NO_CHANGE}, "The finetune improves a; no clear change for b."),
    ({"a": DEGRADES, "b": NO_CHANGE}, "The finetune degrades a; no clear change for b."),
    ({"a": NO_CHANGE, "b": NO_CHANGE}, "No clear change for any voice (a, b)."),
])
def test_the_verdict_names_improved_and_degraded_voices(judgements, expected):
    assert speaker_verdict([_r(n, j) for n, j in judgements.items()]).startswith(expected)


@pytest.mark.slow  # ~60 s on 2 cores: a short run with its in-loop evaluations, then 4 per-speaker ones
def test_train_ends_by_judging_every_voice_and_its_verdict_says_what_that_found(tmp_path, two_voices,
                                                                                asr_model):
    from voicetune.finetune import train

    dataset, recordings = two_voices
    base = FakeBackend.make_tiny_base(tmp_path / "base", recordings=recordings, snr_db=5.0)
    run = tmp_path / "run"
    train(dataset, base, run, backend="fake", max_steps=2, batch_size=2, lr=1e-2, eval_every=2,
          eval_asr_model=asr_model, device="cpu", **PROTOCOL)
    doc = json.loads((run / "eval" / "speakers" / "speakers.json").read_text())
    assert {s["speaker"] for s in doc["speakers"]} == {"joe", "robo"}
    assert "Every voice" in (run / "report.html").read_text()
    recorded = json.loads((run / "eval" / "in_loop.json").read_text())["verdict"]
    degraded = any(s["judgement"] == "degrades" for s in doc["speakers"])
    assert (doc["verdict"].rstrip(".") in recorded["why"]) == degraded
