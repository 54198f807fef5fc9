"""Scorers that data QA (:mod:`voicetune.data.quality`) and evaluation (:mod:`voicetune.evaluation.metrics`)
both use, below both: the speaker encoder (:mod:`.speaker`), the MOS predictor (:mod:`.mos`) and text
normalisation with WER/CER (:mod:`.text`). Each model is loaded once per process (:func:`.common.cached`).
"""
