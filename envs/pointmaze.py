"""PointMaze with a goal image: ``sfplan/PointMazeUMaze-v0``, ``sfplan/PointMazeMedium-v0``."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import deque

import gymnasium_robotics
import mujoco
import numpy as np
from gymnasium_robotics.envs.maze import maps

from sfplan.envs.base import PEER_PROTOCOLS, MujocoGoalEnv
from sfplan.envs.rendering import free_camera
from sfplan.errors import UserError

POINT_XML = os.path.join(os.path.dirname(gymnasium_robotics.__file__), "envs", "assets", "point", "point.xml")
MAZES = {"UMaze": maps.U_MAZE, "Medium": maps.MEDIUM_MAZE}
_SCALING = 1.0  # gymnasium-robotics PointMaze: maze_size_scaling=1, maze_height=0.4
_HEIGHT = 0.4


def build_maze_xml(maze_map: list, scaling: float = _SCALING, height: float = _HEIGHT) -> str:
    """PointMaze's MuJoCo XML as gymnasium-robotics' ``Maze.make_maze`` builds it (same
    wall boxes), as a string: no shared temporary file, and without the red ``target``
    site (the goal is an image here)."""
    tree = ET.parse(POINT_XML)
    worldbody = tree.find(".//worldbody")
    rows, cols = len(maze_map), len(maze_map[0])
    for i in range(rows):
        for j in range(cols):
            if maze_map[i][j] == 1:
                x = (j + 0.5) * scaling - cols / 2 * scaling
                y = rows / 2 * scaling - (i + 0.5) * scaling
                ET.SubElement(
                    worldbody, "geom", name=f"block_{i}_{j}",
                    pos=f"{x} {y} {height / 2 * scaling}",
                    size=f"{0.5 * scaling} {0.5 * scaling} {height / 2 * scaling}",
                    type="box", material="", contype="1", conaffinity="1", rgba="0.7 0.5 0.3 1.0",
                )
    return ET.tostring(tree.getroot(), encoding="unicode")


class PointMazeGoalEnv(MujocoGoalEnv):
    """gymnasium-robotics PointMaze (force-actuated ball) with a goal image.

    Args:
        maze: ``"UMaze"`` (5x5 cells) or ``"Medium"`` (8x8 cells), gymnasium-robotics' maps.
        frame_skip: simulator steps (0.01 s each) per env step, the action held over them
            (an action repeat). gymnasium-robotics uses 1; at 64x64 a full push then moves
            the ball ~1 px per 8-step model chunk, below what a learned model can resolve,
            so sfplan's PointMaze configs use 4 (``configs/env/pointmaze_*.yaml``). Goals do
            not depend on it: they are driven at the simulator rate (below).

    - Model and physics: gymnasium-robotics' ``point.xml`` plus the maze's wall boxes, as
      ``PointMaze_*-v3`` builds them (1 m cells, walls 0.4 m high); dt 0.01 s x
      ``frame_skip``; action Box(-1, 1, (2,)) forces (gear 100); each env step clips the
      ball's velocity to [-5, 5] first, as ``PointEnv.step`` does.
    - Start (seeded): a uniformly random free cell plus ``U(-0.25, 0.25)`` m noise per
      axis (gymnasium-robotics' ``position_noise_range``), at rest.
    - Camera: orthographic, straight down, exactly the whole maze (outer walls included);
      at 64x64 a cell is 12.8 px (UMaze) / 8 px (Medium). The ball is drawn by its green
      0.2 m ``particle_site``. The red ``target`` site is left out, so the image shows
      only the maze and the ball; the goal image shows the ball where it should go.
    - Goal (BFS over free cells, so it is reachable and never in a wall): ``near``: a cell
      1-2 BFS steps from the start cell, driven towards along the BFS path by a velocity
      controller for 60-120 steps (wherever the ball is then is the goal); cells 2 steps
      away are preferred, and the draw is repeated (10 tries, the farthest kept) until the
      ball moved at least ``near_min_moved = 1.35`` m, three success radii: uniform random
      forces then hold the ball inside the radius for 10 steps in 8% of UMaze episodes
      (13% in Medium; 20 steps: 8%), against 18% (30%) for goals 0.9 m away and half the
      time under ``first`` for goals 0.6 m away (``benchmarks/results/protocols``).
      The controller acts every simulator step (100 Hz) whatever ``frame_skip`` is, so a
      seed gives the same start and goal at any ``frame_skip``; ``near_steps`` and
      ``far_max_steps`` count simulator steps.
      ``far``: a cell among the farthest (BFS distance >= 60% of the largest from the
      start cell), reached by following the BFS path with the same controller until the
      ball rests within 0.1 m of its centre (at most 1000 steps).
      ``peer``: 25 env steps of smooth random forces, as they come (``GoalImageEnv._peer_actions``).
    - Success: ``info["distance"]`` = ball-to-goal-ball (x, y) distance below
      ``success_threshold = 0.45`` m, gymnasium-robotics' value for PointMaze.
    """

    success_threshold = 0.45
    goal_protocols = PEER_PROTOCOLS
    near_steps = (60, 120)
    near_min_moved = 1.35  # 3x the threshold
    far_max_steps = 1000

    def __init__(self, maze: str = "UMaze", image_size: int = 64, goal: str = "near", render_mode: str | None = "rgb_array",
                 frame_skip: int = 1):
        if maze not in MAZES:
            raise ValueError(f"unknown maze {maze!r}: use one of {sorted(MAZES)}")
        if int(frame_skip) < 1:
            raise UserError(f"frame_skip must be >= 1 (simulator steps per env step), got {frame_skip}")
        super().__init__(image_size=image_size, goal=goal, render_mode=render_mode)
        self.maze_name = maze
        self.maze_map = [[1 if c == 1 else 0 for c in row] for row in MAZES[maze]]
        self.rows, self.cols = len(self.maze_map), len(self.maze_map[0])
        self.free_cells = [(i, j) for i in range(self.rows) for j in range(self.cols) if self.maze_map[i][j] == 0]
        model = mujoco.MjModel.from_xml_string(build_maze_xml(self.maze_map))
        extent = max(self.rows, self.cols) * _SCALING
        camera = free_camera(lookat=(0.0, 0.0, 0.0), distance=extent + 2.0, azimuth=90.0, elevation=-90.0)
        self._init_mujoco(model, frame_skip=int(frame_skip), camera=camera, ortho_extent=extent)

    # ---- maze geometry -------------------------------------------------------------
    def cell_to_xy(self, cell: tuple[int, int]) -> np.ndarray:
        """Centre (x, y) in metres of cell (row, col)."""
        i, j = cell
        return np.array([(j + 0.5) * _SCALING - self.cols / 2 * _SCALING, self.rows / 2 * _SCALING - (i + 0.5) * _SCALING])

    def xy_to_cell(self, xy: np.ndarray) -> tuple[int, int]:
        """Cell (row, col) that contains (x, y)."""
        i = int(np.floor((self.rows / 2 * _SCALING - xy[1]) / _SCALING))
        j = int(np.floor((xy[0] + self.cols / 2 * _SCALING) / _SCALING))
        return i, j

    def bfs(self, start: tuple[int, int]) -> dict:
        """BFS over free cells: {cell: (distance, parent)}."""
        out = {start: (0, None)}
        queue = deque([start])
        while queue:
            c = queue.popleft()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                n = (c[0] + di, c[1] + dj)
                if 0 <= n[0] < self.rows and 0 <= n[1] < self.cols and self.maze_map[n[0]][n[1]] == 0 and n not in out:
                    out[n] = (out[c][0] + 1, c)
                    queue.append(n)
        return out

    def path(self, start: tuple[int, int], goal: tuple[int, int]) -> list:
        """Cells from ``start`` (excluded) to ``goal`` (included) along a shortest path."""
        tree = self.bfs(start)
        cells = []
        c = goal
        while c != start:
            cells.append(c)
            c = tree[c][1]
        return cells[::-1]

    # ---- task hooks --------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        mujoco.mj_resetData(self.model, self.data)
        cell = self.free_cells[int(rng.integers(len(self.free_cells)))]
        self.data.qpos[:2] = self.cell_to_xy(cell) + rng.uniform(-0.25, 0.25, 2) * _SCALING
        mujoco.mj_forward(self.model, self.data)
        self._stale = False

    def sim_step(self, action: np.ndarray, nstep: int | None = None) -> None:
        # PointEnv.step: clip the action, clip the velocity to [-5, 5], then step.
        np.clip(self.data.qvel, -5.0, 5.0, out=self.data.qvel)
        self.data.ctrl[:] = np.clip(action, -1.0, 1.0)
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip if nstep is None else nstep)
        self._stale = True

    def _drive_to_goal(self, rng: np.random.Generator) -> None:
        if self.goal_protocol == "peer":  # env-rate actions
            return super()._drive_to_goal(rng)
        # _goal_actions are simulator-rate (one per 0.01 s): replay them one simulator step
        # each, recording the path once per env step (the waypoint images' time base).
        actions = self._goal_actions(rng)
        for t, a in enumerate(actions, start=1):
            self.sim_step(np.asarray(a, dtype=np.float64), nstep=1)
            if t % self.frame_skip == 0 or t == len(actions):  # the goal state always ends the path
                self._goal_path.append(self.get_state())

    def ball_xy(self) -> np.ndarray:
        """Ball (x, y) in metres (its slide joints are the world position)."""
        return self.data.qpos[:2].copy()

    def _goal_descriptor(self) -> np.ndarray:
        return self.ball_xy()

    def _distance(self, goal: np.ndarray) -> float:
        return float(np.linalg.norm(self.ball_xy() - goal))

    def _controller(self, waypoints: list) -> np.ndarray:
        """Velocity-tracking PD action towards the current waypoint (pops reached ones)."""
        pos, vel = self.data.qpos[:2], self.data.qvel[:2]
        while len(waypoints) > 1 and np.linalg.norm(waypoints[0] - pos) < 0.35:
            waypoints.pop(0)
        delta = waypoints[0] - pos
        dist = np.linalg.norm(delta)
        v_des = delta / max(dist, 1e-6) * min(3.0, 3.0 * dist)  # at most 3 m/s
        return np.clip(1.0 * (v_des - vel), -1.0, 1.0)

    def _drive(self, target: tuple[int, int], steps: int, stop_at_rest: bool) -> list:
        start_cell = self.xy_to_cell(self.ball_xy())
        waypoints = [self.cell_to_xy(c) for c in self.path(start_cell, target)] or [self.cell_to_xy(target)]
        actions = []
        for _ in range(steps):
            a = self._controller(waypoints)
            self.sim_step(a, nstep=1)
            actions.append(a)
            if stop_at_rest and len(waypoints) == 1 and np.linalg.norm(waypoints[0] - self.ball_xy()) < 0.1 \
                    and np.linalg.norm(self.data.qvel[:2]) < 0.2:
                break
        return actions

    def _goal_actions(self, rng: np.random.Generator) -> np.ndarray:
        start = self.get_state()
        p0 = self.ball_xy()
        start_cell = self.xy_to_cell(p0)
        tree = self.bfs(start_cell)
        if self.goal_protocol == "far":
            far = max(d for d, _ in tree.values())
            cands = sorted(c for c, (d, _) in tree.items() if d >= max(1, int(np.ceil(0.6 * far))))
            target = cands[int(rng.integers(len(cands)))]
            actions = self._drive(target, self.far_max_steps, stop_at_rest=True)
            self.set_state(start)
            return np.asarray(actions)
        cands = sorted(c for c, (d, _) in tree.items() if d == 2) or sorted(c for c, (d, _) in tree.items() if d == 1)
        best, best_moved = None, -1.0
        for _ in range(10):
            target = cands[int(rng.integers(len(cands)))]
            steps = int(rng.integers(self.near_steps[0], self.near_steps[1] + 1))
            actions = self._drive(target, steps, stop_at_rest=False)
            moved = float(np.linalg.norm(self.ball_xy() - p0))
            self.set_state(start)
            if moved > best_moved:
                best, best_moved = actions, moved
            if moved >= self.near_min_moved:
                break
        return np.asarray(best)
