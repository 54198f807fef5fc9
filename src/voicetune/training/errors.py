"""Errors of the training stage."""

from __future__ import annotations


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why and what to change."""
