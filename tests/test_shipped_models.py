"""The world models shipped in sfplan/models: loadable, small, carded, and what `sfplan eval`
and `sfplan generate` use by default."""
from __future__ import annotations

import json

import pytest

from sfplan.cli import main
from sfplan.models import shipped_model_path, shipped_models
from sfplan.world_model.learned import checkpoint_sha256, load_world_model

SHIPPED = ["sfplan/Reacher-v0", "sfplan/PointMazeUMaze-v0", "sfplan/PointMazeMedium-v0", "sfplan/Lift-v0"]
# a card from `sfplan train` runs (scripts/ship_model.py) or from a `sfplan fit` (ship_model.py --fit)
TRAINED_CARD = ("Held-out quality", "Stage 2: dynamics", "Stage 1: frame VAE", "command", "wall time")
FIT_CARD = ("Made by `sfplan fit", "## Derived settings", "## Stages", "## Held-out quality", "## Planning")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.mark.parametrize("task", SHIPPED)
def test_shipped_model_loads_small_and_carded(task):
    assert task in shipped_models()
    d = shipped_model_path(task)
    size_mb = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
    assert size_mb <= 20.0
    card = (d / "README.md").read_text()
    for section in FIT_CARD if "(sfplan fit)" in card.splitlines()[0] else TRAINED_CARD:
        assert section in card, section
    wm = load_world_model(None, device="cpu", task=task)
    assert wm.checkpoint_sha256 == checkpoint_sha256(d)
    assert wm.latent_shape == (4, 16, 16)


def test_eval_defaults_to_the_shipped_reacher_model(tmp_path):
    out = tmp_path / "run"
    assert main(["eval", "episodes=1", "budget=2", "planner.num_samples=4", "planner.iterations=1",
                 f"out_dir={out}", "progress=false", "record=false"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["meta"]["world_model"] == "SlowFastWorldModel"
    assert rep["meta"]["checkpoint_sha256"] == checkpoint_sha256(shipped_model_path("sfplan/Reacher-v0"))
    assert rep["config"]["env"]["id"] == "sfplan/Reacher-v0"


def test_generate_defaults_to_the_shipped_model_on_a_simulated_episode(tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "horizon=4", f"out_dir={out}", "num_threads=1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["source"] == {"task": "sfplan/Reacher-v0", "seed": 100000, "policy": "correlated"}
    assert m["checkpoint_sha256"] == checkpoint_sha256(shipped_model_path("sfplan/Reacher-v0"))
    assert len(m["per_step"]["step"]) == 4 and (out / "video.gif").exists()


def test_a_shipped_fit_model_sets_its_tasks_derived_search_and_action_repeat():
    """`sfplan eval env=lift` plans with the shipped Lift model as its fit made it: at its action
    repeat, with the cost the fit chose (its probe) and the search derived from its chunk."""
    pytest.importorskip("robosuite")
    from sfplan.config import load_config

    cfg = load_config("eval", ["env=lift"])
    assert cfg.env.kwargs.action_repeat == 2 and cfg.env.search.learned.cost == "probe"
    assert (cfg.planner.horizon, cfg.execute, cfg.planner.num_samples) == (6, 2, 16)
    assert cfg.budget == 40  # the task's 80 steps at the model's repeat of 2


def test_no_shipped_model_names_the_fix():
    from sfplan.errors import UserError

    with pytest.raises(UserError, match="world_model=oracle"):
        shipped_model_path("sfplan/Pusher-v0")


def test_shipped_pointmaze_model_is_refused_on_other_env_settings(capsys):
    """The PointMaze model was trained with an action repeat of 4 (world_model.json "env");
    eval at gymnasium-robotics' frame_skip=1 would imagine another simulator, so it stops."""
    wm = load_world_model(None, device="cpu", task="sfplan/PointMazeUMaze-v0")
    assert wm.trained_env == {"id": "sfplan/PointMazeUMaze-v0", "kwargs": {"frame_skip": 4, "image_size": 64}}
    assert main(["eval", "env=pointmaze_umaze", "world_model=learned", "env.kwargs.frame_skip=1", "episodes=1",
                 "progress=false", "record=false"]) == 2
    assert "env.kwargs.frame_skip=4" in capsys.readouterr().err


@pytest.mark.parametrize("task,tol", [("sfplan/Reacher-v0", 0.02), ("sfplan/PointMazeUMaze-v0", 0.1),
                                      ("sfplan/PointMazeMedium-v0", 0.1)])
def test_shipped_state_probe_reads_the_goal_descriptor(task, tol):
    """The shipped probe (cost=probe) reads what success is measured on off real goal images:
    Reacher's fingertip within its 2 cm success radius, PointMaze's ball well within 0.45 m
    (UMaze and Medium, whose ~8-px ball is at the VAE's limit). 16 goals: a mean over 4 swings
    with one or two hard goals (Medium near: 0.107 on the first 4, 0.062 over 32)."""
    import gymnasium as gym
    import numpy as np

    import sfplan.envs  # noqa: F401

    wm = load_world_model(None, device="cpu", task=task)
    env = gym.make(task, **(wm.trained_env or {}).get("kwargs", {}))  # Reacher's older card has no "env"
    errs = []
    for seed in range(100000, 100016):
        obs, _ = env.reset(seed=seed)
        z = wm.encode(obs["desired_goal"][None, None]).features  # (1, C, h, w)
        errs.append(float(np.linalg.norm(wm.probe(z)[0].detach().numpy() - env.unwrapped._goal)))
    env.close()
    assert np.mean(errs) < tol, errs
