"""Cross-entropy method (CEM) over action sequences, scored by imagining them.

Shapes: B = batch of environments, N = ``num_samples``, H = ``horizon``, A = action dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfplan.world_model.base import WorldState

from .base import PlanResult
from .common import SamplingPlanner, colored_noise, imagine_and_score, update_best


@dataclass
class CEMConfig:
    horizon: int = 10  # env steps planned
    num_samples: int = 64  # N candidates per iteration
    iterations: int = 4  # = imagine calls per plan
    num_elites: int = 8  # lowest-cost candidates refitting the Gaussian (clamped to N)
    alpha: float = 0.1  # smoothing: new = alpha * old + (1 - alpha) * elite statistic
    init_std: float = 0.5  # initial std, as a fraction of (high - low)
    min_std: float = 0.05  # std floor, as a fraction of (high - low): keeps exploring
    include_mean: bool = True  # candidate 0 is the current mean (the warm start at iteration 0)
    cold_num_samples: int = 0  # candidates per iteration when there is no warm start (an episode's first plan); 0 = num_samples
    noise_beta: float = 0.0  # colour of the sampling noise along the horizon: power ~ 1/f^beta (0 white, 2 smooth; iCEM)
    keep_elites: int = 0  # the previous plan's best elites, shifted as its warm start was, join the first iteration (iCEM)
    seed: int = 0


class CEMPlanner(SamplingPlanner):
    """CEM: a diagonal Gaussian over (B, H, A) refit to the elites of each iteration.

    ``CEMPlanner(world_model, cost, action_low, action_high, config=None, *, horizon=10,
    num_samples=64, iterations=4, num_elites=8, alpha=0.1, init_std=0.5, min_std=0.05,
    include_mean=True, cold_num_samples=0, noise_beta=0.0, keep_elites=0, seed=0)``.

    Each iteration samples N sequences (B, N, H, A), clips them to the bounds, imagines
    them all in one ``world_model.imagine`` call and scores them with ``cost`` (B, N). The
    mean starts at ``warm_start`` (the runner's previous plan, already shifted with
    ``sfplan.planners.common.shift_plan``: first k executed steps dropped, last action
    repeated) or at the middle of the action range. The returned plan is the best
    candidate ever evaluated, so its cost is a real imagined cost (at the few iterations a
    learned model affords, the refit mean lags behind it).
    ``cold_num_samples`` > 0 widens the search of a plan with no warm start (an episode's
    first decision): there is nothing to refine yet, and that plan can commit the episode
    to one of several look-alike basins (Reacher: which way the elbow folds), so it is
    worth a larger draw than the re-plans that follow.
    ``noise_beta`` > 0 draws the candidates' deviations from the mean as coloured noise along
    the horizon (``sfplan.planners.common.colored_noise``, iCEM): smooth sequences, each step
    still of std ``std``.
    ``keep_elites`` > 0 carries the best elites of a decision (at most ``num_elites``) into the
    next one (iCEM's elite shift): after the runner reports the executed steps k (``advance``),
    a warm start that is this planner's previous plan less its first k steps gets the previous
    decision's elites with the same shift and padding, in place of as many fresh candidates of
    its first iteration; any other warm start carries nothing.
    Noise comes from a generator seeded ``seed + call index``: reproducible runs.
    """

    config_cls = CEMConfig

    def __init__(self, world_model, cost, action_low, action_high, config: CEMConfig | None = None, **overrides):
        super().__init__(world_model, cost, action_low, action_high, config, **overrides)
        c = self.config
        if c.iterations < 1 or c.num_samples < 1 or c.num_elites < 1:
            raise ValueError("iterations, num_samples and num_elites must be >= 1")
        if not 0.0 <= c.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {c.alpha}")
        if c.noise_beta < 0:
            raise ValueError(f"noise_beta must be >= 0 (0: white noise), got {c.noise_beta}")
        if c.cold_num_samples < 0:
            raise ValueError(f"cold_num_samples must be >= 0 (0: num_samples), got {c.cold_num_samples}")
        if c.keep_elites < 0:
            raise ValueError(f"keep_elites must be >= 0 (0: none carried over), got {c.keep_elites}")
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (plan (B, H, A), elites (B, E, H, A))
        self._executed = 0  # steps of the last plan run since (``advance``)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._last, self._executed = None, 0

    def advance(self, executed: int) -> None:
        """Called by the runner after it ran the first ``executed`` steps of the last plan."""
        self._executed = int(executed)

    def _carried_elites(self, warm: torch.Tensor | None) -> torch.Tensor | None:
        """The previous decision's elites (B, E', H, A) shifted as ``warm`` shifts its plan, or
        None where ``warm`` is not that plan less its executed steps (an episode's first plan,
        another caller's warm start)."""
        if warm is None or self._last is None or self.config.keep_elites <= 0:
            return None
        plan, elites = self._last
        H, k = warm.shape[1], self._executed
        if plan.shape != warm.shape or not 0 < k < H or not torch.equal(warm[:, : H - k], plan[:, k:]):
            return None
        kept = elites[:, : int(self.config.keep_elites)]  # (B, E', H, A), best first
        pad = warm[:, None, H - k :].expand(-1, kept.shape[1], -1, -1)  # (B, E', k, A): the warm start's padding
        return torch.cat([kept[:, :, k:], pad], dim=2)

    @property
    def iterations(self) -> int:
        return int(self.config.iterations)

    @torch.no_grad()
    def plan(self, state: WorldState, goal: torch.Tensor, warm_start: torch.Tensor | None = None) -> PlanResult:
        """goal: (B or 1, C, h, w); warm_start: (B, H, A) already shifted, or None -> PlanResult
        with actions (B, H, A), cost (B,)."""
        c = self.config
        B, goal, warm, gen = self._setup(state, goal, warm_start)
        H, A = self.horizon, self.action_dim
        N = int(c.cold_num_samples) if warm is None and c.cold_num_samples > 0 else int(c.num_samples)
        E = min(int(c.num_elites), N)
        rng = self.action_range  # (A,)
        mid = (self.action_low + self.action_high) / 2
        mean = warm if warm is not None else mid.expand(B, H, A).clone()  # (B, H, A)
        std = (c.init_std * rng).expand(B, H, A).clone()  # (B, H, A)
        min_std = c.min_std * rng  # (A,)
        best_actions = best_cost = None
        first_best = None
        carried = self._carried_elites(warm)  # (B, E', H, A) or None
        for it in range(c.iterations):
            noise = colored_noise((B, N, H, A), float(c.noise_beta), gen, self.device)
            cand = self.clip(mean[:, None] + std[:, None] * noise)  # (B, N, H, A)
            if c.include_mean:
                cand[:, 0] = self.clip(mean)
            if it == 0 and carried is not None:
                carried = carried[:, : N - int(c.include_mean)]
                cand[:, N - carried.shape[1] :] = carried
            costs = imagine_and_score(self.world_model, self.cost, state, goal, cand)  # (B, N)
            best_actions, best_cost = update_best(best_actions, best_cost, cand, costs)
            if first_best is None:
                first_best = best_cost.clone()
            _, idx = torch.topk(costs, E, dim=1, largest=False)  # (B, E)
            elites = torch.gather(cand, 1, idx[:, :, None, None].expand(B, E, H, A))  # (B, E, H, A), best first
            mean = c.alpha * mean + (1 - c.alpha) * elites.mean(1)
            std = c.alpha * std + (1 - c.alpha) * elites.std(1, unbiased=False)
            std = torch.maximum(std, min_std)
        self._last, self._executed = (best_actions.clone(), elites.clone()), 0
        return PlanResult(
            actions=best_actions,
            cost=best_cost,
            info={
                "iterations": c.iterations,
                "best_cost": float(best_cost.mean()),
                "first_iteration_cost": float(first_best.mean()),
                "final_std": float((std / rng).mean()),
                "num_samples": N,
                "carried_elites": 0 if carried is None else int(carried.shape[1]),
                "imagined_frames": B * N * H * c.iterations,
            },
        )
