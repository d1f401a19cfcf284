"""Resolve the compute device once, from config (``device: auto`` by default)."""
from __future__ import annotations

import torch

from sfplan.errors import UserError

DEVICE_HINT = "auto | cpu | cuda | cuda:N | mps"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU. An explicit device that is not
    there (or not a device at all) raises a UserError with the fix."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device={spec!r} is not a device sfplan runs on: use one of {DEVICE_HINT}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device={spec!r} was requested but this torch has no CUDA device "
            f"(torch {torch.__version__}). Use device=auto or device=cpu, or install a CUDA "
            "build of torch (see docs/gpu.md)."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device={spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}; use one of those or device=auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={spec!r} was requested but MPS is not available: use device=auto or cpu.")
    return dev
