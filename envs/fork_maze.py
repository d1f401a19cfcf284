"""A plus-shaped maze whose four rooms are painted anew each episode, seen by a camera that
follows the agent: ``sfplan/ForkMaze-v0``, the memory planning benchmark's task.

The ``recall`` protocol needs memory to plan, by construction:

- the episode starts at the junction after an outbound leg from one room (the goal room);
  the goal image is the view in that room, so it shows the room's colour;
- from the junction no room is in view (the camera sees 1.5 m around the agent; rooms start
  2 m out), and each episode draws the four rooms' colours anew, so no amount of training
  tells the slow model which arm leads to the goal: its imagined arms are equally good
  guesses, and a planner that scores imagined frames against the goal image picks an arm
  at chance (1 in 4);
- the outbound leg showed the goal room and the arm it took. A world model that remembers
  this episode (Temp-LoRA written with the leg) imagines that room's colour down that arm,
  and the planner turns into it; a simulator (the oracle) renders every room as it is.

``near`` goals (random motion from a random start, for data collection and short-range
planning) and the success test are as ``sfplan/MemoryMaze-v0``'s, whose painted-state,
camera and one-step controller this env shares (``MemoryMazeEnv``).
"""
from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np

from sfplan.envs.base import GoalImageEnv, MujocoGoalEnv, smooth_noise
from sfplan.envs.memory_maze import _RADIUS, MemoryMazeEnv, agent_scene_xml
from sfplan.errors import UserError

#: room colours, one per room in an order drawn per episode: four hues far apart, so that an
#: image cost tells a room from the others by colour alone
ROOM_PALETTE = np.array([[0.90, 0.12, 0.12], [0.12, 0.75, 0.12], [0.15, 0.25, 0.95], [0.95, 0.88, 0.10]])
_CORRIDOR_RGB = ((0.62, 0.62, 0.62), (0.52, 0.52, 0.52))  # checkered, so that motion shows
_WALL_RGB = (0.15, 0.15, 0.2)
_CELL = 0.5       # floor cell side (m)
_HALF_W = 0.5     # corridor half width (m): corridors are 1 m wide
_ARM = 2.0        # corridor length from the centre to a room (m)
_ROOM_LEN = 3.0   # room depth along its arm (m)
_ROOM_HALF = 1.5  # room half width across its arm (m)
_WALL_H = 0.6
#: unit vectors of the four arms: east, north, west, south
ARMS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
ROOM_CENTRE = _ARM + _ROOM_LEN / 2  # distance of a room's centre from the junction (m)


def _open_cells() -> tuple[list[tuple[float, float]], list[int]]:
    """Centres (x, y) of the open 0.5 m floor cells and, per cell, its room (0-3: the arm of
    ``ARMS``) or -1 for the junction and corridors."""
    ext = _ARM + _ROOM_LEN
    n = int(round(2 * ext / _CELL))
    centres = -ext + _CELL * (np.arange(n) + 0.5)
    cells, room = [], []
    for x in centres:
        for y in centres:
            for k, (ux, uy) in enumerate(ARMS):
                along, across = x * ux + y * uy, abs(x * uy - y * ux)
                if _ARM < along and across < _ROOM_HALF:
                    cells.append((x, y))
                    room.append(k)
                    break
            else:
                if min(abs(x), abs(y)) < _HALF_W:
                    cells.append((x, y))
                    room.append(-1)
    return cells, room


def build_fork_xml() -> tuple[str, list[int]]:
    """MJCF of the maze (floor cells without contacts, wall blocks on every cell that borders
    an open one, with contacts; the agent and its follow camera as in MemoryMaze) and the
    room of each floor cell (-1: corridor)."""
    cells, room = _open_cells()
    open_set = {(round(x, 3), round(y, 3)) for x, y in cells}
    geoms = []
    for i, ((x, y), r) in enumerate(zip(cells, room)):
        k = int(round((x + y) / _CELL))  # checker parity
        rgb = _CORRIDOR_RGB[k % 2] if r < 0 else (0.5, 0.5, 0.5)
        geoms.append(f'<geom name="cell_{i}" type="box" pos="{x:.3f} {y:.3f} -0.005" size="{_CELL / 2} {_CELL / 2} 0.005" '
                     f'contype="0" conaffinity="0" material="flat" rgba="{rgb[0]} {rgb[1]} {rgb[2]} 1"/>')
    walls = set()
    for x, y in cells:
        for dx in (-_CELL, 0.0, _CELL):
            for dy in (-_CELL, 0.0, _CELL):
                c = (round(x + dx, 3), round(y + dy, 3))
                if c not in open_set:
                    walls.add(c)
    for w, (x, y) in enumerate(sorted(walls)):
        geoms.append(f'<geom name="wall_{w}" type="box" pos="{x:.3f} {y:.3f} {_WALL_H / 2}" '
                     f'size="{_CELL / 2} {_CELL / 2} {_WALL_H / 2}" material="flat" '
                     f'rgba="{_WALL_RGB[0]} {_WALL_RGB[1]} {_WALL_RGB[2]} 1"/>')
    xml = agent_scene_xml("fork_maze", geoms)
    return xml, room


class ForkMazeEnv(MemoryMazeEnv):
    """A point mass in a plus-shaped maze: a junction, four 1 m wide corridors of 2 m and at
    the end of each a 1.5 m x 2 m room whose floor colour is drawn anew every episode.

    - Scene: corridor floors checkered grey, walls dark; the four rooms take the four colours
      of ``ROOM_PALETTE`` in an order drawn at reset from the reset seed and kept
      in ``get_state()`` (as MemoryMaze's paint), so oracle clones render the right rooms.
      Room floors are checkered too (every other cell 15% darker).
    - Agent, actions, camera and dt: as ``MemoryMazeEnv`` (velocity actions, up to 0.1 m per
      step and axis; a 3 m x 3 m view centred on the agent).
    - ``recall`` (this task's protocol: ``sfplan eval env=fork_maze goal=recall``): a room is
      drawn (the goal room); the outbound leg walks from its centre to the junction at full
      speed along the arm (about 34 steps, each a one-step-exact controller action,
      ``track_action``), then waits ``wait_steps`` steps at the junction, so the context frames
      are still and show no direction of travel. The episode starts there; the goal is the
      room's centre, its image the view there. ``reset`` returns the leg as
      ``info["history_frames"]`` / ``info["history_actions"]`` (as MemoryMaze ``retrace``).
      From the junction the rooms are 0.5 m beyond the view's edge.
    - ``near`` (the default, as every task's; collection uses it): a uniformly drawn open cell
      as the start, the goal after 10-20 steps of smooth random actions (redrawn until 2x the
      threshold away): collection and short-range planning.
    - ``past="other"`` (the memory benchmark's control): under ``recall`` the leg in
      ``info["history_frames"]`` / ``info["history_actions"]`` is another episode's (another
      goal room and room order, drawn from the same seed), while the episode itself is
      unchanged; its last frames are the same still junction view, so only a memory of the
      leg can tell the two apart.
    - Success: agent within ``success_threshold = 0.5`` m of the goal (inside the goal room
      under ``recall``).
    """

    goal_protocols = ("recall", "near")
    success_threshold = 0.5
    near_steps = (10, 20)
    wait_steps = 3
    leg_speed = 1.0

    def __init__(self, image_size: int = 64, goal: str = "near", past: str = "own",
                 render_mode: str | None = "rgb_array"):
        GoalImageEnv.__init__(self, image_size=image_size, goal=goal, render_mode=render_mode)
        if past not in ("own", "other"):
            raise UserError(f"past={past!r}: use 'own' (the episode's own leg) or 'other' (another episode's)")
        self.past = past
        xml, room = build_fork_xml()
        model = mujoco.MjModel.from_xml_string(xml)
        MujocoGoalEnv._init_mujoco(self, model, frame_skip=5, camera="follow")
        self._mj_state_size = self._state_size
        cells, _ = _open_cells()
        self.cell_xy = np.asarray(cells)
        self.cell_room = np.asarray(room)
        self._cell_geoms = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"cell_{i}")
                                     for i in range(len(cells))])
        parity = np.rint((self.cell_xy[:, 0] + self.cell_xy[:, 1]) / _CELL).astype(int) % 2
        self._shade = np.where(parity == 1, 0.85, 1.0)
        self._colours = np.arange(4, dtype=np.int64)
        self._paint(self._colours)

    # ---- colours (MemoryMazeEnv's get_state/set_state keep them in the state) ----------
    def _paint(self, idx: np.ndarray) -> None:
        """Paint the four rooms (east, north, west, south) with ``ROOM_PALETTE[idx]``."""
        idx = np.asarray(idx, np.int64)
        self._colours = idx.copy()
        rooms = self.cell_room >= 0
        rgb = ROOM_PALETTE[idx[self.cell_room[rooms]]] * self._shade[rooms, None]
        self.model.geom_rgba[self._cell_geoms[rooms], :3] = rgb

    @property
    def colours(self) -> np.ndarray:
        """Palette indices of the four rooms (east, north, west, south): (4,) int64."""
        return self._colours.copy()

    def room_of(self, xy: np.ndarray) -> int:
        """The room (0-3, as ``ARMS``) containing ``xy``, or -1 outside every room."""
        d = np.abs(self.cell_xy - np.asarray(xy)[None]).max(axis=1)
        i = int(np.argmin(d))
        return int(self.cell_room[i]) if d[i] <= _CELL / 2 + 1e-9 else -1

    # ---- task hooks --------------------------------------------------------------
    def _place(self, paint: np.ndarray, xy: np.ndarray) -> None:
        """Paint the rooms and put the agent at rest at ``xy`` (m)."""
        self._paint(paint)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:2] = xy
        mujoco.mj_forward(self.model, self.data)
        self._stale = False

    def _reset_sim(self, rng: np.random.Generator) -> None:
        paint = rng.permutation(len(ROOM_PALETTE))
        # a uniformly drawn open cell, jittered inside it (clear of the walls by the radius)
        c = self.cell_xy[int(rng.integers(len(self.cell_xy)))]
        self._place(paint, c + rng.uniform(-1, 1, 2) * (_CELL / 2 - _RADIUS) * 0.5)

    def _goal_actions(self, rng: np.random.Generator) -> np.ndarray:
        start, p0 = self.get_state(), self.agent_xy()
        best, best_d = None, -1.0
        for _ in range(10):
            actions = smooth_noise(rng, int(rng.integers(self.near_steps[0], self.near_steps[1] + 1)), 2)
            for a in actions:
                self.sim_step(a)
            d = float(np.linalg.norm(self.agent_xy() - p0))
            self.set_state(start)
            if d > best_d:
                best, best_d = actions, d
            if d >= 2 * self.success_threshold:
                break
        return best

    def _explore_route(self, rng: np.random.Generator) -> np.ndarray:
        """Waypoints (K, 2) for ``policy=explore``: onto the axis of the arm the agent is in,
        to the junction, then down a random arm to a random depth (corridor or room) and, in a
        room, to a random point across it: the passages from a room to the junction and from
        the junction into a room that the recall task plans through."""
        p = self.agent_xy()
        arm = int(np.argmax(ARMS @ p))
        along = float(ARMS[arm] @ p)
        route = [ARMS[arm] * along] if along > _HALF_W else []
        route.append(np.zeros(2))
        j = int(rng.integers(len(ARMS)))
        depth = float(rng.uniform(_ARM - 1.0, _ARM + _ROOM_LEN - 0.5))
        route.append(ARMS[j] * depth)
        if depth > _ARM + 0.5:
            across = np.array([-ARMS[j][1], ARMS[j][0]])
            route.append(ARMS[j] * depth + across * rng.uniform(-1, 1) * (_ROOM_HALF - 0.5))
        return np.stack(route)

    def _drive_action(self, target_xy: np.ndarray, speed: float) -> np.ndarray | None:
        """The velocity command (2,) toward ``target_xy`` at ``speed`` (a fraction of the top
        speed), slowing inside the last step; None once the agent is within 0.1 m."""
        d = np.asarray(target_xy, np.float64) - self.agent_xy()
        dist = float(np.linalg.norm(d))
        if dist < 0.1:
            return None
        top = 2.0 * self.dt  # m per step at |action| = 1 (velocity actuators: 2 m/s)
        return (d / dist * min(float(speed), dist / top)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.goal_protocol != "recall":
            return GoalImageEnv.reset(self, seed=seed, options=options)
        n_waypoints = self._waypoints_option(options)
        gym.Env.reset(self, seed=seed)  # seeding only: the leg replaces GoalImageEnv's goal drive
        rng = self.np_random
        paint, self.goal_room = rng.permutation(len(ROOM_PALETTE)), int(rng.integers(4))
        if self.past == "other":  # a leg that does not show the goal room's colour down its arm
            other_paint, other_room = paint, self.goal_room
            while other_room == self.goal_room and other_paint[other_room] == paint[self.goal_room]:
                other_paint, other_room = rng.permutation(len(ROOM_PALETTE)), int(rng.integers(4))
            past = self._leg(other_paint, other_room)
        frames, actions, states = self._leg(paint, self.goal_room)  # leaves the agent at the junction
        if self.past == "own":
            past = frames, actions, states
        self._goal, self._goal_state = ARMS[self.goal_room] * ROOM_CENTRE, states[0]
        self._goal_pixels = frames[0]
        info = self._info()
        if n_waypoints:
            self._goal_path = states[::-1][1:]
            info["goal_waypoints"] = self._render_waypoints(n_waypoints)
            self.set_state(states[-1])
        info["history_frames"], info["history_actions"] = past[0], past[1]
        return self._obs(), info

    def _leg(self, paint: np.ndarray, room: int):
        """Paint the rooms, walk from the centre of ``room`` to the junction and wait there ->
        (frames (T+1, H, W, 3) uint8, the room view first; actions (T, 2) float32; states
        [T+1]). Leaves the simulator at the junction."""
        self._place(paint, ARMS[room] * ROOM_CENTRE)
        states, frames, actions = [self.get_state()], [self.render_pixels()], []
        step = self.leg_speed * 2.0 * self.dt  # m per step at leg_speed (2 m/s at |action| = 1)
        n = int(np.ceil(ROOM_CENTRE / step))
        for k in range(1, n + 1 + self.wait_steps):
            a = self.track_action(ARMS[room] * max(0.0, ROOM_CENTRE - k * step))
            self.sim_step(a)
            actions.append(a)
            states.append(self.get_state())
            frames.append(self.render_pixels())
        return np.stack(frames), np.asarray(actions, np.float32), states
