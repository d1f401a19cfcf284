"""Bring your own env: an env sfplan does not ship (tests/user_env/puck_env.py), named as
`module:callable` or as the Gymnasium id its module registers, through `sfplan fit` ->
`sfplan eval` -> `sfplan generate` at toy size; the env contract's errors; the derived
recipe; the Python entry points; DDP training with two CPU processes."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sfplan.cli import main
from sfplan.config import load_config
from sfplan.errors import UserError

USER_ENV = Path(__file__).parent / "user_env"
TOY_FIT = ["size=toy", "progress=false", "minutes=0.5", "collect.pilot_episodes=3", "collect.min_episodes=24",
           "collect.max_episodes=24", "collect.steps=10", "collect.workers=1", "eval.episodes=1", "eval.budget=4",
           "device=cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread", "user_env_on_path")  # conftest.py


@pytest.fixture(scope="module")
def user_env_on_path():
    sys.path.insert(0, str(USER_ENV))
    yield
    sys.path.remove(str(USER_ENV))


@pytest.fixture(scope="module")
def puck_fit(tmp_path_factory, user_env_on_path, one_torch_thread) -> Path:
    """A toy `sfplan fit` of the user env named as module:callable."""
    out = tmp_path_factory.mktemp("fit") / "puck"
    assert main(["fit", "env.id=puck_env:make_puck", f"out={out}", *TOY_FIT]) == 0
    return out


# ----------------------------------------------------------------------------- env specs
def test_every_form_of_env_spec_makes_the_same_task():
    from sfplan.envs import check_goal_image_env, make_env

    for spec in ("puck_env:make_puck", "puck_env:PuckArena-v0", "sfplan/Reacher-v0"):
        env = make_env(spec)
        try:
            got = check_goal_image_env(env, spec)
        finally:
            env.close()
        assert got["image_size"] == 64 and len(got["action_low"]) == 2
    env = make_env("puck_env:make_puck")
    assert check_goal_image_env(env, "x")["max_episode_steps"] == 60  # the TimeLimit inside the wrapper
    env.close()


@pytest.mark.parametrize("spec, message", [
    ("bad_envs:make_discrete", "Discrete; sfplan's planners search continuous actions"),
    ("bad_envs:make_no_pixels", "has no 'pixels' image; wrap it"),
    ("bad_envs:make_raises", "the factory raised RuntimeError: the robot is not connected"),
    ("bad_envs:make_not_an_env", "returned int, not a gymnasium.Env"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("puck_env:NoSuchEnv-v0", "cannot make env"),
])
def test_a_bad_env_stops_every_command_before_work_with_its_fix(spec, message, tmp_path, capsys):
    for cmd in (["fit", f"out={tmp_path / 'f'}", *TOY_FIT], ["eval", "world_model=oracle", "progress=false"],
                ["collect", f"out={tmp_path / 'd'}", "episodes=1", "workers=1", "progress=false"]):
        assert main([cmd[0], f"env.id={spec}", *cmd[1:]]) == 2, cmd[0]
        assert message in capsys.readouterr().err, cmd[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "f" / "work").exists()


def test_the_fit_collects_along_the_envs_routes_where_it_has_them(tmp_path, capsys):
    """collect.policy=auto: policy=explore on an env with routes (ForkMaze), the env's collection
    script with half the episodes random where it has one (Pusher), correlated elsewhere; a
    policy the env cannot run stops the fit before any work."""
    from sfplan.training.fit import Fit, auto_policy

    def check(env_id):
        return Fit(load_config("fit", [f"env.id={env_id}", f"out={tmp_path / 'f'}", *TOY_FIT]))._check()
    fork, pusher, puck = (check(e) for e in ("sfplan/ForkMaze-v0", "sfplan/Pusher-v0", "puck_env:make_puck"))
    assert fork["routes"] and not puck["routes"] and not pusher["routes"]
    assert pusher["collect_script"] and not puck["collect_script"]
    assert auto_policy(fork, 0.5) == ("explore", {})
    assert auto_policy(pusher, 0.5) == ("goal", {"noise_episodes": 0.5})
    assert auto_policy(puck, 0.5) == ("correlated", {})
    assert load_config("fit", [f"out={tmp_path / 'f'}"]).collect.noise_episodes == 0.5
    for bad, message in (("collect.policy=explore", "collect.policy=explore needs an env with exploration routes"),
                         ("collect.policy=brownian", "unknown policy 'brownian'"),
                         ("collect.noise_episodes=1.5", "collect.noise_episodes=1.5: the share of episodes")):
        assert main(["fit", "env.id=puck_env:make_puck", f"out={tmp_path / 'f'}", bad, *TOY_FIT]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "f" / "work").exists()


def test_an_env_sfplan_does_not_ship_gets_settings_from_itself_not_reacher():
    cfg = load_config("eval", ["env.id=puck_env:make_puck"])
    assert cfg.env.budget == 60  # its TimeLimit
    assert cfg.env.search.learned.cost == "multiscale"  # no model dir with a probe: not Reacher's probe row
    # the learned row: the small search re-planned every 2 steps, 3/4 of the default model's chunk of 8
    assert (cfg.planner.horizon, cfg.execute, cfg.planner.num_samples) == (6, 2, 16)
    oracle = load_config("eval", ["env.id=puck_env:make_puck", "world_model=oracle"])
    assert oracle.planner.horizon == oracle.env.search.oracle.horizon
    # an id that a shipped task config names composes that config
    assert load_config("eval", ["env.id=sfplan/PointMazeUMaze-v0"]).env.budgets.near == 25


def test_a_users_own_env_yaml_is_merged_over_the_custom_config(tmp_path):
    f = tmp_path / "puck.yaml"
    f.write_text("id: puck_env:make_puck\nbudget: 30\nsearch:\n  learned: {num_samples: 32}\n")
    cfg = load_config("eval", [f"env={f}"])
    assert cfg.env.budget == 30 and cfg.planner.num_samples == 32 and cfg.env.search.learned.horizon == 6
    with pytest.raises(UserError, match="no such file"):
        load_config("eval", [f"env={tmp_path / 'nope.yaml'}"])


# ----------------------------------------------------------------------------- fit -> eval -> generate
def test_fit_writes_a_complete_model_dir_with_card_and_eval(puck_fit):
    s = json.loads((puck_fit / "fit.json").read_text())
    assert all(s["stages"][k]["status"] == "done" for k in ("collect", "vae", "dynamics", "probe", "idm", "eval"))
    wm = json.loads((puck_fit / "model" / "world_model.json").read_text())
    assert wm["env"]["id"] == "puck_env:make_puck"
    # the puck moves ~1 px a step: the fit derives an action repeat, and the model dir records it
    k = s["motion"]["action_repeat"]
    assert s["motion"]["source"] == "derived" and k > 1
    assert wm["env"]["kwargs"]["action_repeat"] == k == s["env_fitted"]["kwargs"]["action_repeat"]
    assert s["env"]["kwargs"] == {}  # what the user gave, kept apart from what was derived
    for part in ("vae", "diffusion", "scheduler", "probe", "idm"):
        assert (puck_fit / "model" / part).is_dir(), part
    r = s["recipe"]
    assert r["fg_weight"] > 1 and r["motion_weight"] > 0  # a small puck: its pixels are weighed up
    for stage in ("vae", "dynamics", "probe", "idm"):  # each training stage runs under its time limit
        limit = s["stages"][stage]["time_limit_s"]
        assert limit >= 20.0
        run_cfg = (puck_fit / "work" / "runs" / stage / "config.yaml").read_text()
        assert f"time_limit_s: {round(limit, 1)}" in run_cfg, stage
    card = (puck_fit / "model" / "README.md").read_text()
    for words in ("Derived settings", "fg_weight", "Held-out quality", "object PSNR", "| learned |", "| random |",
                  "| oracle |"):
        assert words in card, words
    assert str(puck_fit) not in card  # no machine paths in the card or the model's configs
    for cfg in (puck_fit / "model").rglob("*.json"):
        assert str(puck_fit) not in cfg.read_text(), cfg
    q = s["quality"]
    assert set(q["object_psnr"]) == set(q["state_error"]) - {"truth"} == {"model", "copy_last", "shuffled_actions"}
    assert ("Not ready to plan with" in card) == bool(q["verdict"]) != ("follows the actions (held-out" in card)
    ev = s["stages"]["eval"]["results"]
    assert ev["random"]["episodes"] == ev["learned"]["episodes"] >= 1  # the same seeds


def test_fit_run_again_resumes_without_redoing_finished_stages(puck_fit, capsys):
    vae_ckpts = sorted((puck_fit / "work" / "runs" / "vae" / "checkpoints").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in vae_ckpts]
    s = json.loads((puck_fit / "fit.json").read_text())
    del s["stages"]["idm"], s["stages"]["eval"]  # as if killed after the probe
    (puck_fit / "fit.json").write_text(json.dumps(s))
    assert main(["fit", "env.id=puck_env:make_puck", f"out={puck_fit}", *TOY_FIT]) == 0
    s2 = json.loads((puck_fit / "fit.json").read_text())
    assert s2["stages"]["idm"]["status"] == "done" and s2["stages"]["eval"]["status"] == "done"
    assert s2["stages"]["vae"] == s["stages"]["vae"]
    assert [p.stat().st_mtime_ns for p in sorted((puck_fit / "work" / "runs" / "vae" / "checkpoints").iterdir())] \
        == mtimes
    # a fit folder of another env is refused
    assert main(["fit", "env=reacher", f"out={puck_fit}", *TOY_FIT]) == 2
    assert "holds a fit of" in capsys.readouterr().err


def test_eval_and_generate_find_the_env_in_the_model_dir(puck_fit, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", f"world_model.path={puck_fit}", "episodes=1", "budget=3", f"out_dir={out}",
                 "progress=false", "record=false", "device=cpu"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["meta"]["task"] == "puck_env:make_puck" and rep["meta"]["world_model"] == "SlowFastWorldModel"
    assert rep["config"]["env"]["kwargs"]["action_repeat"] > 1  # the repeat the model was fitted with
    chosen = json.loads((puck_fit / "model" / "world_model.json").read_text())["planning"]["cost"]
    assert rep["config"]["cost"]["name"] == chosen  # the cost the fit chose by its held-out check
    card = (puck_fit / "model" / "README.md").read_text()
    assert f"| planning cost | {chosen} |" in card
    gen = tmp_path / "gen"
    assert main(["generate", f"model={puck_fit}", "horizon=4", f"out_dir={gen}", "device=cpu"]) == 0
    m = json.loads((gen / "metrics.json").read_text())
    assert m["source"]["task"] == "puck_env:make_puck" and len(m["per_step"]["model"]["psnr"]) == 4


def test_fit_eval_generate_by_the_gymnasium_id_the_module_registers(tmp_path):
    out = tmp_path / "puck_id"
    assert main(["fit", "env.id=puck_env:PuckArena-v0", f"out={out}", *TOY_FIT, "eval.baselines=[random]"]) == 0
    wm = json.loads((out / "model" / "world_model.json").read_text())
    assert wm["env"]["id"] == "puck_env:PuckArena-v0"
    ev = tmp_path / "ev"
    assert main(["eval", "env.id=puck_env:PuckArena-v0", f"world_model.path={out}", "episodes=1", "budget=3",
                 f"out_dir={ev}", "progress=false", "record=false", "device=cpu"]) == 0
    assert json.loads((ev / "report.json").read_text())["meta"]["task"] == "puck_env:PuckArena-v0"
    assert main(["generate", f"model={out}", "horizon=2", f"out_dir={tmp_path / 'gen'}", "device=cpu"]) == 0


# ----------------------------------------------------------------------------- recipe
def _episodes(side: int, n: int = 6, T: int = 12) -> list:
    """Synthetic episodes: a side x side white square sliding over a grey 32x32 frame."""
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(n):
        px = np.full((T, 32, 32, 3), 100, np.uint8)
        x0, y0 = rng.integers(0, 32 - side - T, 2)
        for t in range(T):
            px[t, y0:y0 + side, x0 + t:x0 + t + side] = 255
        eps.append(SimpleNamespace(pixels=px))
    return eps


@pytest.mark.parametrize("quality, ready", [
    # held-out figures of real fits (docs/notes/2026-12-06-sfplan-fit.md, benchmarks/results/fit)
    ({"state_error": {"model": 0.031, "copy_last": 0.141, "shuffled_actions": 0.180}, "adherence_margin_db": 1.5},
     True),   # the puck: kept and moved by the actions
    ({"state_error": {"model": 1.297, "copy_last": 0.381, "shuffled_actions": 1.3}, "adherence_margin_db": -0.0},
     False),  # PointMaze UMaze at 30 min: a maze without its ball
    ({"state_error": {"model": 0.05, "copy_last": 0.141, "shuffled_actions": 0.05}, "adherence_margin_db": 0.0},
     False),  # an object that moves whatever the actions say
    ({"adherence_margin_db": 0.70}, True),   # no probe (Reacher's fit): the actions move the object
    # MemoryMaze at 30 min: a probe that cannot read position off a follow camera's view (its own
    # error on the true frames is copy-last's), so the actions decide, and the view follows them
    ({"state_error": {"model": 2.38, "copy_last": 2.26, "shuffled_actions": 2.38, "truth": 2.2},
      "adherence_margin_db": 2.44}, True),
    # PointMaze Medium at 30 min: the VAE lost the ball, so neither the probe nor the actions help
    ({"state_error": {"model": 2.57, "copy_last": 2.55, "shuffled_actions": 2.57, "truth": 2.57},
      "adherence_margin_db": 0.0023}, False),
    ({"adherence_margin_db": -0.01}, False),
    ({"adherence_margin_db": 0.1}, False),
])
def test_the_fit_says_when_its_model_cannot_plan(quality, ready):
    from sfplan.training.fit import quality_verdict

    verdict = quality_verdict({"psnr": {}, **quality})
    assert (verdict is None) == ready
    if not ready:
        assert "minutes=" in verdict and "init_from" in verdict
    assert quality_verdict({}) is None  # not measured: nothing to say


@pytest.mark.parametrize("state_error, radius, cost", [
    # held-out figures of real fits (benchmarks/results/fit)
    ({"model": 0.031, "copy_last": 0.141, "shuffled_actions": 0.180, "truth": 0.005}, 0.05, "probe"),  # the puck
    ({"model": 0.130, "copy_last": 0.100, "shuffled_actions": 0.13, "truth": 0.099}, 0.05, "multiscale"),  # Pusher
    ({"model": 1.297, "copy_last": 0.381, "shuffled_actions": 1.3, "truth": 0.155}, 0.45, "probe"),  # UMaze
    ({"model": 2.38, "copy_last": 2.26, "shuffled_actions": 2.38, "truth": 2.2}, None, "multiscale"),  # MemoryMaze
    ({"model": 0.1, "copy_last": 0.5, "shuffled_actions": 0.4, "truth": 0.1}, None, "probe"),  # no radius
    (None, 0.05, "multiscale"),  # no probe
])
def test_the_fit_plans_with_its_probe_only_where_the_probe_reads_the_goal(state_error, radius, cost):
    from sfplan.training.fit import planning_cost

    got, why = planning_cost({"state_error": state_error} if state_error else {}, radius)
    assert got == cost and why


def test_a_model_dirs_planning_cost_decides_cost_auto(tmp_path):
    """`cost: auto` takes the cost the fit recorded in world_model.json over the probe it ships."""
    for part in ("probe",):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text("{}")
    meta = {"chunk_size": 6, "env": {"id": "puck_env:make_puck", "kwargs": {}}}
    (tmp_path / "world_model.json").write_text(json.dumps(meta))
    assert load_config("eval", [f"world_model.path={tmp_path}"]).env.search.learned.cost == "probe"
    (tmp_path / "world_model.json").write_text(json.dumps({**meta, "planning": {"cost": "multiscale"}}))
    cfg = load_config("eval", [f"world_model.path={tmp_path}"])
    assert cfg.env.search.learned.cost == "multiscale" and (cfg.planner.horizon, cfg.execute) == (4, 2)  # 3/4 of 6


def test_derived_weights_follow_the_size_of_what_moves():
    from omegaconf import OmegaConf

    from sfplan.training.fit import derive_recipe

    rec = OmegaConf.load(Path(__file__).parents[1] / "configs" / "fit.yaml").recipe
    small, large = derive_recipe(_episodes(2), rec), derive_recipe(_episodes(8), rec)
    assert small["fg_weight"] > 3 * large["fg_weight"] and small["motion_weight"] > large["motion_weight"]
    p, w = small["stats"]["foreground_pixel_fraction"], small["fg_weight"]
    assert w * p / (w * p + 1 - p) == pytest.approx(float(rec.fg_share), abs=1e-6)  # the moving share of the loss
    fixed = derive_recipe(_episodes(2), OmegaConf.merge(rec, {"fg_weight": 7.0}))
    assert fixed["fg_weight"] == 7.0


# ----------------------------------------------------------------------------- Python entry points
def test_python_evaluate_takes_a_factory_and_writes_the_cli_report(tmp_path):
    import sfplan
    from puck_env import make_puck

    rep = sfplan.evaluate(lambda: make_puck(), planner="random", episodes=2, budget=3, out_dir=str(tmp_path / "r"),
                          progress=False, record=False)
    assert rep["summary"]["episodes"] == 2 and (tmp_path / "r" / "report.md").is_file()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["meta"]["seeds"] == [100000, 100001]
    rep = sfplan.evaluate(make_puck, planner="random", episodes=1, budget=3, out_dir=str(tmp_path / "n"),
                          progress=False, record=False)
    assert rep["meta"]["task"] == "puck_env:make_puck"  # an importable factory is recorded by name


# ----------------------------------------------------------------------------- DDP
def test_ddp_training_with_two_cpu_processes_trains_checkpoints_and_resumes(puck_fit, tmp_path):
    out = tmp_path / "ddp"
    args = ["stage=vae", f"data.path={puck_fit / 'work' / 'data'}", f"out_dir={out}", "model.block_out_channels=[8,8,8]",
            "model.norm_num_groups=4", "batch_size=2", "latent_scale_frames=32", "checkpoint_every=2", "val_every=0",
            "sample_every=0", "tensorboard=false", "progress=false", "warmup_steps=0", "num_threads=1", "log_every=1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(USER_ENV), os.environ.get("PYTHONPATH", "")])}

    def launch(steps: int) -> dict:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "sfplan.cli", "train", *args, f"steps={steps}"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads((out / "training_summary.json").read_text())

    s = launch(4)
    assert s["num_processes"] == 2 and s["step"] == 4 and s["resumed_from"] is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    s = launch(6)  # the same command with more steps resumes from step 4 under DDP
    assert s["num_processes"] == 2 and s["step"] == 6 and s["resumed_from"].endswith("step-00000004")
    assert np.isfinite(s["last_train"]["loss"])


def test_eval_time_limit_stops_starting_episodes_and_reports_those_run(tmp_path, capsys):
    out = tmp_path / "tl"
    assert main(["eval", "env.id=puck_env:make_puck", "planner=random", "episodes=3", "budget=3",
                 "time_limit_s=0.001", f"out_dir={out}", "progress=false", "record=false"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["episodes"] == 1 and rep["meta"]["seeds"] == [100000]
    assert main(["eval", "env.id=puck_env:make_puck", "planner=random", "time_limit_s=5", "jobs=2",
                 "progress=false"]) == 2
    assert "time_limit_s=5" in capsys.readouterr().err
