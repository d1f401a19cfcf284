"""The memory benchmark: sfplan/MemoryMaze-v0, retrace episodes (policy=retrace), the memory
metrics (PSNR/SSIM on the return leg, Scene Revisit Consistency, scene cuts) and
benchmarks/memory_benchmark.py end to end on a tiny untrained model."""
from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sfplan.envs  # noqa: F401  (registers sfplan/*)
from sfplan.cli import main
from sfplan.data import EpisodeDataset, make_policy
from sfplan.data.collect import retrace_rollout
from sfplan.envs import TASKS
from sfplan.eval.memory_metrics import (RandomConvFeatures, calibrate_cut_threshold, frame_jumps, return_leg_metrics,
                                        scene_cuts, scene_revisit_consistency)
from sfplan.eval.video_metrics import psnr

from conftest import run_benchmark, tiny_point_mass_model

ENV_ID = "sfplan/MemoryMaze-v0"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env():
    e = gym.make(ENV_ID, image_size=64)
    yield e
    e.close()


@pytest.fixture(scope="module")
def episode(env):
    """One retrace episode: 16 steps out, 16 back (track mode), evaluation seed."""
    return retrace_rollout(env, 100000, out_steps=16, mode="track")


# ----------------------------------------------------------------------------- env
def test_registered_and_checked(env):
    assert ENV_ID in TASKS and "success" in TASKS[ENV_ID] and ENV_ID in gym.registry
    cfg = (ROOT / "configs" / "env" / "memory_maze.yaml").read_text()
    assert f"id: {ENV_ID}" in cfg
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(obs["desired_goal"], info["goal_pixels"])
    assert isinstance(info["is_success"], bool) and not info["is_success"]
    u = env.unwrapped
    u.set_state(u.goal_state)
    assert u._info()["is_success"]
    np.testing.assert_array_equal(u.render_pixels(), obs["desired_goal"])


def test_colours_are_seeded_and_differ_between_seeds(env):
    u = env.unwrapped
    obs_a, info_a = env.reset(seed=3)
    colours_a = u.colours
    obs_a2, _ = env.reset(seed=3)
    np.testing.assert_array_equal(u.colours, colours_a)
    np.testing.assert_array_equal(obs_a2["pixels"], obs_a["pixels"])
    obs_b, _ = env.reset(seed=4)
    assert (u.colours != colours_a).mean() > 0.5  # a fresh paint, not a few changed tiles
    # the paint is part of the state: restoring seed 3's state on seed 4's arena repaints it
    u.set_state(info_a["state"])
    np.testing.assert_array_equal(u.colours, colours_a)
    np.testing.assert_array_equal(u.render_pixels(), obs_a["pixels"])
    # same position, other paint -> other pixels (the colours, not the position, differ)
    st = info_a["state"].copy()
    st[-len(colours_a):] = (colours_a + 1) % 6
    u.set_state(st)
    assert psnr(u.render_pixels(), obs_a["pixels"]).item() < 20


def test_camera_follows_the_agent(env):
    """The agent stays in the image centre while the scenery moves under it."""
    u = env.unwrapped
    obs, _ = env.reset(seed=5)
    frames = [obs["pixels"]]
    xy0 = u.agent_xy()
    for _ in range(20):
        obs, *_ = env.step(np.array([1.0, 0.0], np.float32) * np.sign(-xy0[0] or 1.0))
        frames.append(obs["pixels"])
    assert abs(u.agent_xy()[0] - xy0[0]) > 1.5  # moved > half the 3 m view
    for f in (frames[0], frames[-1]):
        assert f[31:33, 31:33].min() > 200  # the white agent in the centre
    assert psnr(frames[0], frames[-1]).item() < 15  # other scenery
    assert psnr(frames[0], frames[1]).item() > psnr(frames[0], frames[-1]).item()


def test_oracle_clone_repaints_the_arena():
    """OracleWorldModel clones a fresh env (reset with seed 0) and set_state()s it: the
    paint travels in the state, so the clone imagines this episode's arena."""
    import torch

    from sfplan.world_model.oracle import OracleWorldModel

    env = gym.make(ENV_ID, image_size=32)
    obs, info = env.reset(seed=7)
    wm = OracleWorldModel(ENV_ID, {"image_size": 32})
    actions = np.array([[0.5, -0.3], [0.5, -0.3], [-0.2, 0.8]], np.float32)
    state = wm.encode(obs["pixels"][None, None], sim_state=info["state"][None])
    imagined = wm.decode(wm.imagine(state, torch.as_tensor(actions)[None, None]).features)[0, 0, -1].numpy()
    for a in actions:
        obs, *_ = env.step(a)
    np.testing.assert_array_equal(imagined, obs["pixels"])
    wm.close()
    env.close()


# ----------------------------------------------------------------------------- retrace
def test_retrace_return_frames_repeat_outbound_frames(episode):
    n = 16
    f = episode.pixels
    assert f.shape == (2 * n + 1, 64, 64, 3) and episode.actions.shape == (2 * n, 2)
    # outbound frame t and return frame 2n - t: measured identical (PSNR inf) in track mode
    mirrored = psnr(f[:n], f[2 * n:n:-1])
    assert mirrored.min().item() > 40.0
    # ... and the path goes somewhere: the start is far from the turn-around frame
    assert psnr(f[0], f[n]).item() < 15
    assert psnr(f[: n - 1], f[1:n]).mean().item() < 30  # consecutive frames do differ


def test_retrace_negate_mode_and_policy_kwargs(env):
    ep = retrace_rollout(env, 100001, out_steps=12, mode="negate")
    n = 12
    p = psnr(ep.pixels[:n], ep.pixels[2 * n:n:-1])
    assert p.mean().item() > 20.0  # measured 24.6-31 dB (the agent's lag makes it approximate)
    np.testing.assert_allclose(ep.actions[n:], -ep.actions[:n][::-1], atol=1e-6)
    pol = make_policy("retrace", out_steps=5, mode="track")
    assert pol.kwargs()["out_steps"] == 5
    with pytest.raises(ValueError, match="mode"):
        make_policy("retrace", mode="sideways")


def test_collect_policy_retrace(tmp_path, capsys):
    out = tmp_path / "mm"
    assert main(["collect", "env=memory_maze", "image_size=32", "episodes=1", "steps=12", "workers=1",
                 "policy=retrace", "policies.retrace.out_steps=6", f"out={out}", "progress=false"]) == 0
    ds = EpisodeDataset(out, image_size=32)
    assert ds.shards[0].attrs["policy_kwargs"]["out_steps"] == 6
    ep = ds[0]
    f = ep.pixels
    assert psnr(f[:6], f[12:6:-1]).min().item() > 40.0
    # the stored actions replay the episode bit-exactly (the controller's trial steps leave no trace)
    env = gym.make(ENV_ID, image_size=32)
    obs, _ = env.reset(seed=int(ep.seed))
    replay = [obs["pixels"]] + [env.step(a)[0]["pixels"] for a in ep.actions]
    np.testing.assert_array_equal(np.stack(replay), f)
    env.close()


# ----------------------------------------------------------------------------- metrics
def test_src_and_scene_cuts_on_true_and_broken_video(env, episode):
    enc = RandomConvFeatures(seed=0)
    f = episode.pixels
    # features are fixed by the seed
    np.testing.assert_array_equal(enc(f[:2]).numpy(), RandomConvFeatures(seed=0)(f[:2]).numpy())
    assert np.allclose(scene_revisit_consistency(f, f, enc).numpy(), 1.0, atol=1e-6)
    thr = calibrate_cut_threshold([f], enc)
    assert scene_cuts(f, enc, thr) == 0
    # insert an unrelated frame (another episode's arena) in the middle: a cut in and out
    other, _ = env.reset(seed=123)
    broken = np.concatenate([f[:10], other["pixels"][None], f[10:]])
    assert scene_cuts(broken, enc, thr) == 2
    jumps = frame_jumps(broken, enc)
    assert jumps[9] > thr and jumps[10] > thr
    # SRC of unrelated scenes is far below 1
    assert scene_revisit_consistency(f[:4], np.repeat(other["pixels"][None], 4, 0), enc).mean() < 0.6


def test_return_leg_metrics(episode):
    n = 16
    f = episode.pixels
    enc = RandomConvFeatures()
    thr = calibrate_cut_threshold([f], enc)
    true = return_leg_metrics(f, f[n + 1:], n, enc, thr).summary()
    assert true["psnr"] == 100.0 and true["src"] > 0.999 and true["scene_cuts"] == 0 and true["ssim"] > 0.999
    held = return_leg_metrics(f, np.repeat(f[n:n + 1], n, 0), n, enc, thr).summary()
    assert held["psnr"] < 25 and held["src_far"] < true["src_far"] - 0.2
    with pytest.raises(ValueError):
        return_leg_metrics(f, f[n:], n, enc, thr)


# ----------------------------------------------------------------------------- benchmark
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    return tiny_point_mass_model(tmp_path_factory.mktemp("wm") / "tiny")


def _bench(args, cwd):
    return run_benchmark("memory_benchmark.py", args, cwd)


def test_memory_benchmark_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    r = _bench(["--model", str(tiny_model_dir), "--slowfast-model", str(tiny_model_dir), "--episodes", "1",
                "--out-steps", "4", "--threads", "1", "--videos", "1", "--memory", "lr=0.01", "steps_per_write=2",
                "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["seeds"] == [100000] and res["config"]["out_steps"] == 4
    assert set(res["arms"]) >= {"true return", "copy-last", "none", "slowfast_none"}
    for arm in ("none", "slowfast_none"):
        s = res["arms"][arm]["summary"]
        assert np.isfinite([s["psnr"], s["ssim"], s["src"], s["wall_s"]]).all()
        e = res["arms"][arm]["episodes"][0]  # cuts: the recorded jumps above the recorded threshold
        assert s["scene_cuts"] == sum(j > res["cut_threshold"] for j in e["jumps"]) and len(e["jumps"]) > 0
        assert len(res["arms"][arm]["per_step"]["psnr"]) == 4
    assert res["arms"]["true return"]["summary"]["src"] > 0.999
    assert res["checkpoint_sha256"]["model"] and res["cut_threshold"] > 0
    assert "| none |" in (out / "results.md").read_text()
    assert (out / "episode_100000.gif").is_file()
    # sfplan ships the memory: its arms must run (a broken import is a failure, not a skip), and
    # the writes must change what the model imagines
    assert not res.get("skipped"), res.get("skipped")
    for arm, ref in (("templora", "none"), ("slowfast", "slowfast_none")):
        a = res["arms"][arm]
        assert a["episodes"][0]["psnr"] != res["arms"][ref]["episodes"][0]["psnr"]
        assert a["episodes"][0]["write_s"] > 0 and np.isfinite(a["time_overhead_pct"])
    assert res["temp_lora"]["lr"] == 0.01 and res["temp_lora"]["steps_per_write"] == 2


def test_memory_benchmark_rejects_collection_seeds(tiny_model_dir, tmp_path):
    r = _bench(["--model", str(tiny_model_dir), "--seed", "5", "--out", str(tmp_path / "x")], tmp_path)
    assert r.returncode == 2 and "100000" in r.stderr


def test_write_other_episode_control_writes_the_other_leg(tiny_model_dir):
    """``--write-other-episode``: the memory is written with another episode's outbound leg
    (and actions) in place of this one's; the imagined return then differs, and writing
    the episode's own leg through the same argument reproduces the normal arm exactly."""
    import importlib.util

    from sfplan.memory import TempLoRAConfig
    from sfplan.world_model.learned import load_world_model

    spec = importlib.util.spec_from_file_location("memory_benchmark", ROOT / "benchmarks" / "memory_benchmark.py")
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    env16 = gym.make(ENV_ID, image_size=16)
    a, b = (retrace_rollout(env16, s, out_steps=4, mode="track") for s in (100000, 100001))
    env16.close()
    wm = load_world_model(tiny_model_dir, device="cpu", return_frames="all")
    wm.attach_memory(TempLoRAConfig(rank=4, lr=0.01, steps_per_write=2, loss="masked"))
    seen = []
    remember = wm.remember
    wm.remember = lambda frames, **kw: (seen.append((frames.copy(), kw["actions"].copy())), remember(frames, **kw))[1]
    own, _ = mb.imagine_return(wm, a.pixels, a.actions, 4, a.seed, True, False)
    other, _ = mb.imagine_return(wm, a.pixels, a.actions, 4, a.seed, True, False, written=(b.pixels, b.actions))
    again, _ = mb.imagine_return(wm, a.pixels, a.actions, 4, a.seed, True, False, written=(a.pixels, a.actions))
    np.testing.assert_array_equal(seen[0][0], a.pixels[:5])
    np.testing.assert_array_equal(seen[1][0], b.pixels[:5])
    np.testing.assert_array_equal(seen[1][1], b.actions[:4])
    assert not np.array_equal(own, other)
    np.testing.assert_array_equal(again, own)
