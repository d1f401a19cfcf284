"""Pusher with a goal image: ``sfplan/Pusher-v0``."""
from __future__ import annotations

import os

import gymnasium
import mujoco
import numpy as np

from sfplan.envs.base import MujocoGoalEnv
from sfplan.envs.rendering import free_camera

PUSHER_XML = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", "pusher_v5.xml")

#: density of the pushed cylinder (Pusher-v5: 0.01, i.e. 7.9 mg; see PusherGoalEnv).
OBJECT_DENSITY = 10.0
_SHOULDER = np.array([0.0, -0.6])  # shoulder pan axis (x, y)
_PUSH_Z = -0.27  # palm height while pushing (object centre at -0.275, table at -0.325)
_QREST = np.array([0.0, 0.5, 0.0, -1.2, 0.0, -0.5, 0.0])  # IK posture bias (elbow bent)


class PusherGoalEnv(MujocoGoalEnv):
    """Gymnasium ``Pusher-v5``'s 7-DoF arm and cylinder, with a goal image of the cylinder
    pushed elsewhere.

    - Model: ``pusher_v5.xml`` with two changes: the table plane is drawn 4x4 m (was
      2x2 m, so the black void beyond its edge no longer shows near the shoulder;
      planes collide everywhere anyway), and the cylinder's density is raised from
      0.01 to ``OBJECT_DENSITY`` = 10 (mass 7.9 mg -> 7.9 g). At Pusher-v5's mass MuJoCo's
      contact regularisation (scaled by ``dof_invweight0``, which counts the body mass but
      not the joint armature) makes the hand-object contact so soft that the palm passes
      through the cylinder (0.02 N at 5 cm penetration) and a push moves it ~1 cm.
      ``frame_skip=5`` (dt 0.05 s), action Box(-2, 2, (7,)) joint torques, no gravity.
    - Start: as Pusher-v5 (arm at ``qpos0`` with velocity noise ``U(-0.005, 0.005)``,
      cylinder offset ``U(-0.3, 0) x U(-0.2, 0.2)`` from (0.45, -0.05)). Under ``near``
      the scripted pusher below then brings the palm behind the cylinder (its approach,
      up to ``approach_steps``) and the episode starts there, the arm at rest: from
      Pusher-v5's own start the push must be found behind a detour, which the goal image
      (it also fixes the arm pose, and the arm covers far more pixels than the cylinder)
      cannot guide: an image cost is then lowest with the arm posed and the cylinder left
      (docs/notes/2026-12-07-pusher-near-and-forkmaze.md).
    - Camera: a free camera looking down at 75 degrees at the table from the arm's side;
      the arm, the cylinder and its reachable area (about 0.2-0.85 m from the shoulder)
      are in view.
    - Goal: a scripted push: IK (damped least squares, palm aligned with the push) for a
      point above and then behind the cylinder, joint-space PD to get there, then the
      palm tracks a line through the cylinder in a sampled direction (first within +-92
      degrees of "away from the shoulder" with the palm square to the push; for
      cylinders close to the shoulder, where that is out of reach, any direction with
      position-only IK) for a sampled length of 0.12-0.25 m. ``near``: the line of one
      push from the start behind the cylinder, plus ``settle_steps`` (about 15-25 steps),
      redrawn (seeded) until the cylinder moved at least ``2 * success_threshold``.
      ``far``: three whole pushes in a row from Pusher-v5's start (75-150 steps), redrawn
      until the cylinder moved at least ``4 * success_threshold``; every push keeps the
      cylinder inside the reachable area in view (0.3-0.85 m from the shoulder, y in
      [-0.45, 0.1], x <= 0.8).
    - Success: ``info["distance"]`` = cylinder-to-goal-cylinder (x, y) distance below
      ``success_threshold = 0.05`` m: the cylinder's radius, i.e. the goal and the
      reached cylinder overlap by more than half; about 2.5 px at 64x64 (1 px ~ 2 cm on
      the table), so a miss at the threshold is visible.
    - Marker: Pusher's red ``goal`` disk (radius 0.08) is moved under the goal cylinder
      position (``_on_goal_set``) in the observation *and* the goal image.
    """

    success_threshold = 0.05
    near_steps = (25, 50)  # one whole push under ``far``
    far_pushes = 3
    approach_steps = 60  # at most, to bring the palm behind the cylinder (``near`` start)
    settle_steps = 5  # after the push line (``near`` goal), the arm comes to rest

    def __init__(self, image_size: int = 64, goal: str = "near", render_mode: str | None = "rgb_array"):
        super().__init__(image_size=image_size, goal=goal, render_mode=render_mode)
        spec = mujoco.MjSpec.from_file(PUSHER_XML)
        for g in spec.body("object").geoms:
            g.density = OBJECT_DENSITY
        spec.geom("table").size = [2.0, 2.0, 0.1]  # visual only (a plane collides everywhere)
        model = spec.compile()
        camera = free_camera(lookat=(0.45, -0.28, -0.3), distance=1.5, azimuth=90.0, elevation=-75.0)
        self._init_mujoco(model, frame_skip=5, camera=camera)
        self._tip = model.body("tips_arm").id
        self._obj = model.body("object").id
        self._ik_data = mujoco.MjData(model)  # scratch data for the scripted pusher's IK
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._damping = 0.05**2 * np.eye(6)
        self._ik_x = np.zeros(6)

    # ---- task hooks --------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        mujoco.mj_resetData(self.model, self.data)
        while True:  # Pusher-v5's cylinder sampling (qpos[-4:-2] = (slide y, slide x))
            cyl = np.array([rng.uniform(-0.3, 0.0), rng.uniform(-0.2, 0.2)])
            if np.linalg.norm(cyl) > 0.17:
                break
        self.data.qpos[-4:-2] = cyl
        self.data.qpos[-2:] = 0.0
        qvel = rng.uniform(-0.005, 0.005, self.model.nv)
        qvel[-4:] = 0.0
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        self._stale = False
        if self.goal_protocol == "near":
            self._near_line = self._start_behind_cylinder(rng)

    def _start_behind_cylinder(self, rng: np.random.Generator) -> np.ndarray:
        """Bring the palm behind the cylinder for a sampled push and leave the arm there at
        rest; return the push line's actions (the ``near`` goal). Redrawn from the same
        Pusher-v5 start (at most 8 draws) until the line moves the cylinder at least
        ``2 * success_threshold``; the draw that moved it most otherwise."""
        origin = self.get_state()
        o0 = self.object_xy()
        best = None
        for _ in range(8):
            self.set_state(origin)
            plan = self._plan_push(rng, self.body_xpos("object"))
            self._run_push(plan, self.approach_steps, stop_at_line=True)
            self.data.qvel[:] = 0.0
            mujoco.mj_forward(self.model, self.data)
            start = self.get_state()
            line = self._run_push(plan, len(plan[2]) + self.settle_steps, phase=2)
            moved = float(np.linalg.norm(self.object_xy() - o0))
            if best is None or moved > best[0]:
                best = (moved, start, line)
            if moved >= 2 * self.success_threshold:
                break
        _, start, line = best
        self.set_state(start)
        return np.asarray(line, dtype=np.float64)

    def object_xy(self) -> np.ndarray:
        """Cylinder (x, y) in metres at the current state."""
        return self.body_xpos("object")[:2]

    def _goal_descriptor(self) -> np.ndarray:
        return self.object_xy()

    def _distance(self, goal: np.ndarray) -> float:
        return float(np.linalg.norm(self.object_xy() - goal))

    def _on_goal_set(self) -> None:
        # goal body rests at (0.45, -0.05); joints (slide y, slide x) are offsets.
        self.data.qpos[-2:] = [self._goal[1] + 0.05, self._goal[0] - 0.45]
        self.data.qvel[-2:] = 0.0
        mujoco.mj_forward(self.model, self.data)
        self._stale = False

    def _goal_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Scripted push(es) from the current state; the simulator is restored after."""
        if self.goal_protocol == "near":
            return self._near_line  # drawn with the start (``_start_behind_cylinder``)
        start = self.get_state()
        o0 = self.object_xy()
        min_moved = 4 * self.success_threshold
        best, best_moved = None, -1.0
        for _ in range(8):
            actions = []
            for _ in range(self.far_pushes):
                steps = int(rng.integers(self.near_steps[0], self.near_steps[1] + 1))
                actions += self._run_push(self._plan_push(rng, self.body_xpos("object")), steps)
            moved = float(np.linalg.norm(self.object_xy() - o0))
            self.set_state(start)
            if moved > best_moved:
                best, best_moved = actions, moved
            if moved >= min_moved:
                break
        return np.asarray(best, dtype=np.float64)

    # ---- scripted pusher ---------------------------------------------------------
    def _ik(self, q0: np.ndarray, target: np.ndarray, u: np.ndarray, iters: int, w_rot: float = 0.3) -> tuple[np.ndarray, float]:
        """Joint angles (7,) putting the palm at ``target`` with its fingers along ``u``
        and the palm horizontal (damped least squares with a posture bias), and the
        remaining position error (m)."""
        m, d = self.model, self._ik_data
        lo, hi = m.jnt_range[:7].T
        z = np.array([0.0, 0.0, 1.0])
        r_target = np.stack([u, np.cross(z, u), z])  # rows: target x, y, z axes
        q = q0.copy()
        for _ in range(iters):
            d.qpos[:7] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            mujoco.mj_jacBody(m, d, self._jacp, self._jacr, self._tip)
            rot = d.xmat[self._tip].reshape(3, 3)
            e_pos = target - d.xpos[self._tip]
            e_rot = 0.5 * np.cross(rot.T, r_target).sum(axis=0)
            err = np.concatenate([e_pos, w_rot * e_rot])
            jac = np.concatenate([self._jacp[:, :7], w_rot * self._jacr[:, :7]])
            # (J J^T + lambda^2 I)^-1 err by MuJoCo's Cholesky: numpy's LAPACK solve costs
            # ~0.5 ms per 6x6 call here (BLAS threading), mju_chol* a few microseconds.
            a = jac @ jac.T + self._damping
            mujoco.mju_cholFactor(a, 0.0)
            mujoco.mju_cholSolve(self._ik_x, a, err)
            dq = jac.T @ self._ik_x + 0.02 * (_QREST - q)
            q = np.clip(q + dq, lo + 1e-3, hi - 1e-3)
        return q, float(np.linalg.norm(e_pos))

    def _plan_push(self, rng: np.random.Generator, o: np.ndarray):
        """Sample a push of the cylinder at ``o`` (3,) whose start pose the arm can reach:
        returns (joint targets above / behind the cylinder, joint targets along the push
        line, the two Cartesian waypoints)."""
        radial = np.arctan2(o[1] - _SHOULDER[1], o[0] - _SHOULDER[0])
        q0 = self.data.qpos[:7].copy()
        best = None
        for attempt in range(16):
            # First palm-aligned pushes roughly away from the shoulder; near the shoulder
            # those are out of reach at table height, so then any direction, position-only IK.
            w_rot, span = (0.3, 1.6) if attempt < 8 else (0.0, np.pi)
            length = rng.uniform(0.12, 0.25)
            ang = radial + rng.uniform(-span, span)
            u = np.array([np.cos(ang), np.sin(ang), 0.0])
            end = o[:2] + u[:2] * length
            if not (0.3 <= np.linalg.norm(end - _SHOULDER) <= 0.85 and -0.45 <= end[1] <= 0.1 and end[0] <= 0.8):
                continue
            pre = o - 0.12 * u
            pre[2] = _PUSH_Z
            above = pre + np.array([0.0, 0.0, 0.1])
            q_above, _ = self._ik(q0, above, u, 40, w_rot)
            q_pre, err = self._ik(q_above, pre, u, 40, w_rot)
            if best is None or err < best[0]:
                best = (err, q_above, q_pre, u, length, above, pre, w_rot)
            if err < 0.015:
                break
        if best is None:  # no direction kept the cylinder in the area: push outwards
            u = np.array([np.cos(radial), np.sin(radial), 0.0])
            pre = o - 0.12 * u
            pre[2] = _PUSH_Z
            above = pre + np.array([0.0, 0.0, 0.1])
            q_above, _ = self._ik(q0, above, u, 40)
            q_pre, err = self._ik(q_above, pre, u, 40)
            best = (err, q_above, q_pre, u, 0.15, above, pre, 0.3)
        _, q_above, q_pre, u, length, above, pre, w_rot = best
        q_line, q = [], q_pre
        for s in np.arange(0.02, 0.12 + length, 0.02):  # 2 cm per env step (0.4 m/s)
            q, _ = self._ik(q, pre + s * u, u, 10, w_rot)
            q_line.append(q)
        return q_above, q_pre, q_line, above, pre

    def _collect_actions(self, rng: np.random.Generator, hold: int = 1) -> np.ndarray:
        """One scripted push of the cylinder from the current state, for data collection
        (``policy=goal``): actions (T, 7), each to be held ``hold`` env steps (the PD loop
        runs at that rate, so the push also works under an action repeat); the simulator is
        restored after. Random actions rarely touch the cylinder: in 8-step chunks of
        correlated noise at action repeat 4 it moves more than 1 cm in 12% of them."""
        start = self.get_state()
        try:
            return np.asarray(self._run_push(self._plan_push(rng, self.body_xpos("object")),
                                             -(-(self.approach_steps + 40) // hold), hold=hold,
                                             end_after_line=True), dtype=np.float64)
        finally:
            self.set_state(start)

    def _run_push(self, plan, steps: int, phase: int = 0, stop_at_line: bool = False,
                  kp: float = 30.0, kd: float = 3.0, hold: int = 1, end_after_line: bool = False) -> list:
        """Run a planned push (``_plan_push``) for at most ``steps`` actions on the
        simulator from ``phase`` (0: to above the start pose, 1: down to it, 2: along the
        line); ``stop_at_line``: stop where the line would begin; ``end_after_line``: stop
        ``settle_steps`` after its end. Each action is held ``hold`` env steps and advances the
        line as far. Returns its actions."""
        q_above, q_pre, q_line, above, pre = plan
        lo, hi = self.action_space.low.astype(np.float64), self.action_space.high.astype(np.float64)
        j, actions = 0, []
        for _ in range(steps):
            x = self.body_xpos("tips_arm")
            if phase == 0 and np.linalg.norm(x - above) < 0.05:
                phase = 1
            elif phase == 1 and np.linalg.norm(x - pre) < 0.03:
                phase = 2
            if phase == 2:
                if stop_at_line:
                    break
                if end_after_line and j >= len(q_line) + self.settle_steps:
                    break
                qt = q_line[min(j, len(q_line) - 1)]
                j += hold
            else:
                qt = q_above if phase == 0 else q_pre
            a = np.clip(kp * (qt - self.data.qpos[:7]) - kd * self.data.qvel[:7], lo, hi)
            for _ in range(hold):
                self.sim_step(a)
            actions.append(a)
        return actions
