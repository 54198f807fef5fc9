"""The verdict's wording on known inputs: numbers, the recommendation and the "why"."""

from __future__ import annotations

from voicetune.evaluation.verdict import verdict


def best(sim=(0.71, 0.83, 0.09, 0.15), wer=(0.04, 0.04, -0.01, 0.01), composite=0.6, interval=(0.4, 0.8),
         n=8, seeds=2, checkpoint="step_1200"):
    def delta(base, value, low, high):
        return {"base": base, "value": value, "delta": value - base, "low": low, "high": high}

    return {"checkpoint": checkpoint, "step": 1200, "composite": composite,
            "composite_interval": list(interval) if interval else None,
            "deltas": {"speaker_similarity": delta(*sim), "wer": delta(*wer)}, "n_sentences": n,
            "seeds": seeds}


IMPROVED = ("Finetuning raised speaker similarity from 0.71 to 0.83 (+0.12, 95 % CI +0.09 to +0.15)")


def test_a_measured_improvement_names_the_numbers_and_the_checkpoint():
    v = verdict(best(), evaluated=4)
    assert v.text == (f"{IMPROVED} with no measurable loss of intelligibility (WER 4 % → 4 %). "
                      "Use step_1200.")
    assert v.kind == "improved" and v.checkpoint == "step_1200"


def test_an_improvement_that_costs_intelligibility_says_so():
    v = verdict(best(wer=(0.04, 0.09, 0.02, 0.08)), evaluated=2)
    assert v.text == f"{IMPROVED} but WER rose from 4 % to 9 % (+5 points, 95 % CI +2 to +8). Use step_1200."


def test_no_measurable_improvement_says_why():
    overfit = "validation loss rose for the last 3 evaluations while training loss fell (overfitting)"
    v = verdict(best(sim=(0.71, 0.72, -0.02, 0.04), composite=0.05, interval=(-0.10, 0.20),
                     checkpoint="step_100"), evaluated=3, notes=[overfit])
    assert v.kind == "no_improvement"
    assert v.text.startswith(
        "No measurable improvement over the base model: the best checkpoint, step_100, scores +0.05 "
        "(95 % CI -0.10 to +0.20), which cannot be told apart from the base model's 0 (speaker similarity "
        "0.71 → 0.72 (+0.01, 95 % CI -0.02 to +0.04); WER 4 % → 4 %). Why: validation loss rose for the "
        "last 3 evaluations while training loss fell (overfitting); with 8 sentences x 2 seeds the "
        "intervals are wide")


def test_no_interval_with_too_few_sentences_claims_nothing():
    few = best(sim=(0.71, 0.80, None, None), wer=(0.04, 0.04, None, None), interval=None, n=3)
    v = verdict(few, evaluated=1)
    assert v.kind == "no_improvement"
    assert "no interval" in v.text and "only 3 sentences were scored, too few for an interval" in v.text
    assert "Use step_1200" not in v.text


def similarity_guard(checkpoint, value, delta, low, high):
    return {"checkpoint": checkpoint, "guard": "similarity",
            "message": f"similarity guard: speaker similarity {value} is significantly below the base "
                       f"model's 0.709 ({delta}, 95% CI {low} to {high}); never the best"}


def test_when_guards_exclude_every_checkpoint_keep_the_base_model():
    guards = [similarity_guard("step_100", "0.671", "-0.038", "-0.060", "-0.020"),
              similarity_guard("step_200", "0.680", "-0.029", "-0.050", "-0.010")]
    v = verdict(None, evaluated=2, guards=guards)
    assert v.kind == "worse" and v.checkpoint is None
    assert v.text == ("No checkpoint can be recommended over the base model: the similarity guard excluded "
                      "step_100 and step_200 "
                      "(step_100: speaker similarity 0.671 is significantly below the base model's 0.709 "
                      "(-0.038, 95% CI -0.060 to -0.020)). Keep the base model.")


def test_a_guard_that_decided_is_said_beside_an_improvement():
    guard = similarity_guard("step_300", "0.671", "-0.038", "-0.060", "-0.020")
    v = verdict(best(), evaluated=3, guards=[guard])
    assert v.kind == "improved" and v.text.endswith(
        "Use step_1200. Why: the similarity guard excluded step_300 (speaker similarity 0.671 is "
        "significantly below the base model's 0.709 (-0.038, 95% CI -0.060 to -0.020)).")


def test_a_wer_guard_stop_is_said():
    stop = {"checkpoint": "step_400", "guard": "wer",
            "message": "WER guard: WER 0.300 exceeds the base model's 0.040 by more than 0.1 (overfitting or "
                       "hallucination)"}
    v = verdict(best(), evaluated=4, guards=[stop])
    said = "Why: the WER guard stopped training at step_400 (WER 0.300 exceeds the base model's 0.040"
    assert said in v.text


def test_nothing_evaluated():
    assert verdict(None, evaluated=0).kind == "not_evaluated"
