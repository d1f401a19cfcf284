"""``GoalImageWrapper``: any Gymnasium env that renders ``rgb_array`` as an sfplan task."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sfplan.errors import UserError

GoalFn = Callable[[gym.Env, np.random.Generator], Any]
SuccessFn = Callable[[gym.Env, Any], "bool | float"]


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C>=3) image -> (size, size, 3) uint8 (area average when shrinking)."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) rgb frame, got shape {frame.shape}")
    frame = frame[..., :3]
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame)
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


def flat_descriptor(descriptor: Any) -> np.ndarray:
    """A goal descriptor as the flat float64 vector (D,) a state probe reads: an array-like
    raveled, a mapping's values raveled and joined in its order (the robosuite tasks'
    ``{"eef": (3,), "cube": (3,)}`` -> (6,))."""
    if isinstance(descriptor, Mapping):
        parts = [np.asarray(v, dtype=np.float64).ravel() for v in descriptor.values()]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray(descriptor, dtype=np.float64).ravel()

class _SyncedMujoco(gym.Wrapper):
    """What ``goal_fn``/``success_fn`` receive for a MuJoCo env: after each ``step`` the
    body positions are recomputed (``mj_step`` leaves ``xpos`` one substep behind), so
    ``env.unwrapped.get_body_com(...)`` reads the current state."""

    def __init__(self, env: gym.Env, sync: Callable[[], None]):
        super().__init__(env)
        self._sync = sync

    def step(self, action):
        out = self.env.step(action)
        self._sync()
        return out


class GoalImageWrapper(gym.Env):
    """Turn a user's Gymnasium env into an sfplan goal-image task.

    The result follows the contract of ``sfplan.envs.GoalImageEnv``: observation
    ``{"pixels", "desired_goal"}`` (``(image_size, image_size, 3)`` uint8), and ``info``
    with ``is_success``, ``distance``, ``goal_pixels`` and, when the env is MuJoCo-based
    (``env.unwrapped`` has ``model`` and ``data``), ``state``; then ``get_state``,
    ``set_state``, ``sim_step``, ``render_pixels`` and ``goal_state`` exist too, so
    ``OracleWorldModel(make_env=...)`` can clone it. The wrapper is a ``gym.Env`` of its
    own (``wrapper.unwrapped is wrapper``), holding the user env as ``self.env``.

    Args:
        env: a Gymnasium env made with ``render_mode="rgb_array"``. For speed make it at
            the image size (``gym.make(id, render_mode="rgb_array", width=64, height=64)``
            for MuJoCo envs); other sizes are resized (area average).
        goal_fn: ``goal_fn(env, rng) -> goal``. Called right after a seeded reset with the
            user env at the start state; it drives ``env`` (``env.step(...)``, or any state
            setting) to a goal state and returns a goal descriptor (anything, e.g. a
            position), which is handed to ``success_fn``. ``rng`` is a seeded
            ``np.random.Generator``. The goal image is rendered where ``goal_fn`` leaves
            the env; then the env is reset again with the same seed, so the start is the
            same and step counters (``TimeLimit``) start afresh (the user env's
            ``reset(seed=...)`` must be deterministic, as Gymnasium's envs are).
        success_fn: ``success_fn(env, goal) -> bool | float``, read off the user env's
            simulator state after every reset/step. A bool is the success flag
            (``info["distance"]`` is then 0.0 or 1.0); a float is a distance, and
            success is ``distance < success_threshold``.
        image_size: side of the square observation frames.
        success_threshold: needed when ``success_fn`` returns a float.
        descriptor_fn: optional ``descriptor_fn(env) -> array or {name: array}``: the goal
            descriptor of the env's current state (the same quantity ``goal_fn`` returns for
            the goal, e.g. a position; a mapping's values are joined in order). With it (and a
            MuJoCo env) the wrapper labels recorded states
            (``goal_descriptor_of``), so ``sfplan fit`` trains a state probe for
            ``cost=probe``; without it that stage is skipped.

    ``goal_fn``/``success_fn`` get the user env itself, or for a MuJoCo env a thin
    wrapper of it whose ``step`` refreshes body positions after ``mj_step``.

    ``reward`` is ``-info["distance"]``; ``terminated``/``truncated`` are the user env's.
    ``sim_step(a)`` calls ``env.unwrapped.step(a)`` (physics of one step, no rendering),
    so action wrappers around the user env are bypassed there: keep them off, or put
    their effect in the env itself.

    Example (runs as is)::

        import gymnasium as gym
        import numpy as np
        from sfplan.envs import GoalImageWrapper

        def goal_fn(env, rng):  # 30 random torques from the start; goal = fingertip (x, y)
            for _ in range(30):
                env.step(rng.uniform(-1, 1, 2))
            return env.unwrapped.get_body_com("fingertip")[:2].copy()

        def success_fn(env, goal):  # a float: the fingertip-to-goal distance (m)
            return float(np.linalg.norm(env.unwrapped.get_body_com("fingertip")[:2] - goal))

        env = GoalImageWrapper(
            gym.make("Reacher-v5", render_mode="rgb_array", width=64, height=64),
            goal_fn, success_fn, image_size=64, success_threshold=0.02,
        )
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        print(obs["pixels"].shape, info["is_success"], info["distance"])
        env.close()
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        env: gym.Env,
        goal_fn: GoalFn,
        success_fn: SuccessFn,
        image_size: int = 64,
        success_threshold: float | None = None,
        descriptor_fn: Callable[[gym.Env], Any] | None = None,
    ):
        mode = getattr(env, "render_mode", None)
        if mode != "rgb_array":
            env_id = getattr(getattr(env, "spec", None), "id", None) or "<your env id>"
            raise UserError(
                f"GoalImageWrapper needs an env that renders rgb_array frames, but {type(env.unwrapped).__name__} "
                f"has render_mode={mode!r}. Make it with gym.make({env_id!r}, render_mode=\"rgb_array\")."
            )
        self.env = env
        self.goal_fn = goal_fn
        self.success_fn = success_fn
        self.image_size = int(image_size)
        self.success_threshold = success_threshold
        self.descriptor_fn = descriptor_fn
        self.render_mode = "rgb_array"
        self.action_space = env.action_space
        img = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict({"pixels": img, "desired_goal": img})
        fps = (getattr(env, "metadata", None) or {}).get("render_fps")
        if fps:
            self.metadata = dict(self.metadata, render_fps=fps)

        inner = env.unwrapped
        self.is_mujoco = hasattr(inner, "model") and hasattr(inner, "data")
        self._callback_env: gym.Env = env
        if self.is_mujoco:
            import mujoco

            self._mujoco = mujoco
            self._state_spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS) | int(mujoco.mjtState.mjSTATE_WARMSTART)
            self._state_size = mujoco.mj_stateSize(inner.model, self._state_spec)
            # Fast offscreen frames: must be set before the renderer's GL context exists.
            inner.model.vis.quality.offsamples = 0
            self._callback_env = _SyncedMujoco(env, self._sync)
            self._shadows_off = False
        self._goal: Any = None
        self._goal_pixels: np.ndarray | None = None
        self._goal_state: np.ndarray | None = None

    # ---- simulator hooks (MuJoCo envs) --------------------------------------------
    def _need_mujoco(self, what: str) -> None:
        if not self.is_mujoco:
            raise TypeError(
                f"{what} needs a MuJoCo-based env (env.unwrapped with .model and .data); "
                f"{type(self.env.unwrapped).__name__} is not one"
            )

    def _sync(self) -> None:
        m, d = self.env.unwrapped.model, self.env.unwrapped.data
        self._mujoco.mj_kinematics(m, d)
        self._mujoco.mj_comPos(m, d)
        self._mujoco.mj_camlight(m, d)

    def get_state(self) -> np.ndarray:
        """Full MuJoCo state (float64 vector: time, qpos, qvel, act, warm start...)."""
        self._need_mujoco("get_state")
        inner = self.env.unwrapped
        state = np.empty(self._state_size, dtype=np.float64)
        self._mujoco.mj_getState(inner.model, inner.data, state, self._state_spec)
        return state

    def set_state(self, state: np.ndarray) -> None:
        """Restore a ``get_state`` vector (then ``mj_forward``)."""
        self._need_mujoco("set_state")
        inner = self.env.unwrapped
        self._mujoco.mj_setState(inner.model, inner.data, np.asarray(state, dtype=np.float64), self._state_spec)
        self._mujoco.mj_forward(inner.model, inner.data)

    def sim_step(self, action: np.ndarray) -> None:
        """One env step of physics (``env.unwrapped.step``), no rendering."""
        self._need_mujoco("sim_step")
        self.env.unwrapped.step(action)

    def render_pixels(self) -> np.ndarray:
        """The env's frame at the current state, (image_size, image_size, 3) uint8."""
        if self.is_mujoco:
            self._sync()
        frame = self.env.render()
        if frame is None:
            raise RuntimeError(f"{type(self.env.unwrapped).__name__}.render() returned None: is render_mode 'rgb_array'?")
        if self.is_mujoco and not self._shadows_off:
            self._shadows_off = True
            self._turn_shadows_off()
            frame = self.env.render()
        return resize_frame(frame, self.image_size)

    def _turn_shadows_off(self) -> None:
        """Best effort: Gymnasium's offscreen viewer exists after the first render."""
        viewer = getattr(getattr(self.env.unwrapped, "mujoco_renderer", None), "viewer", None)
        scn = getattr(viewer, "scn", None)
        if scn is not None:
            scn.flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = False
            scn.flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = False

    def goal_descriptor_of(self, state: np.ndarray) -> np.ndarray:
        """``descriptor_fn`` at a recorded ``get_state`` vector, (D,) float64 (the current
        state is restored afterwards). Raises TypeError without ``descriptor_fn``."""
        if self.descriptor_fn is None:
            raise TypeError("GoalImageWrapper(descriptor_fn=...) is needed to label states with a goal descriptor")
        self._need_mujoco("goal_descriptor_of")
        here = self.get_state()
        try:
            self.set_state(state)
            self._sync()
            return flat_descriptor(self.descriptor_fn(self._callback_env))
        finally:
            self.set_state(here)

    @property
    def goal_state(self) -> np.ndarray | None:
        """Simulator state where the goal image was rendered (MuJoCo envs; else None)."""
        return self._goal_state

    # ---- Gymnasium API -----------------------------------------------------------
    def _info(self) -> dict:
        value = self.success_fn(self._callback_env, self._goal)
        if isinstance(value, (bool, np.bool_)):
            success, distance = bool(value), 0.0 if value else 1.0
        else:
            distance = float(value)
            if self.success_threshold is None:
                raise UserError("success_fn returned a distance: give GoalImageWrapper(success_threshold=...)")
            success = distance < self.success_threshold
        info = {"is_success": success, "distance": distance, "goal_pixels": self._goal_pixels.copy()}
        if self.is_mujoco:
            info["state"] = self.get_state()
        return info

    def _obs(self) -> dict:
        return {"pixels": self.render_pixels(), "desired_goal": self._goal_pixels.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        sub_seed = int(self.np_random.integers(2**31 - 1))
        self.env.reset(seed=sub_seed, options=options)
        if self.is_mujoco:
            self._sync()
        self._goal = self.goal_fn(self._callback_env, self.np_random)
        self._goal_pixels = self.render_pixels()
        self._goal_state = self.get_state() if self.is_mujoco else None
        _, inner_info = self.env.reset(seed=sub_seed, options=options)
        if self.is_mujoco:
            self._sync()
        info = dict(inner_info)
        info.update(self._info())
        return self._obs(), info

    def step(self, action):
        _, _, terminated, truncated, inner_info = self.env.step(action)
        obs = self._obs()  # refreshes MuJoCo positions before success_fn reads them
        info = dict(inner_info)
        info.update(self._info())
        return obs, -info["distance"], bool(terminated), bool(truncated), info

    def render(self):
        return self.render_pixels()

    def close(self):
        self.env.close()


def episode_limit(env: gym.Env) -> int | None:
    """The env's TimeLimit: its spec's ``max_episode_steps``, or a ``TimeLimit`` wrapper's
    inside it (also the user env a ``GoalImageWrapper`` holds)."""
    seen = 0
    while env is not None and seen < 32:
        # a wrapper's own limit first: ``ActionRepeat`` counts outer steps under the inner spec's
        steps = getattr(env, "_max_episode_steps", None) or getattr(getattr(env, "spec", None), "max_episode_steps",
                                                                    None)
        if steps:
            return int(steps)
        env = getattr(env, "env", None)
        seen += 1
    return None


SIM_HOOKS = ("get_state", "set_state", "sim_step", "render_pixels")


def history_at_repeat(frames, actions, repeat: int) -> dict:
    """An episode's past at ``repeat`` inner steps per step: frames (T+1, H, W, 3) and actions
    (T, A) -> {"history_frames": every ``repeat``-th frame counted back from the last (the
    current one), (n+1, H, W, 3); "history_actions": per step the mean of the ``repeat`` inner
    actions it spans (exact where they are equal, as a held action is), (n, A)}, n = T // repeat
    (the oldest T mod repeat steps are dropped)."""
    frames, actions = np.asarray(frames), np.asarray(actions, np.float32)
    T, k = len(actions), int(repeat)
    if len(frames) != T + 1:
        raise ValueError(f"history_frames {frames.shape} and history_actions {actions.shape}: need T+1 frames "
                         f"for T actions")
    n = T // k
    start = T - n * k
    return {"history_frames": frames[start::k],
            "history_actions": actions[start:].reshape(n, k, *actions.shape[1:]).mean(axis=1)}


class ActionRepeat(gym.Wrapper):
    """Each action held for ``repeat`` steps of ``env``: one step of this env is ``repeat`` of
    the inner one (rewards summed; it stops early where the inner episode ends), so a chunk of
    planned steps shows ``repeat`` x the motion. ``sfplan fit`` derives ``repeat`` from the
    data (``env.kwargs.action_repeat``); ``make_env`` applies it to any env.

    The episode limit counts outer steps (the inner TimeLimit divided by ``repeat``), and the
    simulator hooks the oracle clones through (``sim_step`` & co., where ``env`` has them)
    repeat the same way. An episode's past (``info["history_frames"]`` / ``"history_actions"``
    of ``reset``) is given in outer steps too (``history_at_repeat``), so a memory written with
    it sees the motion per action the world model was trained on."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = int(repeat)
        inner = episode_limit(env)
        self._max_episode_steps = -(-inner // self.repeat) if inner else None
        hooks = next((o for o in (env, env.unwrapped) if all(hasattr(o, m) for m in SIM_HOOKS)), None)
        if hooks is not None:  # instance attributes: ``hasattr`` tells a cloneable env as before
            self._hooks = hooks
            self.get_state, self.set_state, self.render_pixels = hooks.get_state, hooks.set_state, hooks.render_pixels
            self.sim_step = self._repeat_sim_step

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if "history_frames" in info and "history_actions" in info:
            info = {**info, **history_at_repeat(info["history_frames"], info["history_actions"], self.repeat)}
        return obs, info

    def _repeat_sim_step(self, action) -> None:
        for _ in range(self.repeat):
            self._hooks.sim_step(action)

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info
