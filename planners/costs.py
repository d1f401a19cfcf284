"""Costs: imagined features vs a goal -> (B, N), lower is better.

Every cost compares each imagined frame with the goal, giving (B, N, K), then reduces over
the K imagined frames:

- ``reduce="last"``: the final frame only (the frames before it are not even compared);
- ``reduce="mean"``: all K frames equally.

``terminal_weight`` w in [0, 1] mixes in the final frame as a terminal cost:
``(1 - w) * reduce(frames) + w * last``. A running cost
("mean") alone prefers the plan that gets *near* the goal fastest, even when it ends in
a look-alike basin it cannot leave (Reacher: the elbow folded the mirrored way, 4 px off);
"last" alone ignores how the plan gets there and overshoots. The mix is the usual stage +
terminal cost of MPC. It makes the cost landscape more multi-modal, so pair it with a
wider first search (CEM ``cold_num_samples``): Reacher's oracle, w = 0.7, 86% -> 78%
alone, 88% with 512 first-plan candidates. And pad the warm start with a neutral action
(``sfplan eval warm_fill=mid``): a shifted plan whose tail repeats a braking torque ends
far off, so the terminal term rejects it for a fresh plan that arrives only at the new
horizon's end, again and again (90% with it; ``docs/notes/2026-12-06-oracle-planning.md``).

All costs are vectorised over B, N and K (no Python loops over candidates).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sfplan.world_model.base import Imagination

from .common import make_config

REDUCTIONS = ("last", "mean")


def _check_shapes(features: torch.Tensor, goal) -> torch.Tensor:
    """Validate imagined features (B, N, K, C, h, w) against a goal (B or 1, C, h, w) (also
    (B, 1, C, h, w), as ``encode`` of one frame gives) -> the goal (B or 1, C, h, w) on the
    features' device."""
    if features.dim() != 6:
        raise ValueError(f"imagined features must be (B, N, K, C, h, w), got {tuple(features.shape)}")
    B = features.shape[0]
    goal = torch.as_tensor(goal).to(features.device)
    if goal.dim() == 5 and goal.shape[1] == 1:
        goal = goal[:, 0]
    if goal.shape[1:] != features.shape[3:] or goal.shape[0] not in (1, B):
        raise ValueError(f"goal must be (B, C, h, w) = {(B, *features.shape[3:])} (or batch 1), got {tuple(goal.shape)}")
    return goal


class _FrameCost:
    """Shared machinery: broadcast the goal, diff, per-frame distance, reduce over K.
    Subclasses implement ``frame_distance(diff (M, C, h, w)) -> (M,)`` (or ``per_frame``
    itself, as ``ProbeCost`` does)."""

    config_cls: type

    def __init__(self, config=None, **overrides):
        self.config = make_config(self.config_cls, config, overrides)
        if self.config.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {self.config.reduce!r}")
        if not 0.0 <= float(self.config.terminal_weight) <= 1.0:
            raise ValueError(f"terminal_weight must be in [0, 1], got {self.config.terminal_weight}")

    def frame_distance(self, diff: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def per_frame(self, features: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """features: (B, N, K, C, h, w); goal: (B or 1, C, h, w) -> distances (B, N, K)."""
        B, N, K, C, h, w = features.shape
        goal = _check_shapes(features, goal).to(torch.float32)
        diff = features.to(torch.float32) - goal[:, None, None]  # (B, N, K, C, h, w)
        d = self.frame_distance(diff.reshape(B * N * K, C, h, w))  # (B*N*K,)
        return d.reshape(B, N, K)

    def __call__(self, imagined: Imagination | torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """imagined.features: (B, N, K, C, h, w) (or the tensor itself); goal: (B, C, h, w)
        -> cost (B, N)."""
        feats = imagined.features if isinstance(imagined, Imagination) else imagined
        if self.config.reduce == "last":
            return self.per_frame(feats[:, :, -1:], goal)[..., 0]  # skip frames that get weight 0
        d = self.per_frame(feats, goal)  # (B, N, K)
        K = d.shape[-1]
        w = torch.full((K,), 1.0 / K, device=d.device)  # (K,) reduce="mean"
        tw = float(self.config.terminal_weight)
        if tw > 0.0:
            term = torch.zeros(K, device=d.device)
            term[-1] = 1.0
            w = (1.0 - tw) * w + tw * term
        return (d * w).sum(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


@dataclass
class PixelMSECostConfig:
    reduce: str = "last"  # last | mean (over the K imagined frames)
    terminal_weight: float = 0.0  # w: (1 - w) * reduce + w * last frame


class PixelMSECost(_FrameCost):
    """Mean squared error over (C, h, w) between each imagined frame and the goal.

    ``PixelMSECost(reduce="last", terminal_weight=0.0)``. Saturates once the
    object in view no longer overlaps its goal position; see ``MultiScaleCost`` for far goals.
    """

    config_cls = PixelMSECostConfig

    def frame_distance(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.pow(2).flatten(1).mean(1)


@dataclass
class LatentL2CostConfig:
    reduce: str = "last"
    terminal_weight: float = 0.0
    squared: bool = True  # True: mean squared difference; False: Euclidean norm over (C, h, w)


class LatentL2Cost(_FrameCost):
    """L2 distance in a learned latent space (features from ``WorldModel.encode``).

    ``LatentL2Cost(reduce="last", terminal_weight=0.0, squared=True)``. With
    ``squared=True`` it is the same number as ``PixelMSECost``, named for latents so configs
    say what they compare; ``squared=False`` gives the (unnormalised) Euclidean norm, which
    grows linearly with the distance instead of quadratically.
    """

    config_cls = LatentL2CostConfig

    def frame_distance(self, diff: torch.Tensor) -> torch.Tensor:
        sq = diff.pow(2).flatten(1)
        return sq.mean(1) if self.config.squared else sq.sum(1).sqrt()


@dataclass
class MultiScaleCostConfig:
    levels: int = 4  # pyramid levels including full resolution (1 = plain MSE)
    sigma: float = 2.0  # blur std, in pixels of the level being blurred
    kernel_size: int | None = None  # odd; None = 2 * ceil(3 * sigma) + 1
    weights: Sequence[float] | None = None  # one per level; None = 4 ** level
    reduce: str = "last"
    terminal_weight: float = 0.0


class MultiScaleCost(_FrameCost):
    """MSE summed over a Gaussian pyramid, so a far goal still gives a signal.

    ``MultiScaleCost(levels=4, sigma=2.0, kernel_size=None, weights=None, reduce="last",
    terminal_weight=0.0)``.

    Plain pixel MSE is flat once a small object no longer overlaps its goal position.
    Level 0 here is that MSE; level l >= 1 is the MSE of level l-1 blurred (Gaussian,
    ``sigma`` pixels of that level), measured *before* halving the resolution for the next
    level (measuring after it makes the cost depend on where the object falls on the
    coarse grid: aliasing). The effective blur of level l is sigma * sqrt(1 + 4 + ... +
    4**(l-1)) original pixels (2, 4.5, 9.2 for sigma=2), so an object farther than its
    size from the goal still costs strictly more the farther it is. Default weights 4**l
    undo the drop in mean squared value a small object's difference suffers at each
    blur-and-halve, so the coarse levels are heard. The pyramid is linear, so it is built
    once on the difference to the goal. Channels are blurred independently; borders are
    replicated; levels stop early once a side is 1 pixel (their weights are then unused).
    Cost at 64x64: about 1.3 full-resolution separable blurs per frame, done as matrix
    products (3,200 RGB frames: 1.1 s against 11.8 s with conv2d, 1 CPU thread).
    """

    config_cls = MultiScaleCostConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        cfg = self.config
        if cfg.levels < 1:
            raise ValueError(f"levels must be >= 1, got {cfg.levels}")
        if cfg.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {cfg.sigma}")
        ks = 2 * math.ceil(3 * cfg.sigma) + 1 if cfg.kernel_size is None else int(cfg.kernel_size)
        if ks < 1 or ks % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {cfg.kernel_size}")
        weights = [4.0**level for level in range(cfg.levels)] if cfg.weights is None else [float(x) for x in cfg.weights]
        if len(weights) != cfg.levels:
            raise ValueError(f"weights needs one value per level ({cfg.levels}), got {len(weights)}")
        self.level_weights = weights
        x = torch.arange(-(ks // 2), ks // 2 + 1, dtype=torch.float32)
        k = torch.exp(-(x**2) / (2 * cfg.sigma**2))
        self._kernel = k / k.sum()  # (ks,), separable
        self._matrices: dict = {}  # (side, device, dtype) -> (side, side) blur matrix

    def _blur_matrix(self, n: int, device, dtype) -> torch.Tensor:
        """(n, n) matrix B with B @ v = v blurred along its length (replicate borders), cached."""
        key = (n, str(device), dtype)
        mat = self._matrices.get(key)
        if mat is None:
            k = self._kernel.to(torch.float64)
            r = k.numel() // 2
            cols = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]).clamp(0, n - 1)  # (n, ks)
            mat = torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, cols, k.expand(n, -1).contiguous())
            mat = self._matrices[key] = mat.to(device=device, dtype=dtype)
        return mat

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, h, w) -> same shape; separable Gaussian with replicate padding (works for
        sides smaller than the kernel), as two matrix products: on the CPU about 10x faster
        than ``conv2d`` with a 1-channel 13-tap kernel, and the same numbers."""
        h, w = x.shape[-2:]
        x = x @ self._blur_matrix(w, x.device, x.dtype).T  # rows
        return (x.transpose(-1, -2) @ self._blur_matrix(h, x.device, x.dtype).T).transpose(-1, -2)  # columns

    def frame_distance(self, diff: torch.Tensor) -> torch.Tensor:
        M, C, h, w = diff.shape
        x = diff.reshape(M * C, h, w)  # channels blurred independently
        total = self.level_weights[0] * x.pow(2).reshape(M, -1).mean(1)
        for level in range(1, self.config.levels):
            if min(x.shape[-2:]) <= 1:
                break
            x = self._blur(x)  # (M*C, h_l, w_l), measured at this resolution
            total = total + self.level_weights[level] * x.pow(2).reshape(M, -1).mean(1)
            x = x[..., ::2, ::2]  # (M*C, ceil(h_l/2), ceil(w_l/2))
        return total


@dataclass
class ProbeCostConfig:
    reduce: str = "mean"
    terminal_weight: float = 0.0
    scale: float = 1.0  # distances are divided by this (e.g. the task's success radius): any unit, same ranking
    batch_size: int = 8192  # frames per probe call (bounds memory at large B x N x K)
    # world model dir whose VAE + probe read the frames where the planner's world model has no
    # probe of its own (the oracle: pixel frames); null there = the task's shipped model.
    # Read where the cost is built (sfplan.world_model.probe.probe_for), not by the cost.
    model: str | None = None


class ProbeCost(_FrameCost):
    """Distance between the task descriptors a ``StateProbe`` reads off each imagined latent
    and off the goal's: (B, N, K) in the task's units / ``scale``.

    ``ProbeCost(reduce="mean", terminal_weight=0.0, scale=1.0, probe=None)``. ``probe``: a
    module reading features (M, C, h, w) -> descriptors (M, D); ``sfplan eval`` sets it with
    ``sfplan.world_model.probe.probe_for(world_model, config.model, task)``: the world model's
    own probe (``<world model>/probe/``, trained by ``sfplan train stage=probe``) for its
    latents; for pixel frames (the oracle's) the probe of ``model`` (a learned world model dir;
    null = the task's shipped model) behind that model's VAE, so the oracle can plan with the
    same learned cost as the learned model (5.8 ms per 64x64 frame on one CPU thread:
    affordable with a final-frame cost). Why a probe: see ``sfplan.world_model.probe``.
    """

    config_cls = ProbeCostConfig

    def __init__(self, config=None, probe=None, **overrides):
        super().__init__(config, **overrides)
        if float(self.config.scale) <= 0:
            raise ValueError(f"scale must be > 0, got {self.config.scale}")
        self.probe = probe

    @property
    def task_distance_scale(self) -> float:
        """This cost is the task's own distance (e.g. metres) divided by this (``scale``)."""
        return float(self.config.scale)

    @torch.no_grad()
    def _read(self, features: torch.Tensor) -> torch.Tensor:
        """features (M, C, h, w) -> descriptors (M, D), in batches of ``batch_size``."""
        bs = int(self.config.batch_size)
        return torch.cat([self.probe(features[i: i + bs]) for i in range(0, len(features), bs)]).float()

    def per_frame(self, features: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """features: (B, N, K, C, h, w); goal: (B or 1, C, h, w) -> distances (B, N, K)."""
        if self.probe is None:
            raise RuntimeError("ProbeCost has no probe: pass probe= (sfplan.world_model.probe.probe_for(world_model))")
        B, N, K = features.shape[:3]
        goal = _check_shapes(features, goal)
        dev = next(self.probe.parameters()).device
        # goal and imagined frames in one batch (up to batch_size): a frame equal to the goal
        # reads exactly the same (separate calls can differ in the last bits: batch-size-dependent kernels)
        flat = features.reshape(B * N * K, *features.shape[3:]).to(device=dev, dtype=goal.dtype)
        flat = torch.cat([goal.to(dev), flat])  # (B or 1 + B*N*K, C, h, w)
        read = self._read(flat)  # (B or 1 + B*N*K, D)
        g, y = read[: len(goal)], read[len(goal):].reshape(B, N, K, -1)
        return ((y - g[:, None, None]).norm(dim=-1) / float(self.config.scale)).to(features.device)


COSTS = {
    "pixel_mse": PixelMSECost,
    "multiscale": MultiScaleCost,
    "latent_l2": LatentL2Cost,
    "probe": ProbeCost,  # a learned reading of the task's descriptor (needs <world model>/probe/)
}


def make_cost(name: str, **config):
    """``COSTS[name](**config)``: the Hydra target of ``cost=task`` (the default), where the
    task's search row names the cost (``configs/env/*.yaml`` ``search.<kind>.cost``)."""
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}: choose one of {', '.join(COSTS)}")
    return COSTS[name](**config)
