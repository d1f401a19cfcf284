"""The MPC loop: plan, execute a chunk, (write memory,) re-plan, under a fixed step budget.

The runner owns everything the planner must not touch: the env, timing, frames and logs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from sfplan.planners.base import Planner
from sfplan.planners.common import WARM_FILLS, shift_plan
from sfplan.planners.subgoals import SubgoalTracker, cost_distance
from sfplan.errors import UserError
from sfplan.world_model.base import MemoryWorldModel, WorldModel, WorldState

#: success protocols (``sfplan eval success=...``): ``first`` counts the first step inside the
#: task's success radius (DINO-WM's and stable-worldmodel's count); ``hold`` needs ``hold_steps``
#: consecutive steps inside it, or being inside it when the episode ends.
SUCCESS_PROTOCOLS = ("first", "hold")


def check_protocol(success: str, hold_steps: int) -> None:
    if success not in SUCCESS_PROTOCOLS:
        raise UserError(f"success={success!r}: use one of {SUCCESS_PROTOCOLS} (first: the first step within the "
                        "success radius; hold: hold_steps consecutive steps within it, or within it at the end)")
    if int(hold_steps) < 1:
        raise UserError(f"hold_steps={hold_steps}: use a positive number of consecutive steps (e.g. hold_steps=10)")


def protocol_outcomes(in_goal: list[bool], hold_steps: int, ended: bool) -> dict[str, dict]:
    """Each protocol's verdict on an episode's per-step success flags (``in_goal[0]``: the reset
    state, ``in_goal[t]``: after t env steps): ``{name: {"success", "steps_to_success"}}``.
    ``steps_to_success`` is the step the object arrived (for ``hold``, the start of the run
    that held), None without success. ``ended``: the episode is over (budget used up or the env
    ended it), so being inside the radius at its last step counts for ``hold``."""
    flags = [bool(f) for f in in_goal]
    first = flags.index(True) if True in flags else None
    held, start = None, None
    for t, f in enumerate(flags):
        start = (t if start is None else start) if f else None
        if start is not None and t - start + 1 >= hold_steps:
            held = start
            break
    if held is None and ended and flags and flags[-1]:
        held = start
    return {"first": {"success": first is not None, "steps_to_success": first},
            "hold": {"success": held is not None, "steps_to_success": held}}


def _decided(in_goal: list[bool], hold_steps: int) -> bool:
    """Both protocols have their verdict: the object has held for ``hold_steps`` steps."""
    return len(in_goal) >= hold_steps and all(in_goal[-hold_steps:])


@dataclass
class EpisodeResult:
    seed: int
    success: bool  # under the selected protocol (``protocol``)
    steps: int  # env steps played: until the object held for hold_steps steps, else the budget
    final_distance: float
    min_distance: float
    plan_times: list[float] = field(default_factory=list)  # seconds per planning decision
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 real frames
    goal: np.ndarray | None = None  # (H, W, 3) uint8
    memory_write_times: list[float] = field(default_factory=list)  # seconds per Temp-LoRA write (world model's)
    waypoints: int = 0  # waypoint images the goal came as (0: the goal image alone)
    waypoints_passed: int = 0  # waypoints the tracker moved past (the last, the goal, is never passed)
    waypoint_images: np.ndarray | None = None  # (S, H, W, 3) uint8 when recorded with waypoints
    frame_subgoals: list[int] = field(default_factory=list)  # per recorded frame: the waypoint planned for
    protocol: str = "first"  # the success protocol ``success`` is counted under
    hold_steps: int = 1
    outcomes: dict[str, dict] = field(default_factory=dict)  # every protocol's verdict (``protocol_outcomes``)
    in_goal: list[bool] = field(default_factory=list)  # per step (0: reset): inside the success radius
    ended: bool = False  # the budget ran out or the env ended the episode (else it stopped once the object held)

    def summary(self) -> dict:
        return {
            "seed": self.seed,
            "success": self.success,
            "steps": self.steps,
            "outcomes": self.outcomes,
            "final_distance": self.final_distance,
            "min_distance": self.min_distance,
            "decisions": len(self.plan_times),
            "plan_time_mean_s": float(np.mean(self.plan_times)) if self.plan_times else 0.0,
            "memory_write_mean_s": float(np.mean(self.memory_write_times)) if self.memory_write_times else 0.0,
            "memory_writes": len(self.memory_write_times),
            "memory_write_total_s": float(np.sum(self.memory_write_times)),
            **({"waypoints": self.waypoints, "waypoints_passed": self.waypoints_passed} if self.waypoints else {}),
        }


@dataclass
class _Goal:
    """An episode's goal as the planner is given it."""

    image: np.ndarray  # (H, W, 3) uint8: the final goal
    features: torch.Tensor | None  # (1, C, h, w), or waypoints (1, S, C, h, w); None without a world model
    tracker: SubgoalTracker | None = None  # waypoint progress, with waypoints
    waypoint_images: np.ndarray | None = None  # (S, H, W, 3) uint8, with waypoints

    def target(self, state: WorldState | None) -> torch.Tensor | None:
        """The (sub)goal to plan for from ``state``: (1, C, h, w)."""
        return self.tracker.current(state.features, self.features) if self.tracker is not None else self.features


@dataclass
class _EpisodeLog:
    """What the runner records while an episode runs (the planner sees none of it)."""

    record: bool
    hold_steps: int
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8, when recording
    subgoals: list[int] = field(default_factory=list)  # waypoint index per recorded frame
    plan_times: list[float] = field(default_factory=list)
    write_times: list[float] = field(default_factory=list)
    dist: list[float] = field(default_factory=list)  # per step (0: reset)
    in_goal: list[bool] = field(default_factory=list)  # per step (0: reset)
    steps: int = 0
    done: bool = False  # the object held for hold_steps steps: every protocol has its verdict
    ended: bool = False  # the env ended the episode (or, once over, the budget ran out)

    def observe(self, info: dict) -> None:
        """The info of the reset or of a step."""
        self.dist.append(info["distance"])
        self.in_goal.append(bool(info["is_success"]))
        self.done = _decided(self.in_goal, self.hold_steps)

    def add_chunk(self, chunk_frames: list[np.ndarray], tracker: SubgoalTracker | None) -> None:
        """An executed chunk's frames, each tagged with the waypoint planned for."""
        if self.record:
            self.frames.extend(chunk_frames)
            if tracker is not None:
                self.subgoals.extend([int(tracker.index[0])] * (len(self.frames) - len(self.subgoals)))

    def result(self, seed: int, success: str, goal: _Goal) -> EpisodeResult:
        outcomes = protocol_outcomes(self.in_goal, self.hold_steps, ended=self.ended)
        tracker = goal.tracker
        return EpisodeResult(
            seed=seed, success=outcomes[success]["success"], steps=self.steps, final_distance=float(self.dist[-1]),
            min_distance=float(np.min(self.dist)), plan_times=self.plan_times, frames=self.frames, goal=goal.image,
            memory_write_times=self.write_times,
            waypoints=int(goal.features.shape[1]) if tracker is not None else 0,
            waypoints_passed=int(tracker.index.max()) if tracker is not None and tracker.index is not None else 0,
            waypoint_images=goal.waypoint_images if self.record else None, frame_subgoals=self.subgoals,
            protocol=success, hold_steps=int(self.hold_steps), outcomes=outcomes, in_goal=self.in_goal,
            ended=self.ended)


def run_episode(
    env: gym.Env,
    planner: Planner,
    world_model: WorldModel | None,
    seed: int,
    budget: int,
    execute: int,
    record: bool = True,
    waypoints: int = 0,
    subgoal_ratio: float = 0.25,
    subgoal_threshold: float | str | None = None,
    warm_fill: str = "last",
    success: str = "first",
    hold_steps: int = 10,
) -> EpisodeResult:
    """One MPC episode. ``execute`` actions of each plan run before re-planning; the
    episode stops once the object has stayed ``hold_steps`` consecutive steps within the
    success radius, or when ``budget`` env steps are used. Every protocol's verdict is read
    off that one run (``protocol_outcomes``: the steps up to the first success are the same
    whichever protocol is counted); ``success`` names the one the result's ``success`` counts.
    ``waypoints``, ``subgoal_ratio``, ``subgoal_threshold``: ``_reset``; ``warm_fill``:
    ``_warm_start``; a world model's memory: ``_episode_memory``."""
    needs_model = getattr(planner, "needs_world_model", True)
    obs, info, goal = _reset(env, planner, world_model, seed, waypoints if needs_model else 0, subgoal_ratio,
                             subgoal_threshold)
    log = _EpisodeLog(record, hold_steps, frames=[obs["pixels"]] if record else [])
    log.observe(info)
    memory = _episode_memory(world_model)
    history = [obs["pixels"]]
    if "history_frames" in info:  # the episode starts with a past (e.g. MemoryMaze retrace)
        history = _remember_past(info, memory, log.write_times)
    warm = None
    while log.steps < budget and not log.done:
        t0 = time.perf_counter()
        state = world_model.encode(np.stack(history)[None], sim_state=info["state"][None]) if needs_model else None
        result = planner.plan(state, goal.target(state), warm_start=warm)
        log.plan_times.append(time.perf_counter() - t0)
        chunk = result.actions[0, : min(execute, budget - log.steps)].detach().cpu().numpy()  # (k, A)
        before = obs["pixels"]  # the frame the chunk starts from: the memory's clean context
        obs, info, chunk_frames = _execute(env, chunk, log, goal, world_model)
        log.add_chunk(chunk_frames, goal.tracker)
        history = (history + chunk_frames)[-getattr(world_model, "context_frames", 1):]
        if memory is not None and chunk_frames:
            _remember_chunk(memory, before, chunk_frames, chunk, log.write_times)
        if log.ended:
            break
        if callable(getattr(planner, "advance", None)):
            planner.advance(len(chunk_frames))  # CEM's keep_elites shifts its elites by these steps
        warm = _warm_start(result.actions, len(chunk_frames), warm_fill, env)
    log.ended = log.ended or log.steps >= budget
    return log.result(seed, success, goal)


def _reset(env: gym.Env, planner: Planner, world_model: WorldModel | None, seed: int, waypoints: int,
           subgoal_ratio: float, subgoal_threshold: float | str | None) -> tuple[dict, dict, _Goal]:
    """Reset the env and the planner for an episode -> (obs, info, the goal in the world model's
    features; none without a world model: the random baseline).

    ``waypoints > 0``: the env is reset with ``options={"waypoints": waypoints}`` and
    returns subgoal images (``info["goal_waypoints"]``, the goal last); each decision
    plans toward the current one, moving on once the planner's cost from the observation
    to it is below ``subgoal_ratio`` x the cost between it and the previous waypoint, or
    below ``subgoal_threshold`` (absolute, in the cost's units; ``"auto"``: ``subgoal_bound``;
    None: not used) (``sfplan.planners.SubgoalTracker``, ``cost_distance``). The tracker sees
    every executed frame (``_execute``). Success is the final goal's."""
    obs, info = env.reset(seed=seed, options={"waypoints": int(waypoints)} if waypoints > 0 else None)
    if callable(getattr(planner, "start_episode", None)):
        planner.start_episode(seed)  # per-episode noise: an episode reproduces on its own
    if waypoints > 0 and "goal_waypoints" not in info:
        raise UserError(f"waypoints={waypoints}: {env.spec.id if env.spec else type(env).__name__} returned no "
                        "info['goal_waypoints'] from reset(options={'waypoints': n}); use an sfplan task (or make "
                        "your env return subgoal images there), or set waypoints=0")
    image = obs["desired_goal"]
    if not getattr(planner, "needs_world_model", True):
        return obs, info, _Goal(image, None)
    if waypoints <= 0:
        return obs, info, _Goal(image, world_model.encode(image[None, None]).features)  # (1, C, h, w)
    wp = np.asarray(info["goal_waypoints"])  # (S, H, W, 3)
    cost = getattr(planner, "cost", None)
    tracker = SubgoalTracker(ratio=subgoal_ratio, threshold=subgoal_bound(env, cost, subgoal_threshold),
                             distance=cost_distance(cost))
    return obs, info, _Goal(image, world_model.encode(wp[:, None]).features[None], tracker, wp)  # (1, S, C, h, w)


def _execute(env: gym.Env, chunk: np.ndarray, log: _EpisodeLog, goal: _Goal,
             world_model: WorldModel | None) -> tuple[dict, dict, list[np.ndarray]]:
    """Step the env through a planned chunk (k, A) -> (last obs, its info, the frames seen).
    Stops early once the object has held (``log.done``), the env ends the episode
    (``log.ended``), or a waypoint is reached mid-chunk: the next plan then aims past it (with
    an action repeat, a chunk can carry the robot through a waypoint and beyond between two
    decisions)."""
    frames = []
    for a in chunk:
        obs, _, terminated, truncated, info = env.step(a)
        log.steps += 1
        frames.append(obs["pixels"])
        log.observe(info)
        if log.done:
            break
        if terminated or truncated:
            log.ended = True
            break
        if goal.tracker is not None and _passes_waypoint(goal.tracker, world_model, obs["pixels"], goal.features):
            break  # re-plan for the next waypoint now: a fast robot would overshoot it otherwise
    return obs, info, frames


def _warm_start(actions: torch.Tensor, executed: int, fill: str, env: gym.Env) -> torch.Tensor:
    """The next plan's warm start: the plan (B, H, A) less its ``executed`` steps, padded by
    ``fill`` (``shift_plan``): ``last`` repeats the plan's last action, ``mid`` appends the
    middle of the action range (zero torque for the MuJoCo arms), as iCEM does. With a terminal-
    weighted cost the padding decides whether the previous plan survives: on Reacher,
    repeating a braking torque for ``execute`` steps flings the arm away at the horizon's
    end, the previous plan loses to a fresh one that arrives at the *new* horizon's end,
    and the arm never gets there (``benchmarks/RESULTS.md``)."""
    return shift_plan(actions, executed, fill=fill, action_low=env.action_space.low,
                      action_high=env.action_space.high)


def _episode_memory(world_model: WorldModel | None) -> MemoryWorldModel | None:
    """A world model that carries a memory (``MemoryWorldModel`` with a ``Memory`` attached, e.g.
    Temp-LoRA) gets a fresh one for the episode and is returned: the runner writes each executed
    chunk into it (``_remember_chunk``), and an episode's past (``_remember_past``): the real frames
    are all an MPC episode has, whatever ``write_mode`` a generated rollout would use. Else None:
    other world models (the oracle) are untouched."""
    if not isinstance(world_model, MemoryWorldModel) or world_model.memory is None:
        return None
    world_model.reset_memory()
    return world_model


def _remember_chunk(world_model: MemoryWorldModel, before: np.ndarray, chunk_frames: list[np.ndarray],
                    chunk: np.ndarray, write_times: list[float]) -> None:
    """Write an executed chunk's real frames into the memory, the frame before them in front as
    clean context, with the actions (k, A) that led to them."""
    t0 = time.perf_counter()
    world_model.remember(np.stack([before, *chunk_frames]), num_context=1,  # (1 + k, H, W, 3)
                         actions=np.asarray(chunk[: len(chunk_frames)], np.float32))  # (k, A)
    write_times.append(time.perf_counter() - t0)


def subgoal_bound(env: gym.Env, cost, setting: float | str | None) -> float | None:
    """The tracker's absolute bound: ``setting`` as a number, or with ``"auto"`` the task's
    success radius (``env.unwrapped.success_threshold``) where the cost measures the task's own
    distance (``cost.task_distance_scale``: cost = distance / scale, as ``cost=probe``), so a
    waypoint is reached as the goal is; None where the cost is an image distance (no common unit).
    Measured on PointMaze UMaze far goals with 4 waypoints (oracle, cost=probe, tuning seeds):
    21/25 with the radius against 8/25 with the ratio rule alone, whose bound (1/4 of the spacing
    between waypoints, ~0.2 m) a ball moving at full speed keeps overshooting."""
    setting = check_subgoal_threshold(setting)
    if setting == "auto":
        scale = getattr(cost, "task_distance_scale", None)
        radius = float(getattr(env.unwrapped, "success_threshold", 0.0) or 0.0)
        return radius / float(scale) if scale and radius > 0 else None
    return setting


def check_subgoal_threshold(setting: float | str | None) -> float | str | None:
    """``setting`` as None, ``"auto"`` or a float; a clear error for anything else."""
    if setting is None or (isinstance(setting, str) and setting.lower() in ("none", "null")):
        return None
    if setting == "auto":
        return "auto"
    try:
        return float(setting)
    except (TypeError, ValueError):
        raise UserError(f"subgoal_threshold={setting!r}: use a number (the cost's units), auto or null") from None


def _passes_waypoint(tracker: SubgoalTracker, world_model, frame: np.ndarray, waypoints) -> bool:
    """Show the tracker one executed frame (H, W, 3); True when it moved on to a later waypoint."""
    before = int(tracker.index[0])
    tracker.update(world_model.encode(frame[None, None]).features, waypoints)
    return int(tracker.index[0]) > before


def _remember_past(info: dict, world_model: MemoryWorldModel | None, write_times: list[float]) -> list[np.ndarray]:
    """An episode's past (``info["history_frames"]`` (T+1, H, W, 3), the current frame last,
    and ``info["history_actions"]`` (T, A)) goes into the world model's memory, when given, with
    the first frame as clean context; returns it as the context frames."""
    past = np.asarray(info["history_frames"])
    past_actions = np.asarray(info["history_actions"], np.float32)
    if world_model is not None:
        t0 = time.perf_counter()
        world_model.remember(past, num_context=1, actions=past_actions)
        write_times.append(time.perf_counter() - t0)
    return list(past)


def plan_horizon_check(planner: Planner, execute: int) -> None:
    if execute > planner.horizon:
        raise UserError(
            f"execute={execute} is longer than the planner horizon={planner.horizon}: "
            "set execute <= planner.horizon (e.g. `execute=5 planner.horizon=10`)."
        )


def evaluate(env: gym.Env, planner: Planner, world_model: WorldModel | None, seeds: list[int], budget: int,
             execute: int, record: bool = True, progress: bool = True, waypoints: int = 0,
             subgoal_ratio: float = 0.25, subgoal_threshold: float | str | None = None, warm_fill: str = "last",
             success: str = "first", hold_steps: int = 10):
    """Run one episode per seed on ``env`` (closed at the end); yields EpisodeResult as each finishes."""
    from tqdm.auto import tqdm

    try:
        plan_horizon_check(planner, execute)
        check_subgoal_threshold(subgoal_threshold)  # before any episode runs
        check_protocol(success, hold_steps)
        if warm_fill not in WARM_FILLS:
            raise UserError(f"warm_fill={warm_fill!r}: use one of {WARM_FILLS} (how the shifted plan that warm-starts "
                            "the next decision is padded)")
        bar = tqdm(seeds, desc="episodes", disable=not progress, dynamic_ncols=True)
        n_success = 0
        for i, seed in enumerate(bar):
            res = run_episode(env, planner, world_model, seed, budget, execute, record=record, waypoints=waypoints,
                              subgoal_ratio=subgoal_ratio, subgoal_threshold=subgoal_threshold, warm_fill=warm_fill,
                              success=success, hold_steps=hold_steps)
            n_success += res.success
            bar.set_postfix(success=f"{n_success}/{i + 1}", steps=res.steps)
            yield res
    finally:
        env.close()
