"""Faults injected into real runs at toy size: ``kill -9`` of collect, eval and training
(also in the middle of a checkpoint write), a diverging run, corrupt shards and model files.
What must hold: no orphaned workers, no lost or corrupt data read as good, resume bit-exact,
and every bad file a clear error."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from sfplan.cli import main  # noqa: E402
from sfplan.config import load_config  # noqa: E402
from sfplan.training import run_train  # noqa: E402
from sfplan.training.checkpoint import (  # noqa: E402
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from sfplan.training.trainer import TrainingDiverged  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

TRAIN = ["stage=vae", "model.block_out_channels=[8,8,8]", "model.norm_num_groups=4", "batch_size=4",
         "latent_scale_frames=64", "progress=false", "num_threads=1", "log_every=1", "val_every=0",
         "sample_every=0", "tensorboard=false", "warmup_steps=0", "lr=1e-3", "device=cpu"]
ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}



def train_cfg(data: Path, out: Path, *extra: str):
    return load_config("train", [*TRAIN, f"data.path={data}", f"out_dir={out}", *extra])


def sfplan(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sfplan.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def spawned_workers(pid: int) -> list[int]:
    """Child processes of ``pid`` started by multiprocessing's spawn (pool workers)."""
    found = []
    for c in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                found.append(c)
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        state = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:")]
    except OSError:
        return False
    return bool(state) and "Z" not in state[0].split()[1]  # a zombie has exited


def wait_for(cond, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill9_and_check_workers_exit(proc: subprocess.Popen, workers: list[int]) -> float:
    """SIGKILL the parent; every worker must be gone within 3 s. Returns how long it took."""
    assert workers and proc.poll() is None, "the run ended before the kill: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    try:
        wait_for(lambda: not any(alive(w) for w in workers), 3.0, "the workers to exit with their parent")
    finally:
        for w in workers:  # never leave one behind, even when the check fails
            if alive(w):
                os.kill(w, signal.SIGKILL)
    return time.monotonic() - t0


# ----------------------------------------------------------------------------- collect
def test_kill9_collect_leaves_no_workers_and_append_completes_the_seeds(tmp_path):
    from sfplan.data import EpisodeDataset

    out = tmp_path / "d"
    common = ["env.kwargs.image_size=32", "steps=50", "shard_episodes=2", f"out={out}", "progress=false"]
    proc = sfplan("collect", *common, "episodes=60", "workers=2")
    workers = wait_for(lambda: len(spawned_workers(proc.pid)) == 2 and list(out.glob("shard-*.h5"))
                       and spawned_workers(proc.pid), 120, "two workers and a first shard")
    kill9_and_check_workers_exit(proc, workers)
    shards = sorted(p.name for p in out.glob("shard-*.h5"))
    time.sleep(1.0)
    assert sorted(p.name for p in out.glob("shard-*.h5")) == shards, "a shard was written after the kill"
    with EpisodeDataset(out) as ds:
        have = len(ds)
    assert 0 < have < 60
    assert main(["collect", "append=true", f"episodes={60 - have}", "workers=1", f"out={out}",
                 "progress=false"]) == 0
    with EpisodeDataset(out) as ds:
        assert ds.seeds.tolist() == list(range(60)) and set(ds.lengths.tolist()) == {50}
    assert not list(out.glob(".shard-*.tmp"))  # the killed run's temp files were removed


# ----------------------------------------------------------------------------- eval
def test_kill9_eval_jobs_leaves_no_workers(tmp_path):
    proc = sfplan("eval", "planner=random", "jobs=2", "episodes=400", "budget=50", "env.kwargs.image_size=32",
                  "record=false", "progress=false", f"out_dir={tmp_path / 'r'}")
    workers = wait_for(lambda: len(spawned_workers(proc.pid)) == 2 and spawned_workers(proc.pid), 120,
                       "two eval workers")
    time.sleep(2.0)  # let them get into their episodes
    kill9_and_check_workers_exit(proc, workers)


# ----------------------------------------------------------------------------- training
def _weights(p: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(p))


def _same_run(a: Path, b: Path) -> None:
    for f in ("model.safetensors", "ema.safetensors"):
        wa, wb = _weights(a / f), _weights(b / f)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{f} differs"


def test_kill9_during_training_resumes_bit_exact(data, tmp_path):
    args = ["steps=6", "checkpoint_every=2"]
    full = tmp_path / "full"
    run_train(train_cfg(data, full, *args))
    cut = tmp_path / "cut"
    proc = sfplan("train", *TRAIN, f"data.path={data}", f"out_dir={cut}", *args)
    wait_for(lambda: list_checkpoints(cut / "checkpoints") or proc.poll() is not None, 120, "a first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [s for s, _ in list_checkpoints(cut / "checkpoints")]
    assert done and max(done) < 6, f"the kill came too late (checkpoints {done})"
    r = run_train(train_cfg(data, cut, *args))
    assert r["resumed_from"].endswith(f"step-{max(done):08d}")
    _same_run(full / "checkpoints" / "step-00000006", cut / "checkpoints" / "step-00000006")


KILL_IN_CHECKPOINT_WRITE = """
import os, signal, sys
import torch
import sfplan.training.checkpoint as ck
real = torch.save
def save(obj, f, *a, **k):
    real(obj, f, *a, **k)
    if isinstance(obj, dict) and obj.get("step") == 4:  # step 4's checkpoint, half written
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
ck.torch.save = save
from sfplan.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def test_kill9_in_a_checkpoint_write_never_loads_it(data, tmp_path):
    args = ["steps=6", "checkpoint_every=2"]
    full = tmp_path / "full"
    run_train(train_cfg(data, full, *args))
    cut = tmp_path / "cut"
    r = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT_WRITE, *TRAIN, f"data.path={data}",
                        f"out_dir={cut}", *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(cut / "checkpoints")] == [2]
    assert list((cut / "checkpoints").glob(".tmp-step-00000004-*")), "the kill was not inside the write"
    res = run_train(train_cfg(data, cut, *args))
    assert res["resumed_from"].endswith("step-00000002")
    assert not list((cut / "checkpoints").glob(".tmp-*"))
    _same_run(full / "checkpoints" / "step-00000006", cut / "checkpoints" / "step-00000006")


# ----------------------------------------------------------------------------- divergence
def test_a_diverging_run_keeps_no_exploding_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="no longer sane.*largest \\|weight\\|"):
        run_train(train_cfg(data, out, "steps=6", "checkpoint_every=1", "lr=1e30", "grad_clip=null"))
    for _, p in list_checkpoints(out / "checkpoints"):
        ck = load_checkpoint(p)  # raises on NaN/inf or exploding weights
        assert max(float(v.abs().max()) for v in ck.model.values() if v.is_floating_point()) < 1e6


def test_an_exploding_checkpoint_is_refused_on_resume(data, tmp_path):
    out = tmp_path / "run"
    run_train(train_cfg(data, out, "steps=2", "checkpoint_every=1"))
    good = load_checkpoint(out / "checkpoints" / "step-00000002")
    model = torch.nn.Module()
    for k, v in good.model.items():  # the weights a lr=1e30 step writes: finite, 1e30
        model.register_buffer(k.replace(".", "_"), v * 1e30 if v.is_floating_point() else v)
    save_checkpoint(out / "checkpoints", 3, model, model, good.training_state, good.meta, keep=5)
    with pytest.raises(CheckpointError, match="does not hold good weights.*previous checkpoint step-00000002"):
        load_checkpoint(out / "checkpoints" / "step-00000003")
    assert main(["train", *TRAIN, f"data.path={data}", f"out_dir={out}", "steps=4"]) == 2


def test_resuming_with_a_new_lr_applies_it(data, tmp_path):
    args = ["steps=4", "checkpoint_every=2", "lr_schedule=constant"]
    out = tmp_path / "run"
    run_train(train_cfg(data, out, *args, "stop_at_step=2"))
    r = run_train(train_cfg(data, out, *args, "lr=1e-4"))
    assert r["resumed_from"].endswith("step-00000002")
    groups = load_checkpoint(out / "checkpoints" / "step-00000004").training_state["optimizer"]["param_groups"]
    assert all(g["lr"] == 1e-4 and g["initial_lr"] == 1e-4 for g in groups)
    assert "lr 0.0001 (constant" in (out / "model_card.md").read_text()  # the card and the run agree


# ----------------------------------------------------------------------------- corrupt files
def test_truncated_shard_and_model_files_are_clear_errors(data, tmp_path, capsys):
    d = tmp_path / "d"
    shutil.copytree(data, d, ignore=shutil.ignore_patterns(".lock"))
    shard = next(d.glob("shard-*.h5"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert main(["data", "info", str(d)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and "append=true" in err and "Traceback" not in err
    wm = tmp_path / "wm"
    shutil.copytree(Path(__file__).resolve().parents[1] / "sfplan" / "models" / "Reacher-v0", wm)
    f = wm / "diffusion" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    assert main(["eval", f"world_model.path={wm}", "episodes=1", "progress=false", "record=false"]) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "Traceback" not in err
