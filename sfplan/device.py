"""Resolve the compute device once, from config (``device: auto`` by default)."""
from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU. An explicit device that is not
    there raises with the fix."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={spec!r} was requested but this torch has no CUDA device "
            f"(torch {torch.__version__}). Use device=auto or device=cpu, or install a CUDA "
            "build of torch (see README, 'Using a GPU')."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={spec!r} was requested but MPS is not available: use device=auto or cpu.")
    return dev
