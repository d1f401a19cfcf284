"""The world-model role: encode observations, imagine futures under candidate actions
(batched), decode features back to frames.

Shapes: B = batch of environments, N = candidates per environment, H = planning horizon
(env steps), A = action dim, K = imagined frames returned (those the cost needs),
C, h, w = the model's feature space (pixels in [0, 1] for the oracle, latents for a
learned model).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from sfplan.memory.base import Memory


@dataclass
class WorldState:
    """What a world model needs to imagine from ``now``.

    features: (B, C, h, w) features of the latest frame, in the space the cost compares.
    context:  model-specific history (e.g. (B, T, C, h, w) latent context frames).
    sim:      (B, S) simulator states, for the oracle only.
    """

    features: torch.Tensor
    context: torch.Tensor | None = None
    sim: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Imagination:
    """features: (B, N, K, C, h, w); steps: (K,) number of env steps after ``now`` at
    which each feature frame is taken (1-based, last == H)."""

    features: torch.Tensor
    steps: torch.Tensor


@runtime_checkable
class WorldModel(Protocol):
    """encode / imagine / decode; see module docstring for the shapes."""

    device: torch.device

    def encode(self, frames: np.ndarray | torch.Tensor, sim_state: np.ndarray | None = None) -> WorldState:
        """frames: (B, T, H, W, 3) uint8, the latest T observed frames.
        sim_state: (B, S) simulator states (needed by the oracle, ignored otherwise)."""

    def imagine(self, state: WorldState, actions: torch.Tensor) -> Imagination:
        """actions: (B, N, H, A) -> features of imagined frames (B, N, K, C, h, w)."""

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """features: (..., C, h, w) -> frames (..., H, W, 3) uint8."""


@runtime_checkable
class MemoryWorldModel(WorldModel, Protocol):
    """A world model that can carry an episodic memory (``sfplan.memory.base.Memory``, e.g.
    Temp-LoRA): written with real frames, it changes what the model imagines."""

    memory: Memory | None  # None until attach_memory

    def attach_memory(self, config: Any = None) -> Memory:
        """Add a fresh memory (``config``: its settings); returns it (also ``memory``)."""

    def reset_memory(self, seed: int | None = None) -> None:
        """Empty the memory (episode start); a no-op without one."""

    def remember(self, frames: np.ndarray | torch.Tensor, num_context: int = 0,
                 actions: np.ndarray | None = None) -> dict[str, float] | None:
        """Write real frames (T, H, W, 3) uint8, the first ``num_context`` already seen, with the
        actions (T-1, A) between them, into the memory -> its logs (None without a memory)."""


@runtime_checkable
class GoalVideoWorldModel(WorldModel, Protocol):
    """A world model that also plans videos (SlowFast-VGen's planning, ``planner=video_plan``):
    action-free futures steered to end at a goal, whose actions an inverse dynamics model then
    reads off. May carry that model as ``idm`` (None: none)."""

    context_frames: int  # latent frames of history it conditions on
    chunk_size: int  # env steps it was trained to generate at once
    max_frames: int  # context + generated frames it can attend over
    latent_shape: tuple[int, int, int]  # (C, h, w)

    def imagine_to_goal(self, state: WorldState, goal: torch.Tensor, horizon: int, num_videos: int = 1,
                        num_steps: int = 6, sampler: str = "dpmsolver++", guidance: str = "reconstruction",
                        guidance_weight: float = 3.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """state from ``encode`` (context (B, T', C, h, w)); goal: (B, C, h, w) -> ``num_videos``
        videos of ``horizon`` frames per env, (B, K, H, C, h, w), in one batched sampler call."""


# ---- pixel features: what the oracle imagines
def frames_to_features(frames: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1] on ``device``."""
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    return (x.to(device).permute(*range(x.ndim - 3), -1, -3, -2).float() / 255.0).contiguous()


def features_to_frames(features: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3) on the CPU."""
    x = (features.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return x.permute(*range(x.ndim - 3), -2, -1, -3).cpu()
