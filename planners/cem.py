"""Cross-entropy method (CEM) over action sequences, scored by imagining them.

Shapes: B = batch of environments, N = ``num_samples``, H = ``horizon``, A = action dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfplan.world_model.base import WorldState

from .base import PlanResult
from .common import SamplingPlanner, imagine_and_score, sample_noise, update_best


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
    noise_beta: float = 0.0  # 0 = white noise; > 0 = coloured along H (iCEM uses ~2)
    keep_elites: float = 0.0  # fraction of each iteration's elites re-entered as candidates of the next (iCEM: 0.3)
    cold_num_samples: int = 0  # candidates per iteration when there is no warm start (an episode's first plan); 0 = num_samples
    video_proposals: int = 0  # K > 0: the first iteration's last K candidates are the paper's video plans (IDM actions)
    returns: str = "best"  # the plan returned: best (lowest-cost candidate ever imagined) | mean (the final refit mean)
    seed: int = 0


RETURNS = ("best", "mean")


class CEMPlanner(SamplingPlanner):
    """CEM: a diagonal Gaussian over (B, H, A) refit to the elites of each iteration.

    ``CEMPlanner(world_model, cost, action_low, action_high, config=None, *, horizon=10,
    num_samples=64, iterations=4, num_elites=8, alpha=0.1, init_std=0.5, min_std=0.05,
    include_mean=True, noise_beta=0.0, keep_elites=0.0, cold_num_samples=0, video_proposals=0, returns="best",
    seed=0)``.

    Each iteration samples N sequences (B, N, H, A), clips them to the bounds, imagines
    them all in one ``world_model.imagine`` call and scores them with ``cost`` (B, N). The
    mean starts at ``warm_start`` (the runner's previous plan, already shifted with
    ``sfplan.planners.common.shift_plan``: first k executed steps dropped, last action
    repeated) or at the middle of the action range. The returned plan is the best
    candidate ever evaluated, so its cost is a real imagined cost; with ``returns="mean"``
    it is the Gaussian's mean after the last refit (the elites' average rather than one
    candidate whose rank may be luck; the classic CEM/PETS choice), and its cost is the mean
    cost of the last iteration's elites (the mean itself is not imagined). With few
    iterations the mean lags behind the best candidate (RESULTS.md has Reacher's figures).
    ``keep_elites`` (iCEM, Pinneri et al. 2020) puts the best ``round(keep_elites * E)``
    candidates of each iteration back into the next one in place of its last random
    samples (N stays fixed, so every imagine call has the same batch shape): a good
    sequence found early is refined instead of being lost to the next draw.
    ``cold_num_samples`` > 0 widens the search of a plan with no warm start (an episode's
    first decision): there is nothing to refine yet, and that plan can commit the episode
    to one of several look-alike basins (Reacher: which way the elbow folds), so it is
    worth a larger draw than the re-plans that follow.
    ``video_proposals`` = K > 0 seeds every plan with the paper's planner: K action-free
    videos steered to the goal, their actions read off by the inverse dynamics model
    (``VideoPlanPlanner.propose``, its default settings, the same horizon) replace the last
    K random candidates of the first iteration, so CEM keeps them if they score best and
    refines around them. Needs the learned world model with an IDM; costs one batched video
    generation per decision.
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
        if not 0.0 <= c.keep_elites <= 1.0:
            raise ValueError(f"keep_elites must be a fraction in [0, 1], got {c.keep_elites}")
        if c.returns not in RETURNS:
            raise ValueError(f"returns must be one of {RETURNS}, got {c.returns!r}")
        if c.cold_num_samples < 0:
            raise ValueError(f"cold_num_samples must be >= 0 (0: num_samples), got {c.cold_num_samples}")
        smallest = min(c.num_samples, c.cold_num_samples or c.num_samples)
        if not 0 <= c.video_proposals < smallest:
            raise ValueError(f"video_proposals must be in [0, num_samples) (and below cold_num_samples), got "
                             f"{c.video_proposals} with {smallest} candidates")
        self.proposer = None
        if c.video_proposals > 0:
            from .video_plan import VideoPlanPlanner

            self.proposer = VideoPlanPlanner(world_model, cost, action_low, action_high, horizon=c.horizon,
                                             num_videos=c.video_proposals, seed=c.seed)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        if self.proposer is not None:
            self.proposer.reset(seed)

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
        keep = min(int(round(c.keep_elites * E)), N - int(c.include_mean))
        kept = None  # (B, k, H, A) candidates replacing the last k draws: the video plans, then the kept elites
        if self.proposer is not None:
            kept = self.proposer.propose(state, goal)[0]  # (B, K, H, A): video plans enter the first iteration
        for _ in range(c.iterations):
            noise = sample_noise((B, N, H, A), c.noise_beta, gen, self.device)  # (B, N, H, A)
            cand = self.clip(mean[:, None] + std[:, None] * noise)  # (B, N, H, A)
            if c.include_mean:
                cand[:, 0] = self.clip(mean)
            if kept is not None:
                cand[:, N - kept.shape[1]:] = kept
            costs = imagine_and_score(self.world_model, self.cost, state, goal, cand)  # (B, N)
            best_actions, best_cost = update_best(best_actions, best_cost, cand, costs)
            if first_best is None:
                first_best = best_cost.clone()
            elite_costs, idx = torch.topk(costs, E, dim=1, largest=False)  # (B, E) each
            elites = torch.gather(cand, 1, idx[:, :, None, None].expand(B, E, H, A))  # (B, E, H, A), best first
            kept = elites[:, :keep].clone() if keep > 0 else None
            mean = c.alpha * mean + (1 - c.alpha) * elites.mean(1)
            std = c.alpha * std + (1 - c.alpha) * elites.std(1, unbiased=False)
            std = torch.maximum(std, min_std)
        if c.returns == "mean":
            actions, cost = self.clip(mean), elite_costs.mean(1)
        else:
            actions, cost = best_actions, best_cost
        return PlanResult(
            actions=actions,
            cost=cost,
            info={
                "iterations": c.iterations,
                "best_cost": float(best_cost.mean()),
                "first_iteration_cost": float(first_best.mean()),
                "final_std": float((std / rng).mean()),
                "num_samples": N,
                "video_proposals": int(c.video_proposals),
                "imagined_frames": B * N * H * c.iterations,
            },
        )
