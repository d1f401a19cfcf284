"""Goal-image task contract: every registered MuJoCo task and GoalImageWrapper."""
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sfplan.envs import TASKS, GoalImageEnv, GoalImageWrapper, make_env

MUJOCO_TASKS = ["sfplan/Reacher-v0", "sfplan/Pusher-v0", "sfplan/PointMazeUMaze-v0", "sfplan/PointMazeMedium-v0",
                "sfplan/MemoryMaze-v0", "sfplan/ForkMaze-v0"]


@pytest.fixture(scope="module", params=MUJOCO_TASKS)
def task(request):
    env = gym.make(request.param, image_size=64)
    yield request.param, env
    env.close()


def test_registry_lists_tasks():
    for tid in MUJOCO_TASKS:
        assert tid in TASKS and "success" in TASKS[tid]
        assert tid in gym.registry
    with pytest.raises(ValueError, match="sfplan/Reacher-v0"):
        make_env("sfplan/NoSuchTask-v0")


def test_check_env(task):
    _, env = task
    assert isinstance(env.unwrapped, GoalImageEnv)
    check_env(env.unwrapped, skip_render_check=True)  # warnings (e.g. Pusher's Box(-2, 2)) are fine


def test_observation_contract(task):
    _, env = task
    obs, info = env.reset(seed=0)
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(obs["desired_goal"], info["goal_pixels"])
    assert info["state"].dtype == np.float64
    assert isinstance(info["is_success"], bool) and isinstance(info["distance"], float)
    obs2, reward, terminated, truncated, info2 = env.step(env.action_space.sample())
    assert reward == -info2["distance"] and not terminated
    np.testing.assert_array_equal(obs2["desired_goal"], obs["desired_goal"])


def test_seeded_goals(task):
    _, env = task
    env_b = env.unwrapped
    obs1, info1 = env.reset(seed=7)
    obs2, info2 = env.reset(seed=7)
    np.testing.assert_array_equal(obs1["pixels"], obs2["pixels"])
    np.testing.assert_array_equal(obs1["desired_goal"], obs2["desired_goal"])
    np.testing.assert_array_equal(info1["state"], info2["state"])
    goal7 = env_b.goal_state.copy()
    obs3, _ = env.reset(seed=8)
    assert not np.array_equal(obs3["desired_goal"], obs1["desired_goal"])
    assert not np.array_equal(env_b.goal_state, goal7)


def test_goal_state_is_success_and_start_is_not(task):
    _, env = task
    u = env.unwrapped
    starts_success = 0
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        starts_success += info["is_success"]
        start = u.get_state()
        u.set_state(u.goal_state)
        goal_info = u._info()
        assert goal_info["is_success"], (seed, goal_info["distance"])
        # The goal image is what the camera shows at the goal state.
        np.testing.assert_array_equal(u.render_pixels(), obs["desired_goal"])
        u.set_state(start)
    assert starts_success <= 1


def test_state_round_trip_and_sim_step_match_step(task):
    _, env = task
    u = env.unwrapped
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    actions = rng.uniform(env.action_space.low, env.action_space.high, size=(6, env.action_space.shape[0]))
    for a in actions[:2]:
        obs, *_ = env.step(a)
    state = u.get_state()
    u.set_state(state)
    np.testing.assert_array_equal(u.render_pixels(), obs["pixels"])
    np.testing.assert_array_equal(u.get_state(), state)
    # Real steps vs the oracle's set_state + sim_step: bit-identical states and frames.
    real = []
    for a in actions[2:]:
        obs, _, _, _, info = env.step(a)
        real.append((info["state"], obs["pixels"]))
    u.set_state(state)
    for a, (s, px) in zip(actions[2:], real):
        u.sim_step(a)
        np.testing.assert_array_equal(u.get_state(), s)
    np.testing.assert_array_equal(u.render_pixels(), px)


def test_pusher_near_starts_behind_the_cylinder_at_rest():
    """Pusher's near goal: the episode starts with the palm just behind the cylinder, the arm
    at rest; the goal is one push line away (about 15-25 steps) and moves the cylinder by at
    least twice the success radius for most draws; under ``far`` the arm starts at Pusher-v5's
    rest pose, far from the cylinder."""
    env = gym.make("sfplan/Pusher-v0", goal="near")
    u = env.unwrapped
    moved, gaps = [], []
    for seed in range(6):
        _, info = env.reset(seed=seed)
        np.testing.assert_allclose(u.data.qvel[:7], 0.0, atol=1e-9)
        gaps.append(np.linalg.norm(u.body_xpos("tips_arm")[:2] - u.object_xy()))
        assert 15 <= len(u._goal_actions(None)) <= 25
        moved.append(info["distance"])
    assert max(gaps) < 0.2, gaps  # the palm's origin sits 0.12 m behind the cylinder's centre
    assert sum(m >= 2 * u.success_threshold for m in moved) >= 5, moved
    env.close()
    far = gym.make("sfplan/Pusher-v0", goal="far")
    far.reset(seed=0)
    assert np.linalg.norm(far.unwrapped.body_xpos("tips_arm")[:2] - far.unwrapped.object_xy()) > 0.2
    far.close()


def test_fork_maze_recall_shows_the_goal_room_only_in_the_past():
    """ForkMaze recall: the episode starts at the junction, where no room colour is in view; the
    goal image is all the goal room's colour; the leg (history) starts with the goal image and
    walks to the junction; the four rooms take the four colours in an order drawn per seed; set_state of a
    recorded state repaints the rooms."""
    from sfplan.envs.fork_maze import ARMS, ROOM_PALETTE

    env = gym.make("sfplan/ForkMaze-v0", goal="recall")
    u = env.unwrapped
    palette = np.round(ROOM_PALETTE * 255)
    seen_rooms, paints = set(), []
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        np.testing.assert_allclose(u.agent_xy(), 0.0, atol=0.05)
        assert len(set(u.colours.tolist())) == 4
        seen_rooms.add(u.goal_room)
        paints.append(tuple(u.colours))
        np.testing.assert_array_equal(info["history_frames"][0], obs["desired_goal"])
        np.testing.assert_array_equal(info["history_frames"][-1], obs["pixels"])
        assert len(info["history_actions"]) == len(info["history_frames"]) - 1
        # nearest room hue per pixel (rooms are painted at 1.0 and 0.85 of their colour)
        def room_share(img, k):
            px = img.reshape(-1, 1, 3).astype(float)
            hues = np.concatenate([palette, palette * 0.85])
            near = np.abs(px - hues[None]).max(-1).min(-1) < 25
            return near.mean(), (np.abs(px - palette[k]).max(-1) < 25).mean() + (np.abs(px - 0.85 * palette[k]).max(-1) < 25).mean()
        assert room_share(obs["pixels"], 0)[0] == 0.0  # no room in view at the junction
        assert room_share(obs["desired_goal"], u.colours[u.goal_room])[1] > 0.9
        assert not info["is_success"] and info["distance"] > 3.0
    assert len(seen_rooms) >= 3 and len(set(paints)) >= 5  # 24 orders of the four colours
    goal, room = u.goal_state, u.goal_room
    env.reset(seed=100)
    u.set_state(goal)
    np.testing.assert_array_equal(u.colours, np.array(paints[-1]))
    np.testing.assert_array_equal(u.render_pixels(), obs["desired_goal"])
    # the goal room lies down the arm the leg came along
    u.set_state(goal)
    assert u.room_of(u.agent_xy()) == room and np.dot(u.agent_xy(), ARMS[room]) > 3.0
    env.close()


def test_fork_maze_other_past_changes_only_the_leg():
    """past="other": the same episode (start, goal image, goal state) with another episode's leg,
    which ends in the same junction view (it shows the goal room's colour down no arm, or
    down another arm than the goal's)."""
    own, other = gym.make("sfplan/ForkMaze-v0", goal="recall"), gym.make("sfplan/ForkMaze-v0", goal="recall", past="other")
    for seed in range(4):
        o1, i1 = own.reset(seed=seed)
        o2, i2 = other.reset(seed=seed)
        np.testing.assert_array_equal(o1["pixels"], o2["pixels"])
        np.testing.assert_array_equal(o1["desired_goal"], o2["desired_goal"])
        np.testing.assert_array_equal(i1["state"], i2["state"])
        np.testing.assert_array_equal(i2["history_frames"][-1], o2["pixels"])
        assert not np.array_equal(i2["history_frames"], i1["history_frames"])
    own.close(), other.close()
    with pytest.raises(ValueError, match="past="):
        gym.make("sfplan/ForkMaze-v0", past="mine")


@pytest.mark.parametrize("tid", ["sfplan/Reacher-v0", "sfplan/PointMazeUMaze-v0", "sfplan/MemoryMaze-v0"])
def test_far_goals(tid):
    env = gym.make(tid, goal="far")
    u = env.unwrapped
    obs, info = env.reset(seed=0)
    assert not info["is_success"]
    u.set_state(u.goal_state)
    assert u._info()["is_success"]
    env.close()


def test_bad_goal_protocol():
    with pytest.raises(ValueError, match="near"):
        gym.make("sfplan/Reacher-v0", goal="sideways")


# ---- GoalImageWrapper ----------------------------------------------------------------
def _goal_fn(env, rng):
    for _ in range(20):
        env.step(rng.uniform(-1, 1, 2))
    return env.unwrapped.get_body_com("fingertip")[:2].copy()


def _success_fn(env, goal):
    return float(np.linalg.norm(env.unwrapped.get_body_com("fingertip")[:2] - goal))


@pytest.fixture(scope="module")
def wrapped():
    env = GoalImageWrapper(
        gym.make("Reacher-v5", render_mode="rgb_array", width=48, height=48),
        _goal_fn, _success_fn, image_size=32, success_threshold=0.02,
    )
    yield env
    env.close()


def test_wrapper_contract(wrapped):
    env = wrapped
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs["pixels"].shape == (32, 32, 3) and obs["pixels"].dtype == np.uint8
    assert not info["is_success"] and info["distance"] > 0.02
    obs_b, info_b = env.reset(seed=0)
    np.testing.assert_array_equal(obs["desired_goal"], obs_b["desired_goal"])
    np.testing.assert_array_equal(info["state"], info_b["state"])
    # Goal state -> success, and the goal image is rendered there.
    env.set_state(env.goal_state)
    assert env._info()["is_success"]
    np.testing.assert_array_equal(env.render_pixels(), obs["desired_goal"])
    # Oracle contract: set_state + sim_step == step.
    env.set_state(info["state"])
    a = np.array([0.3, -0.5])
    obs2, reward, *_ , info2 = env.step(a)
    env.set_state(info["state"])
    env.sim_step(a)
    np.testing.assert_array_equal(env.get_state(), info2["state"])
    np.testing.assert_array_equal(env.render_pixels(), obs2["pixels"])


class _Dot(gym.Env):
    """A non-MuJoCo env: a dot on a line, rendered as a 24x24 image."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.spaces.Box(0, 23, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = int(self.np_random.integers(0, 24))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x = int(np.clip(self.x + (1 if action else -1), 0, 23))
        return np.array([self.x], np.float32), 0.0, False, False, {}

    def render(self):
        img = np.zeros((24, 24, 3), np.uint8)
        img[:, self.x] = 255
        return img


def test_wrapper_bool_success_and_non_mujoco():
    def goal_fn(env, rng):
        for _ in range(6):
            env.step(1)
        return env.unwrapped.x

    env = GoalImageWrapper(_Dot(render_mode="rgb_array"), goal_fn, lambda env, goal: env.unwrapped.x == goal, image_size=16)
    obs, info = env.reset(seed=1)
    assert obs["pixels"].shape == (16, 16, 3)  # resized from 24x24
    assert isinstance(info["is_success"], bool) and info["distance"] in (0.0, 1.0) and "state" not in info
    obs_b, _ = env.reset(seed=1)
    np.testing.assert_array_equal(obs["desired_goal"], obs_b["desired_goal"])
    with pytest.raises(TypeError, match="MuJoCo"):
        env.get_state()
    with pytest.raises(ValueError, match="rgb_array"):
        GoalImageWrapper(_Dot(), goal_fn, lambda env, goal: False)
    env.close()


def test_wrapper_needs_rgb_array():
    with pytest.raises(ValueError, match=r'render_mode="rgb_array"'):
        GoalImageWrapper(gym.make("Reacher-v5"), _goal_fn, _success_fn)


@pytest.mark.parametrize("tid", ["sfplan/Reacher-v0", "sfplan/PointMazeMedium-v0"])
def test_waypoints_follow_the_goal_path(tid):
    env = gym.make(tid, goal="far" if "Maze" in tid else "near", image_size=32)
    obs, info = env.reset(seed=3, options={"waypoints": 3})
    wp = info["goal_waypoints"]
    assert wp.shape == (4, 32, 32, 3) and wp.dtype == np.uint8
    np.testing.assert_array_equal(wp[-1], obs["desired_goal"])  # the goal comes last
    assert all(not np.array_equal(wp[i], wp[i + 1]) for i in range(3))  # distinct points along the path
    assert not np.array_equal(wp[0], obs["pixels"])
    # Same seed without the option: the same task (waypoints only add images).
    obs2, info2 = env.reset(seed=3)
    assert "goal_waypoints" not in info2
    np.testing.assert_array_equal(obs2["pixels"], obs["pixels"])
    np.testing.assert_array_equal(obs2["desired_goal"], obs["desired_goal"])
    assert info2["distance"] == info["distance"]
    with pytest.raises(ValueError, match="waypoints"):
        env.reset(seed=3, options={"waypoints": -1})
    env.close()


def test_waypoints_of_a_goal_placed_without_a_path():
    env = gym.make("sfplan/Reacher-v0", goal="far", image_size=32)
    obs, info = env.reset(seed=0, options={"waypoints": 4})
    assert info["goal_waypoints"].shape == (1, 32, 32, 3)  # Reacher's far goal is placed directly
    np.testing.assert_array_equal(info["goal_waypoints"][0], obs["desired_goal"])
    env.close()


def test_pointmaze_frame_skip_is_an_action_repeat_with_the_same_goals():
    """frame_skip=k: one env step is k simulator steps under the same action (exactly k
    frame_skip=1 steps), and a seed gives the same start and goal at any k."""
    envs = {k: gym.make("sfplan/PointMazeUMaze-v0", image_size=32, frame_skip=k) for k in (1, 4)}
    (o1, i1), (o4, i4) = envs[1].reset(seed=5), envs[4].reset(seed=5)
    np.testing.assert_array_equal(o1["pixels"], o4["pixels"])
    np.testing.assert_array_equal(o1["desired_goal"], o4["desired_goal"])
    assert envs[4].unwrapped.dt == pytest.approx(4 * envs[1].unwrapped.dt)
    a = np.array([0.7, -0.4], dtype=np.float32)
    for _ in range(4):
        envs[1].step(a)
    _, _, _, _, info4 = envs[4].step(a)
    np.testing.assert_allclose(envs[4].unwrapped.ball_xy(), envs[1].unwrapped.ball_xy(), atol=1e-12)
    assert info4["distance"] == pytest.approx(envs[1].unwrapped._info()["distance"])
    # The far goal's waypoint path is recorded once per env step and ends at the goal.
    far = gym.make("sfplan/PointMazeUMaze-v0", image_size=32, goal="far", frame_skip=4)
    _, info = far.reset(seed=0, options={"waypoints": 3})
    u = far.unwrapped
    np.testing.assert_array_equal(u._goal_path[-1], u.goal_state)
    assert info["goal_waypoints"].shape[0] == 4
    with pytest.raises(ValueError, match="frame_skip"):
        gym.make("sfplan/PointMazeUMaze-v0", frame_skip=0)
    for env in (*envs.values(), far):
        env.close()


def test_missing_robosuite_hint(monkeypatch):
    """Here, not in test_robosuite_envs.py: that module is skipped where robosuite is missing,
    the very case this checks."""
    from sfplan.envs import robosuite_tasks

    monkeypatch.setitem(sys.modules, "robosuite", None)  # import robosuite -> ImportError
    with pytest.raises(ImportError, match=r"pip install -c constraints.txt -e .\[robosuite\]"):
        robosuite_tasks.LiftGoalEnv()
