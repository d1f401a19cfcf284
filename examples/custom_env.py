"""Plug your own Gymnasium env into sfplan: wrap it as a goal-image task, then plan toward
the goal with CEM and the oracle world model (which clones the MuJoCo state).

    python examples/custom_env.py
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from sfplan.envs import GoalImageWrapper  # noqa: E402
from sfplan.planners import CEMPlanner, MultiScaleCost, shift_plan  # noqa: E402
from sfplan.world_model.oracle import OracleWorldModel  # noqa: E402


def goal_fn(env, rng):
    """Drive the env from its start to a goal state; return what success is measured on."""
    for _ in range(30):
        env.step(rng.uniform(-1, 1, 2))
    return env.unwrapped.get_body_com("fingertip")[:2].copy()


def success_fn(env, goal):
    """Read off simulator state: a distance (success below `success_threshold`)."""
    return float(np.linalg.norm(env.unwrapped.get_body_com("fingertip")[:2] - goal))


def make_task():
    base = gym.make("Reacher-v5", render_mode="rgb_array", width=64, height=64)
    return GoalImageWrapper(base, goal_fn, success_fn, image_size=64, success_threshold=0.02)


if __name__ == "__main__":
    env = make_task()
    world_model = OracleWorldModel(make_env=make_task, device="cpu")
    planner = CEMPlanner(world_model, MultiScaleCost(reduce="mean"), env.action_space.low, env.action_space.high,
                         horizon=10, num_samples=64, iterations=4)
    obs, info = env.reset(seed=0)
    goal = world_model.encode(obs["desired_goal"][None, None]).features  # (1, 3, 64, 64)
    warm = None
    for step in range(0, 50, 5):
        state = world_model.encode(obs["pixels"][None, None], sim_state=info["state"][None])
        plan = planner.plan(state, goal, warm_start=warm)  # plan.actions: (1, 10, 2)
        for a in plan.actions[0, :5].numpy():
            obs, reward, terminated, truncated, info = env.step(a)
        warm = shift_plan(plan.actions, 5)
        print(f"step {step + 5:2d}: fingertip-to-goal {info['distance']:.3f} m, success {info['is_success']}")
        if info["is_success"]:
            break
    env.close()
    world_model.close()
