"""The paper's planner at toy size: the inverse dynamics model (IDM), `sfplan train
stage=idm`, goal-steered video sampling and the video-plan planner."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from sfplan.config import load_config  # noqa: E402
from sfplan.errors import UserError  # noqa: E402
from sfplan.planners import PLANNERS, LatentL2Cost, PlanResult, VideoPlanPlanner  # noqa: E402
from sfplan.world_model.idm import (  # noqa: E402
    IDMConfig,
    InverseDynamicsModel,
    action_metrics,
    load_idm,
    save_idm_into,
)
from sfplan.world_model.learned import SlowFastWorldModel, SlowFastWorldModelConfig  # noqa: E402
from sfplan.world_model.sampler import make_sampler, sample_chunk_to_goal  # noqa: E402
from sfplan.world_model.vae import VAEConfig  # noqa: E402
from sfplan.world_model.video_diffusion import VideoDiffusionConfig  # noqa: E402

# 16x16 frames -> 8x8x4 latents (as tests/test_world_model.py)
TINY_VAE = dict(image_size=16, block_out_channels=(8, 8), norm_num_groups=4)
TINY_DIFF = dict(action_dim=2, max_frames=8, block_out_channels=(16, 32), head_dim=8, cross_attention_dim=16,
                 norm_num_groups=4)
TINY_IDM = dict(latent_channels=4, latent_size=8, action_dim=2, block_out_channels=(16, 32), hidden_dim=64,
                pool_size=2, norm_num_groups=4)
LOW, HIGH = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])  # an asymmetric action box


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def tiny_wm(**cfg) -> SlowFastWorldModel:
    cfg = {"context_frames": 2, "chunk_size": 4, **cfg}
    wm = SlowFastWorldModel.build(VAEConfig(**TINY_VAE), VideoDiffusionConfig(**TINY_DIFF),
                                  config=SlowFastWorldModelConfig(**cfg), device="cpu", seed=0)
    _randomize(wm.diffusion)
    return wm


def tiny_idm(seed: int = 0, **kw) -> InverseDynamicsModel:
    torch.manual_seed(seed)
    idm = IDMConfig(**{**TINY_IDM, **kw}).build()
    idm.set_action_normalizer(LOW, HIGH)
    return idm


def frames(B=1, T=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (B, T, 16, 16, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- IDM
def _synthetic(n: int, g: torch.Generator, patterns: torch.Tensor):
    """z1 = z0 + u . patterns: the latent moves in proportion to the (normalised) action."""
    u = torch.rand(n, 2, generator=g) * 2 - 1  # (n, A) in [-1, 1]
    z0 = torch.randn(n, 4, 8, 8, generator=g)
    z1 = z0 + torch.einsum("na,achw->nchw", u, patterns)
    actions = (u + 1) / 2 * (HIGH - LOW) + LOW  # env units
    return torch.stack([z0, z1], dim=1), actions  # (n, 2, C, h, w), (n, A)


def test_idm_learns_a_synthetic_mapping():
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(2, 4, 8, 8, generator=g) * 0.5  # (A, C, h, w)
    idm = tiny_idm()
    val_z, val_a = _synthetic(512, g, patterns)
    with torch.no_grad():
        before = action_metrics(idm(val_z), val_a)
    opt = torch.optim.Adam(idm.parameters(), lr=3e-3)
    for _ in range(300):
        z, a = _synthetic(64, g, patterns)
        loss, logs = idm.loss(z, a)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) >= {"loss", "mse_normalized", "mae_normalized"}
    idm.eval()
    with torch.no_grad():
        pred = idm(val_z)
        after = action_metrics(pred, val_a)
        norm_mse = (idm.normalize(pred) - idm.normalize(val_a)).pow(2).mean().item()
    assert bool(((pred >= LOW) & (pred <= HIGH)).all())  # tanh + normaliser: inside the box
    assert after["r2_0"] > 0.95 and after["r2_1"] > 0.95, after
    assert norm_mse < 0.02 and after["mse"] < 0.05 * before["mse"], (before, after)


def test_idm_infer_sequence_windows_and_gap():
    idm = tiny_idm(num_frames=3, max_gap=2)
    _randomize(idm, scale=0.05)
    z = torch.randn(2, 5, 4, 8, 8)  # (B, T, C, h, w)
    acts = idm.infer_sequence(z)
    assert acts.shape == (2, 4, 2)
    # action t leads to frame t+1; its window is frames t-1, t, t+1 with frame -1 -> frame 0
    assert torch.allclose(acts[:, 0], idm(z[:, [0, 0, 1]]), atol=1e-6)
    assert torch.allclose(acts[:, 3], idm(z[:, [2, 3, 4]]), atol=1e-6)
    assert not torch.allclose(idm(z[:, :3], gap=2), idm(z[:, :3], gap=1))  # the gap embedding is used
    with pytest.raises(ValueError, match="gap must be in"):
        idm(z[:, :3], gap=3)
    with pytest.raises(ValueError, match="num_frames=3"):
        idm(z[:, :2])


def test_idm_save_load_roundtrip_bit_exact_and_world_model_dir(tmp_path):
    idm = tiny_idm(num_frames=3)
    _randomize(idm, scale=0.05)
    idm.save_pretrained(str(tmp_path / "run" / "model"), safe_serialization=True)
    assert not list(tmp_path.rglob("*.bin"))  # safetensors, no pickles
    z = torch.randn(3, 3, 4, 8, 8)
    for where in (tmp_path / "run" / "model", tmp_path / "run"):  # model dir or run dir
        back = load_idm(where)
        s1, s2 = idm.state_dict(), back.state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
        assert torch.equal(back.action_low, LOW) and torch.equal(back.action_high, HIGH)  # normaliser saved
        assert torch.equal(idm.eval()(z), back(z))
    with pytest.raises(UserError, match="no inverse dynamics model.*sfplan train stage=idm"):
        load_idm(tmp_path / "nowhere")
    # inside a world model directory: load_world_model attaches it
    wm = tiny_wm()
    wm.save_pretrained(tmp_path / "wm")
    assert getattr(SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu"), "idm", None) is None
    save_idm_into(idm, tmp_path / "wm")
    wm2 = SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu")
    assert isinstance(wm2.idm, InverseDynamicsModel) and torch.equal(wm2.idm(z), idm(z))
    with pytest.raises(UserError, match="not a world model directory"):
        save_idm_into(idm, tmp_path / "run")


# ----------------------------------------------------------------------------- stage=idm
COMMON = ["progress=false", "num_threads=1", "log_every=1", "val_every=0", "sample_every=0", "tensorboard=false",
          "warmup_steps=0", "lr=1e-3"]
IDM_TINY = ["stage=idm", "model.block_out_channels=[8,16]", "model.hidden_dim=32", "model.pool_size=2",
            "model.norm_num_groups=4", "batch_size=8", "val_windows=64"]



@pytest.fixture(scope="module")
def vae_model(data, tmp_path_factory) -> Path:
    from sfplan.training import run_train

    out = tmp_path_factory.mktemp("vae") / "run"
    r = run_train(load_config("train", ["stage=vae", "model.block_out_channels=[8,8,8]", "model.norm_num_groups=4",
                                        "batch_size=4", "latent_scale_frames=64", *COMMON, f"data.path={data}",
                                        f"out_dir={out}", "steps=2"]))
    return Path(r["model"])


def _cfg(data, out, *extra):
    return load_config("train", [*IDM_TINY, *COMMON, f"data.path={data}", f"out_dir={out}", *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_stage_idm_trains_and_resumes_bit_exact(data, vae_model, tmp_path):
    from sfplan.training import run_train
    from sfplan.training.checkpoint import list_checkpoints

    args = [f"vae={vae_model}", "steps=4", "checkpoint_every=2", "model.num_frames=3", "model.max_gap=2"]
    full = run_train(_cfg(data, tmp_path / "full", *args))
    assert full["step"] == 4 and full["resumed_from"] is None
    cut = run_train(_cfg(data, tmp_path / "cut", *args, "stop_at_step=3"))
    assert cut["stopped"] == "stop_at_step" and not (tmp_path / "cut" / "model").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [2]
    resumed = run_train(_cfg(data, tmp_path / "cut", *args))
    assert resumed["resumed_from"].endswith("step-00000002") and resumed["steps_this_run"] == 2
    for f in ("model.safetensors", "ema.safetensors"):
        a = _weights(tmp_path / "full" / "checkpoints" / "step-00000004" / f)
        b = _weights(tmp_path / "cut" / "checkpoints" / "step-00000004" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{f} differs after resume"
    fa = tmp_path / "full" / "model" / "diffusion_pytorch_model.safetensors"
    assert fa.read_bytes() == (tmp_path / "cut" / "model" / "diffusion_pytorch_model.safetensors").read_bytes()
    idm = load_idm(tmp_path / "full")
    assert idm.config.num_frames == 3 and idm.config.latent_size == 8 and idm.config.action_dim == 2
    assert torch.allclose(idm.action_low, torch.tensor([-1.0, -1.0])) and len(list(tmp_path.glob("*/latents-*")))
    val = full["idm_val"]  # held-out action MSE and R^2 per action dim
    assert {"action_mse", "action_mse_normalized", "action_r2_0", "action_r2_1", "action_r2_mean"} <= set(val)
    # Reacher's actions span [-1, 1], so the normaliser is the identity there: the two MSEs agree
    # unless the IDM's normaliser is not the action bounds'
    assert np.isfinite(val["action_mse"]) and val["action_mse_normalized"] == pytest.approx(val["action_mse"], rel=1e-5)
    card = (tmp_path / "full" / "model_card.md").read_text()
    assert "InverseDynamicsModel" in card and "held-out actions" in card and "planner=video_plan" in card


def test_stage_idm_cli_attach_to_world_model_and_sample_metrics(data, vae_model, tmp_path):
    from sfplan.cli import main
    from sfplan.world_model.vae import FrameAutoencoder

    # a world model on the same VAE (its diffusion untrained: only the directory matters here)
    vae = FrameAutoencoder.from_pretrained(vae_model)
    diff = VideoDiffusionConfig(**{**TINY_DIFF, "max_frames": 8}).build()
    from sfplan.world_model.sampler import make_train_scheduler

    wm = SlowFastWorldModel(vae, diff, make_train_scheduler("v_prediction"),
                            SlowFastWorldModelConfig(context_frames=2, chunk_size=4), device="cpu")
    wm.save_pretrained(tmp_path / "wm")
    out = tmp_path / "idm"
    assert main(["train", *IDM_TINY, *COMMON, f"data.path={data}", f"vae={tmp_path / 'wm'}",
                 f"attach_to={tmp_path / 'wm'}", f"out_dir={out}", "steps=3", "sample_every=3", "val_every=3",
                 "tensorboard=true"]) == 0
    assert (tmp_path / "wm" / "idm" / "config.json").is_file()
    wm2 = SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu")
    s1, s2 = load_idm(out).state_dict(), wm2.idm.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["attached_to"].endswith("idm") and "action_r2_0" in summary["last_sample"]
    assert np.isfinite(summary["last_val"]["loss"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    assert {"train/loss", "val/loss", "sample/action_mse", "sample/action_r2_1"} <= set(ea.Tags()["scalars"])
    # a world model on another VAE: refused before training
    other = tiny_wm()
    other.save_pretrained(tmp_path / "other")
    from sfplan.training import run_train

    with pytest.raises(UserError, match="VAE differs"):
        run_train(_cfg(data, tmp_path / "x", f"vae={vae_model}", f"attach_to={tmp_path / 'other'}", "steps=1"))
    with pytest.raises(UserError, match="stage=idm needs a trained VAE"):
        run_train(_cfg(data, tmp_path / "y", "steps=1"))


# ----------------------------------------------------------------------------- goal steering
@pytest.mark.parametrize("kind", ["dpmsolver++", "ddim"])
def test_replacement_guidance_brings_the_last_frame_to_the_goal(kind):
    wm = tiny_wm()
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(16, 2, 4, 8, 8, generator=g)  # (B, f_p, C, h, w)
    goal = torch.randn(16, 4, 8, 8, generator=g)
    sched = make_sampler(kind, wm.train_scheduler)

    def sample(guidance, seed=1):
        return sample_chunk_to_goal(wm.diffusion, ctx, goal, 4, 6, sched, wm.train_scheduler,
                                    generator=torch.Generator().manual_seed(seed), guidance=guidance,
                                    guidance_weight=1.0)

    free, guided, recon = sample("none"), sample("replace"), sample("reconstruction")
    assert guided.shape == (16, 4, 4, 8, 8)
    d = {k: (v[:, -1] - goal).pow(2).mean().item() for k, v in (("none", free), ("replace", guided),
                                                                ("reconstruction", recon))}
    assert d["replace"] < 0.25 * d["none"], d  # an untrained model: only the goal itself pulls the last frame
    assert d["reconstruction"] < d["replace"], d
    assert not torch.equal(guided[:, -1], goal)  # the model's own last frame, not the goal copied in
    assert torch.equal(sample("replace"), guided)  # seeded
    assert not torch.equal(sample("replace", seed=2), guided)


# ----------------------------------------------------------------------------- planner
def make_planner(wm=None, idm=None, cost=None, **kw):
    wm = wm or tiny_wm()
    if idm is not False:
        wm.idm = idm or tiny_idm(num_frames=3)
    return VideoPlanPlanner(world_model=wm, cost=cost or LatentL2Cost(reduce="mean"), action_low=LOW,
                            action_high=HIGH, **{"num_videos": 4, "num_steps": 3, "score": "video", **kw}), wm


def test_planner_returns_bounded_actions_of_the_best_video():
    assert PLANNERS["video_plan"] is VideoPlanPlanner
    seen = []

    class Recording(LatentL2Cost):
        def __call__(self, imagined, goal):
            c = super().__call__(imagined, goal)
            seen.append((imagined.features.clone(), c.clone()))
            return c

    idm = tiny_idm(num_frames=3)
    _randomize(idm, scale=0.3)  # wide outputs: the clip to the box is exercised
    planner, wm = make_planner(idm=idm, cost=Recording(reduce="mean"))
    assert planner.horizon == wm.chunk_size == 4 and planner.needs_world_model
    state = wm.encode(frames(2, 2))
    goal = wm.encode(frames(1, 1, seed=5)).features  # (1, C, h, w), as the runner passes it
    res = planner.plan(state, goal)
    assert isinstance(res, PlanResult) and res.actions.shape == (2, 4, 2) and res.cost.shape == (2,)
    assert bool(((res.actions >= LOW) & (res.actions <= HIGH)).all())
    assert not torch.equal(res.actions[:, 0], res.actions[:, 1])
    (video, costs), = seen
    assert video.shape == (2, 4, 4, 4, 8, 8)  # (B, K, H, C, h, w): one batched sampler call
    best = costs.argmin(1)
    assert torch.equal(res.cost, costs.min(1).values)
    for b in range(2):  # the returned actions are the IDM's reading of the chosen video
        seq = torch.cat([state.context[b], video[b, best[b]]])[None]  # (1, T'+H, C, h, w)
        expect = torch.clamp(idm.infer_sequence(seq)[0, 1:], LOW, HIGH)
        assert torch.allclose(res.actions[b], expect, atol=1e-5)
    assert res.info["num_subgoals"] == 1 and res.info["imagined_frames"] == 2 * 4 * 4
    assert wm.imagined_frames == 2 * 4 * 4
    # seeded: same seed, same decisions; successive decisions draw fresh noise
    p2, _ = make_planner(wm=wm, idm=idm, cost=Recording(reduce="mean"))
    assert torch.equal(p2.plan(state, goal).actions, res.actions)
    assert not torch.equal(p2.plan(state, goal).actions, res.actions)
    p2.reset()
    assert torch.equal(p2.plan(state, goal).actions, res.actions)


def test_planner_rollout_scoring_and_reconstruction_guidance():
    planner, wm = make_planner(score="rollout", guidance="reconstruction", horizon=3)
    calls = []
    orig = wm.imagine
    wm.imagine = lambda s, a: calls.append(a.shape) or orig(s, a)
    state = wm.encode(frames(1, 1))  # a single context frame: the IDM repeats it for the window
    res = planner.plan(state, wm.encode(frames(1, 1, seed=3)).features)
    assert res.actions.shape == (1, 3, 2) and calls == [(1, 4, 3, 2)]  # one imagine call for all K videos
    assert bool(((res.actions >= LOW) & (res.actions <= HIGH)).all())


def test_subgoals_advance_when_reached():
    planner, wm = make_planner(subgoal_threshold=1e-6)
    state = wm.encode(frames(2, 2))
    far = wm.encode(frames(2, 1, seed=9)).features
    waypoints = torch.stack([state.features, far], dim=1)  # (B, S=2, C, h, w): env 0 and 1 stand on waypoint 0
    waypoints[1, 0] += 1.0  # env 1 has not reached its first waypoint
    res = planner.plan(state, waypoints)
    assert planner.subgoals.index.tolist() == [1, 0] and res.info["num_subgoals"] == 2
    # progress is kept across decisions (env 0 does not fall back) and reset with a new goal
    planner.plan(wm.encode(frames(2, 2, seed=4)), waypoints)
    assert planner.subgoals.index.tolist() == [1, 0]
    planner.plan(state, waypoints + 5.0)  # new waypoints, none reached: progress restarts
    assert planner.subgoals.index.tolist() == [0, 0]
    planner.plan(state, waypoints.flip(1))  # env 0 stands on the last waypoint: skips to it
    assert planner.subgoals.index.tolist() == [1, 0]
    with pytest.raises(ValueError, match="goal must be"):
        planner.plan(state, torch.zeros(2, 3, 8, 8))


def test_clear_errors_without_idm_or_learned_world_model():
    with pytest.raises(UserError, match="needs an inverse dynamics model.*stage=idm"):
        make_planner(idm=False)
    from sfplan.world_model.oracle import OracleWorldModel

    with pytest.raises(UserError, match="learned world model.*world_model=learned"):
        VideoPlanPlanner(OracleWorldModel.__new__(OracleWorldModel), LatentL2Cost(), LOW, HIGH, idm=tiny_idm())
    with pytest.raises(UserError, match="IDM works on 4x16x16"):
        make_planner(idm=tiny_idm(latent_size=16))
    with pytest.raises(UserError, match="3-d actions"):
        make_planner(idm=IDMConfig(**{**TINY_IDM, "action_dim": 3}).build())
    with pytest.raises(ValueError, match="max_frames"):
        make_planner(horizon=7)  # context 2 + 7 > max_frames 8
    with pytest.raises(ValueError, match="guidance must be"):
        make_planner(guidance="bogus")


def test_planner_runs_in_the_mpc_loop():
    """run_episode on a 16x16 Reacher with the video-plan planner (toy models: only the
    plumbing is checked: goal encoding, short history, executed chunks, re-planning)."""
    from sfplan.envs import make_env
    from sfplan.eval.runner import run_episode

    env = make_env("sfplan/Reacher-v0", image_size=16, goal="near")
    try:
        low, high = env.action_space.low, env.action_space.high
        wm = tiny_wm()
        idm = IDMConfig(**TINY_IDM).build()
        idm.set_action_normalizer(low, high)
        wm.idm = idm
        planner = VideoPlanPlanner(wm, LatentL2Cost(), torch.as_tensor(low), torch.as_tensor(high), num_videos=2,
                                   num_steps=2)
        res = run_episode(env, planner, wm, seed=100000, budget=6, execute=3, record=False)
    finally:
        env.close()
    assert not res.success  # untrained toy models on this seed: the budget is always used up
    assert res.steps == 6 and len(res.plan_times) == 2  # two decisions of 3 executed steps each


def test_planner_imagines_with_the_attached_temp_lora_memory_and_never_writes_it():
    pytest.importorskip("peft")
    wm = tiny_wm()
    wm.idm = tiny_idm(num_frames=3)
    _randomize(wm.idm, scale=0.05)
    mem = wm.attach_memory({"rank": 4, "lr": 1e-2, "steps_per_write": 3})
    wm.remember(frames(1, 6, seed=7)[0])  # a written memory: non-zero LoRA weights
    before = mem.snapshot()
    planner, _ = make_planner(wm=wm, idm=wm.idm)
    state, goal = wm.encode(frames(1, 2)), wm.encode(frames(1, 1, seed=5)).features
    res = planner.plan(state, goal)
    assert res.info["memory"] is True
    planner.reset()
    with mem.disabled():
        base = planner.plan(state, goal)
    assert not torch.equal(res.actions, base.actions)  # the videos were generated with the memory
    make_planner(wm=wm, idm=wm.idm, guidance="reconstruction")[0].plan(state, goal)  # gradients through the LoRA
    after = mem.snapshot()
    assert after["writes"] == before["writes"]
    assert all(torch.equal(before["lora"][k], after["lora"][k]) for k in before["lora"])


def test_eval_cli_with_video_plan(tmp_path):
    """`sfplan eval planner=video_plan` composes, instantiates (horizon from the world model,
    IDM from <world model dir>/idm/) and writes a report."""
    from sfplan.cli import main

    wm = tiny_wm()
    wm.trained_env = {"id": "sfplan/Reacher-v0", "kwargs": {"image_size": 16}}
    wm.save_pretrained(tmp_path / "wm")
    idm = IDMConfig(**TINY_IDM).build()
    idm.set_action_normalizer([-1.0, -1.0], [1.0, 1.0])
    save_idm_into(idm, tmp_path / "wm")
    out = tmp_path / "eval"
    assert main(["eval", "env=reacher", "planner=video_plan", "world_model=learned",
                 f"world_model.path={tmp_path / 'wm'}", "env.kwargs.image_size=16", "episodes=1", "budget=4",
                 "execute=2", "planner.num_videos=2", "planner.num_steps=2", "record=false", "progress=false",
                 "cost=multiscale", f"out_dir={out}"]) == 0  # cost: the tiny model has no state probe
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["planner"]["num_videos"] == 2
    assert rep["meta"]["planner"] == "VideoPlanPlanner"  # the planner that ran, not the echoed config
    e = rep["episodes"][0]
    assert not e["success"] and e["steps"] == 4 and e["decisions"] == 2 and e["plan_time_mean_s"] > 0
    assert rep["meta"]["imagined_frames"] > 0  # it generated videos with the world model

    # planner.idm_path: an IDM kept apart from the world model, loaded by `sfplan eval` for the planner
    wm.save_pretrained(tmp_path / "bare")
    idm.save_pretrained(str(tmp_path / "idm"), safe_serialization=True)
    assert main(["eval", "env=reacher", "planner=video_plan", f"world_model.path={tmp_path / 'bare'}",
                 f"planner.idm_path={tmp_path / 'idm'}", "env.kwargs.image_size=16", "episodes=1", "budget=2",
                 "execute=2", "planner.num_videos=2", "planner.num_steps=2", "record=false", "progress=false",
                 "cost=multiscale", f"out_dir={tmp_path / 'eval2'}"]) == 0
