"""Exploration policies for `sfplan collect`.

A policy is a small stateful object::

    policy.reset(env, rng)          # at the start of each episode, after env.reset
    action = policy.act(obs, info)  # (A,) float32, inside env.action_space

``env`` is the (possibly wrapped) Gymnasium env; ``rng`` a ``numpy.random.Generator``
seeded from the episode seed (a stream apart from the env's own), so an episode is a
function of (task, env kwargs, seed, policy, policy kwargs, steps) and of nothing else
(not of the worker that collected it).

Actions are rounded to float32 *before* they are stepped, so the stored float32
actions replay the episode bit-exactly.

Policies (``policy=`` in ``configs/collect.yaml``, parameters under ``policies.<name>``):

- ``random``: uniform in the action bounds, each draw held for ``repeat`` steps.
- ``correlated`` (default): AR(1) noise, a discretised Ornstein-Uhlenbeck process, in
  normalised action units: ``u_t = rho u_{t-1} + sqrt(1 - rho^2) scale eps_t``, clipped to
  [-1, 1] and mapped to the bounds. Its stationary std is ``scale`` and its correlation
  time ``1 / (1 - rho)`` steps, so torques keep their sign long enough to swing the arm
  across the workspace instead of jittering in place (see the coverage figures in
  ``sfplan.data.collect``).
- ``goal``: drive toward a freshly sampled goal with the task's own scripted
  goal-reaching actions (``env.unwrapped._goal_actions(rng)``, or its collection script
  ``_collect_actions(rng, hold)`` where it has one, called from the current state), then
  ``noise_steps`` of correlated noise, then a new goal, and so on.
- ``explore``: the task's own routes through its layout (``env.unwrapped._explore_route``,
  e.g. ForkMaze: to the junction and down a random arm into its room), driven in closed
  loop at a random speed with a little correlated noise, then ``noise_steps`` of noise.
- ``retrace``: go out for ``out_steps`` steps, then come back along the same path, and
  repeat from there. Outbound: the task's exploratory motion when it has one
  (``env.unwrapped.make_wanderer(rng)``, e.g. ``sfplan/MemoryMaze-v0``), else
  ``correlated`` noise. Return (``mode``): ``track`` steers back through the recorded
  positions with the task's one-step inverse (``env.unwrapped.track_action``), so return
  frame ``2n - t`` repeats outbound frame ``t``; ``negate`` plays the outbound actions
  negated in reverse order (any task; close only where the dynamics are nearly
  reversible); ``auto`` is ``track`` where the task supports it, else ``negate``.
  ``sfplan.data.collect.retrace_rollout`` runs one such episode (``benchmarks/memory_benchmark.py``).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from sfplan.errors import UserError


def _bounds(env) -> tuple[np.ndarray, np.ndarray]:
    space = env.action_space
    low = np.asarray(space.low, dtype=np.float64)
    high = np.asarray(space.high, dtype=np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise UserError(f"exploration policies need a bounded action space; {env.spec.id if env.spec else env} "
                        f"has bounds [{low}, {high}]")
    return low, high


class Policy:
    """Base class: keeps the action bounds; ``to_action`` maps [-1, 1] units to them."""

    name = "policy"

    def reset(self, env, rng: np.random.Generator) -> None:
        self.low, self.high = _bounds(env)
        self.rng = rng

    def act(self, obs, info) -> np.ndarray:
        raise NotImplementedError

    def to_action(self, u: np.ndarray) -> np.ndarray:
        """u: (A,) in [-1, 1] -> (A,) float32 in [low, high]."""
        u = np.clip(u, -1.0, 1.0)
        a = self.low + (u + 1.0) * 0.5 * (self.high - self.low)
        return np.clip(a, self.low, self.high).astype(np.float32)

    def kwargs(self) -> dict:
        """The parameters that define the policy (stored in the dataset)."""
        return {}


class RandomPolicy(Policy):
    """Uniform random actions in the bounds, each held for ``repeat`` steps."""

    name = "random"

    def __init__(self, repeat: int = 1):
        if int(repeat) < 1:
            raise UserError(f"policies.random.repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)

    def reset(self, env, rng):
        super().reset(env, rng)
        self._t = 0
        self._a = None

    def act(self, obs, info):
        if self._t % self.repeat == 0:
            self._a = self.to_action(self.rng.uniform(-1.0, 1.0, self.low.shape))
        self._t += 1
        return self._a

    def kwargs(self):
        return {"repeat": self.repeat}


class CorrelatedPolicy(Policy):
    """AR(1) / discretised Ornstein-Uhlenbeck noise in normalised action units.

    Args:
        rho: correlation between consecutive steps (0 = white noise; correlation time
            ``1 / (1 - rho)`` steps).
        scale: stationary standard deviation in [-1, 1] units (before clipping).
    """

    name = "correlated"

    def __init__(self, rho: float = 0.9, scale: float = 0.5):
        if not 0.0 <= float(rho) < 1.0:
            raise UserError(f"policies.correlated.rho must be in [0, 1), got {rho}")
        if float(scale) <= 0:
            raise UserError(f"policies.correlated.scale must be > 0, got {scale}")
        self.rho, self.scale = float(rho), float(scale)

    def reset(self, env, rng):
        super().reset(env, rng)
        self._u = np.clip(self.scale * rng.standard_normal(self.low.shape), -1.0, 1.0)

    def act(self, obs, info):
        eps = self.rng.standard_normal(self._u.shape)
        self._u = np.clip(self.rho * self._u + np.sqrt(1.0 - self.rho**2) * self.scale * eps, -1.0, 1.0)
        return self.to_action(self._u)

    def kwargs(self):
        return {"rho": self.rho, "scale": self.scale}


def env_repeat(env) -> int:
    """The env steps one step of ``env`` takes: the product of its ``ActionRepeat`` wrappers'."""
    from sfplan.envs.wrappers import ActionRepeat

    k = 1
    while isinstance(env, gym.Wrapper):
        k *= env.repeat if isinstance(env, ActionRepeat) else 1
        env = env.env
    return k


class GoalPolicy(CorrelatedPolicy):
    """Scripted goal reaching, then noise: repeat.

    Each segment asks the task for the actions that reach a freshly sampled goal from
    the current state (``env.unwrapped._goal_actions(rng)``, the same script the task
    uses to make its goal images), plays them, then plays ``noise_steps`` steps of
    ``correlated`` noise (``rho``, ``scale``). Needs an sfplan task (a ``GoalImageEnv``).
    A task may offer a script for collection instead, ``_collect_actions(rng, hold)``,
    whose actions are each held ``hold`` env steps (Pusher: one push of the cylinder); it
    is used under an action repeat (``hold`` = the repeat), where one-step scripts are refused.
    ``noise_episodes``: the share of episodes played as ``correlated`` noise throughout (drawn
    per episode from its rng), so the data also hold the untargeted motion a planner's
    candidates make.
    """

    name = "goal"

    def __init__(self, noise_steps: int = 10, rho: float = 0.9, scale: float = 0.5, noise_episodes: float = 0.0):
        super().__init__(rho=rho, scale=scale)
        if int(noise_steps) < 0:
            raise UserError(f"policies.goal.noise_steps must be >= 0, got {noise_steps}")
        if not 0.0 <= float(noise_episodes) <= 1.0:
            raise UserError(f"policies.goal.noise_episodes must be in [0, 1], got {noise_episodes}")
        self.noise_steps = int(noise_steps)
        self.noise_episodes = float(noise_episodes)

    def reset(self, env, rng):
        super().reset(env, rng)
        self._noise_only = self.noise_episodes > 0 and bool(rng.random() < self.noise_episodes)
        self._task = env.unwrapped
        self._hold = env_repeat(env)
        if callable(getattr(self._task, "_collect_actions", None)):
            self._script = lambda r: self._task._collect_actions(r, hold=self._hold)
        elif not callable(getattr(self._task, "_goal_actions", None)):
            raise UserError(f"policy=goal needs an sfplan task with scripted goal reaching (_goal_actions); "
                            f"{type(self._task).__name__} has none: use policy=correlated or policy=random")
        elif self._hold > 1:
            raise UserError(f"policy=goal under env.kwargs.action_repeat={self._hold}: "
                            f"{type(self._task).__name__}'s scripted actions are one per env step (it has no "
                            f"_collect_actions(rng, hold)); use policy=correlated, or collect without the repeat")
        else:
            self._script = self._task._goal_actions
        self._plan: list[np.ndarray] = []
        self._noise_left = 0

    def act(self, obs, info):
        if self._noise_only:
            return super().act(obs, info)
        if not self._plan and self._noise_left == 0:
            plan = np.asarray(self._script(self.rng), dtype=np.float64).reshape(-1, self.low.size)
            self._plan = [np.clip(a, self.low, self.high).astype(np.float32) for a in plan]
            self._noise_left = self.noise_steps
            if not self._plan and self._noise_left == 0:  # a task with nothing to do: noise
                self._noise_left = 1
        if self._plan:
            return self._plan.pop(0)
        self._noise_left -= 1
        return super().act(obs, info)

    def kwargs(self):
        return {"noise_steps": self.noise_steps, "rho": self.rho, "scale": self.scale,
                "noise_episodes": self.noise_episodes}


class ExplorePolicy(CorrelatedPolicy):
    """The task's own exploration routes, then noise: repeat.

    Each segment asks the task for a route through its layout
    (``env.unwrapped._explore_route(rng)``: waypoints (K, 2); ForkMaze: to the junction,
    then down a random arm into its room) and drives along it in closed loop
    (``env.unwrapped._drive_action(target, speed)``: the action toward a waypoint, or None
    once it is reached), at a speed drawn per route in [``min_speed``, 1] of the task's top
    speed, each action perturbed by ``correlated`` noise (``rho``, ``scale``); then
    ``noise_steps`` steps of that noise alone. A route that makes no headway for
    ``patience`` steps is dropped. Closed loop, so any action repeat drives it alike. It
    shows what uniform starts and random motion rarely do in a maze: whole passages from one
    place to another. Needs a task with routes; ``sfplan fit`` uses it where there is one.
    """

    name = "explore"

    def __init__(self, noise_steps: int = 10, min_speed: float = 0.5, patience: int = 40, rho: float = 0.9,
                 scale: float = 0.2):
        super().__init__(rho=rho, scale=scale)
        if int(noise_steps) < 0 or not 0.0 < float(min_speed) <= 1.0 or int(patience) < 1:
            raise UserError(f"policies.explore needs noise_steps >= 0, 0 < min_speed <= 1 and patience >= 1; got "
                            f"{noise_steps}, {min_speed}, {patience}")
        self.noise_steps, self.min_speed, self.patience = int(noise_steps), float(min_speed), int(patience)

    def reset(self, env, rng):
        super().reset(env, rng)
        self._task = env.unwrapped
        if not has_routes(self._task):
            raise UserError(f"policy=explore needs a task with exploration routes (_explore_route, _drive_action); "
                            f"{type(self._task).__name__} has none: use policy=correlated or policy=goal")
        self._route: list[np.ndarray] = []
        self._noise_left = 0

    def _new_route(self) -> None:
        self._route = [np.asarray(w, np.float64) for w in self._task._explore_route(self.rng)]
        self._speed = float(self.rng.uniform(self.min_speed, 1.0))
        self._stall, self._best = 0, np.inf
        self._noise_left = self.noise_steps

    def act(self, obs, info):
        noise = super().act(obs, info)  # advances the noise every step
        if not self._route and self._noise_left == 0:
            self._new_route()
        while self._route:
            a = self._task._drive_action(self._route[0], self._speed)
            if a is None:  # reached: on to the next waypoint
                self._route.pop(0)
                self._stall, self._best = 0, np.inf
                continue
            gap = float(np.linalg.norm(self._route[0] - self._task.agent_xy()))
            self._stall = 0 if gap < self._best - 1e-3 else self._stall + 1
            self._best = min(self._best, gap)
            if self._stall >= self.patience:  # stuck: give the route up
                self._route = []
                break
            u = (np.asarray(a, np.float64) - self.low) / (self.high - self.low) * 2.0 - 1.0  # -> [-1, 1] units
            return self.to_action(u + self._u)
        if self._noise_left > 0:
            self._noise_left -= 1
        return noise

    def kwargs(self):
        return {"noise_steps": self.noise_steps, "min_speed": self.min_speed, "patience": self.patience,
                "rho": self.rho, "scale": self.scale}


def has_routes(task) -> bool:
    """Whether a task (an env's ``unwrapped``) offers exploration routes (``policy=explore``)."""
    return all(callable(getattr(task, m, None)) for m in ("_explore_route", "_drive_action", "agent_xy"))


class RetracePolicy(CorrelatedPolicy):
    """Out for ``out_steps`` steps, back along the same path for ``out_steps`` steps, repeat.

    Args:
        out_steps: length n of each leg; frames 0..n go out, frames n..2n come back, and
            return frame ``n + j`` is taken at (``track``) or near (``negate``) the place
            of outbound frame ``n - j``.
        mode: ``track`` | ``negate`` | ``auto`` (see the module docstring).
        rho, scale: the ``correlated`` noise used outbound on tasks without a wanderer.
    """

    name = "retrace"
    MODES = ("auto", "track", "negate")

    def __init__(self, out_steps: int = 32, mode: str = "auto", rho: float = 0.9, scale: float = 0.5):
        super().__init__(rho=rho, scale=scale)
        if int(out_steps) < 1:
            raise UserError(f"policies.retrace.out_steps must be >= 1, got {out_steps}")
        if mode not in self.MODES:
            raise UserError(f"policies.retrace.mode must be one of {self.MODES}, got {mode!r}")
        self.out_steps, self.mode = int(out_steps), str(mode)

    def reset(self, env, rng):
        super().reset(env, rng)
        task = env.unwrapped
        can_track = callable(getattr(task, "track_action", None)) and callable(getattr(task, "agent_xy", None))
        if self.mode == "track" and not can_track:
            raise UserError(f"policies.retrace.mode=track needs a task with track_action/agent_xy (e.g. "
                            f"sfplan/MemoryMaze-v0); {type(task).__name__} has none: use mode=negate")
        self._task = task
        self._track = can_track and self.mode != "negate"
        make = getattr(task, "make_wanderer", None)
        self._wanderer = make(rng) if callable(make) else None
        self._t = 0
        self._out_actions: list[np.ndarray] = []
        self._out_xy: list[np.ndarray] = []

    def act(self, obs, info):
        n = self.out_steps
        k = self._t % (2 * n)
        if k == 0:  # a new leg starts here
            self._out_actions, self._out_xy = [], []
            if self._wanderer is not None:
                self._wanderer.heading = float(self.rng.uniform(-np.pi, np.pi))
        self._t += 1
        if k < n:  # outbound
            if self._track:
                self._out_xy.append(self._task.agent_xy())
            if self._wanderer is not None:
                a = self.to_action(self._wanderer.act(self._task.agent_xy()))
            else:
                a = super().act(obs, info)
            self._out_actions.append(a)
            return a
        j = k - n + 1  # return step j -> the place of outbound frame n - j
        if self._track:
            u = np.asarray(self._task.track_action(self._out_xy[n - j]), np.float64)
            return np.clip(u, self.low, self.high).astype(np.float32)
        return np.clip(-self._out_actions[n - j], self.low, self.high).astype(np.float32)

    def kwargs(self):
        return {"out_steps": self.out_steps, "mode": self.mode, "rho": self.rho, "scale": self.scale}


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (RandomPolicy, CorrelatedPolicy, GoalPolicy, ExplorePolicy,
                                                         RetracePolicy)}


def make_policy(name: str, **kwargs) -> Policy:
    """``make_policy("correlated", rho=0.9, scale=0.5)``; a clear error for unknown names/keys."""
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}: use policy={' | policy='.join(POLICIES)}")
    try:
        return POLICIES[name](**kwargs)
    except TypeError as e:
        raise UserError(f"bad parameters for policy={name}: {e}. "
                        f"Set them as policies.{name}.<key>=<value>") from None
