"""Bad input ends as one clear error (exit status 2, the fix named, no traceback) before
anything slow starts, or as the right behaviour; each case with a check that a plausible
bug would fail."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import sfplan.envs  # noqa: F401  (registers sfplan/*)
from sfplan.cli import main
from sfplan.config import load_config
from sfplan.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

SHIPPED = Path(__file__).resolve().parents[1] / "sfplan" / "models" / "Reacher-v0"
TINY_EVAL = ["planner=random", "env.kwargs.image_size=32", "progress=false", "record=false"]


@pytest.fixture
def no_slow_work(monkeypatch):
    """Fails the test if `sfplan eval` gets as far as building the env, model or planner."""
    import sfplan.eval.main as m

    def slow(*a, **k):
        raise AssertionError("validation came after the slow work started")

    monkeypatch.setattr(m, "_build", slow)


@pytest.mark.parametrize("override, message", [
    ("episodes=abc", "episodes='abc'"),
    ("episodes=-1", "episodes=-1"),
    ("episodes=0", "episodes=0"),
    ("budget=0", "budget=0"),
    ("execute=0", "execute=0"),
    ("waypoints=-2", "waypoints=-2"),
    ("jobs=0", "jobs=0"),
    ("episodes=2.5", "episodes=2.5"),
    ("device=tpu", "device='tpu' is not a device"),
    ("success=last", "success='last'"),
    ("hold_steps=0", "hold_steps=0"),
])
def test_eval_values_fail_before_anything_slow(override, message, no_slow_work, capsys):
    assert main(["eval", *TINY_EVAL, override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cuda_on_a_machine_without_it_is_one_message(no_slow_work, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["eval", *TINY_EVAL, "device=cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "device=cpu" in err and "Traceback" not in err
    assert main(["train", "stage=vae", "data.path=nowhere", "device=cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [("steps=abc", "steps='abc'"), ("lr=-1", "lr=-1"),
                                               ("lr=nan", "lr=nan"), ("warmup_steps=-5", "warmup_steps=-5"),
                                               ("device=tpu", "device='tpu'")])
def test_train_values_fail_before_the_data_is_read(override, message, tmp_path, capsys):
    # data.path does not exist: reaching the data would give another error than the one checked
    assert main(["train", "stage=vae", f"data.path={tmp_path / 'none'}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "sfplan collect" not in err


def test_eval_on_collection_seeds_says_so_and_records_it(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["eval", *TINY_EVAL, "seed=5", "episodes=1", "budget=2", f"out_dir={out}"]) == 0
    err = capsys.readouterr().err
    assert "seeds 5-5 lie below 100000" in err and "seed>=100000" in err
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["seed_range"].startswith("collection") and meta["seeds"] == [5]
    assert main(["eval", *TINY_EVAL, "episodes=1", "budget=2", f"out_dir={tmp_path / 'e'}"]) == 0
    assert "below 100000" not in capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "report.json").read_text())["meta"]["seed_range"] == "evaluation"


# ----------------------------------------------------------------------------- model dirs
@pytest.fixture
def model_copy(tmp_path) -> Path:
    d = tmp_path / "wm"
    shutil.copytree(SHIPPED, d)
    return d


def test_world_model_without_its_task_is_refused(model_copy, capsys):
    meta = json.loads((model_copy / "world_model.json").read_text())
    del meta["env"]
    (model_copy / "world_model.json").write_text(json.dumps(meta))
    assert main(["eval", "env=pointmaze_umaze", f"world_model.path={model_copy}", "episodes=1",
                 "progress=false", "record=false"]) == 2
    err = capsys.readouterr().err
    assert "does not record the task" in err and '"env"' in err and "sfplan/PointMazeUMaze-v0" in err


def test_pickled_weights_are_never_loaded(model_copy):
    """A pickle can run code on load: every loader reads safetensors only."""
    import torch
    from safetensors.torch import load_file

    from sfplan.world_model.idm import load_idm
    from sfplan.world_model.probe import load_probe

    for part in ("probe", "idm"):
        st = model_copy / part / "diffusion_pytorch_model.safetensors"
        torch.save(load_file(str(st)), model_copy / part / "diffusion_pytorch_model.bin")
        st.unlink()
    with pytest.raises(UserError, match="safetensors only"):
        load_probe(model_copy / "probe")
    with pytest.raises(UserError, match="no inverse dynamics model"):
        load_idm(model_copy / "idm")
    for part in ("vae", "diffusion"):
        shutil.copytree(model_copy, model_copy.with_name(part))
        d = model_copy.with_name(part)
        st = d / part / "diffusion_pytorch_model.safetensors"
        torch.save(load_file(str(st)), d / part / "diffusion_pytorch_model.bin")
        st.unlink()
        with pytest.raises(UserError, match="incomplete"):
            from sfplan.world_model.learned import load_world_model

            load_world_model(str(d), device="cpu")


def test_a_broken_idm_does_not_block_planners_that_do_not_use_it(model_copy):
    from sfplan.eval.main import _build

    (model_copy / "idm" / "config.json").write_text("{ not json")
    cfg = load_config("eval", [f"world_model.path={model_copy}", "planner=cem", "device=cpu"])
    env, planner, wm = _build(cfg)  # planner=cem: the IDM is never read
    env.close()
    assert type(planner).__name__ == "CEMPlanner" and wm.probe is not None
    assert planner.cost.probe is wm.probe  # cost=probe (Reacher's learned row): the model's own probe, handed over
    with pytest.raises(UserError, match="IDM at .* is unreadable"):
        wm.idm
    cfg = load_config("eval", [f"world_model.path={model_copy}", "planner=video_plan", "device=cpu"])
    with pytest.raises(Exception) as e:
        _build(cfg)
    from sfplan.cli import _user_error_cause

    assert "unreadable" in str(_user_error_cause(e.value))


# ----------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """3 Reacher episodes x 6 steps at 32x32 in one shard."""
    from sfplan.data import collect

    out = tmp_path_factory.mktemp("data") / "reacher"
    collect(out, "sfplan/Reacher-v0", {"image_size": 32, "goal": "near"}, episodes=3, steps=6, workers=1,
            progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def flip_pixel_bytes(shard: Path, n: int = 40) -> None:
    """Flip ``n`` bytes in the middle of the first episode's pixel chunk (as a failing disk would)."""
    import h5py

    with h5py.File(shard, "r") as f:
        name = sorted(k for k in f if k.startswith("episode_"))[0]
        info = f[name]["pixels"].id.get_chunk_info(0)
    raw = bytearray(shard.read_bytes())
    mid = info.byte_offset + info.size // 2
    for i in range(mid, mid + n):
        raw[i] ^= 0xFF
    shard.write_bytes(bytes(raw))


def set_actions(shard: Path, value: float | None) -> None:
    """Rewrite every episode's actions in place (same file size): ``value``, or, with None,
    the recorded actions negated."""
    import h5py
    import numpy as np

    with h5py.File(shard, "r+") as f:
        for k in f:
            a = f[k]["actions"]
            a[...] = -a[()] if value is None else np.full(a.shape, value, np.float32)


def test_data_info_finds_flipped_bytes_and_training_stops_on_them(small_data, tmp_path, capsys):
    from sfplan.data import EpisodeDataset
    from sfplan.data.dataset import DatasetError

    d = _copy(small_data, tmp_path / "d")
    assert main(["data", "info", str(d)]) == 0 and "PROBLEM" not in capsys.readouterr().out
    shard = next(d.glob("shard-*.h5"))
    flip_pixel_bytes(shard)
    assert main(["data", "info", str(d)]) == 2
    cap = capsys.readouterr()
    assert "checksum does not match" in cap.err and shard.name in cap.err and "append=true" in cap.err
    assert "PROBLEM" in cap.out  # the summary is still printed above the error
    with EpisodeDataset(d) as ds, pytest.raises(DatasetError, match="checksum does not match"):
        ds.read(0, 0, 4)  # what a training batch reads


def test_nan_actions_are_a_problem_for_data_info_and_training(small_data, tmp_path, capsys):
    from sfplan.training import run_train

    d = _copy(small_data, tmp_path / "d")
    set_actions(next(d.glob("shard-*.h5")), float("nan"))
    assert main(["data", "info", str(d)]) == 2
    cap = capsys.readouterr()
    assert "3 of 3 episode(s)" in cap.err and "NaN/inf actions" in cap.err
    assert "+nan" not in cap.out and "PROBLEM" in cap.out  # no "mean [+nan, +nan]" as if it were data
    with pytest.raises(UserError, match="NaN/inf actions"):
        run_train(load_config("train", ["stage=vae", f"data.path={d}", f"out_dir={tmp_path / 'run'}", "steps=1",
                                        "progress=false", "tensorboard=false", "device=cpu"]))


def test_latent_cache_key_follows_the_datasets_content(small_data, tmp_path):
    """Same shard names, sizes and seeds, other actions: another cache file."""
    from sfplan.data import EpisodeDataset
    from sfplan.training.latent_cache import dataset_fingerprint

    a, b = _copy(small_data, tmp_path / "a"), _copy(small_data, tmp_path / "b")
    sa, sb = next(a.glob("shard-*.h5")), next(b.glob("shard-*.h5"))
    set_actions(sb, None)
    assert sa.name == sb.name and sa.stat().st_size == sb.stat().st_size
    with EpisodeDataset(a) as da, EpisodeDataset(b) as db:
        assert (da.seeds == db.seeds).all()
        assert dataset_fingerprint(da) != dataset_fingerprint(db)
        assert dataset_fingerprint(da) == dataset_fingerprint(EpisodeDataset(_copy(a, tmp_path / "a2")))


def test_append_as_the_repair_hint_prints_it_recollects_the_lost_shard(tmp_path, capsys):
    """The hint `sfplan collect append=true episodes=N out=DIR` run as printed: the dataset's
    env, steps, policy and seeds, not the config's defaults (Reacher 64x64, 50 steps, 200 episodes)."""
    from sfplan.data import EpisodeDataset

    out = tmp_path / "d"
    assert main(["collect", "env.kwargs.image_size=32", "steps=4", "episodes=4", "shard_episodes=2", "workers=1",
                 "policy=random", "seed=10", f"out={out}", "progress=false"]) == 0
    lost = out / "shard-00012-00013.h5"
    flip_pixel_bytes(lost)
    assert main(["data", "info", str(out)]) == 2
    hint = capsys.readouterr().err.split("`")[1]
    assert hint == f"sfplan collect append=true episodes=2 out={out}"
    lost.unlink()
    assert main([*hint.split()[1:], "workers=1", "progress=false"]) == 0
    with EpisodeDataset(out) as ds:
        assert ds.seeds.tolist() == [10, 11, 12, 13] and ds.lengths.tolist() == [4] * 4
        assert {ds.policy_of(i) for i in range(4)} == {"random"} and ds.image_size == 32
    assert main(["collect", "append=true", "steps=50", "episodes=1", f"out={out}", "progress=false"]) == 2
    assert "4-step episodes" in capsys.readouterr().err


def test_a_section_given_a_value_names_its_fields(capsys):
    # `sfplan generate env=reacher`: env is a section there (env.id=...), not a task choice as in eval
    assert main(["generate", "env=pointmaze_umaze"]) == 2
    err = capsys.readouterr().err
    assert "env is a section of `sfplan generate`" in err and "env.id=" in err and "Traceback" not in err
    assert main(["eval", "episodez=3"]) == 2
    assert "unknown config key 'episodez'" in capsys.readouterr().err
