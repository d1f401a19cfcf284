"""robosuite goal-image tasks (sfplan/Lift-v0, sfplan/Stack-v0); skipped without robosuite."""
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("robosuite")

import sfplan.envs  # noqa: E402,F401  (registers the ids)
from sfplan.envs import TASKS, GoalImageEnv  # noqa: E402

ROBOSUITE_TASKS = ["sfplan/Lift-v0", "sfplan/Stack-v0"]
_ENVS: dict = {}


def get_env(tid: str, goal: str):
    """One instance per (task, goal) for the whole module (robosuite envs take ~1 s to build)."""
    if (tid, goal) not in _ENVS:
        _ENVS[tid, goal] = gym.make(tid, image_size=64, goal=goal)
    return _ENVS[tid, goal]


@pytest.fixture(scope="module", autouse=True)
def _close_envs():
    yield
    for env in _ENVS.values():
        env.close()  # frees the EGL context before interpreter exit
    _ENVS.clear()


def test_registered_without_importing_robosuite():
    code = "import sys, gymnasium, sfplan.envs; assert 'robosuite' not in sys.modules; " \
           "assert {'sfplan/Lift-v0', 'sfplan/Stack-v0'} <= set(gymnasium.registry)"
    subprocess.run([sys.executable, "-c", code], check=True)
    for tid in ROBOSUITE_TASKS:
        assert "success" in TASKS[tid]


def test_robosuite_logs_only_errors():
    """A fresh process that builds Lift prints no robosuite INFO/WARNING lines (its import and
    every env's controller set-up logged ~20 of them: ~900 in one collection), while robosuite's
    errors still reach the console."""
    code = ("import logging, sfplan.envs, gymnasium as gym; env = gym.make('sfplan/Lift-v0', image_size=64); "
            "env.reset(seed=0); env.close(); logging.getLogger('robosuite_logs').error('an error')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    logged = [line for line in (out.stdout + out.stderr).splitlines() if "robosuite" in line]
    assert len(logged) == 1 and "an error" in logged[0], logged


@pytest.mark.parametrize("tid,goal", [("sfplan/Lift-v0", "near"), ("sfplan/Stack-v0", "far")])
def test_check_env(tid, goal):
    env = get_env(tid, goal)
    assert isinstance(env.unwrapped, GoalImageEnv)
    assert env.action_space.shape == (4,)
    check_env(env.unwrapped, skip_render_check=True)


def test_seeded_and_transferable_between_instances():
    env = get_env("sfplan/Lift-v0", "near")
    obs1, info1 = env.reset(seed=3)
    obs2, info2 = env.reset(seed=3)
    np.testing.assert_array_equal(obs1["pixels"], obs2["pixels"])
    np.testing.assert_array_equal(obs1["desired_goal"], obs2["desired_goal"])
    np.testing.assert_array_equal(info1["state"], info2["state"])
    obs3, _ = env.reset(seed=4)
    assert not np.array_equal(obs3["desired_goal"], obs1["desired_goal"])
    # A second instance (as OracleWorldModel makes) reproduces the same episode, and a
    # state taken from one instance steps identically in the other.
    other = gym.make("sfplan/Lift-v0", image_size=64, goal="near")
    try:
        obs4, info4 = other.reset(seed=3)
        np.testing.assert_array_equal(obs4["desired_goal"], obs1["desired_goal"])
        np.testing.assert_array_equal(info4["state"], info1["state"])
        actions = np.random.default_rng(0).uniform(-1, 1, (5, 4))
        for sim in (env.unwrapped, other.unwrapped):
            sim.set_state(info1["state"])
            for a in actions:
                sim.sim_step(a)
        np.testing.assert_array_equal(env.unwrapped.get_state(), other.unwrapped.get_state())
        np.testing.assert_array_equal(env.unwrapped.render_pixels(), other.unwrapped.render_pixels())
    finally:
        other.close()


def test_goal_descriptor_of_labels_hand_and_cube():
    """The state probe's label of a recorded state is the hand and the cube, joined in a flat
    float64 vector (the task's descriptor is a mapping); at the goal state it is the goal's."""
    env = get_env("sfplan/Lift-v0", "near")
    sim = env.unwrapped
    _, info = env.reset(seed=2)
    d = sim.goal_descriptor_of(sim.goal_state)
    assert d.shape == (6,) and d.dtype == np.float64
    np.testing.assert_allclose(d, np.concatenate([sim._goal["eef"], sim._goal["cube_body_id"]]))
    d0 = sim.goal_descriptor_of(info["state"])
    np.testing.assert_allclose(d0, np.concatenate([sim.eef_pos(), sim.object_pos("cube_body_id")]))
    assert np.isclose(max(np.linalg.norm(d0[:3] - d[:3]), np.linalg.norm(d0[3:] - d[3:])), info["distance"])


def test_collection_script_reaches_the_cube_under_an_action_repeat():
    """``_collect_actions(rng, hold)`` (what ``policy=goal`` and so ``sfplan fit`` collect with) is
    the goal script: at hold 1 the goal's own actions; at hold 2, each action held two steps
    brings the hand over the cube and down as the goal does; the simulator is restored."""
    env = get_env("sfplan/Lift-v0", "near")
    sim = env.unwrapped
    _, info = env.reset(seed=3)
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    np.testing.assert_array_equal(sim._collect_actions(rng(), hold=1), sim._goal_actions(rng()))
    acts = sim._collect_actions(rng(), hold=2)
    np.testing.assert_array_equal(sim.get_state(), info["state"])
    assert 10 <= len(acts) <= 26  # the near script's 25-50 steps, two per action
    for a in acts:
        sim.sim_step(a)
        sim.sim_step(a)
    hand, cube = sim.eef_pos(), sim.object_pos("cube_body_id")
    assert np.linalg.norm(hand[:2] - cube[:2]) < 0.01 and hand[2] - sim.table_height < 0.08


@pytest.mark.parametrize("tid", ROBOSUITE_TASKS)
@pytest.mark.parametrize("goal", ["near", "far"])
def test_goal_state_is_success_and_start_is_not(tid, goal):
    env = get_env(tid, goal)
    sim = env.unwrapped
    obs, info = env.reset(seed=1)
    assert not info["is_success"] and info["distance"] >= sim.success_threshold
    start = info["state"]
    sim.set_state(sim.goal_state)
    g = sim._info()
    assert g["is_success"] and g["distance"] < max(sim.success_threshold, 0.02)
    np.testing.assert_array_equal(sim.render_pixels(), obs["desired_goal"])
    if goal == "far":  # success is robosuite's own criterion
        assert sim.check_success() and sim.robosuite_env._check_success()
    # The scripted demonstration replays from the start to the goal state exactly.
    sim.set_state(start)
    assert 25 <= len(sim.goal_actions_) <= (50 if goal == "near" else 150)
    for a in sim.goal_actions_:
        sim.sim_step(a)
    np.testing.assert_array_equal(sim.get_state(), sim.goal_state)
    sim.set_state(start)


def test_state_round_trip_renders_same_frame():
    env = get_env("sfplan/Stack-v0", "far")
    sim = env.unwrapped
    env.reset(seed=2)
    rng = np.random.default_rng(0)
    for a in rng.uniform(-1, 1, (3, 4)):
        env.step(a)
    state, frame = sim.get_state(), sim.render_pixels()
    later = rng.uniform(-1, 1, (4, 4))
    for a in later:
        sim.sim_step(a)
    after = sim.get_state()
    assert not np.array_equal(sim.render_pixels(), frame)
    sim.set_state(state)
    np.testing.assert_array_equal(sim.render_pixels(), frame)
    np.testing.assert_array_equal(sim.get_state(), state)
    for a in later:  # rendering in between does not change the dynamics
        sim.sim_step(a)
        sim.render_pixels()
    np.testing.assert_array_equal(sim.get_state(), after)


def test_fast_controller_matches_robosuite():
    sim = get_env("sfplan/Lift-v0", "near").unwrapped
    _, info = sim.reset(seed=5)
    rng = np.random.default_rng(1)
    state = info["state"]
    try:
        for a in rng.uniform(-1, 1, (4, 4)):
            results = []
            for fast in (True, False):
                sim.fast_controller = fast
                sim.set_state(state)
                sim.sim_step(a)
                results.append(sim.get_state())
            np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-9)
            state = results[0]
    finally:
        sim.fast_controller = True
