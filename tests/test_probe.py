"""The state probe and cost=probe at toy size: the probe learns to read a descriptor off
latents, ProbeCost ranks by that reading, `sfplan train stage=probe` labels frames from the
dataset's recorded states (and the world model's imagined chunks) and attaches the probe."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from sfplan.config import load_config  # noqa: E402
from sfplan.errors import UserError  # noqa: E402
from sfplan.planners import COSTS, ProbeCost  # noqa: E402
from sfplan.world_model.base import Imagination  # noqa: E402
from sfplan.world_model.probe import (  # noqa: E402
    PixelProbe, ProbeConfig, StateProbe, load_probe, probe_for, save_probe_into)

TINY = dict(latent_channels=4, latent_size=8, out_dim=2, width=8, hidden_dim=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def blob_latents(pos: torch.Tensor, size: int = 8) -> torch.Tensor:
    """pos (M, 2) in [0, size) -> latents (M, 4, size, size): a Gaussian blob at (row, col) on
    channel 0 (a stand-in for a small object in view), noise elsewhere."""
    g = torch.Generator().manual_seed(1)
    r = torch.arange(size, dtype=torch.float32)
    blob = torch.exp(-((r[None, :, None] - pos[:, 0, None, None]) ** 2 + (r[None, None, :] - pos[:, 1, None, None]) ** 2)
                     / 1.5)  # (M, size, size)
    z = 0.05 * torch.randn(len(pos), 4, size, size, generator=g)
    z[:, 0] += 2.0 * blob
    return z


@pytest.fixture(scope="module")
def trained_probe() -> StateProbe:
    """A tiny probe trained to read the blob's position (in "metres": pixels x 0.01)."""
    torch.manual_seed(0)
    pos = torch.rand(2048, 2) * 7.0
    z, y = blob_latents(pos), pos * 0.01
    probe = ProbeConfig(**TINY).build()
    probe.set_target_normalizer(y)
    opt = torch.optim.Adam(probe.parameters(), 3e-3)
    for _ in range(400):
        k = torch.randint(0, len(z), (128,))
        loss, logs = probe.loss(z[k], y[k])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"loss"}
    return probe.eval()


def test_probe_learns_to_read_the_descriptor(trained_probe):
    pos = torch.tensor([[1.0, 1.0], [3.5, 5.0], [6.0, 2.0]])
    pred = trained_probe(blob_latents(pos)).detach()  # (3, 2), task units
    err = (pred - pos * 0.01).norm(dim=-1)
    assert pred.shape == (3, 2) and float(err.max()) < 0.005, err  # under half a pixel
    # leading dims are kept: (B, N, K, C, h, w) -> (B, N, K, D)
    assert trained_probe(blob_latents(pos).reshape(3, 1, 1, 4, 8, 8)).shape == (3, 1, 1, 2)
    # an untrained probe does not read it
    fresh = ProbeConfig(**TINY).build().eval()
    fresh.set_target_normalizer(torch.rand(64, 2) * 0.07)
    assert float((fresh(blob_latents(pos)).detach() - pos * 0.01).norm(dim=-1).max()) > 0.01


def test_probe_cost_ranks_candidates_by_the_probed_distance(trained_probe):
    goal = blob_latents(torch.tensor([[2.0, 2.0]]))  # (1, C, h, w)
    # 4 candidates whose imagined final frames put the blob 0, 1.5, 3 and 4.5 px from the goal
    ends = torch.tensor([[2.0, 2.0], [2.0, 3.5], [5.0, 2.0], [5.0, 5.5]])
    start = torch.tensor([[6.0, 6.0]]).expand(4, 2)
    feats = torch.stack([blob_latents(start), blob_latents(ends)], dim=1)[None]  # (1, 4, K=2, C, h, w)
    im = Imagination(features=feats, steps=torch.tensor([4, 8]))
    last = ProbeCost(probe=trained_probe, reduce="last")(im, goal)  # (1, 4)
    assert last.shape == (1, 4) and torch.equal(last[0].argsort(), torch.arange(4))
    assert float(last[0, 0]) < 0.005 and abs(float(last[0, 3]) - 0.01 * (9 + 12.25) ** 0.5) < 0.01
    # scale only changes the unit
    assert torch.allclose(ProbeCost(probe=trained_probe, reduce="last", scale=0.02)(im, goal), last / 0.02)
    # mean over both frames: the shared start frame adds the same to every candidate
    mean = ProbeCost(probe=trained_probe, reduce="mean", batch_size=3)(im, goal)
    assert torch.equal(mean[0].argsort(), torch.arange(4))
    with pytest.raises(ValueError, match="goal must be"):
        ProbeCost(probe=trained_probe)(im, torch.zeros(1, 4, 4, 4))
    with pytest.raises(RuntimeError, match="probe_for"):
        ProbeCost()(im, goal)
    with pytest.raises(ValueError, match="scale"):
        ProbeCost(scale=0.0)
    assert COSTS["probe"] is ProbeCost


def test_probe_cost_binds_to_the_world_models_probe(trained_probe, tmp_path):
    from sfplan.world_model.learned import SlowFastWorldModel

    from test_video_plan import tiny_wm

    wm = tiny_wm()
    with pytest.raises(UserError, match="cost=probe needs a world model with a state probe.*stage=probe"):
        probe_for(wm)
    wm.save_pretrained(tmp_path / "wm")
    assert SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu").probe is None
    save_probe_into(trained_probe, tmp_path / "wm")
    wm2 = SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu")
    cost = ProbeCost(probe=probe_for(wm2))
    z = blob_latents(torch.tensor([[1.0, 2.0], [4.0, 4.0]]))
    assert cost.probe is wm2.probe and torch.equal(wm2.probe(z), trained_probe(z))  # bit-exact round trip
    s1, s2 = trained_probe.state_dict(), load_probe(tmp_path / "wm" / "probe").state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)  # normaliser included
    from sfplan.world_model.oracle import OracleWorldModel

    with pytest.raises(UserError, match="OracleWorldModel has none"):
        probe_for(OracleWorldModel("sfplan/Reacher-v0", {"image_size": 32}))
    with pytest.raises(UserError, match="no state probe.*stage=probe"):
        load_probe(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a world model directory"):
        save_probe_into(trained_probe, tmp_path)


def test_probe_cost_reads_pixel_frames_through_a_vae(trained_probe, tmp_path):
    """The oracle (pixel frames) plans with a learned model's probe: frames are encoded by that
    model's VAE first, so they cost what their latents cost on the learned model."""
    from sfplan.world_model.base import frames_to_features
    from sfplan.world_model.learned import SlowFastWorldModel
    from sfplan.world_model.oracle import OracleWorldModel

    from test_video_plan import frames, tiny_wm

    tiny_wm().save_pretrained(tmp_path / "wm")
    save_probe_into(trained_probe, tmp_path / "wm")
    wm = SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu")
    with pytest.raises(UserError, match="drop cost.model"):
        probe_for(wm, model=str(tmp_path / "wm"))  # latents: only the model's own probe reads them
    px = frames(B=6, T=1, seed=3)[:, 0]  # (6, 16, 16, 3) uint8: a goal and 5 candidates' frames
    feats = frames_to_features(px, torch.device("cpu"))  # (6, 3, 16, 16) in [0, 1], as the oracle imagines
    lat = wm.vae.encode(px)  # (6, 4, 8, 8)
    by_latent = ProbeCost(probe=trained_probe).per_frame(lat[1:][None, :, None], lat[:1])  # (1, 5, 1)
    assert by_latent.std() > 0  # the frames read differently: the comparison below can fail

    oracle = OracleWorldModel("sfplan/Reacher-v0", {"image_size": 16}, device="cpu")
    cost = ProbeCost(probe=probe_for(oracle, model=str(tmp_path / "wm")))
    by_pixels = cost.per_frame(feats[1:][None, :, None], feats[:1])
    torch.testing.assert_close(by_pixels, by_latent, atol=1e-4, rtol=1e-4)
    assert cost.per_frame(feats[:1][None, :, None], feats[:1]).item() == 0.0  # the goal itself costs exactly 0

    with pytest.raises(UserError, match="not a world model directory"):
        probe_for(oracle, model=str(tmp_path))
    shipped = probe_for(oracle, task="sfplan/Reacher-v0")  # the oracle's default: the task's shipped model
    assert isinstance(shipped, PixelProbe) and shipped.probe.config.out_dim == 2


def test_goal_descriptor_of_reads_the_recorded_state():
    import sfplan.envs  # noqa: F401
    import gymnasium as gym

    env = gym.make("sfplan/Reacher-v0", image_size=32)
    obs, info = env.reset(seed=3)
    u = env.unwrapped
    d_goal = u.goal_descriptor_of(u.goal_state)  # the goal fingertip
    assert np.allclose(d_goal, u._goal) and d_goal.dtype == np.float64
    d_start = u.goal_descriptor_of(info["state"])
    assert np.isclose(np.linalg.norm(d_start - d_goal), info["distance"])
    env.close()


# ----------------------------------------------------------------------------- stage=probe
def test_stage_probe_labels_frames_imagines_and_attaches(tmp_path):
    from sfplan.cli import main
    from sfplan.data import collect
    from sfplan.training import run_train
    from sfplan.world_model.learned import SlowFastWorldModel, SlowFastWorldModelConfig
    from sfplan.world_model.sampler import make_train_scheduler
    from sfplan.world_model.vae import FrameAutoencoder, VAEConfig
    from sfplan.world_model.video_diffusion import VideoDiffusionConfig

    from test_video_plan import COMMON, TINY_DIFF, _randomize

    data = tmp_path / "reacher"
    collect(data, "sfplan/Reacher-v0", {"image_size": 16, "goal": "near"}, episodes=3, steps=10, workers=1,
            progress=False)
    torch.manual_seed(0)
    vae = FrameAutoencoder(VAEConfig(image_size=16, block_out_channels=(8, 8), norm_num_groups=4))
    wm = SlowFastWorldModel(vae, VideoDiffusionConfig(**TINY_DIFF).build(), make_train_scheduler("v_prediction"),
                            SlowFastWorldModelConfig(context_frames=2, chunk_size=4), device="cpu")
    _randomize(wm.diffusion)
    wm.save_pretrained(tmp_path / "wm")
    args = ["stage=probe", "model.width=8", "model.hidden_dim=16", "batch_size=16", "val_frames=32",
            "imagined_stride=3", *COMMON, f"data.path={data}", f"vae={tmp_path / 'wm'}"]
    out = tmp_path / "probe"
    assert main(["train", *args, f"attach_to={tmp_path / 'wm'}", f"out_dir={out}", "steps=3", "sample_every=3"]) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    val = summary["probe_val"]
    assert {"real_error_mean", "real_error_median", "imagined_error_mean"} <= set(val)
    assert all(np.isfinite(v) for v in val.values())
    # 3 episodes x 11 frames labelled; imagined: starts 1, 4 of each 10-step episode x 4 steps
    from sfplan.data import EpisodeDataset

    ds = EpisodeDataset(data)
    tr, va = ds.split(0.1)
    assert summary["data"]["train_frames"] == 11 * len(tr)
    assert summary["data"]["imagined_frames"]["train"] == len(tr) * 2 * 4
    probe = SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu").probe
    assert isinstance(probe, StateProbe) and probe.config.out_dim == 2 and probe.config.latent_size == 8
    # the normaliser was fitted to the fingertip positions of the training frames (metres, |x| < 0.22)
    assert float(probe.target_scale.max()) < 0.3 and float(probe.target_scale.min()) > 0
    assert "StateProbe" in (out / "model_card.md").read_text() and "cost=probe" in (out / "model_card.md").read_text()
    with pytest.raises(UserError, match="imagined=true needs the world model"):
        run_train(load_config("train", [*args, f"out_dir={tmp_path / 'x'}", "steps=1"]))
    # imagined=false trains on the recorded frames alone, no world model needed
    r = run_train(load_config("train", [*args, "imagined=false", f"out_dir={tmp_path / 'y'}", "steps=1"]))
    assert "imagined_error_mean" not in r["probe_val"] and "real_error_mean" in r["probe_val"]
    assert json.loads((tmp_path / "y" / "training_summary.json").read_text())["data"]["imagined_frames"] == {}


def test_default_cost_is_the_one_the_tasks_search_row_names():
    from hydra.utils import instantiate

    from sfplan.planners import MultiScaleCost
    from sfplan.planners.costs import make_cost

    def chosen(*ov):
        return load_config("eval", list(ov)).cost

    # the learned rows of PointMaze UMaze and Reacher name the probe; the oracle rows none
    assert chosen("env=pointmaze_umaze", "world_model=learned").name == "probe"
    assert chosen("env=pointmaze_umaze", "world_model=oracle").name == "multiscale"
    assert chosen("env=reacher", "world_model=learned").name == "probe"
    assert chosen("env=reacher", "world_model=oracle").name == "multiscale"
    assert chosen("env=reacher", "world_model=learned", "env.search.learned.cost=multiscale").name == "multiscale"
    assert chosen("env=pusher", "world_model=learned").name == "multiscale"  # a row that names none
    # an explicit cost= wins over the row
    assert chosen("env=pointmaze_umaze", "world_model=learned", "cost=multiscale")._target_.endswith("MultiScaleCost")
    cost = instantiate(chosen("env=reacher", "world_model=oracle"))
    assert isinstance(cost, MultiScaleCost) and cost.config.reduce == "mean" and cost.config.terminal_weight == 0.7
    p = instantiate(chosen("env=pointmaze_umaze", "world_model=learned"))
    assert isinstance(p, ProbeCost) and p.config.reduce == "last" and p.probe is None  # bound by sfplan eval
    with pytest.raises(ValueError, match="unknown cost 'nope'"):
        make_cost("nope")
