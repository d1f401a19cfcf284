"""The one-step student (``sfplan.world_model.one_step``, ``sfplan train stage=distill``) at toy
size: the stored adapter folds into the weights as peft runs it, one call is the 1-step
sampler, distillation brings one call toward the teacher's steps, and a model dir loads the
student only for num_steps=1."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from sfplan.config import load_config  # noqa: E402
from sfplan.errors import UserError  # noqa: E402
from sfplan.training import run_train  # noqa: E402
from sfplan.world_model import one_step  # noqa: E402
from sfplan.world_model.learned import SlowFastWorldModel  # noqa: E402
from sfplan.world_model.sampler import make_sampler, sample_chunk  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

COMMON = ["progress=false", "num_threads=1", "log_every=1", "val_every=0", "sample_every=0", "tensorboard=false",
          "warmup_steps=0"]
DYN_TINY = ["stage=dynamics", "model.world_model.chunk_size=2", "model.diffusion.block_out_channels=[16,32]",
            "model.diffusion.head_dim=8", "model.diffusion.cross_attention_dim=16", "model.diffusion.norm_num_groups=4",
            "model.diffusion.max_frames=8", "batch_size=2", "lr=1e-3"]


def _cfg(args, data, out, *extra):
    return load_config("train", [*args, *COMMON, f"data.path={data}", f"out_dir={out}", *extra])



@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory) -> Path:
    """A toy world model (VAE 2 steps, dynamics 20 steps) with the default 2-step sampler."""
    root = tmp_path_factory.mktemp("teacher")
    vae = run_train(_cfg(["stage=vae", "model.block_out_channels=[8,8,8]", "model.norm_num_groups=4", "batch_size=4",
                          "latent_scale_frames=64", "lr=1e-3"], data, root / "vae", "steps=2"))
    dyn = run_train(_cfg(DYN_TINY, data, root / "dyn", f"vae={vae['model']}", "steps=20"))
    return Path(dyn["model"])


def _inputs(wm, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, h, w = wm.latent_shape
    ctx = torch.randn(B, wm.context_frames, C, h, w, generator=g)
    acts = torch.rand(B, wm.chunk_size, wm.diffusion.config.action_dim, generator=g) * 2 - 1
    noise = torch.randn(B, wm.chunk_size, C, h, w, generator=g)
    return ctx, acts, noise


def test_one_call_is_the_one_step_sampler(teacher):
    wm = SlowFastWorldModel.from_pretrained(teacher, device="cpu")
    ctx, acts, noise = _inputs(wm)
    with torch.no_grad():
        x = one_step.one_step_x0(wm.diffusion, ctx, acts, noise, wm.train_scheduler)
    ref = sample_chunk(wm.diffusion, ctx, acts, 1, make_sampler("dpmsolver++", wm.train_scheduler), noise=noise)
    assert torch.allclose(x, ref, atol=5e-3), (x - ref).abs().max()
    two = sample_chunk(wm.diffusion, ctx, acts, 2, make_sampler("dpmsolver++", wm.train_scheduler), noise=noise)
    assert (x - two).abs().max() > 1e-2  # and not the 2-step sampler


def test_saved_adapter_folds_into_the_weights_as_peft_runs_it(teacher, tmp_path):
    wm = SlowFastWorldModel.from_pretrained(teacher, device="cpu")
    student = copy.deepcopy(wm.diffusion)
    params = one_step.add_adapter(student, one_step.OneStepConfig(rank=4, alpha=8.0))
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in student.named_parameters() if ".lora_" not in n)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    ctx, acts, noise = _inputs(wm)
    with torch.no_grad():
        y = one_step.one_step_x0(student, ctx, acts, noise, wm.train_scheduler)
        base = one_step.one_step_x0(wm.diffusion, ctx, acts, noise, wm.train_scheduler)
    one_step.save_adapter(student, one_step.OneStepConfig(rank=4, alpha=8.0), tmp_path, {"note": "toy"})
    folded = copy.deepcopy(wm.diffusion)
    cfg = one_step.fold_adapter(folded, tmp_path)
    with torch.no_grad():
        z = one_step.one_step_x0(folded, ctx, acts, noise, wm.train_scheduler)
    assert cfg["rank"] == 4 and cfg["note"] == "toy"
    assert (y - base).abs().max() > 0.05  # the adapter changes the output ...
    assert torch.allclose(y, z, atol=2e-3), (y - z).abs().max()  # ... and folds exactly (fp16 storage)
    assert type(folded) is type(wm.diffusion)


def test_distill_brings_one_call_to_the_teachers_steps_and_loads_only_for_one_step(data, teacher, tmp_path):
    wm_dir = tmp_path / "wm"
    shutil.copytree(teacher, wm_dir)
    r = run_train(_cfg(["stage=distill", "batch_size=4", "lr=1e-2", "model.rank=8", "model.alpha=8", "ema_decay=0"],
                       data, tmp_path / "run", f"attach_to={wm_dir}", "steps=150"))
    val = r["distill_val"]
    # the student starts as the teacher's one call (LoRA B = 0); 150 steps bring it a third of the
    # way to the toy teacher's 2 steps (0.196 -> 0.128 in latent MSE)
    assert val["student_to_teacher_mse"] < 0.8 * val["teacher_1step_to_teacher_mse"], val
    meta = json.loads((wm_dir / "one_step" / "adapter_config.json").read_text())
    assert meta["teacher_steps"] == 2 and meta["rank"] == 8

    plain = SlowFastWorldModel.from_pretrained(wm_dir, device="cpu")  # saved num_steps=2: the teacher
    fast = SlowFastWorldModel.from_pretrained(wm_dir, device="cpu", num_steps=1)
    assert plain.one_step is None and fast.one_step is not None
    sd_t = SlowFastWorldModel.from_pretrained(teacher, device="cpu").diffusion.state_dict()
    assert all(torch.equal(v, sd_t[k]) for k, v in plain.diffusion.state_dict().items())
    assert any(not torch.equal(v, sd_t[k]) for k, v in fast.diffusion.state_dict().items())
    with pytest.raises(ValueError, match="one-step adapter"):
        fast.save_pretrained(tmp_path / "resaved")
    assert plain.checkpoint_sha256 != SlowFastWorldModel.from_pretrained(teacher, device="cpu").checkpoint_sha256


def test_distill_needs_a_multi_step_teacher(data, teacher, tmp_path):
    with pytest.raises(UserError, match="attach_to=<world model dir>"):
        run_train(_cfg(["stage=distill"], data, tmp_path / "a", "steps=1"))
    one = tmp_path / "one"
    shutil.copytree(teacher, one)
    meta = json.loads((one / "world_model.json").read_text())
    (one / "world_model.json").write_text(json.dumps({**meta, "num_steps": 1}))
    with pytest.raises(UserError, match="teacher must take 2 or more steps"):
        run_train(_cfg(["stage=distill"], data, tmp_path / "b", f"attach_to={one}", "steps=1"))
