"""Model-predictive path integral (MPPI) over action sequences, scored by imagining them.

Shapes: B = batch of environments, N = ``num_samples``, H = ``horizon``, A = action dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfplan.world_model.base import WorldState

from .base import PlanResult
from .common import SamplingPlanner, imagine_and_score, update_best

NORMALIZATIONS = ("min", "range")


@dataclass
class MPPIConfig:
    horizon: int = 10
    num_samples: int = 64  # N candidates per iteration
    iterations: int = 4  # = imagine calls per plan
    temperature: float = 0.05  # lambda of the softmax over -cost / lambda
    normalize: str = "range"  # "min": cost - min; "range": (cost - min) / (max - min), scale-free lambda
    noise_std: float = 0.5  # perturbation std, as a fraction of (high - low)
    alpha: float = 0.0  # smoothing: mean = alpha * old + (1 - alpha) * weighted mean
    include_mean: bool = True  # candidate 0 is the current mean (the warm start at iteration 0)
    seed: int = 0


class MPPIPlanner(SamplingPlanner):
    """MPPI: perturb a mean sequence with Gaussian noise, reweight with softmax(-cost / λ).

    ``MPPIPlanner(world_model, cost, action_low, action_high, config=None, *, horizon=10,
    num_samples=64, iterations=4, temperature=0.05, normalize="range", noise_std=0.5,
    alpha=0.0, include_mean=True, seed=0)``.

    Costs are shifted by their per-row minimum before the softmax (numerically stable; the
    best candidate gets exp(0)). With ``normalize="range"`` (default) they are also divided
    by their spread, so ``temperature`` does not depend on the cost's scale (pixel MSE and
    latent L2 differ by orders of magnitude): λ = 0.05 gives a candidate 5% of the spread
    worse than the best e^-1 of its weight. ``normalize="min"`` is textbook MPPI with an
    absolute λ. The noise std is fixed (textbook MPPI; CEM adapts it). The mean starts at
    ``warm_start`` (already shifted by the runner with ``shift_plan``) or mid-range. One
    ``imagine`` call per iteration; the best candidate ever evaluated is returned.
    """

    config_cls = MPPIConfig

    def __init__(self, world_model, cost, action_low, action_high, config: MPPIConfig | None = None, **overrides):
        super().__init__(world_model, cost, action_low, action_high, config, **overrides)
        c = self.config
        if c.iterations < 1 or c.num_samples < 1:
            raise ValueError("iterations and num_samples must be >= 1")
        if c.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {c.temperature}")
        if c.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {c.normalize!r}")
        if not 0.0 <= c.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {c.alpha}")

    @property
    def iterations(self) -> int:
        return int(self.config.iterations)

    def weights(self, costs: torch.Tensor) -> torch.Tensor:
        """costs: (B, N) -> softmax weights (B, N) over -(cost - min) / λ (inf costs get 0)."""
        cmin = costs.min(dim=1, keepdim=True).values  # (B, 1)
        z = torch.nan_to_num(costs - cmin, nan=0.0)  # a row of all-inf costs -> uniform weights
        if self.config.normalize == "range":
            finite = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
            z = z / finite.max(dim=1, keepdim=True).values.clamp_min(1e-12)
        return torch.softmax(-z / self.config.temperature, dim=1)

    @torch.no_grad()
    def plan(self, state: WorldState, goal: torch.Tensor, warm_start: torch.Tensor | None = None) -> PlanResult:
        """goal: (B or 1, C, h, w); warm_start: (B, H, A) already shifted, or None -> PlanResult
        with actions (B, H, A), cost (B,)."""
        c = self.config
        B, goal, warm, gen = self._setup(state, goal, warm_start)
        H, A, N = self.horizon, self.action_dim, int(c.num_samples)
        mid = (self.action_low + self.action_high) / 2
        mean = warm if warm is not None else mid.expand(B, H, A).clone()  # (B, H, A)
        std = c.noise_std * self.action_range  # (A,)
        best_actions = best_cost = None
        first_best = None
        ess = 0.0
        for _ in range(c.iterations):
            noise = torch.randn((B, N, H, A), generator=gen, device=self.device)
            cand = self.clip(mean[:, None] + std * noise)  # (B, N, H, A)
            if c.include_mean:
                cand[:, 0] = self.clip(mean)
            costs = imagine_and_score(self.world_model, self.cost, state, goal, cand)  # (B, N)
            best_actions, best_cost = update_best(best_actions, best_cost, cand, costs)
            if first_best is None:
                first_best = best_cost.clone()
            w = self.weights(costs)  # (B, N)
            ess = float((1.0 / w.pow(2).sum(1)).mean())  # effective sample size, for tuning λ
            # Weighted mean of the clipped candidates (what was imagined), so it stays in bounds.
            mean = c.alpha * mean + (1 - c.alpha) * torch.einsum("bn,bnha->bha", w, cand)
        return PlanResult(
            actions=best_actions,
            cost=best_cost,
            info={
                "iterations": c.iterations,
                "best_cost": float(best_cost.mean()),
                "first_iteration_cost": float(first_best.mean()),
                "effective_samples": ess,
                "imagined_frames": B * N * H * c.iterations,
            },
        )
