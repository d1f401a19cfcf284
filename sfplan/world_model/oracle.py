"""OracleWorldModel: the true simulator as a world model.

It clones the MuJoCo state of the real env into a private copy of the task and
simulates each candidate action sequence, rendering only the frames the cost needs.
It is the planners' upper bound (a learned model can at best match it) and their test bed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from sfplan.device import resolve_device
from sfplan.world_model.base import Imagination, WorldState, features_to_frames, frames_to_features


def imagined_steps(horizon: int, frame_stride: int) -> list[int]:
    """Env steps (1-based) at which frames are rendered: every ``frame_stride`` steps and
    always the last; ``frame_stride <= 0`` renders the last frame only."""
    if frame_stride <= 0:
        return [horizon]
    steps = list(range(frame_stride, horizon + 1, frame_stride))
    return steps if steps and steps[-1] == horizon else steps + [horizon]


@dataclass
class OracleWorldModelConfig:
    env_id: str | None = None
    env_kwargs: dict | None = None
    frame_stride: int = 0
    device: str = "auto"


class OracleWorldModel:
    """The simulator itself, behind the WorldModel contract.

    Args:
        env_id, env_kwargs: the task to clone (``gymnasium.make(env_id, **env_kwargs)``);
            or ``make_env``: a zero-argument factory for a user env (e.g. one wrapped in
            ``GoalImageWrapper``). The env must expose ``get_state``/``set_state``/
            ``sim_step``/``render_pixels`` on ``unwrapped`` (every sfplan task does).
        frame_stride: render a frame every ``frame_stride`` imagined steps (plus the last);
            0 renders only the final frame, the cheapest choice for a final-frame cost.
        device: where features live (``auto`` picks CUDA when present).
    """

    is_oracle = True

    def __init__(
        self,
        env_id: str | None = None,
        env_kwargs: dict | None = None,
        frame_stride: int = 0,
        device: str | torch.device = "auto",
        make_env: Callable[[], gym.Env] | None = None,
    ):
        if make_env is None and env_id is None:
            raise ValueError("OracleWorldModel needs env_id (an env spec: sfplan task, Gymnasium id or module:callable) "
                             "or make_env (a factory)")
        from sfplan.envs.spec import make_env as make_spec

        env = make_env() if make_env is not None else make_spec(env_id, **dict(env_kwargs or {}))
        env.reset(seed=0)  # Gymnasium refuses to render an env that was never reset
        self.sim = _sim_interface(env)
        self._env = env
        self.frame_stride = int(frame_stride)
        self.device = resolve_device(device)
        self.imagined_frames = 0  # counter of imagined env steps (throughput reports)

    def encode(self, frames: np.ndarray | torch.Tensor, sim_state: np.ndarray | None = None) -> WorldState:
        """frames: (B, T, H, W, 3) uint8; sim_state: (B, S) -> WorldState with features
        (B, 3, H, W) of the latest frame. Without sim_state (e.g. a goal image) the state
        can be compared against but not imagined from."""
        features = frames_to_features(np.asarray(frames)[:, -1], self.device)  # (B, 3, H, W)
        sim = None if sim_state is None else np.asarray(sim_state, dtype=np.float64).reshape(features.shape[0], -1)
        return WorldState(features=features, sim=sim)

    @torch.no_grad()
    def imagine(self, state: WorldState, actions: torch.Tensor) -> Imagination:
        """actions: (B, N, H, A) -> Imagination(features (B, N, K, 3, H_img, W_img))."""
        if state.sim is None:
            raise ValueError("OracleWorldModel.imagine needs a state encoded with sim_state=info['state']")
        B, N, H, _ = actions.shape
        acts = actions.detach().to("cpu", torch.float64).numpy()
        steps = imagined_steps(H, self.frame_stride)
        render_at = set(steps)
        frames = []
        for b in range(B):
            for n in range(N):
                self.sim.set_state(state.sim[b])
                for t in range(H):
                    self.sim.sim_step(acts[b, n, t])
                    if t + 1 in render_at:
                        frames.append(self.sim.render_pixels())
        self.imagined_frames += B * N * H
        img = np.stack(frames).reshape(B, N, len(steps), *frames[0].shape)  # (B, N, K, H, W, 3)
        return Imagination(features=frames_to_features(img, self.device), steps=torch.tensor(steps))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """features (..., 3, H, W) in [0, 1] -> frames (..., H, W, 3) uint8."""
        return features_to_frames(features)

    def close(self) -> None:
        self._env.close()


def can_clone(env: gym.Env) -> bool:
    """Whether ``OracleWorldModel`` can clone ``env``: it has the simulator hooks and, for a
    ``GoalImageWrapper``, wraps a MuJoCo env (elsewhere its hooks raise)."""
    try:
        sim = _sim_interface(env)
    except TypeError:
        return False
    return bool(getattr(sim, "is_mujoco", True))


def _sim_interface(env: gym.Env) -> Any:
    """The object that carries the simulator hooks (usually ``env.unwrapped``)."""
    for obj in (env, getattr(env, "unwrapped", None)):
        if obj is not None and all(hasattr(obj, m) for m in ("get_state", "set_state", "sim_step", "render_pixels")):
            return obj
    raise TypeError(
        f"{type(env.unwrapped).__name__} cannot be cloned by OracleWorldModel: it needs get_state/set_state/"
        "sim_step/render_pixels. Wrap a MuJoCo env with sfplan.envs.GoalImageWrapper, or subclass GoalImageEnv."
    )
