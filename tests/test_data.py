"""`sfplan collect` / `sfplan.data`: collection, the HDF5 format, loaders and their errors."""
import os
import pickle
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

import sfplan.envs  # noqa: F401  (registers the sfplan/* ids once the registry exists)
from sfplan.cli import main
from sfplan.data import EVAL_SEED_START, DatasetError, EpisodeDataset, collect, make_policy
from sfplan.data.collect import plan_seeds, plan_shards, rollout
from sfplan.data.dataset import ShardWriter, shard_name
from sfplan.envs.reacher import ReacherGoalEnv
from sfplan.errors import UserError

# The registered id when the registry has it; the env class otherwise (same env).
ENV_ID = "sfplan/Reacher-v0" if "sfplan/Reacher-v0" in gym.registry else "sfplan.envs.reacher:ReacherGoalEnv"
KW = {"image_size": 32, "goal": "near"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 workers x 2 episodes x 8 steps at 32x32 (two shards, written by spawned workers)."""
    out = tmp_path_factory.mktemp("data") / "reacher"
    r = collect(out, ENV_ID, KW, episodes=4, steps=8, workers=2, seed=0, progress=False)
    assert r["workers"] == 2 and r["episodes"] == 4 and r["steps"] == 32
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _replay_matches(ep, image_size=32):
    """Frames and states of a replay of the stored actions from the stored start state."""
    env = ReacherGoalEnv(image_size=image_size)
    try:
        env.reset(seed=12345)  # any seed: the stored state overrides it
        env.set_state(ep.states[0])
        assert np.array_equal(env.render_pixels(), ep.pixels[0])
        for t, a in enumerate(ep.actions):
            env.sim_step(a.astype(np.float64))
            assert np.array_equal(env.get_state(), ep.states[t + 1]), f"state differs at step {t + 1}"
            assert np.array_equal(env.render_pixels(), ep.pixels[t + 1]), f"frame differs at step {t + 1}"
    finally:
        env.close()


def test_collect_and_read_back(dataset):
    shards = sorted(p.name for p in dataset.glob("shard-*.h5"))
    assert shards == [shard_name(0, 1), shard_name(2, 3)]
    ds = EpisodeDataset(dataset, image_size=32, env_id=ENV_ID)
    assert len(ds) == 4 and ds.seeds.tolist() == [0, 1, 2, 3] and ds.lengths.tolist() == [8] * 4
    assert ds.num_steps == 32 and ds.action_dim == 2
    for ep in ds:
        assert ep.pixels.shape == (9, 32, 32, 3) and ep.pixels.dtype == np.uint8
        assert ep.actions.shape == (8, 2) and ep.actions.dtype == np.float32
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert ep.states.shape[0] == 9 and ep.rewards.shape == (8,)
        assert not ep.terminations.any() and ep.truncations.tolist() == [False] * 7 + [True]
        assert ep.goal_pixels.shape == (32, 32, 3) and ep.distance.shape == (9,)
        assert ep.policy == "correlated"
    assert len({ep.pixels.tobytes() for ep in ds}) == 4  # seeds give different episodes
    _replay_matches(ds[0])
    _replay_matches(ds[3])


def test_episode_depends_on_seed_not_worker(dataset, tmp_path):
    ds = EpisodeDataset(dataset)
    r = collect(tmp_path / "one", ENV_ID, KW, episodes=1, steps=8, workers=1, seed=2, progress=False)
    again = EpisodeDataset(r["out"])[0]
    assert again.seed == 2 and np.array_equal(again.pixels, ds[2].pixels)
    assert np.array_equal(again.actions, ds[2].actions)


def test_explore_policy_runs_forkmaze_passages_that_random_motion_rarely_does():
    """policy=explore drives the task's routes (to the junction, into a room) in closed loop:
    under the action repeat a fit derives, its episodes pass the junction and cross between
    rooms and corridors far more often than correlated noise from the same starts."""
    from sfplan.data.policies import has_routes
    from sfplan.envs.fork_maze import ARMS
    from sfplan.envs.spec import make_env

    def region(xy):  # 0-3: a room, -1: junction and corridors
        along = ARMS @ xy
        return int(np.argmax(along)) if along.max() > 2.0 else -1

    env = make_env("sfplan/ForkMaze-v0", image_size=32, goal="near", action_repeat=2)
    try:
        assert has_routes(env.unwrapped)
        got = {}
        for name in ("explore", "correlated"):
            junction = crossings = 0
            for seed in range(6):
                ep = rollout(env, make_policy(name), seed=seed, steps=50)
                xy = []
                for state in ep.states:  # the agent's position at each step
                    env.unwrapped.set_state(state)
                    xy.append(env.unwrapped.agent_xy())
                xy = np.stack(xy)
                junction += bool((np.abs(xy).max(1) < 0.5).any())
                r = [region(q) for q in xy]
                crossings += sum(a != b for a, b in zip(r, r[1:]))
                assert np.all(np.abs(ep.actions) <= 1.0)
            got[name] = junction, crossings
        assert got["explore"][0] >= 3 and got["explore"][1] >= max(4, 3 * got["correlated"][1])  # measured: (4, 6) vs (0, 0)
    finally:
        env.close()
    reacher = ReacherGoalEnv(image_size=32)
    try:
        with pytest.raises(UserError, match="policy=explore needs a task with exploration routes"):
            rollout(reacher, make_policy("explore"), seed=0, steps=2)
    finally:
        reacher.close()
    with pytest.raises(UserError, match="policies.explore"):
        make_policy("explore", min_speed=0)


def test_goal_and_random_policies_replay(tmp_path):
    env = ReacherGoalEnv(image_size=32)
    try:
        ep = rollout(env, make_policy("goal", noise_steps=3), seed=7, steps=12)
        held = rollout(env, make_policy("random", repeat=4), seed=8, steps=8).actions
    finally:
        env.close()
    _replay_matches(ep)
    assert np.array_equal(held[0], held[3]) and not np.array_equal(held[3], held[4])
    with pytest.raises(UserError, match="policy=random"):
        make_policy("brownian")
    with pytest.raises(UserError, match="policies.correlated"):
        make_policy("correlated", sigma=1.0)


def test_goal_policy_pushes_under_an_action_repeat():
    """Pusher under action repeat 4 (the repeat its fit derives): ``policy=goal`` plays the task's
    collection script with each action held 4 steps, so the cylinder moves in far more 8-step
    chunks than under correlated noise from the same starts (measured on 16 episodes: 40% of the
    chunks against 12%; here 18 of 48 against 6); a task whose script is one action per env step is refused under a repeat."""
    from sfplan.data.policies import env_repeat
    from sfplan.envs.spec import make_env

    env = make_env("sfplan/Pusher-v0", image_size=32, goal="near", action_repeat=4)
    try:
        assert env_repeat(env) == 4
        moving = {}
        for name in ("goal", "correlated"):
            n = 0
            for seed in range(8):
                ep = rollout(env, make_policy(name), seed=seed, steps=48)
                xy = []
                for state in ep.states[::8]:  # the cylinder at each chunk's ends
                    env.unwrapped.set_state(state)
                    xy.append(env.unwrapped.object_xy().copy())
                n += int((np.linalg.norm(np.diff(np.stack(xy), axis=0), axis=1) > 0.01).sum())
            moving[name] = n
        assert moving["goal"] >= max(3, 2 * moving["correlated"]), moving
        scripted = []
        env.unwrapped._collect_actions = lambda rng, hold: scripted.append(hold) or np.zeros((2, 7))
        rollout(env, make_policy("goal", noise_episodes=1.0), seed=0, steps=4)
        assert scripted == []  # a noise episode never asks for the script
        rollout(env, make_policy("goal", noise_episodes=0.0), seed=0, steps=4)
        assert scripted and set(scripted) == {4}  # held as long as the repeat
    finally:
        env.close()
    with pytest.raises(UserError, match="noise_episodes"):
        make_policy("goal", noise_episodes=1.5)
    reacher = make_env(ENV_ID, **KW, action_repeat=2)
    try:
        assert env_repeat(reacher) == 2
        with pytest.raises(UserError, match="action_repeat=2.*_collect_actions"):
            rollout(reacher, make_policy("goal"), seed=0, steps=2)
    finally:
        reacher.close()


def test_clips_and_split(dataset):
    import torch

    ds = EpisodeDataset(dataset)
    clips = ds.clips(frames=4, stride=2)
    assert len(clips) == 4 * 3  # starts 0, 2, 4 in 9-frame episodes
    item = clips[1]
    assert item["frames"].shape == (4, 3, 32, 32) and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    assert item["actions"].shape == (3, 2) and item["start"] == 2
    ep = ds[0]
    assert torch.equal(item["actions"], torch.from_numpy(ep.actions[2:5]))
    raw = ds.clips(frames=4, normalize=False)[0]["frames"]
    assert raw.shape == (4, 32, 32, 3) and torch.equal(raw, torch.from_numpy(ep.pixels[:4]))
    assert isinstance(clips, torch.utils.data.Dataset)
    clone = pickle.loads(pickle.dumps(clips))  # DataLoader workers under spawn
    assert torch.equal(clone[1]["frames"], item["frames"])
    batch = next(iter(torch.utils.data.DataLoader(clips, batch_size=5)))
    assert batch["frames"].shape == (5, 4, 3, 32, 32)
    train, val = ds.split(0.5)
    assert len(train) + len(val) == 4 and len(val) >= 1
    assert not set(train.seeds.tolist()) & set(val.seeds.tolist())
    assert ds.split(0.5)[1].seeds.tolist() == val.seeds.tolist()  # deterministic
    assert len(val.clips(frames=9)) == len(val)
    with pytest.raises(UserError, match="steps>=9"):
        ds.clips(frames=10)


def test_append_uses_fresh_seeds(dataset, tmp_path):
    out = _copy(dataset, tmp_path)
    with pytest.raises(UserError, match="append=true"):
        collect(out, ENV_ID, KW, episodes=2, steps=8, workers=1, progress=False)
    r = collect(out, ENV_ID, KW, episodes=2, steps=5, workers=1, seed=0, policy="random", append=True,
                progress=False)
    assert r["seeds"] == (4, 5)
    ds = EpisodeDataset(out)
    assert ds.seeds.tolist() == [0, 1, 2, 3, 4, 5] and ds.lengths.tolist() == [8] * 4 + [5] * 2
    assert [ds.policy_of(i) for i in range(6)] == ["correlated"] * 4 + ["random"] * 2
    r = collect(out, ENV_ID, KW, episodes=1, steps=2, workers=1, seed=50, append=True, progress=False)
    assert r["seeds"] == (50, 50)  # a non-overlapping range is kept
    (out / shard_name(0, 1)).unlink()  # as if that shard had been lost in a crash
    r = collect(out, ENV_ID, KW, episodes=3, steps=2, workers=1, append=True, progress=False)
    assert [Path(p).name for p in r["shards"]] == [shard_name(0, 1), shard_name(6, 6)]
    assert EpisodeDataset(out).seeds.tolist() == [0, 1, 2, 3, 4, 5, 6, 50]
    with pytest.raises(DatasetError, match="image_size"):
        collect(out, ENV_ID, {**KW, "image_size": 24}, episodes=1, steps=2, workers=1, append=True, progress=False)


def test_plan_seeds_and_shards():
    assert plan_seeds([], 10, 3, append=False) == [10, 11, 12]
    assert plan_seeds([0, 1, 3, 4], 0, 3, append=True) == [2, 5, 6]
    assert plan_shards([2, 5, 6, 7, 8], per=2) == [[2], [5, 6], [7, 8]]
    with pytest.raises(UserError, match="below 100000"):
        plan_seeds([EVAL_SEED_START - 2], EVAL_SEED_START - 3, 3, append=True)


def test_eval_range_seeds_rejected(tmp_path):
    with pytest.raises(UserError, match=str(EVAL_SEED_START)):
        collect(tmp_path / "x", ENV_ID, KW, episodes=2, steps=2, workers=1, seed=EVAL_SEED_START - 1,
                progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match=">= 0"):
        collect(tmp_path / "x", ENV_ID, KW, episodes=1, steps=2, workers=1, seed=-1, progress=False)
    assert main(["collect", f"env.id={ENV_ID}", "seed=100000", "episodes=1", f"out={tmp_path / 'y'}"]) == 2


def test_temp_files_are_ignored_and_cleaned(dataset, tmp_path, capsys):
    out = _copy(dataset, tmp_path)
    leftover = out / f".{shard_name(10, 11)}.4242.tmp"
    leftover.write_bytes(b"half a shard")
    ds = EpisodeDataset(out)
    assert len(ds) == 4
    assert main(["data", "info", str(out)]) == 0
    assert "temp file" in capsys.readouterr().out
    # A writer that fails leaves neither a shard nor its temp file.
    meta = {"env_id": ENV_ID, "env_kwargs": KW, "image_size": 32, "action_low": [-1, -1], "action_high": [1, 1]}
    with pytest.raises(RuntimeError):
        with ShardWriter(out / shard_name(20, 20), meta) as w:
            w.add(ds[0].__class__(**{**ds[0].__dict__, "seed": 20}))
            raise RuntimeError("crash mid-shard")
    assert not (out / shard_name(20, 20)).exists() and not list(out.glob(".shard-00020*"))
    collect(out, ENV_ID, KW, episodes=1, steps=2, workers=1, append=True, progress=False)
    assert not leftover.exists() and len(EpisodeDataset(out)) == 5


def test_corrupt_and_mismatched_datasets(dataset, tmp_path):
    out = _copy(dataset, tmp_path)
    first = out / shard_name(0, 1)
    with pytest.raises(DatasetError, match=r"32x32 frames but 64x64 were requested.*image_size=64"):
        EpisodeDataset(out, image_size=64)
    with pytest.raises(DatasetError, match="collected on"):
        EpisodeDataset(out, env_id="sfplan/Pusher-v0")
    # A shard from another env.
    with h5py.File(first, "r+") as f:
        f.attrs["env_id"] = "sfplan/Pusher-v0"
    with pytest.raises(DatasetError, match="another dataset"):
        EpisodeDataset(out)
    with h5py.File(first, "r+") as f:
        f.attrs["env_id"] = ENV_ID
        del f["episode_00001/actions"]
    with pytest.raises(DatasetError, match=r"missing keys \['actions'\]"):
        EpisodeDataset(out)
    # A truncated file.
    shutil.copy(dataset / shard_name(0, 1), first)
    size = os.path.getsize(first)
    with open(first, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError, match=r"corrupt or truncated.*delete"):
        EpisodeDataset(out)
    assert main(["data", "info", str(out)]) == 2
    with pytest.raises(DatasetError, match="sfplan collect"):
        EpisodeDataset(tmp_path / "nothing_here")


def test_data_info_prints_counts(dataset, capsys):
    assert main(["data", "info", str(dataset)]) == 0
    text = capsys.readouterr().out
    for want in ("episodes:    4", "steps:       32", "36 frames", "32x32", ENV_ID, "correlated x 4 episodes", "seeds 0-3"):
        assert want in text, want
    assert main(["data", "info", "--json", str(dataset)]) == 0
    import json

    s = json.loads(capsys.readouterr().out)
    assert s["episodes"] == 4 and s["steps"] == 32 and s["shards"] == 2 and s["disk_bytes"] > 0


def test_cli_collect(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["collect", f"env.id={ENV_ID}", "image_size=32", "episodes=2", "steps=3", "workers=1",
                 "policy=random", "policies.random.repeat=2", f"out={out}", "progress=false"]) == 0
    assert "collected 2 episodes, 6 steps" in capsys.readouterr().out
    ds = EpisodeDataset(out, image_size=32)
    assert len(ds) == 2 and ds.shards[0].attrs["policy_kwargs"] == {"repeat": 2}
    assert ds.shards[0].attrs["config"]["episodes"] == 2
    assert main(["collect", "polcy=random"]) == 2


def test_import_minari(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    img = spaces.Box(0, 255, (32, 32, 3), np.uint8)
    bufs = [EpisodeBuffer(id=i, seed=10 + i, observations={"pixels": rng.integers(0, 255, (5, 32, 32, 3), np.uint8)},
                          actions=rng.uniform(-1, 1, (4, 2)).astype(np.float32), rewards=np.zeros(4),
                          terminations=np.zeros(4, bool), truncations=np.array([0, 0, 0, 1], bool),
                          infos={"state": rng.normal(size=(5, 6))}) for i in range(3)]
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers("test/img-v0", bufs, observation_space=spaces.Dict(pixels=img),
                                           action_space=spaces.Box(-1, 1, (2,), np.float32), algorithm_name="x",
                                           author="x", author_email="x@x.x", code_permalink="x")
    assert main(["data", "import-minari", "test/img-v0", str(tmp_path / "imp"), "--env-id", "toy/Img-v0"]) == 0
    ds = EpisodeDataset(tmp_path / "imp", image_size=32, env_id="toy/Img-v0")
    assert len(ds) == 3 and ds.lengths.tolist() == [4, 4, 4] and ds[1].states.shape == (5, 6)
    assert ds.seeds.tolist() == [10, 11, 12]  # Minari's recorded reset seeds
    assert np.allclose(ds[2].actions, bufs[2].actions)
