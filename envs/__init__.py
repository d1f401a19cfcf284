"""Goal-image Gymnasium tasks (installed as ``sfplan.envs``).

Importing this package registers the task ids with Gymnasium::

    import gymnasium as gym
    import sfplan.envs  # registers sfplan/*

    env = gym.make("sfplan/Reacher-v0", image_size=64, goal="near")
    obs, info = env.reset(seed=0)   # obs["pixels"], obs["desired_goal"]: (64, 64, 3) uint8

``make_env(spec, **kwargs)`` makes any env sfplan can plan on: an sfplan task id, a Gymnasium
id the user's package registers, or ``module:callable`` returning a goal-image env
(``sfplan.envs.spec``).

Every task takes ``image_size`` (side of the square frames) and ``goal`` (``"near"``:
a goal 25-50 env steps from the start; ``"far"``: long horizon). ``TASKS`` maps each id
to a one-line description with its success criterion (``sfplan info`` prints it).
"""
from __future__ import annotations

import os
import sys

# Headless Linux: render through EGL unless the user chose a backend (must precede `import mujoco`).
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym
from gymnasium.envs.registration import register, registry

from sfplan.envs.base import GoalImageEnv, MujocoGoalEnv
from sfplan.envs.wrappers import GoalImageWrapper

#: id -> one-line description (success criterion included).
TASKS: dict[str, str] = {
    "sfplan/Reacher-v0": "Reacher-v5 2-link arm, top-down; success: fingertip within 0.02 m of the goal fingertip.",
    "sfplan/Pusher-v0": "Pusher-v5 7-DoF arm pushing a cylinder; success: cylinder within 0.05 m of the goal cylinder (x, y).",
    "sfplan/PointMazeUMaze-v0": "PointMaze UMaze (5x5 cells), top-down; success: ball within 0.45 m of the goal ball position.",
    "sfplan/PointMazeMedium-v0": "PointMaze Medium (8x8 cells), top-down; success: ball within 0.45 m of the goal ball position.",
    "sfplan/MemoryMaze-v0": "point mass in an 8 m arena painted anew each episode, seen by a camera that follows it "
    "(3 m view; the memory benchmark's task); success: agent within 0.25 m of the goal position.",
    "sfplan/ForkMaze-v0": "point mass at the junction of a plus-shaped maze whose four rooms are painted anew each "
    "episode, after a leg from the goal room (recall: planning needs memory); success: agent within 0.5 m of the goal.",
}

_REGISTRATIONS = [
    # (id, entry point, max_episode_steps, fixed kwargs)
    ("sfplan/Reacher-v0", "sfplan.envs.reacher:ReacherGoalEnv", 200, {}),
    ("sfplan/Pusher-v0", "sfplan.envs.pusher:PusherGoalEnv", 200, {}),
    # The scripted far goals take ~215 (UMaze) / ~360 (Medium) steps on average.
    ("sfplan/PointMazeUMaze-v0", "sfplan.envs.pointmaze:PointMazeGoalEnv", 400, {"maze": "UMaze"}),
    ("sfplan/PointMazeMedium-v0", "sfplan.envs.pointmaze:PointMazeGoalEnv", 700, {"maze": "Medium"}),
    ("sfplan/MemoryMaze-v0", "sfplan.envs.memory_maze:MemoryMazeEnv", 400, {}),
    ("sfplan/ForkMaze-v0", "sfplan.envs.fork_maze:ForkMazeEnv", 200, {"goal": "recall"}),
]

# ---- robosuite tasks (sfplan/Lift-v0, sfplan/Stack-v0) ------------------------------
# envs/robosuite_tasks.py. Their entry points are strings, so robosuite (an optional
# dependency) is imported only on gym.make. The scripted far goals take ~70 (Lift) and
# ~100 (Stack) steps.
TASKS.update({
    "sfplan/Lift-v0": "robosuite Lift, Panda picks up a cube (agentview camera, 4-D delta-xyz + gripper); "
    "success: near, gripper and cube within 0.02 m of the goal's; far, robosuite's _check_success (cube lifted).",
    "sfplan/Stack-v0": "robosuite Stack, Panda puts cubeA on cubeB (agentview camera, 4-D delta-xyz + gripper); "
    "success: near, gripper and both cubes within 0.02 m of the goal's; far, robosuite's _check_success (stacked).",
})
_REGISTRATIONS += [
    ("sfplan/Lift-v0", "sfplan.envs.robosuite_tasks:LiftGoalEnv", 200, {}),
    ("sfplan/Stack-v0", "sfplan.envs.robosuite_tasks:StackGoalEnv", 300, {}),
]
# ---- end robosuite tasks -------------------------------------------------------------


def _register_all() -> None:
    for env_id, entry_point, max_steps, kwargs in _REGISTRATIONS:
        if env_id in registry:  # re-import (e.g. importlib.reload) keeps the first one
            continue
        register(
            id=env_id,
            entry_point=entry_point,
            max_episode_steps=max_steps,
            kwargs={"image_size": 64, "goal": "near", **kwargs},
        )


_register_all()

from sfplan.envs.spec import check_goal_image_env, make_env  # noqa: E402  (after the registrations)

__all__ = ["GoalImageEnv", "GoalImageWrapper", "MujocoGoalEnv", "TASKS", "make_env", "check_goal_image_env"]
