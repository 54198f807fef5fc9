"""Device and precision choice, shared by every stage."""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → the first CUDA GPU when there is one, else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 on CUDA GPUs that support it, fp32 otherwise (CPU bf16 is slower than fp32 here)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --precision fp16 (with loss scaling) or fp32")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision autocast for 'bf16' or 'fp16' (fp16 needs a GradScaler: voicetune.training.step); none
    for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()
