"""`sfplan train stage=dynamics loop=slowfast`: SlowFast-VGen's slow-fast learning loop
(Algorithm 1b), as a plug-in stage of the generic ``Trainer``.

One trainer step (an outer iteration):

1. **Inner loop (fast learning, Temp-LoRA).** Draw ``episodes_per_step`` training episodes.
   Cut each episode's ground-truth latents into chunks X_0, X_1, ... of ``chunk_size``
   frames (starting at a random offset when ``random_offset``). Reset Temp-LoRA and write
   the chunks into it in order, exactly as ``sfplan generate memory=temp_lora`` does at
   inference (clean context ⊕ chunk, noised as a whole, null condition, LoRA-only Adam
   steps). Before chunk i is written, the LoRA weights are snapshot: Θ_i is the memory of
   chunks 0..i-1 and goes with the pair (X_i, X_{i+1}). It runs with the *current* slow
   weights, every outer iteration.
2. **Outer loop (slow learning).** Draw ``batch_size`` pairs (with replacement) among the
   pairs of those episodes; for each distinct pair, the masked conditional loss of
   X_i's last ``context_frames`` frames -> X_{i+1} (the slow stage's clip, with f_p drawn in
   [1, context_frames]) is computed with Θ_i substituted for the LoRA weights
   (``torch.func.functional_call``: the snapshot tensors are constants, so gradients reach
   only the slow weights Φ). The forward passes are grouped by snapshot (one per distinct
   pair, its rows sharing the LoRA); the loss is the row-weighted mean; one backward, one
   optimizer step, EMA of the slow weights.

How the weights are held: the trainer's ``stage.model`` is the plain ActionVideoDiffusion
(so EMA, checkpoints, resume and the saved world model are exactly those of the slow
stage). The loop works on a *twin*: a copy of its modules whose parameters and buffers are
the very tensors of ``stage.model`` (tied), with the peft LoRA adapter injected. Slow
updates to the model are seen by the twin and outer gradients through the twin land on the
model. The EMA model gets a twin of its own for validation and samples.

Resume: every draw of a step (episodes, offsets, pairs, Temp-LoRA seeds, diffusion noise)
comes from the trainer's per-step generator, Temp-LoRA's initial A comes from its own seed,
and the LoRA is reset per episode; so a step is a pure function of (seed, step, slow
weights) and the run resumes bit-exact like the slow stage.

Settings the paper leaves open (``configs/loop/slowfast.yaml``): episodes per step, the
chunk grid offset, ``max_chunks`` (a cap on the inner loop's length, i.e. its cost), and
``init_from`` (the paper starts from a pretrained slow model: a ``stage=dynamics`` model).
"""
from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from sfplan.errors import UserError
from sfplan.training.stages import DynamicsStage, _container


def tie_parameters(dst: nn.Module, src: nn.Module) -> None:
    """Make every parameter and buffer of ``dst`` the same tensor object as ``src``'s (same
    module structure, e.g. ``dst = copy.deepcopy(src)``)."""
    for name, p in src.named_parameters(remove_duplicate=False):
        mod, _, leaf = name.rpartition(".")
        setattr(dst.get_submodule(mod) if mod else dst, leaf, p)
    for name, b in src.named_buffers(remove_duplicate=False):
        mod, _, leaf = name.rpartition(".")
        (dst.get_submodule(mod) if mod else dst)._buffers[leaf] = b


class _MaskedLoss(nn.Module):
    """forward(latents (B, T, C, h, w), actions (B, T-1, A), generator) -> (loss, logs): the
    slow loss of ``diffusion``; a module so ``functional_call`` can swap in LoRA snapshots."""

    def __init__(self, diffusion: nn.Module, scheduler):
        super().__init__()
        self.diffusion = diffusion
        self._scheduler = scheduler

    def forward(self, latents, actions, generator):
        return self.diffusion.masked_loss(latents, actions, self._scheduler, generator=generator)


class SlowFastStage(DynamicsStage):
    """The dynamics stage trained with the slow-fast loop (see the module docstring).

    batch: {"episodes": [(cache row, chunk offset, Temp-LoRA seed), ...],
    "pairs": (B, 2) int64 of (episode index in the list, pair index i)}."""

    name = "dynamics"  # the same model and outputs as stage=dynamics; identity() adds the loop

    def setup(self, device: torch.device, is_main: bool = True, wait=None) -> None:
        from sfplan.memory.temp_lora import TempLoRAConfig

        super().setup(device, is_main, wait)
        loop = self.cfg.loop
        try:
            self.tl_config = TempLoRAConfig.from_any(loop.get("temp_lora"))
            self.tl_config.validate()
        except ValueError as e:
            raise UserError(f"loop.temp_lora: {e}") from None
        self.episodes_per_step = int(loop.episodes_per_step)
        if self.episodes_per_step < 1:
            raise UserError(f"loop.episodes_per_step must be >= 1, got {self.episodes_per_step}")
        self.max_chunks = None if loop.get("max_chunks") in (None, 0) else int(loop.max_chunks)
        if self.max_chunks is not None and self.max_chunks < 2:
            raise UserError(f"loop.max_chunks must be >= 2 (a pair needs two chunks) or null, got {self.max_chunks}")
        self.K, self.ctx = int(self.wm_config.chunk_size), int(self.wm_config.context_frames)
        if self.ctx > self.K:
            raise UserError(f"loop=slowfast takes each pair's context from the previous chunk: context_frames="
                            f"{self.ctx} must be <= chunk_size={self.K}")
        if loop.get("init_from"):
            self._init_from(loop.init_from)
        fo = self.cache.frame_offsets
        self._rows = {}
        for split, sub in (("train", self.train_ds), ("val", self.val_ds)):
            self._rows[split] = [r for r in self.cache.rows_of(sub.seeds) if int(fo[r + 1] - fo[r]) >= 2 * self.K]
        if not self._rows["train"]:
            raise UserError(f"loop=slowfast needs episodes of at least 2 chunks (2 x chunk_size = {2 * self.K} "
                            f"frames): the longest in {self.ds.path} has {int(self.ds.lengths.max()) + 1}; lower "
                            f"model.world_model.chunk_size or collect longer episodes")
        if not self._rows["val"]:
            self._rows["val"] = self._rows["train"]
        self._twins: dict[int, tuple] = {}

    def _init_from(self, path) -> None:
        """Start the slow weights from a trained world model (the paper fine-tunes a
        pretrained slow learner)."""
        from sfplan.training.latent_cache import vae_fingerprint
        from sfplan.training.stages import load_vae
        from sfplan.world_model.video_diffusion import ActionVideoDiffusion

        p = Path(str(path)).expanduser()
        if not (p / "world_model.json").is_file() and (p / "model" / "world_model.json").is_file():
            p = p / "model"
        if not (p / "diffusion" / "diffusion_pytorch_model.safetensors").is_file():
            raise UserError(f"loop.init_from={path} is not a world model directory: pass the model/ folder of a "
                            f"`sfplan train stage=dynamics` run")
        if vae_fingerprint(load_vae(p, self.name)) != self.vae_sha:
            raise UserError(f"loop.init_from={path} was trained on another VAE's latents than vae={self.cfg.vae}: "
                            f"pass vae={p}")
        src = ActionVideoDiffusion.from_pretrained(str(p / "diffusion"), use_safetensors=True)
        try:
            self.model.load_state_dict(src.state_dict())
        except RuntimeError as e:
            raise UserError(f"loop.init_from={path} has another architecture than model.diffusion "
                            f"({str(e).splitlines()[0][:160]}): set model.diffusion.* as in {p}/diffusion/config.json"
                            ) from None

    # ------------------------------------------------------------------ the twin with Temp-LoRA
    def _twin(self, model: nn.Module):
        """(world model with Temp-LoRA attached, loss module) sharing ``model``'s tensors."""
        key = id(model)
        if key not in self._twins:
            from sfplan.world_model.learned import SlowFastWorldModel

            twin = copy.deepcopy(model)  # no RNG draws: resume-safe
            tie_parameters(twin, model)
            wm = SlowFastWorldModel(self.vae, twin, self.train_scheduler, self.wm_config, device=self.device)
            wm.attach_memory(self.tl_config, freeze_base=False)  # base stays trainable: the outer loop trains it
            self._twins[key] = (wm, _MaskedLoss(twin, self.train_scheduler), model)
        return self._twins[key][:2]

    # ------------------------------------------------------------------ data
    def _episode(self, row: int) -> tuple[int, int, int]:
        fo, ao = self.cache.frame_offsets, self.cache.action_offsets
        return int(fo[row]), int(fo[row + 1] - fo[row]), int(ao[row])

    def _pairs(self, n_frames: int, offset: int) -> int:
        """Pairs (X_i, X_{i+1}) of an episode of ``n_frames`` cut at ``offset``."""
        n_chunks = (n_frames - offset) // self.K
        if self.max_chunks is not None:
            n_chunks = min(n_chunks, self.max_chunks)
        return max(0, n_chunks - 1)

    def batch(self, g: torch.Generator, split: str = "train") -> dict:
        rows = self._rows[split]
        E = min(self.episodes_per_step, len(rows))
        pick = torch.randperm(len(rows), generator=g)[:E].tolist()
        random_offset = bool(self.cfg.loop.get("random_offset", True))
        episodes, pairs = [], []
        for e, j in enumerate(pick):
            row = rows[j]
            _, n, _ = self._episode(row)
            hi = min(self.K - 1, n - 2 * self.K) if random_offset else 0  # keep >= 2 chunks
            o = int(torch.randint(0, hi + 1, (1,), generator=g))
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            episodes.append((row, o, seed))
            pairs += [(e, i) for i in range(self._pairs(n, o))]
        k = torch.randint(0, len(pairs), (int(self.cfg.batch_size),), generator=g)
        return {"episodes": episodes, "pairs": torch.tensor(pairs, dtype=torch.int64)[k]}  # pairs: (B, 2)

    # ------------------------------------------------------------------ loss
    def loss(self, model, batch, g):
        """Inner loop (Temp-LoRA over each episode's chunks, snapshots Θ_i) then the outer
        masked loss with each Θ_i frozen -> (loss, logs)."""
        wm, loss_mod = self._twin(model)
        mem = wm.memory
        K, ctx = self.K, self.ctx
        groups = Counter(tuple(p) for p in batch["pairs"].tolist())  # (e, i) -> rows
        need: dict[int, set[int]] = {}
        for e, i in groups:
            need.setdefault(e, set()).add(i)
        # ---- inner loop: Temp-LoRA over the ground-truth chunks, in order
        t0 = time.perf_counter()
        snaps, inner = {}, []
        for e, (row, o, seed) in enumerate(batch["episodes"]):
            if e not in need:
                continue
            f0, n, _ = self._episode(row)
            Z = self.lat_all[f0: f0 + n].to(self.device, non_blocking=True)  # (n, C, h, w)
            mem.reset(seed)
            last = max(need[e])
            for j in range(last + 1):
                if j in need[e]:
                    snaps[(e, j)] = mem.lora_state(device=None)  # Θ_j: memory of chunks 0..j-1
                if j == last:
                    break
                if j == 0 and o > 0:  # real frames before the grid: clean context of the first write
                    c = min(mem.context_frames, o)
                    logs = mem.write(Z[o - c: o + K], num_context=c)
                else:
                    logs = mem.write(Z[o + j * K: o + (j + 1) * K])
                inner.append(logs["loss"])
        t_inner = time.perf_counter() - t0
        # ---- outer loop: slow weights on (X_i context -> X_{i+1}), Θ_i frozen, grouped by snapshot
        from torch.func import functional_call

        B = int(batch["pairs"].shape[0])
        total, outer_logs = 0.0, Counter()
        for (e, i), r in sorted(groups.items()):
            row, o, _ = batch["episodes"][e]
            f0, n, a0 = self._episode(row)
            s = o + (i + 1) * K - ctx  # clip: last ctx frames of X_i, then X_{i+1}
            T = ctx + K
            lat = self.lat_all[f0 + s: f0 + s + T].to(self.device, non_blocking=True)  # (T, C, h, w)
            act = self.act_all[a0 + s: a0 + s + T - 1].to(self.device, non_blocking=True)  # (T-1, A)
            lat = lat[None].expand(r, *lat.shape)  # (r, T, C, h, w): r draws of noise for this pair
            act = act[None].expand(r, *act.shape)  # (r, T-1, A)
            params = {f"diffusion.{k}": v for k, v in snaps[(e, i)].items()}
            loss_g, logs_g = functional_call(loss_mod, params, (lat, act, g))
            total = total + loss_g * (r / B)
            for k, v in logs_g.items():
                outer_logs[k] += float(v) * r / B
        logs = {**{k: float(v) for k, v in outer_logs.items()},
                "inner_loss": float(np.mean(inner)) if inner else float("nan"),
                "inner_writes": float(len(inner)), "inner_time_s": t_inner, "outer_groups": float(len(groups))}
        return total, logs

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample(self, ema_model, step: int, out_dir: Path):
        """The slow stage's sample (imagined without memory) plus the same rollout with
        Temp-LoRA written chunk by chunk (``imagined_psnr_memory``)."""
        from dataclasses import replace

        from sfplan.eval.video_metrics import psnr
        from sfplan.world_model.imagine import imagine_video_with_memory

        logs, images, videos = super().sample(ema_model, step, out_dir)
        if not logs:
            return logs, images, videos
        src = self.val_ds if len(self.val_ds) else self.train_ds
        ctx = self.ctx
        i = next(j for j in range(len(src)) if int(src.lengths[j]) >= ctx)
        H = max(1, min(int(self.cfg.get("sample_horizon", 16)), int(src.lengths[i]) + 1 - ctx))
        real = src.read(i, 0, ctx + H)["pixels"]  # (ctx+H, H, W, 3)
        acts = src.read_actions(i)[ctx - 1: ctx - 1 + H]  # (H, A)
        wm, _ = self._twin(ema_model)
        old = wm.config
        wm.config = replace(old, return_frames="all")
        try:
            wm.reset_memory(int(self.cfg.seed))
            fake, _ = imagine_video_with_memory(wm, real[:ctx], acts, truth=real[ctx:])  # (H, H, W, 3)
        finally:
            wm.config = old
        p = psnr(fake, real[ctx:])
        logs.update(imagined_psnr_memory=float(p.mean()), imagined_psnr_memory_last=float(p[-1]))
        return logs, images, videos

    # ------------------------------------------------------------------ bookkeeping
    def identity(self) -> dict:
        return {**super().identity(), "loop": _container(self.cfg.loop)}

    def describe(self) -> dict:
        d = super().describe()
        d.update(loop="slowfast", temp_lora=asdict(self.tl_config),
                 episodes_per_step=self.episodes_per_step, max_chunks=self.max_chunks,
                 slowfast_train_episodes=len(self._rows["train"]), init_from=self.cfg.loop.get("init_from"))
        return d


def make_stage(cfg: DictConfig, out_dir: Path) -> SlowFastStage:
    """The stage for ``loop=slowfast`` (``stage=dynamics`` only)."""
    if str(cfg.stage) != "dynamics":
        raise UserError(f"loop=slowfast trains the video diffusion model: use it with stage=dynamics (got "
                        f"stage={cfg.stage})")
    return SlowFastStage(cfg, out_dir)


__all__ = ["SlowFastStage", "make_stage", "tie_parameters"]
