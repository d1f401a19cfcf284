"""Helpers shared by the planners: bounds, config overrides, seeding, noise, warm starts.

Shapes: B = batch of environments, N = candidates, H = horizon, A = action dim.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from sfplan.world_model.base import WorldState

C = TypeVar("C")

WARM_FILLS = ("last", "mid")  # how shift_plan pads a shifted plan (see there)


def make_config(cls: type[C], config: C | Mapping | None, overrides: Mapping[str, Any]) -> C:
    """Build a planner/cost config from an instance or mapping plus keyword overrides.

    Lets Hydra pass fields as plain kwargs (``CEMPlanner(..., horizon=10)``) while the
    dataclass stays the single source of defaults. Unknown names raise with the valid ones.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    base: dict[str, Any] = {}
    if config is not None:
        base = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    unknown = sorted((set(base) | set(overrides)) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} got unknown option(s) {unknown}; valid: {sorted(names)}")
    return cls(**{**base, **overrides})


def as_bounds(action_low, action_high, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A,) arrays/tensors/lists -> two float32 (A,) tensors on ``device`` (low < high checked)."""
    low = torch.as_tensor(np.asarray(action_low, dtype=np.float32) if not torch.is_tensor(action_low) else action_low)
    high = torch.as_tensor(np.asarray(action_high, dtype=np.float32) if not torch.is_tensor(action_high) else action_high)
    low = low.to(device=device, dtype=torch.float32).reshape(-1)
    high = high.to(device=device, dtype=torch.float32).reshape(-1)
    if low.shape != high.shape or low.numel() == 0:
        raise ValueError(f"action_low {tuple(low.shape)} and action_high {tuple(high.shape)} must be the same (A,) shape")
    if not bool(torch.all(high > low)):
        raise ValueError("action_high must be strictly greater than action_low in every dimension")
    return low, high


def resolve_planner_device(world_model, action_low) -> torch.device:
    """The world model's device; else the bounds' device (RandomPlanner has no model)."""
    dev = getattr(world_model, "device", None)
    if dev is not None:
        return torch.device(dev)
    return action_low.device if torch.is_tensor(action_low) else torch.device("cpu")


def batch_size(state: WorldState | None, goal: torch.Tensor | None, warm_start: torch.Tensor | None) -> int:
    """B from the state's features (B, C, h, w), else the goal, else the warm start, else 1."""
    if state is not None and getattr(state, "features", None) is not None:
        return int(state.features.shape[0])
    if goal is not None:
        return int(goal.shape[0])
    if warm_start is not None:
        return int(warm_start.shape[0])
    return 1


def shift_plan(
    actions: torch.Tensor,
    k: int,
    fill: str = "last",
    action_low: torch.Tensor | np.ndarray | None = None,
    action_high: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Warm start for the next MPC step: drop the first ``k`` (executed) steps and pad the end.

    actions: (B, H, A) previous plan -> (B, H, A). ``fill="last"`` repeats the last action
    (a constant-velocity guess); ``fill="mid"`` pads with the middle of the action range
    (needs ``action_low``/``action_high``). ``k >= H`` leaves only padding; ``k <= 0`` returns
    a copy.
    """
    B, H, A = actions.shape
    k = max(0, min(int(k), H))
    if fill == "last":
        pad = actions[:, -1:].expand(B, k, A)  # (B, k, A)
    elif fill == "mid":
        if action_low is None or action_high is None:
            raise ValueError("shift_plan(fill='mid') needs action_low and action_high")
        low, high = as_bounds(action_low, action_high, actions.device)
        pad = ((low + high) / 2).to(actions.dtype).expand(B, k, A)  # (B, k, A)
    else:
        raise ValueError(f"shift_plan: fill must be one of {WARM_FILLS}, got {fill!r}")
    return torch.cat([actions[:, k:], pad], dim=1).clone()  # (B, H, A)


class SeedCounter:
    """A generator re-seeded on every plan call from ``seed + calls``: runs are
    reproducible decision by decision, yet successive decisions draw fresh noise."""

    def __init__(self, seed: int, device: torch.device):
        self.seed = int(seed)
        self.calls = 0
        self.device = device

    def next(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed + self.calls)
        self.calls += 1
        return g

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.seed = int(seed)
        self.calls = 0


def colored_noise(shape: tuple[int, ...], beta: float, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise (..., H, A) whose power spectrum along H falls as 1/f^beta (iCEM,
    Pinneri et al. 2020), each step of unit variance. beta = 0 is white noise; beta = 2
    (Brownian-like) draws smooth sequences, which is how torque and velocity commands that
    reach a goal look, so fewer candidates cover them. The lowest frequency (DC) gets the
    scale of the longest period, 1/H."""
    if beta == 0:
        return torch.randn(shape, generator=generator, device=device)
    H = shape[-2]
    f = torch.fft.rfftfreq(H, device=device)  # (F,) in [0, 0.5]
    f[0] = 1.0 / H
    s = f ** (-beta / 2)  # (F,) amplitude per frequency
    re = torch.randn((*shape[:-2], len(f), shape[-1]), generator=generator, device=device)
    im = torch.randn((*shape[:-2], len(f), shape[-1]), generator=generator, device=device)
    im[..., 0, :] = 0  # the DC term and (even H) the Nyquist term of a real signal are real
    if H % 2 == 0:
        im[..., -1, :] = 0
    x = torch.fft.irfft(torch.complex(re, im) * s[:, None], n=H, dim=-2)  # (..., H, A)
    # per-step variance of the irfft above: (s_0^2 + 4 sum_middle s_k^2 + s_nyq^2) / H^2
    w = torch.full_like(s, 4.0)
    w[0] = 1.0
    if H % 2 == 0:
        w[-1] = 1.0
    return x / (torch.sqrt((w * s**2).sum()) / H)


def imagine_and_score(world_model, cost, state: WorldState, goal: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """One ``imagine`` call for all candidates (B, N, H, A) -> cost (B, N), shape-checked."""
    imagination = world_model.imagine(state, candidates)
    costs = cost(imagination, goal)
    B, N = candidates.shape[:2]
    if tuple(costs.shape) != (B, N):
        raise ValueError(f"cost returned shape {tuple(costs.shape)}, expected (B, N) = {(B, N)}")
    # A NaN/inf candidate must never win the argmin.
    return torch.nan_to_num(costs.to(candidates.device, torch.float32), nan=float("inf"))


def update_best(
    best_actions: torch.Tensor | None,
    best_cost: torch.Tensor | None,
    candidates: torch.Tensor,
    costs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the best-ever candidate per batch row.

    candidates: (B, N, H, A); costs: (B, N) -> best_actions (B, H, A), best_cost (B,).
    """
    c, idx = costs.min(dim=1)  # (B,)
    acts = candidates[torch.arange(candidates.shape[0], device=candidates.device), idx]  # (B, H, A)
    if best_actions is None:
        return acts.clone(), c.clone()
    better = c < best_cost  # (B,)
    return torch.where(better[:, None, None], acts, best_actions), torch.where(better, c, best_cost)


def prepare_warm_start(warm_start: torch.Tensor | None, B: int, H: int, A: int, device, low, high) -> torch.Tensor | None:
    """Validate the runner's (already shifted) warm start -> (B, H, A) on ``device``, clipped.
    A batch-1 warm start broadcasts over B."""
    if warm_start is None:
        return None
    ws = torch.as_tensor(warm_start).to(device=device, dtype=torch.float32)
    if ws.dim() != 3 or ws.shape[1:] != (H, A) or ws.shape[0] not in (1, B):
        raise ValueError(f"warm_start must be (B, H, A) = {(B, H, A)}, got {tuple(ws.shape)}")
    return torch.clamp(ws.expand(B, H, A), low, high).clone()


class SamplingPlanner:
    """Shared constructor and per-call setup of the sampling planners.

    Subclasses set ``config_cls`` and implement ``plan``. The four runtime arguments are
    what the runner injects (Hydra ``_partial_``); everything else is a config field,
    passed as ``config=`` or as plain keyword arguments.
    """

    config_cls: type
    needs_world_model = True

    def __init__(self, world_model, cost, action_low, action_high, config=None, **overrides):
        self.config = make_config(self.config_cls, config, overrides)
        if self.needs_world_model and (world_model is None or cost is None):
            raise ValueError(f"{type(self).__name__} needs a world_model and a cost")
        self.world_model = world_model
        self.cost = cost
        self.device = resolve_planner_device(world_model, action_low)
        self.action_low, self.action_high = as_bounds(action_low, action_high, self.device)  # (A,)
        self.action_dim = int(self.action_low.numel())
        if int(self.config.horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {self.config.horizon}")
        self._seeds = SeedCounter(int(self.config.seed), self.device)

    @property
    def horizon(self) -> int:
        return int(self.config.horizon)

    @property
    def action_range(self) -> torch.Tensor:
        return self.action_high - self.action_low  # (A,)

    def reset(self, seed: int | None = None) -> None:
        """Restart the per-call seed counter (optionally from a new seed)."""
        self._seeds.reset(seed)

    def start_episode(self, seed: int) -> None:
        """Called by the runner before each episode: noise restarts from ``config.seed +
        seed``, so an episode's plans depend only on its own seed (the same whether it runs
        alone, first or fiftieth)."""
        self.reset(int(self.config.seed) + int(seed))

    def _setup(self, state, goal, warm_start):
        """-> (B, goal on device, warm start (B, H, A) clipped or None, generator)."""
        B = batch_size(state, goal, warm_start)
        if goal is not None:
            goal = torch.as_tensor(goal).to(self.device)
        warm = prepare_warm_start(warm_start, B, self.horizon, self.action_dim, self.device,
                                  self.action_low, self.action_high)
        return B, goal, warm, self._seeds.next()

    def clip(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.clamp(actions, self.action_low, self.action_high)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
