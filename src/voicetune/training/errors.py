"""Errors of the training stage."""

from __future__ import annotations


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why and what to change."""


class SoftwareError(TrainError):
    """A component failed in a way that is a bug or a broken installation, not a quality result (every
    sentence of an evaluation failed to synthesize). Raised before the first step, or after the checkpoint of
    the step that revealed it was saved and the report written."""
