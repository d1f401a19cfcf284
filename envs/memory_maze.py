"""A point mass in an arena with per-episode random colours, seen by a camera that follows
it: ``sfplan/MemoryMaze-v0``, the task of the memory benchmark.

Episodic memory only helps where the slow (trained) model cannot know the scene from
training alone and the current context frames do not show it. Here both hold:

- every episode paints the arena anew from its reset seed (each floor tile and each wall
  block draws a colour), so no amount of training tells the model what an unseen part of
  *this* episode's arena looks like;
- the camera rides on the agent and shows a 3 m x 3 m window of the 8 m x 8 m arena, so
  scenery seen on the way out leaves the view; on the way back it is predictable only
  from this episode's earlier frames (memory), not from the last few (context).

See ``MemoryMazeEnv`` for the geometry, ``Wanderer`` for the outbound motion and
``MemoryMazeEnv.track_action`` for the controller that retraces a recorded path (used by
``policy=retrace`` in ``sfplan.data.policies`` and by ``benchmarks/memory_benchmark.py``).
"""
from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np

from sfplan.envs.base import MujocoGoalEnv

#: floor-tile palette (RGB in [0, 1]): 8 hues of similar, medium brightness.
FLOOR_PALETTE = np.array([
    [0.80, 0.30, 0.30], [0.85, 0.60, 0.25], [0.80, 0.80, 0.30], [0.35, 0.70, 0.35],
    [0.30, 0.70, 0.75], [0.30, 0.40, 0.85], [0.60, 0.35, 0.80], [0.55, 0.55, 0.55],
])
#: wall-block palette: darker, saturated colours, so walls read apart from the floor.
WALL_PALETTE = np.array([
    [0.55, 0.05, 0.05], [0.05, 0.35, 0.05], [0.05, 0.10, 0.50], [0.45, 0.35, 0.00],
    [0.35, 0.00, 0.40], [0.00, 0.35, 0.40],
])

_TILE = 0.5        # floor tile side (m)
_CELLS = 16        # tiles per arena side: the arena is 8 m x 8 m
_HALF = _TILE * _CELLS / 2
_WALL_T = 0.5      # wall block thickness (m), one block per tile along each side (+ corners)
_WALL_H = 0.6      # wall height (m)
_RADIUS = 0.15     # agent (sphere) radius (m)
_CAM_HEIGHT = 3.0  # camera height above the agent centre (m)
_VIEW = 3.0        # width of the floor seen by the camera (m)
_MAX_SPEED = 2.0   # m/s at |action| = 1 (per axis)


def build_arena_xml() -> str:
    """MJCF of the arena: 16x16 visual floor tiles (no contacts), 68 wall blocks (16 per
    side + 4 corners, with contacts), the agent (a sphere on x/y slide joints driven by
    velocity actuators) and its follow camera. Colours are placeholders: the env paints
    them per episode."""
    geoms = []
    for i in range(_CELLS):
        for j in range(_CELLS):
            x = -_HALF + (j + 0.5) * _TILE
            y = _HALF - (i + 0.5) * _TILE
            geoms.append(f'<geom name="tile_{i}_{j}" type="box" pos="{x:.3f} {y:.3f} -0.005" '
                         f'size="{_TILE / 2:.3f} {_TILE / 2:.3f} 0.005" contype="0" conaffinity="0" material="flat"/>')
    w = 0
    off = _HALF + _WALL_T / 2
    # blocks along each side (k = 0..15), then the 4 corners
    spots = [(-_HALF + (k + 0.5) * _TILE, s * off) for s in (1, -1) for k in range(_CELLS)]
    spots += [(s * off, -_HALF + (k + 0.5) * _TILE) for s in (1, -1) for k in range(_CELLS)]
    spots += [(sx * off, sy * off) for sx in (1, -1) for sy in (1, -1)]
    for x, y in spots:
        geoms.append(f'<geom name="wall_{w}" type="box" pos="{x:.3f} {y:.3f} {_WALL_H / 2:.3f}" '
                     f'size="{_WALL_T / 2:.3f} {_WALL_T / 2:.3f} {_WALL_H / 2:.3f}" material="flat"/>')
        w += 1
    return agent_scene_xml("memory_maze", geoms)


def agent_scene_xml(name: str, geoms: list[str]) -> str:
    """MJCF of a scene of ``geoms`` (MJCF lines: floor and walls) with the point-mass agent:
    a sphere on x/y slide joints with velocity actuators (2 m/s per unit action, 5 ms time
    constant), no gravity, and its ``follow`` camera looking straight down at a
    ``_VIEW`` x ``_VIEW`` m patch of floor."""
    fovy = float(np.degrees(2 * np.arctan(_VIEW / 2 / (_CAM_HEIGHT + _RADIUS))))
    kv = 200.0 / 0.5**2  # gear 0.5 -> damping kv * gear^2 = 200 N s/m on a 1 kg mass: 5 ms time constant
    return f"""
<mujoco model="{name}">
  <compiler angle="radian"/>
  <option timestep="0.01" integrator="implicitfast" gravity="0 0 0"/>
  <visual>
    <headlight ambient="0.55 0.55 0.55" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <rgba haze="0.1 0.1 0.1 1"/>
  </visual>
  <asset><material name="flat" specular="0" shininess="0" reflectance="0"/></asset>
  <worldbody>
    <geom name="ground" type="plane" pos="0 0 -0.02" size="20 20 0.1" rgba="0.12 0.12 0.12 1"
          contype="0" conaffinity="0" material="flat"/>
    {chr(10).join(geoms)}
    <body name="agent" pos="0 0 {_RADIUS}">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <geom name="agent" type="sphere" size="{_RADIUS}" mass="1" rgba="0.97 0.97 0.97 1" material="flat"/>
      <camera name="follow" pos="0 0 {_CAM_HEIGHT}" xyaxes="1 0 0 0 1 0" fovy="{fovy:.4f}"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="x" kv="{kv}" gear="0.5" ctrlrange="-1 1" ctrllimited="true"/>
    <velocity name="vy" joint="y" kv="{kv}" gear="0.5" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


class Wanderer:
    """Smooth exploratory motion that keeps clear of the walls: the heading does a random
    walk (``turn_std`` rad per step), the speed is ``speed`` of the maximum, and near the
    walls the heading is bent towards the centre (so paths go out and away instead of
    grinding along a wall).

    ``act(xy)`` -> (2,) action in [-1, 1] for an agent at ``xy`` (m).

    Measured (30 retrace episodes, 32 steps out): the agent ends 2.3 m (mean; min 1.6 m)
    from its start, and on average 21% (at most 41%) of the start's 3 m view is still in
    the turn-around view; ``turn_std`` 0.25 gives 2.05 m and 28%. The speed stays at 0.8
    so that a return step can always undo an outbound step (``track_action``)."""

    def __init__(self, rng: np.random.Generator, speed: float = 0.8, turn_std: float = 0.1,
                 margin: float = 1.0):
        self.rng = rng
        self.speed = float(speed)
        self.turn_std = float(turn_std)
        self.soft = _HALF - float(margin)  # inside |x|, |y| <= soft the walk is free
        self.heading = float(rng.uniform(-np.pi, np.pi))

    def act(self, xy: np.ndarray) -> np.ndarray:
        self.heading += self.turn_std * float(self.rng.standard_normal())
        d = np.array([np.cos(self.heading), np.sin(self.heading)])
        ahead = np.asarray(xy, np.float64) + 0.8 * d  # where the agent is heading, 0.8 m on
        over = np.maximum(np.abs(ahead) - self.soft, 0.0)
        if np.any(over > 0):  # bend towards the centre, harder the further over
            d = d - 3.0 * np.sign(ahead) * over
            self.heading = float(np.arctan2(d[1], d[0]))
            d = np.array([np.cos(self.heading), np.sin(self.heading)])
        return np.clip(self.speed * d, -1.0, 1.0)


class MemoryMazeEnv(MujocoGoalEnv):
    """A point mass in an 8 m x 8 m arena whose colours are drawn anew every episode, seen
    from above by a camera that follows it.

    - Scene: 16 x 16 floor tiles of 0.5 m, each a colour of ``FLOOR_PALETTE`` (8 medium
      hues), inside 68 wall blocks (0.5 m, 0.6 m high; 16 per side + 4 corners), each a
      colour of ``WALL_PALETTE`` (6 dark hues). Both are drawn uniformly at reset from the
      reset seed (``env.reset(seed=s)``): the same seed paints the same arena, another
      seed (almost surely) another one. The colour indices are part of ``get_state()``
      (appended to MuJoCo's state), so ``set_state`` of a recorded state also restores
      the paint, and ``OracleWorldModel`` clones render the right arena.
    - Agent: a white sphere (radius 0.15 m) on x/y slide joints with velocity actuators:
      action Box(-1, 1, (2,)) is the commanded velocity, 2 m/s per unit per axis (5 ms
      time constant, no gravity, contacts with the walls only). ``frame_skip=5`` of
      0.01 s: dt 0.05 s, so up to 0.1 m (about 2 px at 64x64) per step and axis.
    - Camera (what the agent sees): ``follow``, a perspective camera fixed 3 m above the
      agent, looking straight down, image up = world +y; it sees a 3 m x 3 m patch of
      floor (6 x 6 tiles, about 10.7 px per tile at 64x64) with the agent always in the
      centre. Wall tops nearer the camera look larger, and their sides show at the
      view's edge. The arena is 8 m across, so a few metres of travel take the start's
      scenery out of view.
    - Start (seeded): uniform in the central 5 m x 5 m, at rest.
    - Goal: the agent's position after ``Wanderer`` motion from the start, 10-20 steps
      (``near``) or 100-160 steps (``far``), redrawn until it is at least 2x the threshold
      from the start. The goal image is the camera view there: "go to where this is".
      ``near`` is shorter than the other tasks' 25-50 steps on purpose: 25-50 steps take
      the agent 2.4 m away on average, where the goal view shares almost nothing with the
      start view and an image cost cannot tell a direction (oracle CEM: 0/2); 10-20 steps
      keep the goal view overlapping the start view. ``far`` goals are out of view: the
      agent has to have seen (remembered) the way.
    - ``retrace`` (this task's own protocol, "go back to where you started"): the episode
      starts after an outbound ``Wanderer`` leg of 24-40 steps (redrawn until it ends at
      least 2x the threshold away); the goal is the start, its image the view there.
      ``reset`` returns the leg in ``info["history_frames"]`` (T+1, H, W, 3: start view
      first, current view last) and ``info["history_actions"]`` (T, 2), which the runner
      writes into an episodic memory before planning; with ``options={"waypoints": n}``
      the waypoints are views of the way back (the leg reversed), so the subgoals are
      places the agent has seen.
    - Success: ``info["distance"]`` = agent-to-goal (x, y) distance below
      ``success_threshold = 0.25`` m (about 5 px at 64x64; half a tile).
    """

    goal_protocols = ("near", "far", "retrace")
    success_threshold = 0.25
    near_steps = (10, 20)
    far_steps = (100, 160)
    retrace_steps = (24, 40)
    start_half = 2.5

    def __init__(self, image_size: int = 64, goal: str = "near", render_mode: str | None = "rgb_array"):
        super().__init__(image_size=image_size, goal=goal, render_mode=render_mode)
        model = mujoco.MjModel.from_xml_string(build_arena_xml())
        self._init_mujoco(model, frame_skip=5, camera="follow")
        gid = lambda n: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, n)  # noqa: E731
        self.tile_geoms = np.array([gid(f"tile_{i}_{j}") for i in range(_CELLS) for j in range(_CELLS)])
        self.wall_geoms = np.array([gid(f"wall_{k}") for k in range(4 * _CELLS + 4)])
        self._mj_state_size = self._state_size
        self._colours = np.zeros(len(self.tile_geoms) + len(self.wall_geoms), np.int64)
        self._paint(self._colours)

    # ---- colours -----------------------------------------------------------------
    def _paint(self, idx: np.ndarray) -> None:
        idx = np.asarray(idx, np.int64)
        nt = len(self.tile_geoms)
        self._colours = idx.copy()
        self.model.geom_rgba[self.tile_geoms, :3] = FLOOR_PALETTE[idx[:nt]]
        self.model.geom_rgba[self.wall_geoms, :3] = WALL_PALETTE[idx[nt:]]
        self.model.geom_rgba[self.tile_geoms, 3] = 1.0
        self.model.geom_rgba[self.wall_geoms, 3] = 1.0

    @property
    def colours(self) -> np.ndarray:
        """Palette indices of this episode's paint: (16*16 tiles (row-major from the
        north-west corner), then 68 walls) int64."""
        return self._colours.copy()

    # ---- state: MuJoCo's, plus the paint --------------------------------------------
    def get_state(self) -> np.ndarray:
        """MuJoCo's full physics state followed by the colour indices (as float64)."""
        return np.concatenate([super().get_state(), self._colours.astype(np.float64)])

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        n = self._mj_state_size + len(self._colours)
        if state.shape != (n,):
            raise ValueError(f"state has shape {state.shape}; MemoryMazeEnv expects ({n},)")
        idx = state[self._mj_state_size:]
        if not np.array_equal(idx, self._colours):
            self._paint(idx.astype(np.int64))
        super().set_state(state[: self._mj_state_size])

    # ---- task hooks --------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        nt, nw = len(self.tile_geoms), len(self.wall_geoms)
        self._paint(np.concatenate([rng.integers(len(FLOOR_PALETTE), size=nt),
                                    rng.integers(len(WALL_PALETTE), size=nw)]))
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:2] = rng.uniform(-self.start_half, self.start_half, 2)
        mujoco.mj_forward(self.model, self.data)
        self._stale = False

    def agent_xy(self) -> np.ndarray:
        """Agent (x, y) in metres (its slide joints are the world offset from the origin)."""
        return self.data.qpos[:2].copy()

    def _goal_descriptor(self) -> np.ndarray:
        return self.agent_xy()

    def _distance(self, goal: np.ndarray) -> float:
        return float(np.linalg.norm(self.agent_xy() - goal))

    def make_wanderer(self, rng: np.random.Generator) -> Wanderer:
        """The outbound motion of goals and of ``policy=retrace`` (see ``Wanderer``)."""
        return Wanderer(rng)

    def _far_leg(self, rng: np.random.Generator, steps: tuple[int, int], record: bool = False):
        """A ``Wanderer`` leg of U{steps} steps from the current state, redrawn (up to 10
        times, the state restored after each) until it ends at least 2x the threshold away;
        else the farthest. -> (actions [(2,)], states [start, ...], frames [...]); states and
        frames (after each step) only with ``record``. Leaves the simulator at the start."""
        start = self.get_state()
        p0 = self.agent_xy()
        lo, hi = steps
        best, best_d = None, -1.0
        for _ in range(10):
            wander = self.make_wanderer(rng)
            actions, states, frames = [], [start], []
            for _ in range(int(rng.integers(lo, hi + 1))):
                a = wander.act(self.agent_xy())
                self.sim_step(a)
                actions.append(a)
                if record:
                    states.append(self.get_state())
                    frames.append(self.render_pixels())
            d = float(np.linalg.norm(self.agent_xy() - p0))
            self.set_state(start)
            if d > best_d:
                best, best_d = (actions, states, frames), d
            if d >= 2 * self.success_threshold:
                break
        return best

    def _goal_actions(self, rng: np.random.Generator) -> np.ndarray:
        steps = self.near_steps if self.goal_protocol == "near" else self.far_steps
        return np.asarray(self._far_leg(rng, steps)[0])

    # ---- retracing ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.goal_protocol != "retrace":
            return super().reset(seed=seed, options=options)
        n_waypoints = self._waypoints_option(options)
        gym.Env.reset(self, seed=seed)  # seeding only: this protocol replaces GoalImageEnv's goal drive
        rng = self.np_random
        self._reset_sim(rng)
        self._goal, self._goal_state = self._goal_descriptor(), self.get_state()
        self._goal_pixels = self.render_pixels()
        actions, states, frames = self._far_leg(rng, self.retrace_steps, record=True)  # the outbound leg
        self.set_state(states[-1])  # the episode starts where the leg ends
        frames = [self._goal_pixels.copy(), *frames]
        info = self._info()
        if n_waypoints:
            self._goal_path = states[::-1][1:]  # the way back: leg states reversed, ending at the start
            info["goal_waypoints"] = self._render_waypoints(n_waypoints)
            self.set_state(states[-1])  # _render_waypoints left it on the path
        info["history_frames"] = np.stack(frames)
        info["history_actions"] = np.asarray(actions, np.float32)
        return self._obs(), info

    def track_action(self, target_xy: np.ndarray) -> np.ndarray:
        """The action (2,) in [-1, 1] that brings the agent from its current state as close
        as one step can to ``target_xy`` (m).

        Exact one-step inverse: away from contacts the step is affine in the action and
        the axes are independent, so two trial steps from the current state (action 0 and
        action 1, restored after each) give the displacement per unit action; the result
        is clipped to the bounds (and is exact whenever the target is reachable in a step).
        Used to retrace a recorded path, so that return frames repeat outbound frames."""
        start = self.get_state()
        p = self.agent_xy()
        self.sim_step(np.zeros(2))
        d0 = self.agent_xy() - p
        self.set_state(start)
        self.sim_step(np.ones(2))
        d1 = self.agent_xy() - p
        self.set_state(start)
        gain = np.where(np.abs(d1 - d0) > 1e-9, d1 - d0, 1e-9)
        return np.clip((np.asarray(target_xy, np.float64) - p - d0) / gain, -1.0, 1.0)
