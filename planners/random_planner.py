"""Baseline: uniform random actions, without a world model.

Shapes: B = batch of environments, H = ``horizon``, A = action dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfplan.world_model.base import WorldState

from .base import PlanResult
from .common import SamplingPlanner


@dataclass
class RandomPlannerConfig:
    horizon: int = 10
    seed: int = 0


class RandomPlanner(SamplingPlanner):
    """Uniform random actions in [low, high]; never encodes, imagines or scores.

    ``RandomPlanner(world_model=None, cost=None, action_low=..., action_high=...,
    config=None, *, horizon=10, seed=0)``. ``needs_world_model = False`` (a class
    attribute) tells the runner to skip ``encode``/``imagine``, so ``state`` and ``goal``
    may be None (B is then taken from the warm start, else 1). The returned cost is NaN:
    nothing was evaluated. Shares the plan() signature, so it runs through the same runner.
    """

    config_cls = RandomPlannerConfig
    needs_world_model = False
    iterations = 0

    def __init__(self, world_model=None, cost=None, action_low=None, action_high=None,
                 config: RandomPlannerConfig | None = None, **overrides):
        if action_low is None or action_high is None:
            raise ValueError("RandomPlanner needs action_low and action_high")
        super().__init__(world_model, cost, action_low, action_high, config, **overrides)

    @torch.no_grad()
    def plan(self, state: WorldState | None = None, goal: torch.Tensor | None = None,
             warm_start: torch.Tensor | None = None) -> PlanResult:
        """-> PlanResult with actions (B, H, A) uniform in bounds, cost (B,) NaN."""
        B, _, _, gen = self._setup(state, goal, warm_start)
        u = torch.rand((B, self.horizon, self.action_dim), generator=gen, device=self.device)
        actions = self.action_low + u * self.action_range  # (B, H, A)
        return PlanResult(
            actions=actions,
            cost=torch.full((B,), float("nan"), device=self.device),
            info={"iterations": 0, "best_cost": float("nan"), "imagined_frames": 0},
        )
