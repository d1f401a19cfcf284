"""The memory role: episodic memory a world model imagines with (SlowFast-VGen's fast learner).

A memory lives on a world model (``MemoryWorldModel.attach_memory``): it is written with the
frames of the episode so far, as latents of that model, and changes what the model imagines.
Shapes: T frames, (C, h, w) the world model's latent shape, A action dim.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Mapping, Protocol, runtime_checkable

import torch

WRITE_MODES = ("generated", "real")  # what a rollout writes after each chunk (``Memory.write_mode``)


@runtime_checkable
class Memory(Protocol):
    """reset / write / snapshot and load / disabled; see the module docstring for the shapes."""

    @property
    def write_mode(self) -> str:
        """What an imagined rollout (``sfplan generate``) writes after each chunk: ``generated``
        (the imagined chunk, the paper's generation) or ``real`` (the ground truth). The MPC
        runner writes the executed frames, the only ones an episode has."""

    def reset(self, seed: int | None = None) -> None:
        """Forget everything (episode start); ``seed`` reseeds the memory's own randomness."""

    def write(self, latents: torch.Tensor, actions: torch.Tensor | None = None,
              num_context: int = 0) -> dict[str, float]:
        """Memorise latents (T, C, h, w) in time order, the first ``num_context`` already seen;
        ``actions`` (T-1, A) between them where the memory learns from actions -> logs."""

    def snapshot(self) -> dict[str, Any]:
        """Everything that determines later writes and outputs, detached (CPU tensors)."""

    def load(self, snapshot: Mapping[str, Any]) -> None:
        """Restore a ``snapshot()`` exactly."""

    def disabled(self) -> AbstractContextManager:
        """``with memory.disabled(): world_model.imagine(...)`` imagines without the memory."""
