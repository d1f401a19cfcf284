"""Slow learning: `sfplan train`, the two training stages of the learned world model.

    sfplan train stage=vae data.path=data/Reacher-v0                   # 1. frame VAE
    sfplan train stage=dynamics data.path=data/Reacher-v0 \\
        vae=outputs/train/Reacher-v0-vae/model                          # 2. video diffusion
    sfplan train stage=idm data.path=data/Reacher-v0 vae=<world model dir> \
        attach_to=<world model dir>                                     # 3. IDM for planner=video_plan
    sfplan train stage=probe data.path=data/Reacher-v0 vae=<world model dir> \
        attach_to=<world model dir>                                     # 4. state probe for cost=probe
    sfplan train stage=distill data.path=data/Reacher-v0 \
        attach_to=<world model dir>                                     # 5. one-step student (num_steps=1)
    accelerate launch -m sfplan.cli train stage=dynamics ...            # DDP on several GPUs

Built on HF Accelerate (CPU, one GPU, or DDP), with EMA weights, atomic checkpoints and
exact resume (re-run the same command), a NaN guard, tqdm and TensorBoard
(``tensorboard --logdir OUT/tb``). The config is ``configs/train.yaml`` with the stage
groups ``configs/stage/{vae,dynamics,idm,probe,distill}.yaml``; the run layout is described in
``sfplan.training.checkpoint``; the loop in ``sfplan.training.trainer``; the stages in
``sfplan.training.stages``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from sfplan.device import resolve_device
from sfplan.errors import UserError, positive_number, whole_number

MIXED_PRECISION = ("auto", "no", "bf16")


def default_out_dir(cfg: DictConfig) -> Path:
    name = Path(str(cfg.data.path)).expanduser().resolve().name or "data"
    loop = "-slowfast" if _loop(cfg) == "slowfast" else ""
    return Path("outputs/train") / f"{name}-{cfg.stage}{loop}"


def _loop(cfg: DictConfig) -> str:
    """``slow`` (the stage's own loop) or ``slowfast`` (``configs/loop/``)."""
    loop = cfg.get("loop")
    return str(loop.get("name", "slow")) if loop is not None else "slow"


def _check(cfg: DictConfig) -> None:
    from sfplan.training.stages import STAGES

    if cfg.stage not in STAGES:
        raise UserError(f"stage={cfg.stage!r}: choose one of {', '.join(STAGES)}")
    for k in ("steps", "batch_size", "checkpoint_every", "log_every", "nan_tolerance"):
        whole_number(k, cfg[k], 1, "a count of steps or items")
    for k in ("warmup_steps", "val_every", "sample_every", "keep_checkpoints", "seed"):
        whole_number(k, cfg.get(k) or 0, 0, "a count (0: off)" if k != "seed" else "the run's seed")
    positive_number("lr", cfg.lr, "the peak learning rate")
    if cfg.get("time_limit_s") is not None:
        positive_number("time_limit_s", cfg.time_limit_s, "seconds of training, a resumed run counting its checkpoint's (null: no limit)")
    resolve_device(cfg.device)  # a device that is not there fails before any data is read
    if str(cfg.mixed_precision) not in MIXED_PRECISION:
        raise UserError(f"mixed_precision={cfg.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)} "
                        f"(fp16 needs loss scaling and is not supported: use bf16)")


def make_accelerator(cfg: DictConfig):
    """An ``accelerate.Accelerator`` on the configured device; ``auto`` precision is
    ``no`` on the CPU and ``bf16`` on a GPU that supports it (``bf16`` on the CPU runs
    torch's CPU autocast)."""
    from accelerate import Accelerator

    device = resolve_device(cfg.device)
    mp = str(cfg.mixed_precision)
    if mp == "auto":
        mp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device.type == "cuda" and device.index not in (None, 0) and not launched:
        raise UserError(f"device={cfg.device}: pick the GPU with CUDA_VISIBLE_DEVICES={device.index} and "
                        f"device=cuda (Accelerate uses the first visible GPU)")
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision=mp, step_scheduler_with_optimizer=False)
    return acc


def run_train(cfg: DictConfig, command: str | None = None) -> dict:
    """Train the configured stage; returns a summary dict (see ``Trainer.fit``)."""
    from sfplan.training.stages import STAGES
    from sfplan.training.trainer import Trainer

    _check(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    out_dir = Path(str(cfg.out_dir)).expanduser() if cfg.get("out_dir") else default_out_dir(cfg)
    acc = make_accelerator(cfg)
    if _loop(cfg) == "slowfast":  # SlowFast-VGen's slow-fast loop (sfplan.training.slowfast)
        from sfplan.training.slowfast import make_stage

        stage = make_stage(cfg, out_dir)
    elif _loop(cfg) == "slow":
        stage = STAGES[str(cfg.stage)](cfg, out_dir)
    else:
        raise UserError(f"loop={_loop(cfg)!r}: choose slow or slowfast")
    return Trainer(cfg, stage, acc, out_dir, command).fit()


__all__ = ["run_train", "make_accelerator", "default_out_dir"]
