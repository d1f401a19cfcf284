"""`sfplan train` / `sfplan generate` at toy size (32x32 frames, a few steps): the two
stages end to end, exact resume, the NaN guard, corrupt checkpoints, video metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from sfplan.cli import main  # noqa: E402
from sfplan.config import load_config  # noqa: E402
from sfplan.errors import UserError  # noqa: E402
from sfplan.eval.video_metrics import psnr, ssim  # noqa: E402
from sfplan.training import run_train  # noqa: E402
from sfplan.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint  # noqa: E402
from sfplan.training.stages import VaeStage  # noqa: E402
from sfplan.training.trainer import TrainingDiverged  # noqa: E402

COMMON = ["progress=false", "num_threads=1", "log_every=1", "val_every=0", "sample_every=0", "tensorboard=false",
          "warmup_steps=0", "lr=1e-3"]
VAE_TINY = ["stage=vae", "model.block_out_channels=[8,8,8]", "model.norm_num_groups=4", "batch_size=4",
            "latent_scale_frames=64"]
DYN_TINY = ["stage=dynamics", "model.world_model.chunk_size=2", "model.diffusion.block_out_channels=[16,32]",
            "model.diffusion.head_dim=8", "model.diffusion.cross_attention_dim=16", "model.diffusion.norm_num_groups=4",
            "model.diffusion.max_frames=8", "batch_size=2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py



@pytest.fixture(scope="module")
def vae_model(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae") / "run"
    r = run_train(cfg(VAE_TINY, data, out, "steps=2"))
    return Path(r["model"])


def cfg(stage, data, out, *extra):
    return load_config("train", [*stage, *COMMON, f"data.path={data}", f"out_dir={out}", *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- end to end
def test_collect_train_vae_dynamics_generate(data, tmp_path, capsys):
    vae_out, dyn_out, gen_out = tmp_path / "vae", tmp_path / "dyn", tmp_path / "gen"
    assert main(["train", *VAE_TINY, *COMMON, f"data.path={data}", f"out_dir={vae_out}", "steps=3",
                 "checkpoint_every=2", "val_every=3", "sample_every=3", "tensorboard=true"]) == 0
    assert (vae_out / "model" / "config.json").is_file() and (vae_out / "model_card.md").is_file()
    assert [s for s, _ in list_checkpoints(vae_out / "checkpoints")] == [2, 3]
    assert list((vae_out / "tb").glob("events.out.tfevents.*"))
    vcfg = json.loads((vae_out / "model" / "config.json").read_text())
    assert vcfg["scaling_factor"] != 1.0  # fit_latent_scale ran
    card = (vae_out / "model_card.md").read_text()
    for word in ("sfplan train stage=vae", "steps: 3", "Final losses", "cpu", "wall time"):
        assert word in card

    assert main(["train", *DYN_TINY, *COMMON, f"data.path={data}", f"vae={vae_out}/model", f"out_dir={dyn_out}",
                 "steps=2", "sample_every=2", "sample_horizon=4", "val_every=2", "tensorboard=true"]) == 0
    assert len(list(dyn_out.glob("latents-*.safetensors"))) == 1
    assert list((dyn_out / "samples").glob("real_vs_imagined_step*.gif"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(dyn_out / "tb"))
    ea.Reload()
    assert {"train/loss", "val/loss", "sample/imagined_psnr", "perf/steps_per_s"} <= set(ea.Tags()["scalars"])
    assert "samples/real_vs_imagined_video" in ea.Tags()["images"]
    summary = json.loads((dyn_out / "training_summary.json").read_text())
    assert summary["step"] == 2 and np.isfinite(summary["last_val"]["loss"])
    from sfplan.world_model.learned import load_world_model

    wm = load_world_model(str(dyn_out / "model"), device="cpu")
    assert wm.chunk_size == 2 and wm.diffusion.config.action_dim == 2
    assert wm.checkpoint_sha256 == summary["checkpoint_sha256"]
    # The model records the task and env settings of its data; eval refuses other ones.
    from sfplan.world_model.learned import check_env_matches

    assert wm.trained_env == {"id": "sfplan/Reacher-v0", "kwargs": {"image_size": 32}}
    check_env_matches(wm, "sfplan/Reacher-v0", {"image_size": 32, "goal": "far"})  # the goal protocol is free
    with pytest.raises(UserError, match=r"image_size=32 \(this env: 64\).*env.kwargs.image_size=32"):
        check_env_matches(wm, "sfplan/Reacher-v0", {"image_size": 64, "goal": "near"})
    with pytest.raises(UserError, match="trained on sfplan/Reacher-v0, not sfplan/PointMazeUMaze-v0"):
        check_env_matches(wm, "sfplan/PointMazeUMaze-v0", {"image_size": 32})

    # trained on from a model dir whose VAE it keeps, a dynamics run keeps the dir's planning record (a fit's
    # choice of cost); with another VAE the record does not follow
    meta = json.loads((dyn_out / "model" / "world_model.json").read_text())
    (dyn_out / "model" / "world_model.json").write_text(json.dumps({**meta, "planning": {"cost": "probe"}}))
    for vae, planning in ((dyn_out / "model", {"cost": "probe"}), (vae_out / "model", None)):
        on = tmp_path / f"on-{vae.parent.name}"
        assert main(["train", *DYN_TINY, *COMMON, f"data.path={data}", f"vae={vae}", f"init_from={dyn_out}/model",
                     f"out_dir={on}", "steps=1", "sample_every=0"]) == 0
        assert json.loads((on / "model" / "world_model.json").read_text()).get("planning") == planning
    # weights of a model without the context skip are not warm-started into one with it (nor back)
    assert main(["train", *DYN_TINY, *COMMON, f"data.path={data}", f"vae={vae_out}/model", f"init_from={dyn_out}/model",
                 f"out_dir={tmp_path / 'skip'}", "steps=1", "model.diffusion.context_skip=true"]) == 2
    assert "set model.diffusion.context_skip=false" in capsys.readouterr().err
    assert main(["train", *DYN_TINY, *COMMON, f"data.path={data}", f"vae={vae_out}/model", f"out_dir={tmp_path / 'eps'}",
                 "steps=1", "model.diffusion.context_skip=true", "model.diffusion.prediction_type=epsilon"]) == 2
    err = capsys.readouterr().err
    assert "model.diffusion: context_skip works with prediction_type='v_prediction'" in err and "Traceback" not in err

    assert main(["generate", f"model={dyn_out}/model", f"data={data}", "episode=1", "horizon=5", "num_threads=1",
                 f"out_dir={gen_out}", "scale=1"]) == 0
    m = json.loads((gen_out / "metrics.json").read_text())
    assert m["horizon"] == 5 and len(m["per_step"]["model"]["psnr"]) == 5
    assert set(m["summary"]) == {"model", "copy_last"} and m["source"]["seed"] == 1
    assert (gen_out / "video.gif").is_file()
    import imageio.v3 as iio

    frames = list(iio.imiter(gen_out / "video.mp4"))
    assert len(frames) == 6  # the start frame + 5 imagined, ground truth beside
    # any start image + actions: no ground truth, no metrics
    iio.imwrite(tmp_path / "start.png", np.zeros((40, 40, 3), np.uint8))  # resized to 32x32
    np.save(tmp_path / "acts.npy", np.zeros((3, 2), np.float32))
    assert main(["generate", f"model={dyn_out}/model", f"image={tmp_path / 'start.png'}",
                 f"actions={tmp_path / 'acts.npy'}", "num_threads=1", f"out_dir={tmp_path / 'gen2'}"]) == 0
    assert json.loads((tmp_path / "gen2" / "metrics.json").read_text())["horizon"] == 3


def test_vae_init_from_starts_at_the_given_weights(data, vae_model, tmp_path):
    """stage=vae init_from=<VAE>: the new VAE starts from those weights (a new maze's VAE
    starts from the old maze's), so at a negligible lr it ends where it started; a path with no VAE
    names the fix."""
    src = _weights(vae_model / "diffusion_pytorch_model.safetensors")
    fresh = VaeStage(cfg(VAE_TINY, data, tmp_path / "fresh", "steps=1"), tmp_path / "fresh")
    fresh.setup(torch.device("cpu"))
    assert fresh.model.vae.state_dict().keys() == src.keys()
    assert not _same(fresh.model.vae.state_dict(), src)
    for where in (vae_model, vae_model.parent):  # the model/ folder or its run dir
        st = VaeStage(cfg(VAE_TINY, data, tmp_path / "warm", "steps=1", f"init_from={where}"), tmp_path / "warm")
        st.setup(torch.device("cpu"))
        assert st.init_report["copied"] == len(src) and st.init_report["fresh"] == []
        assert _same(st.model.vae.state_dict(), src)
    r = run_train(cfg(VAE_TINY, data, tmp_path / "lr0", "steps=2", "lr=1e-12", f"init_from={vae_model}"))
    out = _weights(Path(r["model"]) / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(out, src, atol=1e-9, rtol=0)
    with pytest.raises(UserError, match="init_from=.*no vae/.*stage=vae"):
        VaeStage(cfg(VAE_TINY, data, tmp_path / "bad", f"init_from={tmp_path / 'nowhere'}"),
                 tmp_path / "bad").setup(torch.device("cpu"))


def test_dynamics_num_context_fixes_the_context_of_every_clip(data, vae_model, tmp_path):
    """num_context=k trains every clip from k context frames (the planner always gives
    context_frames); null draws 1..context_frames per clip; out of range names the fix."""
    from sfplan.training.stages import DynamicsStage

    def contexts(*extra) -> set[float]:
        st = DynamicsStage(cfg(DYN_TINY, data, tmp_path / "d", f"vae={vae_model}", *extra), tmp_path / "d")
        st.setup(torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        return {st.loss(st.model, st.batch(g), g)[1]["num_context"] for _ in range(8)}

    assert contexts("num_context=2") == {2.0} and contexts("num_context=1") == {1.0}
    assert len(contexts()) > 1  # drawn per clip: batch means of 1, 1.5 and 2
    with pytest.raises(UserError, match="num_context=3 must be in \\[1, model.world_model.context_frames=2\\]"):
        contexts("num_context=3")


def test_dynamics_sampler_timesteps_trains_at_the_samplers_noise_levels(data, vae_model, tmp_path):
    """sampler_timesteps=f noises a fraction f of each batch at the few-step sampler's own
    timesteps (2-step DPM-Solver++, trailing: 999 and 499), the rest uniformly; 0 keeps the
    uniform draws; outside [0, 1] names the fix."""
    from sfplan.training.stages import DynamicsStage

    def stage(*extra):
        st = DynamicsStage(cfg(DYN_TINY, data, tmp_path / "d", f"vae={vae_model}", *extra), tmp_path / "d")
        st.setup(torch.device("cpu"))
        return st

    g = torch.Generator().manual_seed(0)
    st = stage("sampler_timesteps=1.0", "model.world_model.num_steps=2", "model.world_model.sampler=dpmsolver++")
    assert st._sampler_t.tolist() == [999, 499]
    t = st.train_timesteps(4000, g)
    assert set(t.tolist()) == {999, 499} and abs((t == 999).float().mean().item() - 0.5) < 0.05
    half = stage("sampler_timesteps=0.5")
    t = half.train_timesteps(4000, g)
    at = torch.isin(t, half._sampler_t).float().mean().item()
    assert 0.45 < at < 0.55 and len(set(t.tolist())) > 100
    assert stage().train_timesteps(16, g) is None
    loss, _ = st.loss(st.model, st.batch(g), g)
    assert torch.isfinite(loss)
    with pytest.raises(UserError, match="sampler_timesteps=1.5 .* in \\[0, 1\\]"):
        stage("sampler_timesteps=1.5")


def test_dynamics_weighs_motion_where_the_pixels_move(data, vae_model, tmp_path):
    """motion_mask=pixel gives each clip the cached pixel motion of its own frames (what the
    fit's motion share counts); latent (the default) leaves the loss to read motion off the
    latents; any other value names the choices."""
    from sfplan.data import EpisodeDataset
    from sfplan.training.stages import DynamicsStage
    from sfplan.world_model.video_diffusion import pixel_motion_mask

    def stage(*extra):
        st = DynamicsStage(cfg(DYN_TINY, data, tmp_path / "d", f"vae={vae_model}", "motion_weight=5", *extra),
                           tmp_path / "d")
        st.setup(torch.device("cpu"))
        return st

    st = stage("motion_mask=pixel")
    with EpisodeDataset(data) as ds:
        row = st.cache.rows_of([ds.seeds[0]])[0]
        f0, f1 = int(st.cache.frame_offsets[row]), int(st.cache.frame_offsets[row + 1])
        px = ds[0].pixels
    want = pixel_motion_mask(torch.from_numpy(px), px.shape[1] // st.lat_all.shape[-1])
    assert torch.equal(st.mov_all[f0:f1].bool(), want) and want.any() and not want.all()
    g = torch.Generator().manual_seed(0)
    b = st.batch(g)
    assert b["moving"].shape == (*b["latents"].shape[:2], 1, *b["latents"].shape[-2:])
    assert torch.isfinite(st.loss(st.model, b, g)[0])
    assert "moving" not in stage().batch(g)  # latent: how the shipped models were trained
    with pytest.raises(UserError, match="motion_mask='area': pixel .* or latent"):
        stage("motion_mask=area")


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("stage", ["vae", "dynamics"])
def test_resume_after_kill_is_bit_exact(stage, data, vae_model, tmp_path, monkeypatch):
    tiny = VAE_TINY if stage == "vae" else [*DYN_TINY, f"vae={vae_model}"]
    args = ["steps=4", "checkpoint_every=2"]
    full = run_train(cfg(tiny, data, tmp_path / "full", *args))
    assert full["step"] == 4 and full["resumed_from"] is None
    # kill-equivalent 1: stop when step 3 is reached (step 3 is lost: the last checkpoint is step 2)
    r = run_train(cfg(tiny, data, tmp_path / "cut", *args, "stop_at_step=3"))
    assert r["stopped"] == "stop_at_step" and r["step"] == 3
    assert not (tmp_path / "cut" / "model").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [2]
    resumed = run_train(cfg(tiny, data, tmp_path / "cut", *args))
    assert resumed["resumed_from"].endswith("step-00000002") and resumed["steps_this_run"] == 2
    for f in ("model.safetensors", "ema.safetensors"):
        a = _weights(tmp_path / "full" / "checkpoints" / "step-00000004" / f)
        b = _weights(tmp_path / "cut" / "checkpoints" / "step-00000004" / f)
        assert _same(a, b), f"{f} differs after resume"
    oa = load_checkpoint(tmp_path / "full" / "checkpoints" / "step-00000004").training_state
    ob = load_checkpoint(tmp_path / "cut" / "checkpoints" / "step-00000004").training_state
    assert oa["lr_scheduler"] == ob["lr_scheduler"]
    for k, st in oa["optimizer"]["state"].items():
        assert all(torch.equal(v, ob["optimizer"]["state"][k][n]) for n, v in st.items())
    sub = "diffusion" if stage == "dynamics" else ""
    fa = next((tmp_path / "full" / "model" / sub).glob("*.safetensors"))
    fb = next((tmp_path / "cut" / "model" / sub).glob("*.safetensors"))
    assert fa.read_bytes() == fb.read_bytes()


def test_resume_after_exception_and_settings_checks(data, tmp_path, monkeypatch):
    """An exception mid-run (a crash) loses only the steps since the last checkpoint."""
    args = ["steps=4", "checkpoint_every=2"]
    full = run_train(cfg(VAE_TINY, data, tmp_path / "full", *args))
    calls = {"n": 0}
    orig = VaeStage.loss

    def crash_on_third(model, batch, g):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return orig(model, batch, g)

    monkeypatch.setattr(VaeStage, "loss", staticmethod(crash_on_third))
    with pytest.raises(RuntimeError, match="killed"):
        run_train(cfg(VAE_TINY, data, tmp_path / "crash", *args))
    monkeypatch.setattr(VaeStage, "loss", staticmethod(orig))
    assert not list((tmp_path / "crash" / "checkpoints").glob(".tmp-*"))
    r = run_train(cfg(VAE_TINY, data, tmp_path / "crash", *args))
    assert r["resumed_from"].endswith("step-00000002")
    assert _same(_weights(Path(full["model"]) / "diffusion_pytorch_model.safetensors"),
                 _weights(Path(r["model"]) / "diffusion_pytorch_model.safetensors"))
    # other settings than the checkpoint's: a clear error, nothing overwritten
    with pytest.raises(UserError, match="other settings.*model"):
        run_train(cfg(VAE_TINY, data, tmp_path / "crash", *args, "model.kl_weight=0.1"))
    with pytest.raises(UserError, match="already holds checkpoints.*resume=auto"):
        run_train(cfg(VAE_TINY, data, tmp_path / "crash", *args, "resume=never"))


def test_sigint_writes_a_checkpoint_and_resumes_exactly(data, tmp_path, monkeypatch):
    import os
    import signal

    from sfplan.training.trainer import TrainingInterrupted

    args = ["steps=4", "checkpoint_every=10"]
    full = run_train(cfg(VAE_TINY, data, tmp_path / "full", *args))
    calls = {"n": 0}
    orig = VaeStage.loss

    def ctrl_c_on_third(model, batch, g):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler lets step 3 finish
        return orig(model, batch, g)

    monkeypatch.setattr(VaeStage, "loss", staticmethod(ctrl_c_on_third))
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 3.*resume"):
        run_train(cfg(VAE_TINY, data, tmp_path / "int", *args))
    assert [s for s, _ in list_checkpoints(tmp_path / "int" / "checkpoints")] == [3]
    monkeypatch.setattr(VaeStage, "loss", staticmethod(orig))
    r = run_train(cfg(VAE_TINY, data, tmp_path / "int", *args))
    assert r["steps_this_run"] == 1
    assert _same(_weights(Path(full["model"]) / "diffusion_pytorch_model.safetensors"),
                 _weights(Path(r["model"]) / "diffusion_pytorch_model.safetensors"))


# ----------------------------------------------------------------------------- NaN guard
def _poison(monkeypatch, bad_calls):
    calls = {"n": 0}
    orig = VaeStage.loss

    def loss(model, batch, g):
        calls["n"] += 1
        out, logs = orig(model, batch, g)
        return (out * float("nan"), logs) if calls["n"] in bad_calls else (out, logs)

    monkeypatch.setattr(VaeStage, "loss", staticmethod(loss))


def test_nan_guard_skips_a_poisoned_batch(data, tmp_path, monkeypatch):
    _poison(monkeypatch, {2})
    r = run_train(cfg(VAE_TINY, data, tmp_path / "run", "steps=4", "checkpoint_every=2"))
    assert r["step"] == 4 and r["nan_skipped_total"] == 1
    w = _weights(Path(r["model"]) / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())


def test_nan_guard_stops_after_k_in_a_row_and_keeps_last_checkpoint(data, tmp_path, monkeypatch):
    _poison(monkeypatch, set(range(3, 100)))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        run_train(cfg(VAE_TINY, data, out, "steps=10", "checkpoint_every=2", "nan_tolerance=3"))
    msg = str(e.value)
    assert "3 steps in a row" in msg and "lower lr" in msg and "step-00000002" in msg and "resume=auto" in msg
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2]
    ck = load_checkpoint(out / "checkpoints" / "step-00000002")
    assert all(torch.isfinite(v).all() for v in ck.model.values())
    assert not (out / "model").exists()


def test_huge_lr_diverges_with_a_clear_error(data, tmp_path):
    with pytest.raises(TrainingDiverged, match="non-finite"):
        run_train(cfg(VAE_TINY, data, tmp_path / "run", "steps=12", "lr=1e30", "grad_clip=null",
                      "nan_tolerance=2", "checkpoint_every=100"))


# ----------------------------------------------------------------------------- corrupt checkpoints
def test_corrupt_checkpoint_names_the_fix(data, tmp_path):
    out = tmp_path / "run"
    run_train(cfg(VAE_TINY, data, out, "steps=4", "checkpoint_every=2"))
    last = out / "checkpoints" / "step-00000004"
    raw = bytearray((last / "model.safetensors").read_bytes())
    raw[-10:] = b"\0" * 10
    (last / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt.*delete it to resume from the previous checkpoint "
                                              "step-00000002"):
        run_train(cfg(VAE_TINY, data, out, "steps=6", "checkpoint_every=2"))
    (last / "trainer_state.json").write_text("{")
    assert main(["train", *VAE_TINY, *COMMON, f"data.path={data}", f"out_dir={out}", "steps=6"]) == 2


def test_user_errors(data, tmp_path, capsys):
    assert main(["train", *DYN_TINY, *COMMON, f"data.path={data}", f"out_dir={tmp_path / 'd'}"]) == 2
    assert "needs a trained VAE" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert main(["train", *VAE_TINY, *COMMON, f"data.path={tmp_path / 'none'}"]) == 2
    assert "sfplan collect" in capsys.readouterr().err
    assert main(["generate", f"model={tmp_path / 'nothing'}", f"data={data}"]) == 2
    assert "no world model" in capsys.readouterr().err
    assert main(["eval", "env=pusher", "world_model=learned"]) == 2  # no model is shipped for Pusher
    err = capsys.readouterr().err
    assert "no world model is shipped" in err and "world_model.path" in err
    assert main(["eval", "world_model=learned", f"world_model.path={tmp_path / 'nothing'}"]) == 2
    assert "no world model at" in capsys.readouterr().err


# ----------------------------------------------------------------------------- video metrics
def _ssim_reference(x: np.ndarray, y: np.ndarray, win=11, sigma=1.5) -> float:
    """Direct per-window SSIM (Wang et al. 2004, Gaussian weights), averaged over valid windows and channels."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(3):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        for i in range(a.shape[0] - win + 1):
            for j in range(a.shape[1] - win + 1):
                pa, pb = a[i:i + win, j:j + win], b[i:i + win, j:j + win]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
                cov = (w * pa * pb).sum() - ma * mb
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)  # (B, T, H, W, 3)
    assert psnr(a, a).shape == (2, 3) and torch.isinf(psnr(a, a)).all()
    assert torch.equal(ssim(a, a), torch.ones(2, 3, dtype=torch.float64))
    c = np.full((16, 16, 3), 100, np.uint8)
    d = c + 10  # constant offset 10: MSE 100
    assert float(psnr(c, d)) == pytest.approx(10 * np.log10(255**2 / 100), abs=1e-9)
    c1 = (0.01 * 255) ** 2  # constant images: only the luminance term remains
    assert float(ssim(c, d)) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), abs=1e-12)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert float(ssim(a[0, 0], b[0, 0])) == pytest.approx(_ssim_reference(a[0, 0], b[0, 0]), abs=1e-9)
    assert torch.from_numpy(a).shape == a.shape and psnr(torch.from_numpy(a), torch.from_numpy(b)).shape == (2, 3)
    with pytest.raises(TypeError):
        psnr(a.astype(np.float32), b)


def test_time_limit_ends_training_as_a_finished_run(data, tmp_path):
    """time_limit_s ends the run at the first step past it, with what the last step brings
    (a checkpoint at that step, the final model, the card naming the limit), not as a kill."""
    r = run_train(cfg(VAE_TINY, data, tmp_path / "run", "steps=100000", "checkpoint_every=100000", "time_limit_s=1"))
    reached = r["stopped_early"]["step"]
    assert 0 < reached < 100000 and r["step"] == reached and "stopped" not in r
    assert (tmp_path / "run" / "model").is_dir()
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [reached]
    assert "ended by time_limit_s=1" in (tmp_path / "run" / "model_card.md").read_text()




def test_a_resumed_run_counts_the_training_time_its_checkpoint_had_reached(data, tmp_path):
    """A killed run resumed under time_limit_s gets only what is left of the limit: each
    checkpoint records the seconds of training so far (elapsed_s)."""
    run = tmp_path / "run"
    r = run_train(cfg(VAE_TINY, data, run, "steps=8", "checkpoint_every=2", "stop_at_step=3"))
    assert r["stopped"] == "stop_at_step"
    (step, ck), = list_checkpoints(run / "checkpoints")
    state = json.loads((ck / "trainer_state.json").read_text())
    assert step == 2 and state["elapsed_s"] > 0
    # as if the run had trained 1000 s before its kill: a 100 s limit is spent, one step finishes it
    (ck / "trainer_state.json").write_text(json.dumps({**state, "elapsed_s": 1000.0}))
    resumed = run_train(cfg(VAE_TINY, data, run, "steps=8", "checkpoint_every=2", "time_limit_s=100"))
    assert resumed["stopped_early"]["step"] == 3 and resumed["step"] == 3
    last = list_checkpoints(run / "checkpoints")[-1][1]
    assert json.loads((last / "trainer_state.json").read_text())["elapsed_s"] > 1000.0

@pytest.mark.parametrize("bad", ["0", "-5", "soon"])
def test_a_bad_time_limit_names_the_fix(data, tmp_path, bad):
    with pytest.raises(UserError, match="time_limit_s=.*a number > 0") as e:
        run_train(cfg(VAE_TINY, data, tmp_path / "run", "steps=2", f"time_limit_s={bad}"))
    assert bad in str(e.value)
    assert not (tmp_path / "run").exists()
