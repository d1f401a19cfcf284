"""The training loop shared by both stages: HF Accelerate (one CPU, one GPU, or
``accelerate launch`` DDP), AdamW with warmup + cosine decay, gradient clipping, EMA,
atomic checkpoints with exact resume, a NaN guard, tqdm and TensorBoard.

Randomness: every step draws its batch and its noise from a generator seeded by
(seed, rank, step) (``step_generator``), never from a stream carried across steps. So a
run resumed from a checkpoint at step k draws exactly what an uninterrupted run draws
from step k on; with model, EMA, optimizer and LR-scheduler state restored, the result is
bit-exact on the CPU. The global RNG states are saved and restored too.

NaN guard: a step whose loss or gradient norm is not finite is skipped (no optimizer
step, no EMA update; the step counter and LR schedule move on, so the next step draws a
new batch). ``nan_tolerance`` such steps in a row stop training with a ``TrainingDiverged``
error naming the fixes; no checkpoint is written during such a streak, so the last
checkpoint holds good weights.

Interrupts: SIGINT/SIGTERM finish the current step, write a checkpoint and stop
(a second Ctrl-C stops at once). ``stop_at_step`` stops like a kill (no checkpoint
beyond the regular ones), for testing resume.

Time limit: ``time_limit_s`` ends training at the first step past that many seconds of
training (every process at the same step; a resumed run counts the seconds its checkpoint
had reached, so a killed and resumed stage keeps to its time) and finishes as at ``steps``: a checkpoint, the final
model and its card, which records the step reached (``stopped_early``). ``sfplan fit`` gives
each stage its share of the budget this way, so a machine slower than at the stage's
calibration (other jobs on it) shortens the stage instead of the stages after it.
"""
from __future__ import annotations

import math
import os
import platform
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sfplan.errors import UserError
from sfplan.io import atomic_dir
from sfplan.training.checkpoint import (
    clean_stale,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    weight_problem,
)
from sfplan.training.ema import EMA


class TrainingDiverged(UserError):
    """Too many non-finite steps in a row; the message names the fixes."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM: a checkpoint was written; the same command resumes."""


class LossModule(nn.Module):
    """Wraps a trainable model so the loss runs inside ``forward`` (what DDP and
    Accelerate's autocast hook into). forward(batch, generator) -> (loss, logs)."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch, generator):
        return self._loss_fn(self.model, batch, generator)


def step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, rank, step, stream)."""
    s = np.random.SeedSequence([int(seed), int(rank), int(step), int(stream)]).generate_state(1, np.uint64)[0]
    return torch.Generator("cpu").manual_seed(int(s) & ((1 << 63) - 1))


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    if schedule not in ("cosine", "constant"):
        raise UserError(f"lr_schedule must be cosine or constant, got {schedule!r}")

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def cpu_info() -> tuple[str, str]:
    """(CPU model name, the vector ISA that sets its matmul speed: AVX512-BF16 | AVX2 | "")."""
    cpu, isa = platform.processor() or platform.machine(), ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu, isa
    for line in text.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    isa = "AVX512-BF16" if "avx512_bf16" in text else ("AVX2" if "avx2" in text else "")
    return cpu, isa


def hardware_summary(device: torch.device) -> str:
    cpu, isa = cpu_info()
    s = (f"{cpu} ({isa or 'no AVX2'}), {os.cpu_count()} CPU cores, torch {torch.__version__} with "
         f"{torch.get_num_threads()} threads")
    if device.type == "cuda":
        s = f"{torch.cuda.get_device_name(device)} ({s})"
    return s


def _scalar_mean(d: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in d.items() if v}


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step boundary."""

    def __init__(self):
        self.flag = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.flag = signal.Signals(signum).name
        print(f"\n{self.flag}: finishing this step, writing a checkpoint (again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


@dataclass
class _Run:
    """The state of one ``Trainer.fit``: what it trains, how far it got, and its logs."""

    model: nn.Module
    ema: EMA
    params: list[nn.Parameter]  # the trainable ones
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    wrapped: nn.Module | None = None  # LossModule(model) as Accelerate prepared it
    opt_p: Any = None  # the optimizer as Accelerate prepared it
    writer: Any = None  # TensorBoard, on the main process
    bar: Any = None  # tqdm
    step: int = 0
    resumed_from: str | None = None
    last_saved: int | None = None  # the step of the last checkpoint written (or resumed from)
    last_loss: float = 0.0  # loss of the last step taken (checked before each checkpoint)
    stopped: str | None = None  # stop_at_step | SIGINT | SIGTERM
    stopped_early: int | None = None  # the step ``time_limit_s`` ended a finished run at
    # NaN guard
    nan_total: int = 0
    nan_streak: int = 0
    nan_first: int | None = None
    last_bad: Any = None
    # logs
    window: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # since the last train log
    last_train: dict[str, float] = field(default_factory=dict)
    last_val: dict[str, float] = field(default_factory=dict)
    last_sample: dict[str, float] = field(default_factory=dict)
    train_time: float = 0.0
    elapsed_before: float = 0.0  # seconds of training the resumed checkpoint had reached
    t_loop: float = 0.0  # perf_counter at this process's first step
    steps_done: int = 0  # steps taken in this process's run (not resumed ones)
    t_window: float = 0.0
    n_window: int = 0


class Trainer:
    """Runs one stage (``sfplan.training.stages``) under the config of ``configs/train.yaml``."""

    def __init__(self, cfg: DictConfig, stage, accelerator, out_dir: Path, command: str | None = None):
        self.cfg, self.stage, self.acc, self.out_dir = cfg, stage, accelerator, Path(out_dir)
        self.command = command
        self.ckpt_root = self.out_dir / "checkpoints"

    # ------------------------------------------------------------------ helpers
    def _log(self, writer, values: dict[str, float], step: int, prefix: str) -> None:
        if writer is not None:
            for k, v in values.items():
                if v is not None and np.isfinite(v):
                    writer.add_scalar(f"{prefix}/{k}", v, step)

    def _training_state(self, opt, sched, step: int, ema: EMA, extra: dict) -> dict:
        return {"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(), "step": int(step),
                "ema_updates": int(ema.num_updates), "rng": rng_state(), **extra}

    def _resume_path(self, existing: list[tuple[int, Path]]) -> Path | None:
        r = self.cfg.resume
        r = "never" if r in (None, False) else str(r)
        if r.lower() == "auto":
            return existing[-1][1] if existing else None
        if r.lower() in ("never", "false", "no", "none"):
            if existing:
                raise UserError(f"{self.out_dir} already holds checkpoints (latest: step {existing[-1][0]}): use "
                                f"resume=auto to continue that run, or pick a new out_dir (or delete "
                                f"{self.ckpt_root})")
            return None
        p = Path(r).expanduser()
        if (p / "checkpoints").is_dir():  # a run directory: its newest checkpoint
            found = list_checkpoints(p / "checkpoints")
            if not found:
                raise UserError(f"resume={r}: no checkpoints in {p / 'checkpoints'}")
            return found[-1][1]
        return p

    def _check_identity(self, meta: dict) -> None:
        old, new = meta.get("identity", {}), self.stage.identity()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            detail = "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in diff)[:600]
            raise UserError(f"the checkpoint in {self.out_dir} was trained with other settings ({detail}): "
                            f"resume with the same stage/model/data/VAE, or train into a new out_dir")

    # ------------------------------------------------------------------ main loop
    def fit(self) -> dict:
        """Train the stage to ``steps`` (resuming as ``resume`` says) -> the run's result; a run
        that finished also writes the final model (EMA weights) and its model card."""
        t_start = time.time()
        run = self._start()
        stop_at = self.cfg.get("stop_at_step")
        limit = self.cfg.get("time_limit_s")
        run.t_loop = time.perf_counter()
        deadline = None if limit is None else run.t_loop + float(limit) - run.elapsed_before
        try:
            with _Signals() as sig:
                while run.step < int(self.cfg.steps):
                    if stop_at is not None and run.step >= int(stop_at):
                        run.stopped = "stop_at_step"
                        break
                    self._train_step(run)
                    over = deadline is not None and _any(self.acc, time.perf_counter() > deadline)
                    self._after_step(run, last=over)  # validation, samples and a checkpoint, as at the last step
                    if _any(self.acc, sig.flag is not None):  # every process stops at the same step
                        if run.nan_streak == 0 and run.last_saved != run.step:
                            self._checkpoint(run, run.step)
                        run.stopped = sig.flag or "SIGTERM"
                        break
                    if over and run.step < int(self.cfg.steps):
                        run.stopped_early = run.step  # finishes below as a run that reached its steps
                        break
        finally:
            run.bar.close()
            if run.writer is not None:
                run.writer.flush()
                run.writer.close()
        return self._finish(run, t_start)

    def _start(self) -> _Run:
        """Set the stage up, build model, EMA, optimizer and LR schedule, restore a checkpoint
        to resume from (or write the run's ``config.yaml``), and open the logs."""
        cfg, acc, stage = self.cfg, self.acc, self.stage
        is_main = acc.is_main_process
        if is_main:
            clean_stale(self.ckpt_root)
        acc.wait_for_everyone()
        resume_path = self._resume_path(list_checkpoints(self.ckpt_root))

        torch.manual_seed(int(cfg.seed))  # initial weights
        stage.setup(acc.device, is_main, acc.wait_for_everyone)
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        model = stage.model
        ema = EMA(model, float(cfg.ema_decay), bool(cfg.ema_warmup))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(cfg.lr), betas=(0.9, 0.999), weight_decay=float(cfg.weight_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(cfg.warmup_steps), int(cfg.steps),
                                                                 str(cfg.lr_schedule), float(cfg.min_lr_ratio)))
        run = _Run(model, ema, params, opt, sched)
        if resume_path is not None:
            self._resume(run, resume_path)
        elif is_main:
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

        run.wrapped, run.opt_p = acc.prepare(LossModule(model, stage.loss), opt)
        if is_main and bool(cfg.tensorboard):
            run.writer = _summary_writer(self.out_dir / "tb")
        from tqdm.auto import tqdm

        run.bar = tqdm(total=int(cfg.steps), initial=run.step, desc=f"train {stage.name}", unit="step",
                       dynamic_ncols=True, disable=not (is_main and bool(cfg.progress)), file=sys.stderr)
        run.t_window = time.perf_counter()
        return run

    def _resume(self, run: _Run, path: Path) -> None:
        """Restore model, EMA, optimizer, LR schedule, RNG states and history from a checkpoint."""
        cfg, is_main = self.cfg, self.acc.is_main_process
        ck = load_checkpoint(path)
        self._check_identity(ck.meta)
        try:
            run.model.load_state_dict(ck.model)
            run.ema.model.load_state_dict(ck.ema)
            run.opt.load_state_dict(ck.training_state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint {path} does not fit this model ({str(e).splitlines()[0][:200]}): "
                            f"train into a new out_dir") from None
        run.sched.load_state_dict(ck.training_state["lr_scheduler"])
        _apply_new_optimizer_settings(cfg, ck.meta.get("config") or {}, run.opt, run.sched, is_main)
        run.ema.num_updates = int(ck.training_state["ema_updates"])
        set_rng_state(ck.training_state["rng"])
        run.step = run.last_saved = ck.step
        run.nan_total = int(ck.meta.get("nan_skipped_total", 0))
        run.elapsed_before = float(ck.meta.get("elapsed_s", 0.0))
        history = ck.meta.get("history", {})
        run.last_train = history.get("last_train", {})
        run.last_val = history.get("last_val", {})
        run.last_sample = history.get("last_sample", {})
        run.resumed_from = str(path)
        if is_main:
            print(f"resuming {self.stage.name} training from {path} (step {run.step}/{int(cfg.steps)})",
                  file=sys.stderr)

    def _train_step(self, run: _Run) -> None:
        """One step: a batch drawn from the step's own generator, the loss, its gradient, and
        an optimizer and EMA update, or with a non-finite loss or gradient, none (``_skip``)."""
        acc, grad_clip = self.acc, self.cfg.grad_clip
        t0 = time.perf_counter()
        run.wrapped.train()
        g = step_generator(int(self.cfg.seed), acc.process_index, run.step)
        batch = self.stage.batch(g)
        loss, logs = run.wrapped(batch, g)
        bad = _any(acc, not bool(torch.isfinite(loss.detach()).all()))
        gnorm = None
        if not bad:
            acc.backward(loss)
            if grad_clip:
                gnorm = acc.clip_grad_norm_(run.params, float(grad_clip))
            else:
                gnorm = torch.linalg.vector_norm(torch.stack(
                    [p.grad.detach().norm() for p in run.params if p.grad is not None]))
            gnorm = float(gnorm)
            bad = not math.isfinite(gnorm)
        if bad:
            self._skip(run, loss, gnorm)
        else:
            run.opt_p.step()
            run.sched.step()
            run.opt_p.zero_grad(set_to_none=True)
            run.ema.update(run.model)
            run.last_loss = float(loss.detach().float().cpu())
            run.step += 1
            run.nan_streak, run.nan_first = 0, None
            for k, v in logs.items():
                run.window[k].append(float(v))
            run.window["grad_norm"].append(gnorm)
            run.bar.update(1)
        run.train_time += time.perf_counter() - t0
        run.steps_done += 1
        run.n_window += 1

    def _skip(self, run: _Run, loss: torch.Tensor, gnorm: float | None) -> None:
        """The NaN guard: a step with a non-finite loss or gradient changes no weights (the step
        counter and LR schedule move on); ``nan_tolerance`` of them in a row stop training."""
        cfg = self.cfg
        run.opt_p.zero_grad(set_to_none=True)
        run.nan_total += 1
        run.nan_streak += 1
        run.nan_first = run.step if run.nan_first is None else run.nan_first
        run.last_bad = float(loss.detach().float().cpu()) if gnorm is None else f"grad norm {gnorm}"
        if run.writer is not None:
            run.writer.add_scalar("train/nan_skipped_total", run.nan_total, run.step + 1)
        if run.nan_streak >= int(cfg.nan_tolerance):
            raise TrainingDiverged(
                f"training stopped at step {run.step + 1}: {run.nan_streak} steps in a row "
                f"({run.nan_first + 1}-{run.step + 1}) had a non-finite loss or gradient (last: {run.last_bad}); "
                f"they were skipped and did not change the weights, and {self._last_good()}. Fix: lower lr (now "
                f"{cfg.lr}) or raise warmup_steps (now {cfg.warmup_steps}), keep grad_clip on (now "
                f"{cfg.grad_clip}), use mixed_precision=no if on bf16, and check the data for broken "
                f"frames or actions (`sfplan data info {cfg.data.path}`); then run again with "
                f"resume=auto to continue from the last checkpoint.")
        run.sched.step()
        run.step += 1
        run.bar.update(1)

    def _after_step(self, run: _Run, last: bool = False) -> None:
        """What is due after a step: the train log every ``log_every`` steps, validation, samples
        and a checkpoint on their schedules (each also at the last step, or with ``last``)."""
        cfg, step = self.cfg, run.step
        steps = step if last else int(cfg.steps)  # the step that counts as the last
        is_main = self.acc.is_main_process
        val_every, sample_every = int(cfg.val_every or 0), int(cfg.sample_every or 0)
        ckpt_every = int(cfg.checkpoint_every)
        if step % max(1, int(cfg.log_every)) == 0 and run.window:
            self._log_train(run)
        if is_main and val_every and (step % val_every == 0 or step == steps):
            run.last_val = self._validate(run.ema.model)
            self._log(run.writer, run.last_val, step, "val")
        if is_main and sample_every and (step % sample_every == 0 or step == steps):
            run.last_sample = self._sample(run.ema.model, step, run.writer)
        if run.nan_streak == 0 and ((ckpt_every and step % ckpt_every == 0) or step == steps):
            self._checkpoint(run, step)

    def _log_train(self, run: _Run) -> None:
        """The mean of the logs since the last train log, the LR, EMA decay and throughput."""
        run.last_train = _scalar_mean(run.window)
        el = time.perf_counter() - run.t_window
        perf = {"steps_per_s": run.n_window / el,
                "samples_per_s": run.n_window * int(self.cfg.batch_size) * self.acc.num_processes / el}
        lr = run.sched.get_last_lr()[0]
        self._log(run.writer, {**run.last_train, "lr": lr, "ema_decay": run.ema.current_decay()}, run.step, "train")
        self._log(run.writer, perf, run.step, "perf")
        run.bar.set_postfix(loss=f"{run.last_train.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}", refresh=False)
        run.window.clear()
        run.t_window, run.n_window = time.perf_counter(), 0

    def _last_good(self) -> str:
        last = list_checkpoints(self.ckpt_root)
        return (f"the last good checkpoint {last[-1][1]} (step {last[-1][0]}) is kept" if last
                else "no checkpoint was written yet")

    def _checkpoint(self, run: _Run, at: int) -> Path | None:
        """Write a checkpoint at step ``at``, only with sane weights and loss (else TrainingDiverged)."""
        cfg = self.cfg
        bad = weight_problem(run.model.state_dict()) or weight_problem(run.ema.model.state_dict())
        if bad is None and not math.isfinite(run.last_loss):
            bad = f"the last loss is {run.last_loss}"
        if bad:  # a checkpoint counts as good only with sane weights and loss: write none
            raise TrainingDiverged(
                f"training stopped at step {at}: the weights are no longer sane ({bad}); no checkpoint was "
                f"written for this step and {self._last_good()}. Fix: lower lr (now {cfg.lr}) or raise warmup_steps "
                f"(now {cfg.warmup_steps}), keep grad_clip on (now {cfg.grad_clip}); then run again with the new lr "
                f"and resume=auto to continue from the last good checkpoint (the new lr applies on resume).")
        path = None
        if self.acc.is_main_process:
            meta = {"stage": self.stage.name, "identity": self.stage.identity(),
                    "config": OmegaConf.to_container(cfg, resolve=True), "nan_skipped_total": run.nan_total,
                    "num_processes": self.acc.num_processes,
                    "elapsed_s": run.elapsed_before + time.perf_counter() - run.t_loop,
                    "history": {"last_train": run.last_train, "last_val": run.last_val,
                                "last_sample": run.last_sample}}
            path = save_checkpoint(self.ckpt_root, at, run.model, run.ema.model,
                                   self._training_state(run.opt, run.sched, at, run.ema, {}), meta,
                                   keep=max(1, int(cfg.keep_checkpoints)))
        self.acc.wait_for_everyone()
        run.last_saved = at
        return path

    def _finish(self, run: _Run, t_start: float) -> dict:
        """The run's result; a finished run writes the final model (EMA weights) and model card.
        SIGINT/SIGTERM raise TrainingInterrupted (a checkpoint was written)."""
        cfg, acc, stage, is_main = self.cfg, self.acc, self.stage, self.acc.is_main_process
        ckpts = list_checkpoints(self.ckpt_root)
        result = {"stage": stage.name, "out_dir": str(self.out_dir), "is_main": is_main, "step": run.step,
                  "steps": int(cfg.steps), "resumed_from": run.resumed_from, "nan_skipped_total": run.nan_total,
                  "train_time_s": run.train_time, "steps_this_run": run.steps_done,
                  "steps_per_s": run.steps_done / run.train_time if run.train_time > 0 else None,
                  "last_train": run.last_train, "last_val": run.last_val, "last_sample": run.last_sample,
                  "checkpoint": str(ckpts[-1][1]) if ckpts else None}
        if run.stopped_early is not None:
            result["stopped_early"] = {"step": run.stopped_early, "time_limit_s": float(cfg.time_limit_s)}
        if run.stopped in ("SIGINT", "SIGTERM"):
            raise TrainingInterrupted(f"{run.stopped} at step {run.step}: checkpoint {result['checkpoint']}; run the "
                                      f"same command again to resume")
        if run.stopped is not None:
            result["stopped"] = run.stopped
            return result
        model_dir = self.out_dir / "model"
        result["model"] = str(model_dir)
        if is_main:
            info = atomic_dir(model_dir, lambda d: stage.save_final(run.ema.model, d)) or {}
            result.update(info)
            result["wall_time_s"] = time.time() - t_start
            from sfplan.training.model_card import write_model_card

            write_model_card(self.out_dir, cfg, result, stage.describe(), hardware_summary(acc.device),
                             self.command, acc)
        acc.wait_for_everyone()
        return result

    # ------------------------------------------------------------------ val / samples
    @torch.no_grad()
    def _validate(self, ema_model) -> dict[str, float]:
        acc, stage = self.acc, self.stage
        vals: dict[str, list[float]] = defaultdict(list)
        for i in range(max(1, int(self.cfg.val_batches))):
            g = step_generator(int(self.cfg.seed), 0, i, stream=1)  # the same batches every time
            batch = stage.batch(g, split="val")
            with acc.autocast():
                loss, logs = stage.loss(ema_model, batch, g)
            for k, v in logs.items():
                vals[k].append(float(v))
        return _scalar_mean(vals)

    def _sample(self, ema_model, step: int, writer) -> dict[str, float]:
        from sfplan.video import write_video

        with self.acc.autocast():
            logs, images, videos = self.stage.sample(ema_model, step, self.out_dir / "samples")
        self._log(writer, logs, step, "sample")
        d = self.out_dir / "samples"
        d.mkdir(parents=True, exist_ok=True)
        for name, img in images.items():
            if writer is not None:
                writer.add_image(name, torch.from_numpy(np.ascontiguousarray(img)), step, dataformats="HWC")
            import imageio.v3 as iio

            iio.imwrite(d / f"{name.split('/')[-1]}_step{step:08d}.png", img)
        for name, vid in videos.items():
            path = d / f"{name}_step{step:08d}.gif"
            write_video(path, vid, fps=int(self.cfg.get("fps", 8)))
            if writer is not None:
                _add_gif(writer, f"samples/{name}_video", path.read_bytes(), vid.shape[1:3], step)
        return logs


def _add_gif(writer, tag: str, gif: bytes, hw: tuple[int, int], step: int) -> None:
    """An animated GIF as a TensorBoard image summary (what ``add_video`` writes, without moviepy)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    img = Summary.Image(height=int(hw[0]), width=int(hw[1]), colorspace=3, encoded_image_string=gif)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]), step)


def _apply_new_optimizer_settings(cfg: DictConfig, old: dict, opt, sched, verbose: bool) -> None:
    """Resuming with another ``lr`` or ``weight_decay``: apply them from the first resumed step
    (the optimizer's saved state would keep the old ones while the card records the new)."""
    lr, wd = float(cfg.lr), float(cfg.weight_decay)
    old_lr, old_wd = old.get("lr"), old.get("weight_decay")
    if (old_lr is None or float(old_lr) == lr) and (old_wd is None or float(old_wd) == wd):
        return  # unchanged: keep the restored state bit for bit
    sched.base_lrs = [lr] * len(opt.param_groups)
    for g, f in zip(opt.param_groups, sched.lr_lambdas):
        g["initial_lr"], g["lr"], g["weight_decay"] = lr, lr * f(sched.last_epoch), wd
    if verbose:
        print(f"resuming with lr={lr:g} weight_decay={wd:g} (the checkpoint trained with lr={old_lr} "
              f"weight_decay={old_wd}): applied from this step on", file=sys.stderr)


def _any(acc, flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (all processes skip a step together)."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


def _summary_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                        "(or run with tensorboard=false)") from e
    return SummaryWriter(str(path))
