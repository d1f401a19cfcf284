"""Action repeat: the ``ActionRepeat`` wrapper ``make_env`` applies for ``env.kwargs.action_repeat``,
and the repeat ``sfplan fit`` derives from how much a step moves the picture."""
import numpy as np
import pytest

from sfplan.envs.spec import episode_limit, make_env
from sfplan.errors import UserError
from sfplan.training.fit import MAX_REPEAT, MOTION_CHUNK, derive_action_repeat
from sfplan.world_model.oracle import can_clone

SPAN = MOTION_CHUNK * MAX_REPEAT


def _square_video(speed: float, size: int = 64, side: int = 8, steps: int = SPAN) -> np.ndarray:
    """A white square moving right at ``speed`` px per step (wrapping), (steps + 1, H, W, 3)."""
    f = np.zeros((steps + 1, size, size, 3), np.uint8)
    for t in range(steps + 1):
        x = int(round(t * speed)) % (size - side)
        f[t, 28:28 + side, x:x + side] = 255
    return f


def test_repeat_grows_until_a_step_moves_a_third_of_the_object():
    slow = derive_action_repeat([_square_video(0.75)])  # 8 px object, 0.75 px per step
    fast = derive_action_repeat([_square_video(6.0)])
    assert fast["action_repeat"] == 1
    assert slow["action_repeat"] > 1
    k = slow["action_repeat"]
    assert 0.75 * k >= 8 / 4  # each repeated step moves the square at least a quarter of its side
    assert slow["chunk_step_ratio"][k] <= 2.5 < slow["chunk_step_ratio"][k - 1]


def test_no_repeat_when_the_whole_view_moves():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (SPAN + 1, 64, 64, 3), dtype=np.uint8)  # every pixel changes every step
    assert derive_action_repeat([noise])["action_repeat"] == 1


def test_make_env_repeats_steps_limits_and_the_oracle_hooks():
    env = make_env("sfplan/Reacher-v0", image_size=32, action_repeat=3)
    base = make_env("sfplan/Reacher-v0", image_size=32)
    assert episode_limit(env) == -(-episode_limit(base) // 3)
    assert can_clone(env)
    a = np.array([0.7, -0.4], np.float32)
    _, info = env.reset(seed=1)
    _, info_b = base.reset(seed=1)
    s0 = info["state"]
    _, _, _, _, info = env.step(a)
    for _ in range(3):
        _, _, _, _, info_b = base.step(a)
    np.testing.assert_allclose(info["state"], info_b["state"])  # one outer step = 3 inner steps
    env.set_state(s0)
    env.sim_step(a)  # what the oracle imagines with: the same 3 steps
    np.testing.assert_allclose(env.get_state(), info_b["state"])
    env.close()
    base.close()


@pytest.mark.parametrize("bad", [0, -2, 1.5, "two", True])
def test_bad_action_repeat_is_a_user_error(bad):
    with pytest.raises(UserError, match="action_repeat"):
        make_env("sfplan/Reacher-v0", image_size=32, action_repeat=bad)


def test_an_episodes_past_is_given_in_repeated_steps():
    """ForkMaze recall's leg under action_repeat=2: every 2nd frame counted back from the current
    one, each action the mean of the two it spans; the outer leg ends at the observation as the
    inner one does, and the memory's write then sees two steps of motion per action."""
    from sfplan.envs.wrappers import history_at_repeat

    inner = make_env("sfplan/ForkMaze-v0", image_size=32, goal="recall")
    outer = make_env("sfplan/ForkMaze-v0", image_size=32, goal="recall", action_repeat=2)
    obs_i, info_i = inner.reset(seed=3)
    obs_o, info_o = outer.reset(seed=3)
    f, a = info_i["history_frames"], info_i["history_actions"]
    F, A = info_o["history_frames"], info_o["history_actions"]
    n = len(a) // 2
    assert len(A) == n and len(F) == n + 1
    np.testing.assert_array_equal(F[-1], obs_o["pixels"])
    np.testing.assert_array_equal(F, f[len(a) - 2 * n::2])
    np.testing.assert_allclose(A[-1], (a[-2] + a[-1]) / 2)
    np.testing.assert_allclose(A[0], (a[len(a) - 2 * n] + a[len(a) - 2 * n + 1]) / 2)
    inner.close(), outer.close()
    odd = history_at_repeat(np.zeros((8, 2, 2, 3), np.uint8), np.arange(14, dtype=np.float32).reshape(7, 2), 3)
    assert odd["history_frames"].shape[0] == 3 and odd["history_actions"].tolist() == [[4, 5], [10, 11]]


def test_a_tasks_budget_and_hold_count_its_own_steps_under_a_repeat():
    """Under action_repeat=k an episode gets the task's budget and hold in its own env steps
    (budget / k steps of the wrapped env, rounded up), unless given on the command line."""
    from sfplan.config import load_config

    base = load_config("eval", ["env=fork_maze", "goal=recall"])
    rep = load_config("eval", ["env=fork_maze", "goal=recall", "env.kwargs.action_repeat=3"])
    assert (rep.budget, rep.hold_steps) == (-(-base.budget // 3), -(-base.hold_steps // 3)) != (base.budget,
                                                                                               base.hold_steps)
    given = load_config("eval", ["env=fork_maze", "goal=recall", "env.kwargs.action_repeat=3", "budget=7",
                                 "hold_steps=2"])
    assert (given.budget, given.hold_steps) == (7, 2)


def test_the_oracle_row_plans_as_far_ahead_in_task_steps_under_a_repeat():
    """The oracle row's horizon and execute count the task's steps (Pusher's 16 / 4 is 4 / 1 at
    k = 4, not 64 / 16 task steps); the learned row counts the model's steps, kept; a row
    value given on the command line is kept."""
    from sfplan.config import load_config

    base = load_config("eval", ["env=pusher", "world_model=oracle"])
    rep = load_config("eval", ["env=pusher", "world_model=oracle", "env.kwargs.action_repeat=4"])
    assert (base.planner.horizon, base.execute) == (16, 4)
    assert (rep.planner.horizon, rep.execute) == (4, 1)
    learned = load_config("eval", ["env=reacher", "world_model=learned", "env.kwargs.action_repeat=4"])
    assert (learned.planner.horizon, learned.execute) == (6, 2)  # Reacher's learned row, not divided by 4
    given = load_config("eval", ["env=pusher", "world_model=oracle", "env.kwargs.action_repeat=4",
                                 "env.search.oracle.horizon=10"])
    assert (given.planner.horizon, given.execute) == (10, 1)


def test_a_model_dirs_recorded_repeat_applies_to_its_own_env_whether_given_or_shipped(tmp_path, monkeypatch):
    """``sfplan eval`` plans at the action repeat a model dir records: given as
    ``world_model.path``, or shipped for the env (``path: null``); not on another env, and not
    over the command line's own ``env.kwargs.action_repeat``."""
    import json

    import sfplan.models
    from sfplan.config import load_config

    model = tmp_path / "Pusher-v0"
    model.mkdir()
    (model / "world_model.json").write_text(json.dumps({"env": {"id": "sfplan/Pusher-v0",
                                                                "kwargs": {"action_repeat": 4, "image_size": 64}}}))
    assert load_config("eval", [f"world_model.path={model}"]).env.kwargs.action_repeat == 4
    assert "action_repeat" not in load_config("eval", ["env=reacher", f"world_model.path={model}"]).env.kwargs
    assert "action_repeat" not in load_config("eval", ["env=pusher"]).env.kwargs  # nothing shipped for Pusher
    monkeypatch.setattr(sfplan.models, "ROOT", tmp_path)
    shipped = load_config("eval", ["env=pusher"])
    assert shipped.env.kwargs.action_repeat == 4 and shipped.budget == -(-load_config(
        "eval", ["env=pusher", "world_model=oracle"]).budget // 4)
    assert "action_repeat" not in load_config("eval", ["env=pusher", "world_model=oracle"]).env.kwargs
    assert load_config("eval", ["env=pusher", "env.kwargs.action_repeat=2"]).env.kwargs.action_repeat == 2
