"""The goal-image task contract shared by every sfplan env.

Observation: ``Dict(pixels=Box(0, 255, (H, W, 3), uint8), desired_goal=<same box>)``.
The goal is an image of the same camera, rendered at a simulator state reached from the
start state (so it is reachable), then the start is restored.

``info`` on reset and step holds:
  - ``is_success`` (bool): from simulator state, never from pixels;
  - ``distance`` (float): the task's success metric (e.g. fingertip-to-goal metres);
  - ``state`` (np.ndarray float64): the full simulator state, for ``OracleWorldModel``;
  - ``goal_pixels`` (np.ndarray uint8 (H, W, 3)): the goal image again.

Subclasses implement the simulator hooks (``_reset_sim``, ``sim_step``,
``render_pixels``, ``get_state``/``set_state``, ``_goal_descriptor``, ``_distance``);
the base class owns the Gymnasium API, seeding and the goal protocols.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

GOAL_PROTOCOLS = ("near", "far")


class GoalImageEnv(gym.Env):
    """Base class of sfplan's goal-image tasks (see module docstring for the contract).

    Args:
        image_size: side of the square rendered frames (pixels).
        goal: goal protocol, ``"near"`` (about 25-50 env steps from the start, as
            DINO-WM evaluates) or ``"far"`` (long horizon).
        max_episode_steps: truncation horizon (the eval step budget is separate).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    #: success threshold on ``info["distance"]`` (task units, documented per task).
    success_threshold: float = 0.0

    def __init__(self, image_size: int = 64, goal: str = "near", render_mode: str | None = "rgb_array"):
        if goal not in GOAL_PROTOCOLS:
            raise ValueError(f"unknown goal protocol {goal!r}: use one of {GOAL_PROTOCOLS}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r} is not supported: use 'rgb_array'")
        self.image_size = int(image_size)
        self.goal_protocol = goal
        self.render_mode = render_mode
        img = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict({"pixels": img, "desired_goal": img})
        self._goal_pixels: np.ndarray | None = None
        self._goal: Any = None

    # ---- hooks a task implements -------------------------------------------------
    @abstractmethod
    def _reset_sim(self, rng: np.random.Generator) -> None:
        """Put the simulator in a (seeded) start state."""

    @abstractmethod
    def sim_step(self, action: np.ndarray) -> None:
        """Advance the simulator by one env step (all physics substeps), no rendering."""

    @abstractmethod
    def render_pixels(self) -> np.ndarray:
        """Render the task camera: (H, W, 3) uint8."""

    @abstractmethod
    def get_state(self) -> np.ndarray:
        """Full simulator state as a float64 vector (restorable with ``set_state``)."""

    @abstractmethod
    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_state`` (derived quantities recomputed)."""

    @abstractmethod
    def _goal_descriptor(self) -> Any:
        """What success is measured against, read off the current simulator state
        (e.g. the fingertip position); called at the goal state."""

    @abstractmethod
    def _distance(self, goal: Any) -> float:
        """Task distance between the current simulator state and a goal descriptor."""

    @abstractmethod
    def _goal_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Actions (T, A) that drive the simulator from the start to a goal state under
        ``self.goal_protocol``; T is 25-50 for ``near``."""

    def _on_goal_set(self) -> None:
        """Optional: show the goal in the scene (e.g. a target marker) after it is set."""

    # ---- Gymnasium API -----------------------------------------------------------
    def _info(self) -> dict:
        d = self._distance(self._goal)
        return {
            "is_success": bool(d < self.success_threshold),
            "distance": float(d),
            "state": self.get_state(),
            "goal_pixels": self._goal_pixels,
        }

    def _obs(self) -> dict:
        return {"pixels": self.render_pixels(), "desired_goal": self._goal_pixels.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._reset_sim(self.np_random)
        start = self.get_state()
        # Drive the simulator to the goal, remember it, then restore the start.
        for a in self._goal_actions(self.np_random):
            self.sim_step(np.asarray(a, dtype=np.float64))
        self._goal = self._goal_descriptor()
        goal_state = self.get_state()
        self.set_state(goal_state)
        self._on_goal_set()
        self._goal_pixels = self.render_pixels()
        self._goal_state = goal_state
        self.set_state(start)
        self._on_goal_set()
        return self._obs(), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        self.sim_step(action)
        info = self._info()
        return self._obs(), -info["distance"], False, False, info

    def render(self):
        return self.render_pixels()

    @property
    def goal_state(self) -> np.ndarray:
        """Simulator state at which the goal image was rendered (success holds there)."""
        return self._goal_state
