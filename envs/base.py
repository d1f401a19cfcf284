"""The goal-image task contract shared by every sfplan env.

Observation: ``Dict(pixels=Box(0, 255, (H, W, 3), uint8), desired_goal=<same box>)``.
The goal is an image of the same camera, rendered at a simulator state reached from the
start state (so it is reachable), then the start is restored.

``info`` on reset and step holds:
  - ``is_success`` (bool): from simulator state, never from pixels;
  - ``distance`` (float): the task's success metric (e.g. fingertip-to-goal metres);
  - ``state`` (np.ndarray float64): the full simulator state, for ``OracleWorldModel``;
  - ``goal_pixels`` (np.ndarray uint8 (H, W, 3)): the goal image again;
  - on reset with ``options={"waypoints": n}`` only, ``goal_waypoints`` (np.ndarray uint8
    (S, H, W, 3)): subgoal images along the path that produced the goal, ``n`` of them
    evenly spaced in time and then the goal itself (S = n + 1; S = 1 when the task placed
    its goal without a path, e.g. Reacher's ``far`` protocol). The paper's subgoals for
    long-horizon planning; ``sfplan eval waypoints=n`` plans toward them in order;
  - on reset, for tasks whose episode starts with a past (MemoryMaze ``goal="retrace"``),
    ``history_frames`` (T+1, H, W, 3) uint8 and ``history_actions`` (T, A): what the agent
    saw and did before the first step, the current frame last. The runner hands them to
    the world model as context and to an episodic memory as its first write.

Subclasses implement the simulator hooks (``_reset_sim``, ``sim_step``,
``render_pixels``, ``get_state``/``set_state``, ``_goal_descriptor``, ``_distance``);
the base class owns the Gymnasium API, seeding and the goal protocols.
``MujocoGoalEnv`` implements the simulator hooks once for any MuJoCo model.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sfplan.envs.rendering import Camera, FastRenderer
from sfplan.envs.wrappers import flat_descriptor
from sfplan.errors import UserError

GOAL_PROTOCOLS = ("near", "far")
#: ... and the tasks that also take stable-worldmodel's evaluation protocol (``peer``, see
#: ``GoalImageEnv._peer_actions``)
PEER_PROTOCOLS = (*GOAL_PROTOCOLS, "peer")


def smooth_noise(rng: np.random.Generator, steps: int, dim: int, rho: float = 0.9, scale: float = 0.5) -> np.ndarray:
    """Correlated (AR(1), stationary std ``scale``) random actions in [-1, 1]: (steps, dim) float64."""
    out = np.empty((steps, dim))
    a = np.clip(scale * rng.standard_normal(dim), -1.0, 1.0)
    for t in range(steps):
        a = rho * a + np.sqrt(1.0 - rho**2) * scale * rng.standard_normal(dim)
        a = np.clip(a, -1.0, 1.0)
        out[t] = a
    return out


class GoalImageEnv(gym.Env):
    """Base class of sfplan's goal-image tasks (see module docstring for the contract).

    Args:
        image_size: side of the square rendered frames (pixels).
        goal: goal protocol, ``"near"`` (about 25-50 env steps from the start, as
            DINO-WM evaluates) or ``"far"`` (long horizon).
        max_episode_steps: truncation horizon (the eval step budget is separate).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    #: goal protocols this task accepts (a task may add its own, e.g. MemoryMaze's ``retrace``)
    goal_protocols: tuple[str, ...] = GOAL_PROTOCOLS
    #: success threshold on ``info["distance"]`` (task units, documented per task).
    success_threshold: float = 0.0
    #: env steps from the start to the goal under the ``peer`` protocol
    peer_offset: int = 25

    def __init__(self, image_size: int = 64, goal: str = "near", render_mode: str | None = "rgb_array"):
        if goal not in self.goal_protocols:
            raise UserError(f"unknown goal protocol {goal!r} for {type(self).__name__}: use one of "
                            f"{self.goal_protocols}")
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"render_mode {render_mode!r} is not supported: use 'rgb_array'")
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

    def _peer_actions(self, rng: np.random.Generator) -> np.ndarray:
        """``peer`` goal protocol, stable-worldmodel's evaluation: the goal is the state
        ``peer_offset`` env steps along a trajectory of exploratory motion from the start, the
        motion ``sfplan collect`` records by default (``correlated``: AR(1) noise, rho 0.9, std
        0.5 in action units), taken as it comes (no redraw when it barely moved, unlike ``near``):
        (peer_offset, A) env-rate actions."""
        low, high = self.action_space.low, self.action_space.high
        return low + (smooth_noise(rng, self.peer_offset, low.shape[0]) + 1.0) / 2.0 * (high - low)

    def _on_goal_set(self) -> None:
        """Optional: show the goal in the scene (e.g. a target marker) after it is set."""

    # ---- Gymnasium API -----------------------------------------------------------
    def _info(self) -> dict:
        d = self._distance(self._goal)
        return {
            "is_success": bool(d < self.success_threshold),
            "distance": float(d),
            "state": self.get_state(),
            "goal_pixels": self._goal_pixels.copy(),  # a fresh array per call (check_env)
        }

    def _obs(self) -> dict:
        return {"pixels": self.render_pixels(), "desired_goal": self._goal_pixels.copy()}

    def _drive_to_goal(self, rng: np.random.Generator) -> None:
        """Bring the simulator from the start to the goal state. The default replays
        ``_goal_actions`` (``_peer_actions`` under ``peer``) and records the states it passes
        (``_goal_path``, the source of waypoint images); a task may override it (e.g. to place
        a "far" goal directly)."""
        actions = self._peer_actions(rng) if self.goal_protocol == "peer" else self._goal_actions(rng)
        for a in actions:
            self.sim_step(np.asarray(a, dtype=np.float64))
            self._goal_path.append(self.get_state())

    @staticmethod
    def _waypoints_option(options: dict | None) -> int:
        n = int((options or {}).get("waypoints", 0))
        if n < 0:
            raise UserError(f"options['waypoints'] must be >= 0, got {n}")
        return n

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        n_waypoints = self._waypoints_option(options)
        self._reset_sim(self.np_random)
        start = self.get_state()
        # Drive the simulator to the goal, remember it, then restore the start.
        self._goal_path: list[np.ndarray] = []
        self._drive_to_goal(self.np_random)
        self._goal = self._goal_descriptor()
        self.set_state(self.get_state())
        self._on_goal_set()
        # Read after _on_goal_set so that a marker in the state (e.g. Reacher's target
        # joints) sits where the goal image shows it: set_state(goal_state) reproduces it.
        self._goal_state = self.get_state()
        self._goal_pixels = self.render_pixels()
        waypoints = self._render_waypoints(n_waypoints) if n_waypoints else None
        self.set_state(start)
        self._on_goal_set()
        info = self._info()
        if waypoints is not None:
            info["goal_waypoints"] = waypoints
        return self._obs(), info

    def _render_waypoints(self, n: int) -> np.ndarray:
        """``n`` images of the recorded goal path at times k / (n + 1), k = 1..n, then the
        goal image: (S, H, W, 3) uint8. Each is rendered with the goal marker in place (as
        the observations show it). Leaves the simulator at an arbitrary path state."""
        path = self._goal_path
        images = []
        if len(path) > 1:
            for k in range(1, n + 1):
                idx = min(len(path) - 1, int(round(k * len(path) / (n + 1))) - 1)
                if idx >= len(path) - 1:
                    break  # a short path: fewer waypoints, never one at the goal twice
                self.set_state(path[idx])
                self._on_goal_set()
                images.append(self.render_pixels())
        images.append(self._goal_pixels.copy())
        return np.stack(images)

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        self.sim_step(action)
        info = self._info()
        return self._obs(), -info["distance"], False, False, info

    def render(self):
        return self.render_pixels()

    def goal_descriptor_of(self, state: np.ndarray) -> np.ndarray:
        """The goal descriptor (what success is measured on, e.g. Reacher's fingertip (x, y))
        at a recorded simulator state, as a flat float64 vector (``flat_descriptor``): the label
        a state probe (``sfplan train stage=probe``) learns to read off the frame. Moves the
        simulator to ``state``."""
        self.set_state(state)
        return flat_descriptor(self._goal_descriptor())

    @property
    def goal_state(self) -> np.ndarray:
        """Simulator state at which the goal image was rendered (success holds there)."""
        return self._goal_state


class MujocoGoalEnv(GoalImageEnv):
    """``GoalImageEnv`` over one MuJoCo ``model``/``data`` pair.

    A subclass calls ``_init_mujoco`` in its constructor and implements the task hooks
    (``_reset_sim``, ``_goal_descriptor``, ``_distance``, ``_goal_actions``). This class
    gives it the simulator hooks:

    - ``sim_step(a)``: ``data.ctrl = a`` and ``frame_skip`` ``mj_step`` calls, exactly as
      Gymnasium's ``MujocoEnv.do_simulation`` (no rendering, no kinematics refresh);
    - ``get_state``/``set_state``: ``mj_getState``/``mj_setState`` with
      ``mjSTATE_FULLPHYSICS | mjSTATE_WARMSTART`` (time, qpos, qvel, act, history,
      plugin state and the solver's warm start, so a restored state steps bit-exactly
      like the original), then ``mj_forward``;
    - ``render_pixels()``: a ``FastRenderer`` (made on first use).

    ``mj_step`` leaves positions (``xpos``, ``geom_xpos``...) at the state *before* its
    last integration; ``sync()`` recomputes them from ``qpos`` (``mj_kinematics``,
    ``mj_comPos``, ``mj_camlight``) and runs lazily before rendering and in
    ``body_xpos``, so frames and distances always show the current state.
    """

    #: ``mj_getState`` spec of ``get_state``/``set_state``.
    STATE_SPEC = int(mujoco.mjtState.mjSTATE_FULLPHYSICS) | int(mujoco.mjtState.mjSTATE_WARMSTART)

    def _init_mujoco(
        self,
        model: "mujoco.MjModel",
        frame_skip: int,
        camera: Camera,
        ortho_extent: float | None = None,
    ) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.frame_skip = int(frame_skip)
        self._camera = camera
        self._ortho_extent = ortho_extent
        self._renderer: FastRenderer | None = None
        self._stale = False
        self._state_size = mujoco.mj_stateSize(model, self.STATE_SPEC)
        low, high = model.actuator_ctrlrange.T.astype(np.float32)
        self.action_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.metadata = dict(self.metadata, render_fps=int(round(1.0 / self.dt)))

    @property
    def dt(self) -> float:
        """Seconds of simulated time per env step."""
        return float(self.model.opt.timestep) * self.frame_skip

    # ---- simulator hooks ---------------------------------------------------------
    def sim_step(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        self._stale = True

    def sync(self) -> None:
        """Recompute positions after ``mj_step`` (cheap: kinematics only)."""
        if self._stale:
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_camlight(self.model, self.data)
            self._stale = False

    def get_state(self) -> np.ndarray:
        state = np.empty(self._state_size, dtype=np.float64)
        mujoco.mj_getState(self.model, self.data, state, self.STATE_SPEC)
        return state

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self._state_size,):
            raise ValueError(f"state has shape {state.shape}; {type(self).__name__} expects ({self._state_size},)")
        mujoco.mj_setState(self.model, self.data, state, self.STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)
        self._stale = False

    def render_pixels(self) -> np.ndarray:
        self.sync()
        if self._renderer is None:
            self._renderer = FastRenderer(self.model, self.image_size, camera=self._camera, ortho_extent=self._ortho_extent)
        return self._renderer.render(self.data)

    def body_xpos(self, name: str) -> np.ndarray:
        """World position (3,) of a body at the current state (a copy)."""
        self.sync()
        return self.data.body(name).xpos.copy()

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        super().close()
