"""The planner and cost roles.

A planner is pure search: it gets a world model and a cost injected at construction
(Hydra ``_partial_``), and ``plan`` touches no env, logger or file. Candidates are batched
as (B, N, H, A) and each iteration makes one ``world_model.imagine`` call. A planner may
also define ``start_episode(seed)``; the runner calls it before each episode (per-episode
noise, fresh waypoint progress), and ``advance(executed)``, called after the first ``executed``
steps of its last plan ran (CEM's ``keep_elites`` shifts its elites by them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from sfplan.world_model.base import Imagination, WorldState


@dataclass
class PlanResult:
    """actions: (B, H, A) best plan; cost: (B,) its cost; info: diagnostics (floats)."""

    actions: torch.Tensor
    cost: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Cost(Protocol):
    def __call__(self, imagined: Imagination, goal: torch.Tensor) -> torch.Tensor:
        """imagined.features: (B, N, K, C, h, w); goal: (B, C, h, w) -> cost (B, N)."""


@runtime_checkable
class Planner(Protocol):
    horizon: int

    def plan(self, state: WorldState, goal: torch.Tensor, warm_start: torch.Tensor | None = None) -> PlanResult:
        """goal: (B, C, h, w) goal features; warm_start: (B, H, A) previous plan already
        shifted by the executed steps (or None)."""
