"""`sfplan eval` end to end at toy size, and the errors a user gets for bad input."""
import json

import gymnasium as gym
import numpy as np
import pytest

import sfplan.envs  # noqa: F401  (registers sfplan/*)
from sfplan.cli import main
from sfplan.config import ConfigError, load_config


def test_eval_end_to_end_writes_report(tmp_path):
    out = tmp_path / "run"
    rc = main(["eval", "env=reacher", "planner=cem", "world_model=oracle", "episodes=2", "budget=6", "execute=3",
               "env.kwargs.image_size=32", "planner.num_samples=8", "planner.iterations=2",
               f"out_dir={out}", "progress=false"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    s = rep["summary"]
    assert s["episodes"] == 2 and s["successes"] == sum(e["success"] for e in rep["episodes"])
    assert s["success_rate"] == s["successes"] / 2
    lo, hi = s["success_rate_ci95"]
    assert 0 <= lo <= s["success_rate"] <= hi <= 1
    for e in rep["episodes"]:
        assert 1 <= e["steps"] <= 6 and e["decisions"] >= 1
    assert rep["meta"]["seeds"] == [100000, 100001]
    assert rep["meta"]["world_model"] == "OracleWorldModel"
    assert rep["config"]["planner"]["num_samples"] == 8
    assert rep["summary"]["plan_time_per_decision_s"] > 0
    assert len(rep["gifs"]) == 2 and (out / rep["gifs"][0]).exists()
    assert (out / "index.html").exists() and (out / "report.md").exists()


def test_random_baseline_needs_no_world_model(tmp_path):
    out = tmp_path / "rand"
    assert main(["eval", "planner=random", "episodes=1", "budget=4", "env.kwargs.image_size=32",
                 f"out_dir={out}", "progress=false", "record=false"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["meta"]["world_model"] is None and rep["episodes"][0]["steps"] == 4


def test_wrong_config_key_names_the_fix(capsys):
    assert main(["eval", "episdoes=3"]) == 2
    err = capsys.readouterr().err
    assert "episdoes" in err and "episodes" in err and "--cfg" in err


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigError, match="pointmaze_umaze"):
        load_config("eval", ["env=no_such_task"])


def test_unknown_task_id_lists_known_ids(capsys):
    assert main(["eval", "env.id=sfplan/NoSuchTask-v0", "episodes=1", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert "NoSuchTask" in err and "sfplan/Reacher-v0" in err


def test_cfg_prints_resolved_config(capsys):
    assert main(["eval", "env=pointmaze_umaze", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "sfplan/PointMazeUMaze-v0" in out and "budget: 25" in out and "frame_skip: 4" in out


def test_info_lists_tasks_and_planners(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("sfplan/Reacher-v0", "sfplan/PointMazeUMaze-v0", "cem", "mppi", "random_shooting", "oracle"):
        assert name in out


def test_execute_longer_than_horizon_names_the_fix(capsys):
    assert main(["eval", "execute=20", "episodes=1", "progress=false", "record=false"]) == 2
    assert "execute <= planner.horizon" in capsys.readouterr().err


def test_eval_with_waypoints_follows_subgoals(tmp_path):
    out = tmp_path / "wp"
    # At gymnasium-robotics' frame_skip=1: the protocol this test was sized on (the config's 4
    # makes each of the ~200 simulator steps of the path 4x coarser; not yet tuned for waypoints).
    assert main(["eval", "env=pointmaze_umaze", "env.kwargs.frame_skip=1", "goal=far", "waypoints=8",
                 "world_model=oracle", "episodes=1", "budget=50", "execute=5", "planner.num_samples=32",
                 "planner.iterations=3", f"out_dir={out}", "progress=false", "record=false"]) == 0
    rep = json.loads((out / "report.json").read_text())
    e = rep["episodes"][0]
    assert rep["meta"]["waypoints"] == 8 and e["waypoints"] == 9  # 8 subgoals + the goal
    # 50 steps carry the ball past the first subgoals (1/9 of the ~200-step path each), not to the far goal.
    assert 1 <= e["waypoints_passed"] <= 4 and not e["success"]
    assert rep["summary"]["waypoints_passed_mean"] == e["waypoints_passed"]
    assert "waypoints passed (mean)" in (out / "report.md").read_text()


def test_subgoal_threshold_counts_waypoints_within_it_as_reached(tmp_path):
    """subgoal_threshold: a waypoint whose cost is below it is reached, whatever the ratio rule
    says; a bound above every cost passes all 8 subgoals at the first frame (the goal itself is
    never passed)."""
    out = tmp_path / "thr"
    assert main(["eval", "env=pointmaze_umaze", "goal=far", "waypoints=8", "subgoal_threshold=1e9",
                 "world_model=oracle", "episodes=1", "budget=5", "execute=5", "planner.num_samples=8",
                 "planner.iterations=1", f"out_dir={out}", "progress=false", "record=false"]) == 0
    e = json.loads((out / "report.json").read_text())["episodes"][0]
    assert e["waypoints"] == 9 and e["waypoints_passed"] == 8


def test_subgoal_threshold_auto_is_the_success_radius_for_task_distance_costs(capsys, tmp_path):
    from sfplan.envs import make_env
    from sfplan.errors import UserError
    from sfplan.eval.runner import subgoal_bound
    from sfplan.planners import MultiScaleCost, ProbeCost

    env = make_env("sfplan/PointMazeUMaze-v0", image_size=32)
    try:
        assert subgoal_bound(env, ProbeCost(), "auto") == 0.45  # metres: PointMaze's success radius
        assert subgoal_bound(env, ProbeCost(scale=0.45), "auto") == 1.0  # in the cost's units
        assert subgoal_bound(env, MultiScaleCost(), "auto") is None  # an image distance has no radius
        assert subgoal_bound(env, ProbeCost(), None) is None and subgoal_bound(env, ProbeCost(), "null") is None
        assert subgoal_bound(env, MultiScaleCost(), 0.3) == 0.3
        with pytest.raises(UserError, match="subgoal_threshold='far'"):
            subgoal_bound(env, ProbeCost(), "far")
    finally:
        env.close()
    # caught before any episode runs (a mistyped value would otherwise surface mid-benchmark)
    assert main(["eval", "subgoal_threshold=far", "world_model=oracle", "episodes=1", "progress=false",
                 f"out_dir={tmp_path}"]) == 2
    assert "subgoal_threshold='far'" in capsys.readouterr().err and not (tmp_path / "report.json").exists()


def test_waypoints_on_an_env_without_them_names_the_fix():
    from sfplan.envs import GoalImageWrapper
    from sfplan.errors import UserError
    from sfplan.eval.runner import run_episode

    def goal_fn(env, rng):
        env.step(env.action_space.sample())
        return np.zeros(2)

    env = GoalImageWrapper(gym.make("Reacher-v5", render_mode="rgb_array", width=32, height=32), goal_fn,
                           lambda env, goal: 1.0, image_size=32, success_threshold=0.02)

    class Planner:
        needs_world_model = True
        horizon = 4

    with pytest.raises(UserError, match="waypoints=0"):
        run_episode(env, Planner(), None, seed=0, budget=4, execute=2, waypoints=2)
    env.close()


def test_an_episode_with_a_past_feeds_it_to_the_memory_first():
    from sfplan.eval.runner import run_episode
    from sfplan.memory.base import Memory
    from sfplan.planners import RandomPlanner
    from sfplan.world_model.base import MemoryWorldModel

    class Recorder:  # a test double of a world model with a memory: records what it is told to remember
        device, context_frames, write_mode = "cpu", 2, "real"

        def unused(self, *args, **kwargs):
            raise AssertionError("the random planner's episode neither imagines nor writes latents")

        encode = imagine = decode = snapshot = load = disabled = write = unused

        def __init__(self):
            self.memory, self.writes, self.resets = self, [], 0

        def attach_memory(self, config=None):
            return self

        def reset_memory(self, seed=None):
            self.resets += 1
            self.writes.clear()

        reset = reset_memory

        def remember(self, frames, num_context=0, actions=None):
            self.writes.append((np.asarray(frames).copy(), num_context, np.asarray(actions).copy()))

    env = gym.make("sfplan/MemoryMaze-v0", goal="retrace", image_size=32)
    _, info = env.reset(seed=11)
    wm = Recorder()
    assert isinstance(wm, MemoryWorldModel) and isinstance(wm.memory, Memory)
    res = run_episode(env, RandomPlanner(None, None, -np.ones(2), np.ones(2), horizon=4), wm, seed=11, budget=8,
                      execute=4)
    past, num_context, acts = wm.writes[0]
    np.testing.assert_array_equal(past, info["history_frames"])  # the outbound leg, before any step
    np.testing.assert_array_equal(acts, info["history_actions"])
    assert num_context == 1 and wm.resets == 1
    assert len(wm.writes) == 1 + 2 and res.steps == 8  # then one write per executed chunk
    assert all(f.shape[0] == 1 + 4 and n == 1 for f, n, _ in wm.writes[1:])  # the frame before each chunk in front
    env.close()


def test_memory_maze_retrace_goal_is_the_start():
    env = gym.make("sfplan/MemoryMaze-v0", goal="retrace", image_size=32)
    obs, info = env.reset(seed=2, options={"waypoints": 2})
    h = info["history_frames"]
    assert h.shape[0] == info["history_actions"].shape[0] + 1 and 25 <= h.shape[0] <= 41
    np.testing.assert_array_equal(h[0], obs["desired_goal"])  # the start view is the goal
    np.testing.assert_array_equal(h[-1], obs["pixels"])  # the episode starts where the leg ended
    assert not info["is_success"] and info["distance"] >= 0.5
    wp = info["goal_waypoints"]  # views of the way back, the start view last
    assert wp.shape[0] == 3 and any(np.array_equal(wp[0], f) for f in h[1:-1])
    u = env.unwrapped
    u.set_state(u.goal_state)
    assert u._info()["is_success"]
    with pytest.raises(ValueError, match="retrace"):
        gym.make("sfplan/Reacher-v0", goal="retrace")
    env.close()


@pytest.mark.parametrize("fill", ["last", "mid"])
def test_runner_pads_the_warm_start_as_configured(fill):
    from sfplan.eval.runner import run_episode
    from sfplan.planners.base import PlanResult
    import torch

    class Recorder:  # plans a known ramp and records each warm start it gets
        needs_world_model = False
        horizon = 4

        def __init__(self):
            self.warm, self.calls = [], []

        def plan(self, state, goal, warm_start=None):
            self.warm.append(None if warm_start is None else warm_start.clone())
            self.calls.append("plan")
            return PlanResult(actions=torch.linspace(-0.9, 0.6, 8).reshape(1, 4, 2), cost=torch.zeros(1))

        def advance(self, executed):  # the runner reports the steps it ran of the last plan
            self.calls.append(executed)

    env = gym.make("sfplan/Reacher-v0", image_size=32)
    planner = Recorder()
    run_episode(env, planner, None, seed=0, budget=6, execute=3, record=False, warm_fill=fill)
    env.close()
    plan = torch.linspace(-0.9, 0.6, 8).reshape(1, 4, 2)
    assert planner.warm[0] is None and len(planner.warm) == 2
    assert planner.calls[:2] == ["plan", 3] and planner.calls[2] == "plan"
    pad = plan[:, -1:] if fill == "last" else torch.zeros(1, 1, 2)  # Reacher's action range is [-1, 1]
    torch.testing.assert_close(planner.warm[1], torch.cat([plan[:, 3:], pad.expand(1, 3, 2)], 1))


def test_unknown_warm_fill_names_the_choices(capsys):
    assert main(["eval", "world_model=oracle", "warm_fill=zero", "episodes=1", "progress=false", "record=false"]) == 2
    err = capsys.readouterr().err
    assert "warm_fill='zero'" in err and "'last'" in err and "'mid'" in err


def test_eval_jobs_run_the_same_episodes_in_parallel(tmp_path):
    args = ["eval", "world_model=oracle", "episodes=2", "budget=4", "execute=2", "env.kwargs.image_size=32",
            "planner.num_samples=8", "planner.iterations=1", "env.search.oracle.cold_num_samples=8",
            "progress=false", "max_gifs=1"]
    assert main([*args, f"out_dir={tmp_path / 'serial'}"]) == 0
    assert main([*args, "jobs=2", f"out_dir={tmp_path / 'parallel'}"]) == 0
    serial, parallel = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("serial", "parallel"))
    drop = ("plan_time_mean_s",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in parallel["episodes"]] == \
        [{k: v for k, v in e.items() if k not in drop} for e in serial["episodes"]]
    assert parallel["meta"]["jobs"] == 2 and parallel["meta"]["imagined_frames"] == serial["meta"]["imagined_frames"]
    assert len(parallel["gifs"]) == 1 and (tmp_path / "parallel" / parallel["gifs"][0]).exists()
    assert main(["eval", "jobs=0", "episodes=1", "progress=false"]) == 2


def test_a_waypoint_reached_mid_chunk_ends_the_chunk():
    """A 1-D corridor whose frame shows the position: the first waypoint is 3 steps away, the
    chunk is 5 long. The tracker sees every executed frame, so the second plan starts at step 3
    and aims at the second waypoint (checked at decision time only, it would start at step 5)."""
    import torch
    from sfplan.eval.runner import run_episode
    from sfplan.planners.base import PlanResult
    from sfplan.world_model.base import WorldState

    def img(x):
        f = np.zeros((4, 16, 3), np.uint8)
        f[:, x] = 255
        return f

    class Corridor(gym.Env):
        observation_space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (4, 16, 3), np.uint8),
                                             "desired_goal": gym.spaces.Box(0, 255, (4, 16, 3), np.uint8)})
        action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

        def _out(self):
            return ({"pixels": img(self.x), "desired_goal": img(12)},
                    {"distance": float(12 - self.x), "is_success": self.x == 12, "state": np.zeros(1)})

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.x = 0
            obs, info = self._out()
            info["goal_waypoints"] = np.stack([img(3), img(8), img(12)])
            return obs, info

        def step(self, a):
            self.x = min(15, self.x + 1)
            obs, info = self._out()
            return obs, 0.0, False, False, info

    class Frames:
        context_frames = 1

        def encode(self, frames, sim_state=None):
            f = torch.as_tensor(np.asarray(frames)[:, -1]).permute(0, 3, 1, 2).float() / 255  # (B, 3, 4, 16)
            return WorldState(features=f, context=None)

    class Planner:
        needs_world_model = True
        horizon = 5

        def __init__(self):
            self.calls = []  # (position of the frame planned from, waypoint column aimed at)

        def plan(self, state, goal, warm_start=None):
            col = lambda f: int(f[0, 0, 0].argmax())
            self.calls.append((col(state.features), col(goal)))
            return PlanResult(actions=torch.ones(1, 5, 1), cost=torch.zeros(1))

    env, planner = Corridor(), Planner()
    res = run_episode(env, planner, Frames(), seed=0, budget=20, execute=5, waypoints=2, record=False,
                      hold_steps=1)  # stop at the goal (the corridor runs on past it)
    assert planner.calls[:3] == [(0, 3), (3, 8), (8, 12)]
    assert res.success and res.steps == 12 and res.waypoints_passed == 2
