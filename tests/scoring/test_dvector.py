"""The second speaker encoder (voicetune.scoring.dvector) on real voices: Piper's joe against espeak-ng, and
the second-opinion glue of voicetune.evaluation.encoders (absent with a reason where the wheel is not)."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from voicetune.demo_audio import espeak
from voicetune.evaluation import encoders as E
from voicetune.scoring import dvector as DV

needs_encoder = pytest.mark.skipif(bool(DV.unavailable()), reason=DV.unavailable() or "available")


@pytest.fixture(scope="module")
def voices(piper_sentences):
    """(joe's 6 clips, espeak-ng's 6 clips of the same sentences), 16 kHz."""
    from voicetune.audio.io import load_audio

    joe = [load_audio(p, sr=16000)[0] for p, _ in piper_sentences]
    other = [espeak(text, 16000)[0] for _, text in piper_sentences]
    return joe, other


@needs_encoder
def test_own_voice_scores_above_another_voice_by_a_wide_margin(voices):
    joe, other = voices
    centroid = DV.dvector_centroid(joe[:3], 16000)
    same = DV.dvector_similarities(joe[3:], centroid)
    different = DV.dvector_similarities(other, centroid)
    assert min(same) > 0.6 and max(different) < 0.5  # benchmark: joe 0.70..0.94 vs espeak <= 0.43
    assert min(same) - max(different) > 0.2


@needs_encoder
def test_silence_around_the_speech_does_not_change_the_embedding(voices):
    clip = voices[0][0]
    padded = np.concatenate([np.zeros(16000, np.float32), clip, np.zeros(24000, np.float32)])
    a, b = DV.dvector_embedding(clip, 16000), DV.dvector_embedding(padded, 16000)
    assert a.shape == (256,) and abs(np.linalg.norm(a) - 1) < 1e-4
    assert float(np.dot(a, b)) > 0.98


@needs_encoder
def test_silence_has_no_embedding_and_scores_nan(voices):
    assert DV.dvector_embedding(np.zeros(32000, np.float32), 16000) is None
    centroid = DV.dvector_centroid(voices[0][:2], 16000)
    assert math.isnan(DV.dvector_similarities([np.zeros(16000, np.float32)], centroid)[0])
    with pytest.raises(ValueError, match="no reference clip"):
        DV.dvector_centroid([np.zeros(16000, np.float32)], 16000)


@pytest.mark.parametrize(("res", "dv", "disagree"), [
    (0.10, 0.18, False),    # both up, in proportion to their scales
    (0.10, -0.15, True),    # Resemblyzer up, d-vector clearly down
    (-0.12, 0.20, True),
    (0.01, -0.01, False),   # opposite signs but both within noise
    (0.05, 0.0, False),     # one moves a little, the other not: not beyond the threshold
    (math.nan, 0.3, False),
])
def test_encoders_disagree_only_when_they_point_apart_beyond_the_threshold(res, dv, disagree):
    assert DV.encoders_disagree(res, dv) is disagree


def test_the_note_names_both_changes_when_the_encoders_disagree():
    summary = {"speaker_similarity": {"delta": 0.10}, E.KEY: {"delta": -0.15}}
    note = E.encoder_note(summary)
    assert "disagree" in note and "+0.100" in note and "-0.150" in note
    assert E.encoder_note({"speaker_similarity": {"delta": 0.10}, E.KEY: {"delta": 0.18}}) == ""


@needs_encoder
def test_scores_are_added_to_rows_aggregate_and_groups(voices):
    joe, other = voices
    renders = [SimpleNamespace(audio=a, sample_rate=16000) for a in (joe[3], other[3])]
    renders.append(SimpleNamespace(audio=None, sample_rate=0))  # failed synthesis
    scored = {"per_sentence": [{"group": "eval"}, {"group": "probe"}, {"group": "probe"}],
              "aggregate": {}, "groups": {"eval": {}, "probe": {}}}
    E.add_dvector_scores(scored, renders, DV.dvector_centroid(joe[:3], 16000))
    rows = scored["per_sentence"]
    assert rows[0][E.KEY] > 0.6 > rows[1][E.KEY] and math.isnan(rows[2][E.KEY])
    assert scored["groups"]["eval"][E.KEY] == rows[0][E.KEY]
    assert scored["groups"]["probe"][E.KEY] == rows[1][E.KEY]
    assert scored["aggregate"][E.KEY] == pytest.approx((rows[0][E.KEY] + rows[1][E.KEY]) / 2)


def test_on_python_3_10_the_metric_is_absent_with_the_reason(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))
    tone = (0.3 * np.sin(2 * np.pi * 150 * np.arange(16000) / 16000)).astype(np.float32)
    assert "Python >= 3.11" in DV.unavailable()
    assert E.dvector_centroid([]) is None
    renders = [SimpleNamespace(audio=tone, sample_rate=16000)]
    scored = E.add_dvector_scores({"per_sentence": [{}], "aggregate": {}}, renders, None)
    assert math.isnan(scored["aggregate"][E.KEY])
    assert "Python >= 3.11" in E.encoder_note({"speaker_similarity": {"delta": 0.1}})
    with pytest.raises(RuntimeError, match="Python >= 3.11"):
        DV.dvector_embedding(tone, 16000)


@pytest.mark.parametrize(("res", "dv", "said"), [
    (0.10, 0.18, "+0.40 (Resemblyzer) and +0.40 (d-vector): they agree."),
    (-0.038, -0.002, "the same direction, but the d-vector encoder sees a much smaller change"),
    (0.02, -0.02, "opposite directions, but within the 0.50"),
    (0.10, -0.15, "they disagree"),
])
def test_the_agreement_is_said_on_the_encoders_common_scale(res, dv, said):
    assert said in E.agreement_text({"speaker_similarity": {"delta": res}, E.KEY: {"delta": dv}})
    assert E.agreement_text({"speaker_similarity": {"delta": res}}) == ""
