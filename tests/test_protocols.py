"""Success protocols: `first` counts a brush past the goal, `hold` needs the object to stay."""
import numpy as np
import pytest

from sfplan.errors import UserError
from sfplan.eval.runner import check_protocol, protocol_outcomes, run_episode


@pytest.mark.parametrize("flags,k,ended,first,hold", [
    ([False, True, False, False, False], 3, True, (True, 1), (False, None)),  # a brush past: first only
    ([False, True, True, True, False], 3, True, (True, 1), (True, 1)),  # held 3 steps from step 1
    ([False, True, False, True, True, True], 3, True, (True, 1), (True, 3)),  # the run that held counts
    ([False, False, False, True], 3, True, (True, 3), (True, 3)),  # inside at the end of the budget
    ([False, False, False, True], 3, False, (True, 3), (False, None)),  # ... not while it goes on
    ([True, True], 1, False, (True, 0), (True, 0)),  # starts inside: 0 steps; hold 1 = first
    ([False] * 6, 2, True, (False, None), (False, None)),
])
def test_protocol_outcomes(flags, k, ended, first, hold):
    out = protocol_outcomes(flags, hold_steps=k, ended=ended)
    assert (out["first"]["success"], out["first"]["steps_to_success"]) == first
    assert (out["hold"]["success"], out["hold"]["steps_to_success"]) == hold


@pytest.mark.parametrize("success,k", [("last", 5), ("hold", 0), ("first", -1)])
def test_bad_protocol_is_a_clear_error(success, k):
    with pytest.raises(UserError, match="success=|hold_steps="):
        check_protocol(success, k)


class _Line:
    """A 1-D point env whose object sits inside the radius while |x - 3| < 0.5: enough to
    drive the runner without a simulator."""
    def __init__(self):
        import gymnasium as gym
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.spec, self.x = None, 0.0

    def _out(self):
        img = np.zeros((4, 4, 3), np.uint8)
        d = abs(self.x - 3.0)
        return {"pixels": img, "desired_goal": img}, {"is_success": d < 0.5, "distance": d, "state": np.zeros(1)}

    def reset(self, seed=None, options=None):
        self.x = 0.0
        return self._out()

    def step(self, a):
        self.x += float(a[0])
        obs, info = self._out()
        return obs, 0.0, False, False, info


class _Script:
    """A planner without a world model that plays a fixed action list."""
    needs_world_model = False
    horizon = 2

    def __init__(self, actions):
        self.actions, self.t = list(actions), 0

    def plan(self, state, goal, warm_start=None):
        import torch
        from sfplan.planners.base import PlanResult
        chunk = self.actions[self.t: self.t + 2]
        self.t += len(chunk)
        return PlanResult(torch.tensor(chunk, dtype=torch.float32)[None, :, None], torch.zeros(1))


def test_runner_plays_on_until_the_object_holds_and_reports_both():
    # x = 1, 2, 3, 4, 3, 3, 3, ...: inside at step 3, out at step 4, back at step 5 to stay
    acts = [1, 1, 1, 1, -1, 0, 0, 0, 0, 0, 0, 0]
    res = run_episode(_Line(), _Script(acts), None, seed=0, budget=12, execute=2, record=False,
                      success="hold", hold_steps=3)
    assert res.outcomes["first"] == {"success": True, "steps_to_success": 3}
    assert res.outcomes["hold"] == {"success": True, "steps_to_success": 5}
    assert res.success and res.steps == 7  # stopped once it held: steps 5, 6, 7
    assert res.min_distance == 0.0 and res.final_distance == 0.0
    brush = run_episode(_Line(), _Script([1, 1, 1, 1, 1, 1, 1, 1]), None, seed=0, budget=8, execute=2,
                        record=False, success="hold", hold_steps=3)
    assert brush.outcomes["first"]["success"] and not brush.success and brush.steps == 8


@pytest.mark.parametrize("task", ["sfplan/Reacher-v0", "sfplan/PointMazeUMaze-v0"])
def test_peer_goal_is_25_steps_of_exploratory_motion_ahead(task):
    from sfplan.envs import make_env

    env = make_env(task, goal="peer")
    obs, info = env.reset(seed=100000)
    u = env.unwrapped
    assert len(u._goal_path) == u.peer_offset == 25  # one recorded state per env step
    start = u.get_state()
    # the goal is where those 25 env steps lead: replaying the recorded path's last state reproduces the goal image
    u.set_state(u._goal_path[-1])
    u._on_goal_set()
    assert np.array_equal(u.render_pixels(), obs["desired_goal"])
    u.set_state(start)
    u._on_goal_set()
    again, _ = env.reset(seed=100000)
    assert np.array_equal(again["desired_goal"], obs["desired_goal"])  # seeded
    other, _ = env.reset(seed=100001)
    assert not np.array_equal(other["desired_goal"], obs["desired_goal"])
    env.close()
