"""A user's own MuJoCo env that sfplan does not ship: a puck pushed by planar forces in a
walled arena with an inner wall, seen by a 64x64 top camera.

It stands for "your env": a plain Gymnasium ``MujocoEnv`` (``PuckArenaEnv``), made a goal-image
task with ``sfplan.envs.GoalImageWrapper`` in ``make_puck``. Importing the module registers
``PuckArena-v0`` (the goal-image task) with Gymnasium, so sfplan reaches it either way::

    sfplan eval env.id=puck_env:make_puck world_model=oracle      # module:callable
    sfplan eval env.id=puck_env:PuckArena-v0 world_model=oracle   # a Gymnasium id the module registers
"""
from __future__ import annotations

import os
import tempfile

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco import MujocoEnv

ARENA = 0.5  # half side (m)
XML = f"""
<mujoco model="puck_arena">
  <option timestep="0.01"/>
  <visual><global offwidth="64" offheight="64"/></visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1" directional="true"/>
    <geom type="plane" size="{ARENA} {ARENA} 0.01" rgba="0.85 0.85 0.8 1"/>
    <geom type="box" pos="0 {ARENA} 0.03" size="{ARENA} 0.02 0.03" rgba="0.2 0.2 0.3 1"/>
    <geom type="box" pos="0 -{ARENA} 0.03" size="{ARENA} 0.02 0.03" rgba="0.2 0.2 0.3 1"/>
    <geom type="box" pos="{ARENA} 0 0.03" size="0.02 {ARENA} 0.03" rgba="0.2 0.2 0.3 1"/>
    <geom type="box" pos="-{ARENA} 0 0.03" size="0.02 {ARENA} 0.03" rgba="0.2 0.2 0.3 1"/>
    <geom name="inner_wall" type="box" pos="0.1 0 0.03" size="0.02 0.22 0.03" rgba="0.2 0.2 0.3 1"/>
    <body name="puck" pos="0 0 0.03">
      <joint name="x" type="slide" axis="1 0 0" damping="2"/>
      <joint name="y" type="slide" axis="0 1 0" damping="2"/>
      <geom type="cylinder" size="0.06 0.03" rgba="0.9 0.2 0.1 1" mass="0.5"/>
    </body>
    <camera name="top" pos="0 0 1.25" xyaxes="1 0 0 0 1 0" fovy="45"/>
  </worldbody>
  <actuator>
    <motor joint="x" gear="2" ctrlrange="-1 1" ctrllimited="true"/>
    <motor joint="y" gear="2" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


def _xml_path() -> str:
    path = os.path.join(tempfile.gettempdir(), f"puck_arena_{os.getuid() if hasattr(os, 'getuid') else 0}.xml")
    if not os.path.exists(path) or open(path).read() != XML:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(XML)
        os.replace(tmp, path)
    return path


class PuckArenaEnv(MujocoEnv):
    """Observation: puck (x, y, vx, vy); action: planar force in [-1, 1]^2; 4 substeps of 10 ms."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, render_mode: str | None = "rgb_array", width: int = 64, height: int = 64):
        obs_space = spaces.Box(-np.inf, np.inf, (4,), np.float64)
        super().__init__(_xml_path(), 4, observation_space=obs_space, render_mode=render_mode, width=width,
                         height=height, camera_name="top")

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def step(self, action):
        self.do_simulation(np.clip(action, -1, 1), self.frame_skip)
        return self._get_obs(), 0.0, False, False, {}

    def reset_model(self) -> np.ndarray:
        while True:  # a start away from the inner wall
            xy = self.np_random.uniform(-0.38, 0.38, 2)
            if abs(xy[0] - 0.1) > 0.1 or abs(xy[1]) > 0.3:
                break
        self.set_state(xy, np.zeros(2))
        return self._get_obs()


def puck_xy(env) -> np.ndarray:
    """The goal descriptor: the puck's (x, y) in metres."""
    return env.unwrapped.data.qpos[:2].copy()


def goal_fn(env, rng) -> np.ndarray:
    """A near goal: 30 steps of smoothly varying random force from the start."""
    force = rng.uniform(-1, 1, 2)
    for _ in range(30):
        force = np.clip(0.8 * force + 0.4 * rng.uniform(-1, 1, 2), -1, 1)
        env.step(force)
    return puck_xy(env)


def success_fn(env, goal) -> float:
    return float(np.linalg.norm(puck_xy(env) - goal))


def make_puck(image_size: int = 64):
    """The goal-image task: success when the puck is within 5 cm of the goal's puck."""
    from sfplan.envs import GoalImageWrapper

    base = gym.wrappers.TimeLimit(PuckArenaEnv(width=image_size, height=image_size), max_episode_steps=60)
    return GoalImageWrapper(base, goal_fn, success_fn, image_size=image_size, success_threshold=0.05,
                            descriptor_fn=puck_xy)


if "PuckArena-v0" not in gym.registry:
    gym.register("PuckArena-v0", entry_point=make_puck, max_episode_steps=60)
