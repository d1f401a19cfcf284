"""Following a goal given as a sequence of waypoint images (the paper's subgoals).

Shapes: B = batch of environments, S = waypoints (the last is the final goal), C, h, w =
the world model's features (pixels for the oracle, latents for the learned model).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def feature_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over all but the leading dims: (..., C, h, w) x2 -> (...)."""
    return (a.float() - b.float()).pow(2).flatten(-3).mean(-1)


def cost_distance(cost) -> Distance:
    """The planner's frame cost as a pairwise distance (B, S, C, h, w) x2 -> (B, S), so
    waypoints are judged by the measure the planner minimises (a multi-scale cost keeps
    growing with distance where pixel MSE of a small object saturates). Costs without
    ``per_frame`` fall back to ``feature_mse``."""
    if not callable(getattr(cost, "per_frame", None)):
        return feature_mse

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        B, S = a.shape[:2]
        flat = a.reshape(B * S, 1, 1, *a.shape[2:])  # (B*S, N=1, K=1, C, h, w)
        return cost.per_frame(flat, b.reshape(B * S, *b.shape[2:])).reshape(B, S)

    return distance


class SubgoalTracker:
    """Which waypoint to plan for now, advancing in order as each one is reached.

    ``SubgoalTracker(ratio=None, threshold=None, distance=feature_mse)``; give one of the
    two rules (both: either one advances). Waypoint i counts as reached when the current
    features are within ``distance`` (pairwise, (B, S, C, h, w) x2 -> (B, S); e.g.
    ``cost_distance(cost)``) of it below

    - ``threshold``: an absolute value (depends on the feature space), or
    - ``ratio``: a fraction of the distance between waypoint i and the one before it (for
      i = 0: the features at the first ``update`` of the episode): scale-free, so one
      value serves pixels and latents alike, and waypoints far apart get a looser bound.

    Reaching a later waypoint moves past it and every one before it (the robot may
    overshoot one or cut a corner). The last waypoint is the goal: never advanced past.
    Progress persists across ``update`` calls until ``reset`` or a different waypoint tensor.
    """

    def __init__(self, ratio: float | None = None, threshold: float | None = None, distance: Distance = feature_mse):
        if ratio is None and threshold is None:
            raise ValueError("SubgoalTracker needs ratio= or threshold=")
        if ratio is not None and not ratio > 0:
            raise ValueError(f"ratio must be > 0, got {ratio}")
        self.ratio, self.threshold, self.distance = ratio, threshold, distance
        self.reset()

    def reset(self) -> None:
        self._goals: torch.Tensor | None = None  # (B, S, C, h, w)
        self._bounds: torch.Tensor | None = None  # (B, S) distance below which waypoint s is reached
        self.index: torch.Tensor | None = None  # (B,) current waypoint

    def update(self, features: torch.Tensor, waypoints: torch.Tensor) -> torch.Tensor:
        """features (B, C, h, w) now; waypoints (B or 1, S, C, h, w) -> (B,) index of the
        waypoint to plan for."""
        B, S = features.shape[0], waypoints.shape[1]
        goals = waypoints.to(features.device).expand(B, *waypoints.shape[1:])
        if self._goals is None or self._goals.shape != goals.shape or not torch.equal(self._goals, goals):
            self._goals = goals.clone()
            self.index = torch.zeros(B, dtype=torch.long, device=features.device)
            bounds = torch.full((B, S), -1.0, device=features.device)  # -1: the rule never fires
            if self.ratio is not None:
                prev = torch.cat([features[:, None], goals[:, :-1]], dim=1)  # (B, S, C, h, w)
                bounds = torch.maximum(bounds, self.ratio * self.distance(prev, goals))
            if self.threshold is not None:
                bounds = torch.maximum(bounds, torch.full_like(bounds, float(self.threshold)))
            self._bounds = bounds
        d = self.distance(features[:, None].expand_as(goals), goals)  # (B, S)
        S_idx = torch.arange(S, device=features.device)
        reached = (d < self._bounds) & (S_idx >= self.index[:, None])  # (B, S) from the current one on
        past = torch.where(reached, S_idx + 1, torch.zeros_like(S_idx)).amax(1)  # (B,) one past the latest reached
        self.index = torch.clamp(torch.maximum(self.index, past), max=S - 1)
        return self.index

    def current(self, features: torch.Tensor, waypoints: torch.Tensor) -> torch.Tensor:
        """Like ``update``, returning the waypoints themselves: (B, C, h, w)."""
        idx = self.update(features, waypoints)
        goals = self._goals
        return goals[torch.arange(goals.shape[0], device=goals.device), idx]
