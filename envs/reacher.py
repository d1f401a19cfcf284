"""Reacher with a goal image: ``sfplan/Reacher-v0``."""
from __future__ import annotations

import os

import gymnasium
import mujoco
import numpy as np

from sfplan.envs.base import PEER_PROTOCOLS, MujocoGoalEnv, smooth_noise
from sfplan.envs.rendering import free_camera

REACHER_XML = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", "reacher.xml")


class ReacherGoalEnv(MujocoGoalEnv):
    """Gymnasium ``Reacher-v5``'s two-link arm, seen from straight above, with a goal image.

    - Model and physics: Reacher-v5's ``reacher.xml`` loaded directly, ``frame_skip=2``
      (dt 0.02 s), action Box(-1, 1, (2,)) of joint torques; start state as Reacher-v5
      (joint angles ``U(-0.1, 0.1)``, velocities ``U(-0.005, 0.005)``).
    - Camera: orthographic, top-down, 0.48 m across (the arm reaches 0.22 m), so the
      whole workspace is in view; 1 pixel is 7.5 mm at 64x64.
    - Goal: ``near``: 25-50 steps of smooth (AR(1), rho 0.9, std 0.5) random torques from the
      start; ``far``: a uniformly random joint configuration (joint0 in [-pi, pi),
      joint1 in [-3, 3], its range), at rest. Both are redrawn (seeded) until the goal
      fingertip is at least 2x the threshold (near) / 0.1 m (far) from the start's;
      ``peer``: 25 env steps of the same torques, as they come (``GoalImageEnv._peer_actions``).
    - Success: ``info["distance"]`` = fingertip-to-goal-fingertip distance (m) below
      ``success_threshold = 0.02`` m. Why 0.02: at 64x64 the fingertip (2 cm across)
      covers ~2.7 px, so a 2 cm miss is a ~2.7 px shift a pixel cost can see, while
      1 px (7.5 mm) is the finest the image resolves; Reacher-v5 has no criterion.
    - Marker: Reacher's ``target`` body (``qpos[2:4]``) is moved to the goal fingertip
      (``_on_goal_set``) in the observation *and* the goal image. It is drawn as a flat
      red disk of radius ``success_threshold`` on the floor (visual only: the target geom
      has no contacts), so "fingertip inside the disk" is success and the disk is not
      hidden under the fingertip in the goal image.
    """

    success_threshold = 0.02
    goal_protocols = PEER_PROTOCOLS
    near_steps = (25, 50)
    far_min_distance = 0.10

    def __init__(self, image_size: int = 64, goal: str = "near", render_mode: str | None = "rgb_array"):
        super().__init__(image_size=image_size, goal=goal, render_mode=render_mode)
        model = mujoco.MjModel.from_xml_path(REACHER_XML)
        # Target marker: a flat disk (radius = success threshold) lying on the floor.
        gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "target")
        model.geom_type[gid] = mujoco.mjtGeom.mjGEOM_CYLINDER
        model.geom_size[gid] = [self.success_threshold, 0.001, 0.0]
        model.geom_pos[gid] = [0.0, 0.0, -0.008]  # body at z=0.01 -> disk top at z=0.003
        model.geom_rgba[gid] = [0.9, 0.2, 0.2, 1.0]
        camera = free_camera(lookat=(0.0, 0.0, 0.0), distance=1.0, azimuth=90.0, elevation=-90.0)
        self._init_mujoco(model, frame_skip=2, camera=camera, ortho_extent=0.48)

    # ---- task hooks --------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        mujoco.mj_resetData(self.model, self.data)
        qpos = self.model.qpos0 + rng.uniform(-0.1, 0.1, self.model.nq)
        qvel = rng.uniform(-0.005, 0.005, self.model.nv)
        qvel[2:] = 0.0
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        self._stale = False
        self._start_tip = self.fingertip()

    def fingertip(self) -> np.ndarray:
        """Fingertip (x, y) in metres at the current state."""
        return self.body_xpos("fingertip")[:2]

    def _goal_descriptor(self) -> np.ndarray:
        return self.fingertip()

    def _distance(self, goal: np.ndarray) -> float:
        return float(np.linalg.norm(self.fingertip() - goal))

    def _on_goal_set(self) -> None:
        self.data.qpos[2:4] = self._goal
        self.data.qvel[2:4] = 0.0
        mujoco.mj_forward(self.model, self.data)
        self._stale = False

    def _goal_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Near protocol: smooth random torques, redrawn until the fingertip moved."""
        start = self.get_state()
        for _ in range(20):
            actions = smooth_noise(rng, int(rng.integers(self.near_steps[0], self.near_steps[1] + 1)), 2)
            for a in actions:
                self.sim_step(a)
            moved = np.linalg.norm(self.fingertip() - self._start_tip)
            self.set_state(start)
            if moved >= 2 * self.success_threshold:
                break
        return actions

    def _drive_to_goal(self, rng: np.random.Generator) -> None:
        if self.goal_protocol != "far":
            return super()._drive_to_goal(rng)
        for _ in range(50):  # far: a uniformly random joint configuration, at rest
            self.data.qpos[0] = rng.uniform(-np.pi, np.pi)
            self.data.qpos[1] = rng.uniform(-3.0, 3.0)
            self.data.qvel[:2] = 0.0
            mujoco.mj_forward(self.model, self.data)
            self._stale = False
            if np.linalg.norm(self.fingertip() - self._start_tip) >= self.far_min_distance:
                break
