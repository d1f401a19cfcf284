"""Random shooting: one batch of candidate sequences, keep the best.

Shapes: B = batch of environments, N = ``num_samples``, H = ``horizon``, A = action dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfplan.world_model.base import WorldState

from .base import PlanResult
from .common import SamplingPlanner, imagine_and_score, update_best


@dataclass
class RandomShootingConfig:
    horizon: int = 10
    num_samples: int = 256  # N candidates (one imagine call)
    warm_fraction: float = 0.5  # with a warm start: this share of N is Gaussian around it
    warm_std: float = 0.2  # std of those, as a fraction of (high - low)
    include_warm_start: bool = True  # candidate 0 is the warm start itself
    seed: int = 0


class RandomShootingPlanner(SamplingPlanner):
    """Sample N sequences, imagine them in one call, return the lowest-cost one.

    ``RandomShootingPlanner(world_model, cost, action_low, action_high, config=None, *,
    horizon=10, num_samples=256, warm_fraction=0.5, warm_std=0.2, include_warm_start=True,
    seed=0)``.

    Without a warm start all N are uniform in [low, high]. With one (the previous plan,
    shifted by the runner with ``shift_plan``), ``warm_fraction`` of them are Gaussian
    around it (clipped) and candidate 0 is the warm start itself, so re-planning never
    loses a plan that still works.
    """

    config_cls = RandomShootingConfig
    iterations = 1

    def __init__(self, world_model, cost, action_low, action_high, config: RandomShootingConfig | None = None,
                 **overrides):
        super().__init__(world_model, cost, action_low, action_high, config, **overrides)
        if self.config.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if not 0.0 <= self.config.warm_fraction <= 1.0:
            raise ValueError(f"warm_fraction must be in [0, 1], got {self.config.warm_fraction}")

    @torch.no_grad()
    def plan(self, state: WorldState, goal: torch.Tensor, warm_start: torch.Tensor | None = None) -> PlanResult:
        """goal: (B or 1, C, h, w); warm_start: (B, H, A) already shifted, or None -> PlanResult
        with actions (B, H, A), cost (B,)."""
        c = self.config
        B, goal, warm, gen = self._setup(state, goal, warm_start)
        H, A, N = self.horizon, self.action_dim, int(c.num_samples)
        u = torch.rand((B, N, H, A), generator=gen, device=self.device)
        cand = self.action_low + u * self.action_range  # (B, N, H, A) uniform
        if warm is not None:
            n_warm = int(round(c.warm_fraction * N))
            if n_warm > 0:
                noise = torch.randn((B, n_warm, H, A), generator=gen, device=self.device)
                cand[:, :n_warm] = self.clip(warm[:, None] + c.warm_std * self.action_range * noise)
            if c.include_warm_start:
                cand[:, 0] = warm
        costs = imagine_and_score(self.world_model, self.cost, state, goal, cand)  # (B, N)
        best_actions, best_cost = update_best(None, None, cand, costs)
        return PlanResult(
            actions=best_actions,
            cost=best_cost,
            info={
                "iterations": 1,
                "best_cost": float(best_cost.mean()),
                "mean_cost": float(costs[torch.isfinite(costs)].mean()) if torch.isfinite(costs).any() else float("inf"),
                "imagined_frames": B * N * H,
            },
        )
