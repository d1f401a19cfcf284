"""robosuite tabletop tasks with goal images: ``sfplan/Lift-v0`` and ``sfplan/Stack-v0``.

robosuite is an optional dependency (``pip install -c constraints.txt -e .[robosuite]``):
it is imported inside the constructor, so ``import sfplan.envs`` never imports it.

What the tasks are
------------------
- Robot and physics: robosuite 1.5's ``Lift``/``Stack`` with one Panda, the stock table
  and cubes, ``control_freq=20`` (an env step is 0.05 s = 25 MuJoCo substeps of 2 ms),
  ``lite_physics`` as robosuite. The robosuite model is built with ``seed=0``, so every
  instance (e.g. the oracle world model's own ``gymnasium.make``) has the same model
  (Lift draws its cube size from the seed) and states transfer between instances.
- Action: ``Box(-1, 1, (4,))`` = (dx, dy, dz, gripper), the action space most visual
  planning papers use. (dx, dy, dz) drives robosuite's stock ``OSC_POSE`` controller
  (delta input, 1.0 = 5 cm per step in the robot base frame); its rotation input is not
  exposed: the env fills it with the correction that holds the gripper pointing straight
  down at the Panda's home yaw, so the hand cannot tilt or spin during a plan. gripper:
  robosuite's Panda convention, > 0 closes and < 0 opens, 0.2 of the full stroke per step
  (``PandaGripper.format_action``).
- Camera: robosuite's ``agentview`` (fixed, in front of the table, looking at the robot),
  rendered by ``FastRenderer`` straight from robosuite's ``MjModel`` (multisampling,
  shadows and reflections off; collision geoms hidden as robosuite does). robosuite's own
  camera observations and offscreen renderer are off (``use_camera_obs=False``,
  ``has_offscreen_renderer=False``). ``mujoco.Renderer`` returns rows top-down, so the
  frames are the right way up (robosuite's ``sim.render`` frames are upside down).
- ``sim_step(a)``: the body of robosuite's ``env.step`` (``mj_step1``, controller,
  ``mj_step2`` per substep) without robosuite's observables, reward or rendering; the arm
  controller runs as ``FastOSC`` (robosuite's OSC_POSE formulas in one numba kernel, ~3x
  faster; ``fast_controller=False`` uses robosuite's controller objects).
- State: ``mj_getState(FULLPHYSICS | WARMSTART)`` of robosuite's sim plus the two values of
  the Panda gripper's action integrator (``PandaGripper.current_action``), the only
  controller memory that outlives a step (OSC re-targets from the achieved pose at every
  step; its nullspace posture is the fixed home posture, see ``FastOSC``). ``set_state``
  restores both; a restored state steps bit-exactly like the original, in any instance.

Goals (seeded, reached by a scripted controller in the same 4-D action space)
-------------------------------------------------------------------------------
The script (``_script``, at most 2.5 cm per step) moves the open gripper 8 cm above
cube(A), descends around it, closes the gripper for 10 steps and lifts; for Lift it then
carries the cube to a seeded point in the air (59-78 steps in all); for Stack it carries
cubeA above cubeB, lowers it onto cubeB, opens the gripper and moves the hand 6 cm up
(88-115 steps). Its targets follow the cubes (closed loop); the actions it took are kept in
``goal_actions_`` (T, 4) (a demonstration: replaying them from the start state reproduces
the goal exactly). Starts: robosuite's own (joint noise, cube placement and yaw) after 10
zero-action steps in which the cubes land; for Stack, a start with cubeB beside cubeA along
the fingers' closing axis (|dx| < 5 cm, |dy| < 10 cm: the fixed-yaw hand cannot reach
down around cubeA) is redrawn. The far script succeeded on all of seeds 0-259 of each task.

- ``near``: the first T ~ U{25..50} steps of the script (T seeded): the hand coming down
  around cube(A) (steps ~18-32), closing on it (~32-42) or starting to lift it (> ~42). Success: every tracked point within
  ``success_threshold = 0.02`` m of where it is in the goal state (``info["distance"]`` =
  the largest of those distances): the gripper site and cube for Lift, the gripper site
  and both cubes for Stack. 2 cm is the cube's half-size, about 2 pixels at 64x64.
- ``far``: the whole script. Success: robosuite's ``_check_success()`` (Lift: cube centre
  more than 4 cm above the table top, whatever the height of the goal image; Stack: cubeA
  lifted, touching cubeB and not grasped). ``info["distance"]``: Lift, how far (m) the
  cube centre is below that height (0 once lifted; ``success_threshold`` is 1e-9 so
  ``distance < success_threshold`` iff ``_check_success``, up to the tie); Stack, the
  distance (m) of cubeA's centre from resting centred on cubeB (success also needs the
  release, so ``is_success`` is read from ``_check_success`` and ``success_threshold``
  is 0.01 m, where a centred, released cubeA always is).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, List, Tuple

import mujoco
import numpy as np
from gymnasium import spaces

from sfplan.envs.base import GoalImageEnv
from sfplan.envs.rendering import FastRenderer

INSTALL_HINT = "pip install -c constraints.txt -e .[robosuite]"

#: Scripted-controller constants (metres).
HOVER_HEIGHT = 0.08  # gripper site above the cube centre before descending
GAIN = 1.0  # action = GAIN * position error / 5 cm, clipped to +-SPEED
SPEED = 0.5  # the script moves at most 2.5 cm per step per axis (half the action range)


def _robosuite_errors_only(record) -> bool:
    return record.levelno >= logging.ERROR


def _import_robosuite():
    # robosuite logs its optional extras at import and each env's controller set-up (INFO, and a
    # WARNING per arm-less part of its composite config): ~10 lines an env, ~900 in one
    # `sfplan fit`. A filter (robosuite resets its logger's level on import) keeps its errors.
    log = logging.getLogger("robosuite_logs")
    if _robosuite_errors_only not in log.filters:
        log.addFilter(_robosuite_errors_only)
    try:
        import robosuite  # noqa: F401  (heavy: numba, robot models)
    except ImportError as e:  # pragma: no cover - exercised only without robosuite
        raise ImportError(f"the robosuite tasks need robosuite: {INSTALL_HINT}") from e
    return robosuite


class Phase:
    """One leg of the scripted controller.

    Args:
        name: for debugging.
        target: ``env -> (xyz (3,), gripper)``; re-evaluated each step (closed loop)
            unless ``freeze`` (evaluated once when the phase starts).
        tol: the phase ends when the gripper site is within ``tol`` metres of the target
            (``None``: it runs ``min_steps``).
        min_steps, max_steps: bounds on its length in env steps.
        done: optional extra end condition ``env -> bool`` (checked after ``min_steps``).
    """

    def __init__(
        self,
        name: str,
        target: Callable[["RobosuiteGoalEnv"], Tuple[np.ndarray, float]],
        tol: float | None = None,
        min_steps: int = 1,
        max_steps: int = 40,
        freeze: bool = False,
        done: Callable[["RobosuiteGoalEnv"], bool] | None = None,
    ):
        self.name, self.target, self.tol = name, target, tol
        self.min_steps, self.max_steps, self.freeze, self.done = min_steps, max_steps, freeze, done


def _osc_torques(M_full, jacp, jacr, qi, q, qvel, bias, goal_pos, goal_ori, ref_pos, ref_ori, kp, kd, posture, lo, hi):
    """robosuite's ``OSC_POSE.run_controller`` (fixed impedance, uncoupled) with its
    ``opspace_matrices`` and ``nullspace_torques`` (joint_kp 10) in one function, jitted
    with robosuite's numba settings. Shapes: M_full (nv, nv), jacp/jacr (3, nv), qi (n,)
    arm dof indices, q (n,) arm joint positions, qvel (nv,), bias (nv,) ``qfrc_bias``,
    goal_pos/ref_pos (3,), goal_ori/ref_ori (3, 3), kp/kd (6,), posture/lo/hi (n,).
    Returns the clipped arm torques (n,)."""
    n = qi.shape[0]
    M = np.empty((n, n))
    J = np.empty((6, n))
    qd = np.empty(n)
    for a in range(n):
        qd[a] = qvel[qi[a]]
        for b in range(n):
            M[a, b] = M_full[qi[a], qi[b]]
        for r in range(3):
            J[r, a] = jacp[r, qi[a]]
            J[3 + r, a] = jacr[r, qi[a]]
    Jp = np.ascontiguousarray(J[:3])
    Jr = np.ascontiguousarray(J[3:])
    vel_p = np.dot(jacp, qvel)
    vel_r = np.dot(jacr, qvel)
    # orientation_error(desired=goal_ori, current=ref_ori)
    ori_err = np.zeros(3)
    for c in range(3):
        rc = ref_ori[:, c]
        rd = goal_ori[:, c]
        ori_err[0] += 0.5 * (rc[1] * rd[2] - rc[2] * rd[1])
        ori_err[1] += 0.5 * (rc[2] * rd[0] - rc[0] * rd[2])
        ori_err[2] += 0.5 * (rc[0] * rd[1] - rc[1] * rd[0])
    force = kp[:3] * (goal_pos - ref_pos) + kd[:3] * (-vel_p)
    torque = kp[3:] * ori_err + kd[3:] * (-vel_r)
    # opspace_matrices
    M_inv = np.linalg.inv(M)
    lambda_full = np.linalg.pinv(np.dot(np.dot(J, M_inv), J.T))
    lambda_pos = np.linalg.pinv(np.dot(np.dot(Jp, M_inv), Jp.T))
    lambda_ori = np.linalg.pinv(np.dot(np.dot(Jr, M_inv), Jr.T))
    Jbar = np.dot(np.dot(M_inv, J.T), lambda_full)
    nullspace = np.eye(n) - np.dot(Jbar, J)
    wrench = np.concatenate((np.dot(lambda_pos, force), np.dot(lambda_ori, torque)))
    tau = np.dot(J.T, wrench)
    for a in range(n):
        tau[a] += bias[qi[a]]
    # nullspace_torques(joint_kp=10): hold the posture with zero velocity
    joint_kp = 10.0
    joint_kv = np.sqrt(joint_kp) * 2
    pose_torques = np.dot(M, joint_kp * (posture - q) - joint_kv * qd)
    tau += np.dot(nullspace.T, pose_torques)
    return np.minimum(np.maximum(tau, lo), hi)


_OSC_KERNEL = None


def _jit_osc():
    """``_osc_torques`` compiled once per process (robosuite's numba settings: cached)."""
    global _OSC_KERNEL
    if _OSC_KERNEL is None:
        from robosuite.utils.numba import jit_decorator

        _OSC_KERNEL = jit_decorator(_osc_torques)
    return _OSC_KERNEL


class FastOSC:
    """robosuite's ``OSC_POSE`` arm controller (as the Panda's BASIC composite config sets
    it up: fixed impedance, delta input in the robot-base frame, goal updated from the
    achieved pose, orientation and position decoupled), without robosuite's objects.

    It evaluates the same formulas as ``robosuite.controllers.parts.arm.osc`` in one numba
    kernel (``_osc_torques``) and skips robosuite's per-substep Python bookkeeping, which
    is most of the cost of a step: about 3x more steps/s, states within 1e-13 of
    robosuite's controller after a step (``tests/test_robosuite_envs.py`` checks this).
    One difference, on purpose, applied to robosuite's controller too: the nullspace
    posture is the Panda's noise-free home posture (``robot.init_qpos``), not the
    episode's noisy start joints, so the simulator state holds everything that the
    dynamics depend on (an instance that never saw the episode steps it identically).
    """

    def __init__(self, rs_env, robot):
        from robosuite.robots.fixed_base_robot import FixedBaseRobot

        if not isinstance(robot, FixedBaseRobot):  # the base velocity terms are taken as 0
            raise TypeError("FastOSC supports fixed-base robots only")
        self.model: mujoco.MjModel = rs_env.sim.model._model
        self.data: mujoco.MjData = rs_env.sim.data._data
        self.robot = robot
        self.posture = np.array(robot.init_qpos, dtype=np.float64)
        nv = self.model.nv
        self._jacp, self._jacr = np.zeros((3, nv)), np.zeros((3, nv))
        self._M = np.zeros((nv, nv))
        self.refresh()

    def refresh(self) -> None:
        """Re-read the controller's constants (robosuite rebuilds controllers on reset)."""
        from robosuite.utils.transform_utils import axisangle2quat, quat2mat

        self._kernel = _jit_osc()
        self._axisangle2mat = lambda v: quat2mat(axisangle2quat(v))
        ctl = self.robot.part_controllers["right"]
        if ctl.name != "OSC_POSE" or ctl.impedance_mode != "fixed" or ctl.input_type != "delta":
            raise ValueError("FastOSC mirrors robosuite's OSC_POSE with fixed impedance and delta input")
        self.ctl = ctl
        m = self.model
        self.site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, ctl.ref_name)
        self.center = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, f"{ctl.naming_prefix}{ctl.part_name}_center")
        self.qvel_index = np.asarray(ctl.qvel_index, dtype=np.int64)
        self.qpos_index = np.asarray(ctl.qpos_index, dtype=np.int64)
        self.kp, self.kd = np.asarray(ctl.kp, dtype=np.float64), np.asarray(ctl.kd, dtype=np.float64)
        self.act = np.asarray(self.robot._ref_actuators_indexes_dict["right"])
        self.lo, self.hi = m.actuator_ctrlrange[self.act].T.copy()
        ctl.initial_joint = self.posture.copy()  # keep robosuite's own controller in step with us

    def set_goal(self, delta: np.ndarray) -> None:
        """Policy step: (6,) delta (dx, dy, dz, ax, ay, az) in [-1, 1] -> world-frame
        goal pose (kinematics must be current, as after ``mj_step1``)."""
        d = self.data
        scaled = self.ctl.scale_action(np.asarray(delta, dtype=np.float64))
        o_pos, o_ori = d.site_xpos[self.center].copy(), d.site_xmat[self.center].reshape(3, 3).copy()
        ref_pos, ref_ori = d.site_xpos[self.site], d.site_xmat[self.site].reshape(3, 3)
        goal_pos = o_ori.T @ (ref_pos - o_pos) + scaled[:3]  # base frame, from the achieved pose
        self.goal_pos_world = o_pos + o_ori @ goal_pos
        goal_ori = self._axisangle2mat(scaled[3:6]) @ (o_ori.T @ ref_ori)
        self.goal_ori_world = o_ori @ goal_ori

    def apply(self) -> None:
        """Substep: write the arm torques to ``data.ctrl`` (after ``mj_step1``)."""
        m, d = self.model, self.data
        mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site)
        mujoco.mj_fullM(m, self._M, d.qM)
        d.ctrl[self.act] = self._kernel(
            self._M, self._jacp, self._jacr, self.qvel_index, d.qpos[self.qpos_index], d.qvel, d.qfrc_bias,
            self.goal_pos_world, self.goal_ori_world, d.site_xpos[self.site], d.site_xmat[self.site].reshape(3, 3),
            self.kp, self.kd, self.posture, self.lo, self.hi,
        )


class RobosuiteGoalEnv(GoalImageEnv):
    """A robosuite manipulation task as a goal-image env (see the module docstring).

    Subclasses set ``TASK`` (robosuite env name) and ``OBJECTS`` (tracked object body
    names, attribute names of the robosuite env's body ids) and implement ``_script``,
    ``_far_distance``.

    Args:
        image_size: side of the square frames (pixels).
        goal: ``"near"`` or ``"far"`` (see the module docstring).
        render_mode: ``"rgb_array"`` (or ``None``).
        camera: a camera of robosuite's model (default ``agentview``).
        fast_controller: run the arm controller as ``FastOSC`` (default) or through
            robosuite's own controller objects (about 3x slower; same dynamics up to
            float rounding, ~1e-13 per step).

    Attributes set by ``reset``: ``goal_state``, ``goal_actions_`` (T, 4) the scripted
    actions from the start to the goal, ``goal_phases_`` {phase name: first step}.
    """

    TASK: str = ""
    OBJECTS: Tuple[str, ...] = ()  # robosuite env attributes holding body ids
    near_steps = (25, 50)
    settle_steps = 10
    near_threshold = 0.02
    far_threshold = 1e-9

    def __init__(
        self,
        image_size: int = 64,
        goal: str = "near",
        render_mode: str | None = "rgb_array",
        camera: str = "agentview",
        fast_controller: bool = True,
    ):
        super().__init__(image_size=image_size, goal=goal, render_mode=render_mode)
        _import_robosuite()
        import robosuite as suite
        from robosuite.controllers import load_composite_controller_config

        controller = load_composite_controller_config(controller="BASIC", robot="Panda")
        self._rs = suite.make(
            self.TASK,
            robots="Panda",
            controller_configs=controller,
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=False,
            reward_shaping=False,
            ignore_done=True,
            hard_reset=False,  # keep one MjModel/MjData: our renderer and ids stay valid
            control_freq=20,
            seed=0,  # the model (Lift's cube size) is the same in every instance
        )
        self._rs.reset()
        self.model: mujoco.MjModel = self._rs.sim.model._model
        self.data: mujoco.MjData = self._rs.sim.data._data
        self._robot = self._rs.robots[0]
        self.fast_controller = bool(fast_controller)
        self._osc = FastOSC(self._rs, self._robot)
        self._root_body = self.model.body(self._robot.robot_model.root_body).id
        self._substeps = int(round(self._rs.control_timestep / self._rs.model_timestep))
        self._camera = camera
        self._renderer: FastRenderer | None = None
        self._stale = False
        self._spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS) | int(mujoco.mjtState.mjSTATE_WARMSTART)
        self._phys_size = mujoco.mj_stateSize(self.model, self._spec)
        self.success_threshold = self.near_threshold if goal == "near" else self.far_threshold
        self.action_space = spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self.metadata = dict(self.metadata, render_fps=int(self._rs.control_freq))
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"camera {camera!r} is not in robosuite's {self.TASK} model")

        # Orientation the hand is held at: pointing straight down, at the yaw of the
        # gripper site at the Panda's home pose (which is tilted ~7 degrees off vertical).
        qpos0 = self.data.qpos.copy()
        self.data.qpos[self._robot._ref_joint_pos_indexes] = self._robot.init_qpos
        mujoco.mj_forward(self.model, self.data)
        home = self.data.site_xmat[self._eef_site].reshape(3, 3)
        y = np.array([home[0, 1], home[1, 1], 0.0])
        y /= np.linalg.norm(y)
        z = np.array([0.0, 0.0, -1.0])
        self._hold_ori = np.stack([np.cross(y, z), y, z], axis=1)  # columns: site x, y, z axes
        self.data.qpos[:] = qpos0
        mujoco.mj_forward(self.model, self.data)
        self.goal_actions_: np.ndarray = np.zeros((0, 4))

    # ---- robosuite plumbing ------------------------------------------------------
    @property
    def robosuite_env(self):
        """The wrapped robosuite environment (do not ``step`` it: use ``sim_step``)."""
        return self._rs

    @property
    def dt(self) -> float:
        """Seconds of simulated time per env step (0.05)."""
        return float(self._rs.control_timestep)

    @property
    def _eef_site(self) -> int:
        return int(self._robot.eef_site_id["right"])

    @property
    def _gripper(self):
        return self._robot.gripper["right"]

    def _full_action(self, action: np.ndarray) -> np.ndarray:
        """4-D (dx, dy, dz, gripper) -> robosuite's 7-D OSC_POSE action, with the
        rotation part that holds the hand at ``_hold_ori``."""
        from robosuite.utils.control_utils import orientation_error

        cur = self.data.site_xmat[self._eef_site].reshape(3, 3)
        err_world = orientation_error(self._hold_ori, cur)
        base = self.data.xmat[self._root_body].reshape(3, 3)
        rot = np.clip(base.T @ err_world / 0.5, -1.0, 1.0)  # OSC_POSE: 1.0 = 0.5 rad
        return np.concatenate([action[:3], rot, action[3:4]])

    # ---- simulator hooks ---------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        # robosuite samples the robot's joint noise and the cube placement from env.rng
        # (its placement sampler holds the same Generator): reseed it in place.
        for _ in range(100):  # redraw starts that the fixed-yaw gripper cannot solve
            self._rs.rng.bit_generator.state = np.random.default_rng(int(rng.integers(2**63))).bit_generator.state
            self._rs.reset()
            if self._start_ok():
                break
        self._osc.refresh()  # new controller objects; nullspace posture = home posture
        self._gripper.current_action = np.zeros(2)
        mujoco.mj_forward(self.model, self.data)
        self._stale = False
        # robosuite drops the cubes from 1 cm above the table: let them land (the arm
        # holds its pose under zero actions) so that an episode starts at rest.
        for _ in range(self.settle_steps):
            self.sim_step(np.zeros(4))
        self.sync()

    def _start_ok(self) -> bool:
        """Whether robosuite's freshly sampled start is kept (a task may reject some)."""
        return True

    def sim_step(self, action: np.ndarray) -> None:
        action = np.asarray(action, dtype=np.float64)
        m, d = self.model, self.data
        mujoco.mj_step1(m, d)  # robosuite's lite_physics step: step1, controller, step2
        full = self._full_action(action)
        if not self.fast_controller:  # robosuite's own controller stack
            for ctl in self._robot.part_controllers.values():
                ctl.new_update = True  # their cached kinematics may predate a set_state
            for i in range(self._substeps):
                if i:
                    mujoco.mj_step1(m, d)
                self._robot.control(full, policy_step=(i == 0))
                mujoco.mj_step2(m, d)
            self._stale = True
            return
        # Gripper: robosuite's integrator and GRIP controller (constant over the step).
        gripper_ctl = self._robot.part_controllers["right_gripper"]
        gripper_ctl.set_goal(self._gripper.format_action(full[6:7]))
        g_idx = self._robot._ref_actuators_indexes_dict["right_gripper"]
        g_ctrl = np.clip(gripper_ctl.run_controller(), *m.actuator_ctrlrange[g_idx].T)
        self._osc.set_goal(full[:6])
        for i in range(self._substeps):
            if i:
                mujoco.mj_step1(m, d)
            self._osc.apply()
            d.ctrl[g_idx] = g_ctrl
            mujoco.mj_step2(m, d)
        self._stale = True

    def sync(self) -> None:
        """Recompute positions and contacts after ``mj_step`` (``mj_forward``; it writes
        no state that the next step reads)."""
        if self._stale:
            mujoco.mj_forward(self.model, self.data)
            self._stale = False

    def get_state(self) -> np.ndarray:
        state = np.empty(self._phys_size + 2, dtype=np.float64)
        mujoco.mj_getState(self.model, self.data, state[: self._phys_size], self._spec)
        state[self._phys_size :] = np.broadcast_to(self._gripper.current_action, (2,))
        return state

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self._phys_size + 2,):
            raise ValueError(f"state has shape {state.shape}; {type(self).__name__} expects ({self._phys_size + 2},)")
        mujoco.mj_setState(self.model, self.data, state[: self._phys_size], self._spec)
        self._gripper.current_action = state[self._phys_size :].copy()
        mujoco.mj_forward(self.model, self.data)
        self._stale = False

    def render_pixels(self) -> np.ndarray:
        self.sync()
        if self._renderer is None:
            self._renderer = FastRenderer(self.model, self.image_size, camera=self._camera)
            # robosuite draws visual geoms (group 1) and hides collision geoms (group 0).
            self._renderer.scene_option.geomgroup[0] = 0
        return self._renderer.render(self.data)

    # ---- positions ---------------------------------------------------------------
    def eef_pos(self) -> np.ndarray:
        """Gripper site (between the fingertips) position (3,), metres."""
        self.sync()
        return self.data.site_xpos[self._eef_site].copy()

    def object_pos(self, name: str) -> np.ndarray:
        """Position (3,) of a tracked object (an entry of ``OBJECTS``)."""
        self.sync()
        return self.data.xpos[getattr(self._rs, name)].copy()

    @property
    def table_height(self) -> float:
        return float(self._rs.model.mujoco_arena.table_offset[2])

    def check_success(self) -> bool:
        """robosuite's own ``_check_success()`` at the current state."""
        self.sync()
        return bool(self._rs._check_success())

    # ---- goal protocol -----------------------------------------------------------
    def _goal_descriptor(self) -> Any:
        return {"eef": self.eef_pos(), **{n: self.object_pos(n) for n in self.OBJECTS}}

    def _distance(self, goal: Any) -> float:
        if self.goal_protocol == "near":
            d = np.linalg.norm(self.eef_pos() - goal["eef"])
            for n in self.OBJECTS:
                d = max(d, np.linalg.norm(self.object_pos(n) - goal[n]))
            return float(d)
        return float(self._far_distance())

    def _far_distance(self) -> float:
        raise NotImplementedError

    def _info(self) -> dict:
        info = super()._info()
        if self.goal_protocol == "far":
            info["is_success"] = self.check_success()
        return info

    def _script(self, rng: np.random.Generator) -> List[Phase]:
        raise NotImplementedError

    def _run_script(self, rng: np.random.Generator, max_total: int | None = None, hold: int = 1) -> np.ndarray:
        """Run the scripted controller from the current state (stops after ``max_total`` env
        steps if given); returns the actions taken (T, 4), each held ``hold`` env steps (the
        closed loop runs at that rate, its position command divided by ``hold`` so a held
        action moves the hand as far as ``hold`` script steps would)."""
        actions, steps = [], 0
        self.goal_phases_ = {}
        for phase in self._script(rng):
            self.goal_phases_[phase.name] = len(actions)
            frozen = None
            for k in range(-(-phase.max_steps // hold)):
                if max_total is not None and steps >= max_total:
                    return np.asarray(actions)
                if phase.freeze:
                    frozen = phase.target(self) if frozen is None else frozen
                    xyz, grip = frozen
                else:
                    xyz, grip = phase.target(self)
                err = xyz - self.eef_pos()
                if k * hold >= phase.min_steps:
                    reached = phase.tol is None or np.linalg.norm(err) < phase.tol
                    extra = phase.done is None or phase.done(self)
                    if reached and extra:
                        break
                a = np.concatenate([np.clip(GAIN * err / (0.05 * hold), -SPEED, SPEED), [grip]])
                for _ in range(hold):
                    self.sim_step(a)
                actions.append(a)
                steps += hold
        return np.asarray(actions)

    def _goal_actions(self, rng: np.random.Generator) -> np.ndarray:
        """The scripted actions to the goal (runs them, then restores the state)."""
        start = self.get_state()
        actions = self._run_script(rng, self._goal_length(rng))
        self.set_state(start)
        return actions

    def _collect_actions(self, rng: np.random.Generator, hold: int = 1) -> np.ndarray:
        """The goal script from the current state for data collection (``policy=goal``, what
        ``sfplan fit`` collects with): actions (T, 4), each to be held ``hold`` env steps, so
        it also works under an action repeat; the simulator is restored after. Random motion
        from the rest pose rarely brings the hand to the cube: in a Lift fit's 186 episodes of
        correlated noise, 0.6% of frames had the hand within 3 cm (horizontally) of the cube
        and less than 10 cm above the table, where every near goal has it; with this script in
        half of 16 episodes, 25%."""
        start = self.get_state()
        try:
            return self._run_script(rng, self._goal_length(rng), hold=max(1, int(hold)))
        finally:
            self.set_state(start)

    def _goal_length(self, rng: np.random.Generator) -> int | None:
        if self.goal_protocol == "near":
            return int(rng.integers(self.near_steps[0], self.near_steps[1] + 1))
        return None

    def _drive_to_goal(self, rng: np.random.Generator) -> None:
        # One closed-loop pass (same result as replaying ``_goal_actions``).
        self.goal_actions_ = self._run_script(rng, self._goal_length(rng))
        if self.goal_protocol == "far" and not self.check_success():
            warnings.warn(
                f"{type(self).__name__}: the scripted far goal failed for this start "
                f"(phases {self.goal_phases_}); the goal image is not a success state",
                RuntimeWarning,
                stacklevel=3,
            )

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_rs", None) is not None:
            self._rs.close()
            self._rs = None
        super().close()


def _above(env: RobosuiteGoalEnv, name: str, dz: float) -> np.ndarray:
    return env.object_pos(name) + np.array([0.0, 0.0, dz])


class LiftGoalEnv(RobosuiteGoalEnv):
    """robosuite ``Lift`` (Panda, one red cube) with a goal image: ``sfplan/Lift-v0``.

    Script: hover 8 cm above the cube (open), descend to the cube centre, close 10 steps,
    lift (gripper site 10 cm above the table top), carry the cube to a seeded point
    (x, y ~ U(-8, 8) cm around the table centre, 10-16 cm above the table top), hold 5
    steps: 59-78 steps in all.
    """

    TASK = "Lift"
    OBJECTS = ("cube_body_id",)

    def _far_distance(self) -> float:
        return max(0.0, self.table_height + 0.04 - self.object_pos("cube_body_id")[2])

    def _script(self, rng: np.random.Generator) -> List[Phase]:
        cube = "cube_body_id"
        lift_z = self.table_height + 0.10  # gripper site (about the cube centre) while lifting
        carry = np.r_[rng.uniform(-0.08, 0.08, 2), self.table_height + rng.uniform(0.10, 0.16)]
        return [
            Phase("hover", lambda e: (_above(e, cube, HOVER_HEIGHT), -1.0), tol=0.01, min_steps=5, max_steps=60),
            Phase("descend", lambda e: (_above(e, cube, 0.0), -1.0), tol=0.006, max_steps=30),
            Phase("grasp", lambda e: (_above(e, cube, 0.0), 1.0), min_steps=10, max_steps=10, freeze=True),
            Phase(
                "lift",
                lambda e: (np.r_[e.eef_pos()[:2], lift_z], 1.0),
                max_steps=40,
                freeze=True,
                done=lambda e: e.object_pos(cube)[2] > lift_z - 0.02,
            ),
            Phase("carry", lambda e: (carry, 1.0), tol=0.01, max_steps=60),
            Phase("hold", lambda e: (carry, 1.0), min_steps=5, max_steps=5),
        ]


class StackGoalEnv(RobosuiteGoalEnv):
    """robosuite ``Stack`` (Panda, red cubeA 4 cm, green cubeB 5 cm) with a goal image:
    ``sfplan/Stack-v0``.

    Script: grasp cubeA as in Lift, lift it until its bottom clears cubeB's top by 3 cm,
    carry it above cubeB, lower it to 5 mm above cubeB, open 8 steps, move the hand 6 cm up.
    """

    TASK = "Stack"
    OBJECTS = ("cubeA_body_id", "cubeB_body_id")
    far_threshold = 0.01
    HALF_A, HALF_B = 0.02, 0.025

    def _start_ok(self) -> bool:
        # The fingers close along world y: cubeB must not sit where a finger comes down
        # beside cubeA (|dx| < 5 cm and |dy| < 10 cm); robosuite's sampler puts it there in
        # about 1 start in 10, and such starts are redrawn.
        self.sync()
        a = self.data.xpos[self._rs.cubeA_body_id]
        b = self.data.xpos[self._rs.cubeB_body_id]
        return not (abs(a[0] - b[0]) < 0.05 and abs(a[1] - b[1]) < 0.10)

    def _far_distance(self) -> float:
        a, b = self.object_pos("cubeA_body_id"), self.object_pos("cubeB_body_id")
        return float(np.linalg.norm(a - (b + np.array([0.0, 0.0, self.HALF_A + self.HALF_B]))))

    def _script(self, rng: np.random.Generator) -> List[Phase]:
        A, B = "cubeA_body_id", "cubeB_body_id"
        hA, hB = self.HALF_A, self.HALF_B
        grasp: dict = {}  # gripper site height above cubeA's centre once grasped

        def a_to_b(e, clearance):  # gripper-site target that puts cubeA's bottom `clearance` above cubeB's top
            b = e.object_pos(B)
            dz = grasp.setdefault("dz", e.eef_pos()[2] - e.object_pos(A)[2])
            return np.r_[b[:2], b[2] + hB + clearance + hA + dz]

        return [
            Phase("hover", lambda e: (_above(e, A, HOVER_HEIGHT), -1.0), tol=0.01, min_steps=5, max_steps=60),
            Phase("descend", lambda e: (_above(e, A, 0.0), -1.0), tol=0.006, max_steps=30),
            Phase("grasp", lambda e: (_above(e, A, 0.0), 1.0), min_steps=10, max_steps=10, freeze=True),
            Phase(
                "lift",
                lambda e: (np.r_[e.eef_pos()[:2], a_to_b(e, 0.03)[2]], 1.0),
                max_steps=40,
                freeze=True,
                done=lambda e: e.object_pos(A)[2] - hA > e.object_pos(B)[2] + hB + 0.02,
            ),
            Phase("carry", lambda e: (a_to_b(e, 0.03), 1.0), tol=0.006, max_steps=60),
            Phase("lower", lambda e: (a_to_b(e, 0.005), 1.0), tol=0.004, max_steps=30),
            Phase("release", lambda e: (e.eef_pos(), -1.0), min_steps=8, max_steps=8, freeze=True),
            Phase("retreat", lambda e: (e.eef_pos() + [0.0, 0.0, 0.06], -1.0), tol=0.01, max_steps=20, freeze=True),
        ]
