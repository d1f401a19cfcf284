"""The MPC loop: plan, execute a chunk, (write memory,) re-plan, under a fixed step budget.

The runner owns everything the planner must not touch: the env, timing, frames and logs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from sfplan.planners.base import Planner
from sfplan.planners.common import WARM_FILLS, shift_plan
from sfplan.planners.subgoals import SubgoalTracker, cost_distance
from sfplan.errors import UserError
from sfplan.world_model.base import MemoryWorldModel, WorldModel

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
            **({"waypoints": self.waypoints, "waypoints_passed": self.waypoints_passed} if self.waypoints else {}),
        }


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

    ``waypoints > 0``: the env is reset with ``options={"waypoints": waypoints}`` and
    returns subgoal images (``info["goal_waypoints"]``, the goal last); each decision
    plans toward the current one, moving on once the planner's cost from the observation
    to it is below ``subgoal_ratio`` x the cost between it and the previous waypoint, or
    below ``subgoal_threshold`` (absolute, in the cost's units; ``"auto"``: ``subgoal_bound``;
    None: not used)
    (``sfplan.planners.SubgoalTracker``, ``cost_distance``). The tracker sees every executed
    frame: a waypoint reached mid-chunk ends the chunk and the next plan aims past it (with
    an action repeat, a chunk can carry the robot through a waypoint and beyond between two
    decisions). Success is the final goal's.

    ``warm_fill`` pads the warm start of the next plan (the executed steps dropped, see
    ``shift_plan``): ``last`` repeats the plan's last action, ``mid`` appends the middle of
    the action range (zero torque for the MuJoCo arms), as iCEM does. With a terminal-
    weighted cost the padding decides whether the previous plan survives: on Reacher,
    repeating a braking torque for ``execute`` steps flings the arm away at the horizon's
    end, the previous plan loses to a fresh one that arrives at the *new* horizon's end,
    and the arm never gets there (``benchmarks/RESULTS.md``).

    An env whose episode starts with a past (``info["history_frames"]`` and
    ``info["history_actions"]`` on reset, e.g. MemoryMaze ``goal=retrace``) has it used as
    the world model's context and written into the memory before the first decision.

    A world model that carries a memory (``MemoryWorldModel`` with a ``Memory`` attached, e.g.
    Temp-LoRA) gets ``reset_memory()`` at the start and, when the memory's ``write_mode`` is
    ``real``, ``remember(frames)`` after each executed chunk, with the real frame before the
    chunk in front as clean context. Other world models (the oracle) are untouched.
    """
    needs_model = getattr(planner, "needs_world_model", True)
    use_waypoints = waypoints > 0 and needs_model  # the random baseline has no goal to follow
    obs, info = env.reset(seed=seed, options={"waypoints": int(waypoints)} if use_waypoints else None)
    if callable(getattr(planner, "start_episode", None)):
        planner.start_episode(seed)  # per-episode noise: an episode reproduces on its own
    if use_waypoints and "goal_waypoints" not in info:
        raise UserError(f"waypoints={waypoints}: {env.spec.id if env.spec else type(env).__name__} returned no "
                        "info['goal_waypoints'] from reset(options={'waypoints': n}); use an sfplan task (or make "
                        "your env return subgoal images there), or set waypoints=0")
    goal_img = obs["desired_goal"]
    goal = world_model.encode(goal_img[None, None]).features if needs_model else None  # (1, C, h, w)
    tracker = None
    if use_waypoints:
        wp = np.asarray(info["goal_waypoints"])  # (S, H, W, 3)
        goal = world_model.encode(wp[:, None]).features[None]  # (1, S, C, h, w)
        cost = getattr(planner, "cost", None)
        tracker = SubgoalTracker(ratio=subgoal_ratio, threshold=subgoal_bound(env, cost, subgoal_threshold),
                                 distance=cost_distance(cost))
    remembering = isinstance(world_model, MemoryWorldModel) and world_model.memory is not None
    if remembering:
        world_model.reset_memory()  # a fresh memory each episode
    write_real = remembering and world_model.memory.write_mode == "real"
    frames = [obs["pixels"]] if record else []
    subgoals: list[int] = []  # waypoint index per recorded frame (GIFs)
    plan_times: list[float] = []
    write_times: list[float] = []
    history = [obs["pixels"]]
    if "history_frames" in info:  # the episode starts with a past (e.g. MemoryMaze retrace)
        history = _remember_past(info, world_model if write_real else None, write_times)
    dist = [info["distance"]]
    in_goal = [bool(info["is_success"])]
    warm = None
    steps, done, ended = 0, _decided(in_goal, hold_steps), False
    while steps < budget and not done:
        t0 = time.perf_counter()
        state = world_model.encode(np.stack(history)[None], sim_state=info["state"][None]) if needs_model else None
        target = tracker.current(state.features, goal) if tracker is not None else goal  # (1, C, h, w)
        result = planner.plan(state, target, warm_start=warm)
        plan_times.append(time.perf_counter() - t0)
        chunk = result.actions[0, : min(execute, budget - steps)].detach().cpu().numpy()  # (k, A)
        before = obs["pixels"]  # the frame the chunk starts from: the memory's clean context
        chunk_frames = []
        for a in chunk:
            obs, _, terminated, truncated, info = env.step(a)
            steps += 1
            chunk_frames.append(obs["pixels"])
            dist.append(info["distance"])
            in_goal.append(bool(info["is_success"]))
            if _decided(in_goal, hold_steps):
                done = True
                break
            if terminated or truncated:
                ended = True
                break
            if tracker is not None and _passes_waypoint(tracker, world_model, obs["pixels"], goal):
                break  # re-plan for the next waypoint now: a fast robot would overshoot it otherwise
        if record:
            frames.extend(chunk_frames)
            if tracker is not None:
                sub = int(tracker.index[0])
                subgoals.extend([sub] * (len(frames) - len(subgoals)))
        history = (history + chunk_frames)[-getattr(world_model, "context_frames", 1):]
        if write_real and chunk_frames:
            t0 = time.perf_counter()
            world_model.remember(np.stack([before, *chunk_frames]), num_context=1,  # (1 + k, H, W, 3)
                                 actions=np.asarray(chunk[: len(chunk_frames)], np.float32))  # (k, A)
            write_times.append(time.perf_counter() - t0)
        if ended:
            break
        warm = shift_plan(result.actions, len(chunk_frames), fill=warm_fill,
                          action_low=env.action_space.low, action_high=env.action_space.high)
    ended = ended or steps >= budget
    outcomes = protocol_outcomes(in_goal, hold_steps, ended=ended)
    return EpisodeResult(
        seed=seed,
        success=outcomes[success]["success"],
        steps=steps,
        final_distance=float(dist[-1]),
        min_distance=float(np.min(dist)),
        plan_times=plan_times,
        frames=frames,
        goal=goal_img,
        memory_write_times=write_times,
        waypoints=int(goal.shape[1]) if tracker is not None else 0,
        waypoints_passed=int(tracker.index.max()) if tracker is not None and tracker.index is not None else 0,
        waypoint_images=wp if tracker is not None and record else None,
        frame_subgoals=subgoals,
        protocol=success,
        hold_steps=int(hold_steps),
        outcomes=outcomes,
        in_goal=in_goal,
        ended=ended,
    )


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
