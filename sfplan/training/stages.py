"""The training stages, as plug-ins of the generic ``Trainer``: the slow learner's two
(vae, dynamics), the video-plan planner's inverse dynamics model (idm) and the state probe
of ``cost=probe`` (probe).

- ``VaeStage`` (``stage=vae``): the FrameAutoencoder on single frames of the training
  episodes; at the end ``fit_latent_scale`` on the EMA weights, saved with
  ``FrameAutoencoder.save_pretrained``.
- ``DynamicsStage`` (``stage=dynamics``): the frozen VAE encodes the dataset once into a
  latent cache beside the run (``latent_cache``); ActionVideoDiffusion trains with
  ``masked_loss`` on clips of ``context_frames + chunk_size`` latent frames; saved as a
  ``SlowFastWorldModel`` (VAE + EMA diffusion + noise schedule + imagination settings).
- ``IdmStage`` (``stage=idm``): the InverseDynamicsModel on windows of the same latent
  cache (the frozen VAE's latents) -> actions; validation: held-out action MSE and R^2 per
  action dim; ``attach_to=<world model dir>`` also writes it to ``<world model dir>/idm/``.
- ``ProbeStage`` (``stage=probe``): the StateProbe on the same latent cache (and, with
  ``imagined``, on the world model's imagined chunks) -> the task's goal descriptor of each
  frame, from the recorded states; ``attach_to`` writes it to ``<world model dir>/probe/``.

A stage holds the data in memory and draws every batch from the per-step generator the
trainer hands it, so a batch is a pure function of (seed, rank, step): resuming needs only
the step counter to draw the same batches and noise as an uninterrupted run.

Stage interface (what ``Trainer`` calls): ``setup(device, is_main, wait)``, ``model``,
``batch(g, split)``, ``loss(model, batch, g) -> (loss, logs)``, ``sample(ema_model,
step, out_dir) -> (logs, images, videos)``, ``save_final(ema_model, directory) -> dict``,
``identity()``, ``describe()``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sfplan.errors import UserError
from sfplan.io import read_model_meta, update_model_meta

VAE_HINT = "train one with `sfplan train stage=vae data.path=<dataset>` and pass vae=<its out_dir>/model"


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _dataclass_kwargs(cls, d: dict, where: str) -> dict:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"unknown key(s) {unknown} in {where}; valid: {sorted(known)}")
    return _tuples(d)


def open_dataset(cfg):
    from sfplan.data import EpisodeDataset

    path = cfg.data.path
    ds = EpisodeDataset(Path(str(path)).expanduser())
    ds.check_actions()  # NaN actions would make every step a skipped one (or poison a latent cache)
    train, val = ds.split(float(cfg.data.val_fraction), salt=int(cfg.data.split_salt))
    if len(train) == 0:
        raise UserError(f"dataset {ds.path} has no training episodes after holding out val_fraction="
                        f"{cfg.data.val_fraction}: collect more episodes or lower data.val_fraction")
    return ds, train, val


def load_vae(path, stage: str = "dynamics") -> "FrameAutoencoder":  # noqa: F821
    """A trained FrameAutoencoder from ``path``: a ``stage=vae`` model dir, its run dir,
    or a world model dir (its ``vae/``)."""
    from sfplan.world_model.vae import FrameAutoencoder

    if path in (None, "", "null"):
        raise UserError(f"stage={stage} needs a trained VAE: {VAE_HINT}")
    p = Path(str(path)).expanduser()
    for cand in (p, p / "model", p / "vae"):
        if (cand / "config.json").is_file() and (cand / "diffusion_pytorch_model.safetensors").is_file():
            try:
                return FrameAutoencoder.from_pretrained(cand)
            except Exception as e:
                raise UserError(f"the VAE at {cand} is unreadable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:160] if str(e) else ''}): {VAE_HINT}") from None
    raise UserError(f"no trained VAE at {p} (expected config.json + diffusion_pytorch_model.safetensors): {VAE_HINT}")


def _check_world_model_vae(attach, vae_sha: str, vae_arg, stage: str) -> None:
    """``attach_to`` must be a world model dir whose VAE is the one trained on (``vae_sha``):
    a model attached to it reads that world model's latents."""
    from sfplan.training.latent_cache import vae_fingerprint

    wm_dir = Path(str(attach)).expanduser()
    if not (wm_dir / "world_model.json").is_file():
        raise UserError(f"attach_to={attach} is not a world model directory (no world_model.json): pass the "
                        f"model/ folder of a `sfplan train stage=dynamics` run")
    if vae_fingerprint(load_vae(wm_dir, stage)) != vae_sha:
        raise UserError(f"attach_to={attach}: that world model's VAE differs from vae={vae_arg}; stage={stage} "
                        f"must be trained on the latents of the world model it plans with: pass vae={attach}")


def _frames_of(ds, stride: int = 1, limit: int | None = None) -> torch.Tensor:
    """All frames (every ``stride``-th per episode) of ``ds`` -> (N, H, W, 3) uint8 tensor."""
    out, n = [], 0
    for i in range(len(ds)):
        px = ds.read(i, 0, int(ds.lengths[i]) + 1)["pixels"][::stride]
        out.append(px)
        n += len(px)
        if limit is not None and n >= limit:
            break
    x = np.concatenate(out) if out else np.zeros((0, ds.image_size, ds.image_size, 3), np.uint8)
    return torch.from_numpy(x[:limit] if limit is not None else x)


class _Stage:
    name = "?"

    def __init__(self, cfg: DictConfig, out_dir: Path):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    # shared by the stages that train on the frozen VAE's latents (dynamics, idm)
    def _load_vae(self, device: torch.device) -> None:
        """The frozen VAE of ``cfg.vae`` -> self.vae, self.vae_sha (needs self.ds)."""
        from sfplan.training.latent_cache import vae_fingerprint

        cfg = self.cfg
        self.vae = load_vae(cfg.vae, self.name).to(device).eval()
        self.vae.requires_grad_(False)
        self.vae_sha = vae_fingerprint(self.vae)
        if self.vae.config.image_size != self.ds.image_size:
            raise UserError(f"the VAE at {cfg.vae} works on {self.vae.config.image_size}x{self.vae.config.image_size} "
                            f"frames but the dataset holds {self.ds.image_size}x{self.ds.image_size}: train a VAE on "
                            f"this dataset (`sfplan train stage=vae data.path={self.ds.path}`)")
        if self.vae.scaling_factor == 1.0 and self.vae.shift_factor == 0.0:
            print(f"warning: the VAE at {cfg.vae} has no fitted latent scale (scaling_factor 1, shift 0); "
                  f"`sfplan train stage=vae` fits it at the end of training")

    def _load_latents(self, is_main: bool, wait) -> None:
        """Latents of every episode, encoded once, beside the run (or in ``latent_cache_dir``,
        which stages on the same VAE and data share) -> self.cache, self.cache_built."""
        from sfplan.training.latent_cache import load_or_build

        where = Path(str(self.cfg.latent_cache_dir)).expanduser() if self.cfg.get("latent_cache_dir") else self.out_dir
        self.cache, self.cache_built = load_or_build(where, self.ds, self.vae,
                                                     progress=bool(self.cfg.progress) and is_main, is_main=is_main,
                                                     wait=wait)

    def describe(self) -> dict:
        ds, tr, va = self.ds, self.train_ds, self.val_ds
        return {"dataset": str(ds.path), "env_id": ds.meta["env_id"], "image_size": ds.image_size,
                "action_dim": ds.action_dim, "episodes": len(ds), "train_episodes": len(tr), "val_episodes": len(va),
                "steps": ds.num_steps, "frames": int((ds.lengths + 1).sum())}


# ----------------------------------------------------------------------------- VAE
class VaeStage(_Stage):
    """FrameAutoencoder on frames of the training episodes. batch: (B, H, W, 3) uint8."""

    name = "vae"

    def setup(self, device: torch.device, is_main: bool = True, wait=None) -> None:
        from sfplan.world_model.vae import FrameAutoencoder, VAEConfig

        self.device = device
        self.ds, self.train_ds, self.val_ds = open_dataset(self.cfg)
        stride = int(self.cfg.data.get("frame_stride", 1) or 1)
        self.frames = _frames_of(self.train_ds, stride)  # (N, H, W, 3) uint8
        val_src = self.val_ds if len(self.val_ds) else self.train_ds
        self.val_frames = _frames_of(val_src, 1, limit=1024)
        m = _container(self.cfg.model)
        size = m.pop("image_size", None) or self.ds.image_size
        if int(size) != self.ds.image_size:
            raise UserError(f"model.image_size={size} but the dataset holds {self.ds.image_size}x"
                            f"{self.ds.image_size} frames: set model.image_size=null (use the dataset's)")
        vcfg = VAEConfig(image_size=int(size), **_dataclass_kwargs(VAEConfig, m, "model (stage=vae)"))
        self.model = FrameAutoencoder(vcfg).to(device)
        if self.cfg.get("init_from"):  # e.g. another maze's VAE: the same renderer, new walls
            self.init_report = warm_start(self.model.vae, self.cfg.init_from, is_main, part="vae")

    def batch(self, g: torch.Generator, split: str = "train") -> torch.Tensor:
        pool = self.frames if split == "train" else self.val_frames
        idx = torch.randint(0, len(pool), (int(self.cfg.batch_size),), generator=g)
        return pool[idx].to(self.device, non_blocking=True)  # (B, H, W, 3) uint8

    @staticmethod
    def loss(model, batch, g):
        return model.loss(batch, generator=g)

    @torch.no_grad()
    def sample(self, ema_model, step: int, out_dir: Path):
        """Reconstructions of 8 fixed held-out frames: top originals, bottom reconstructions."""
        from sfplan.eval.video_metrics import psnr

        x = self.val_frames[torch.linspace(0, len(self.val_frames) - 1, 8).long()]  # (8, H, W, 3)
        rec = ema_model.decode(ema_model.encode(x)).cpu()  # posterior mean: what the world model sees
        grid = np.concatenate([np.concatenate(list(x.numpy()), 1), np.concatenate(list(rec.numpy()), 1)], 0)
        logs = {"recon_psnr": float(psnr(rec, x).mean())}
        return logs, {"samples/original_vs_reconstruction": grid}, {}

    def save_final(self, ema_model, directory: Path) -> dict:
        n = int(self.cfg.get("latent_scale_frames", 2048))
        idx = torch.linspace(0, len(self.frames) - 1, min(n, len(self.frames))).long()
        scale = ema_model.fit_latent_scale(self.frames[idx])
        ema_model.save_pretrained(directory)
        return {"latent_scale": scale}

    def identity(self) -> dict:
        return {"stage": self.name, "model": _container(self.cfg.model), "data": str(Path(str(self.cfg.data.path))
                                                                                     .expanduser().resolve())}


def warm_start(model: torch.nn.Module, path, verbose: bool = True, part: str = "diffusion") -> dict:
    """Copy the ``part`` weights (``diffusion`` or ``vae``) of a world model dir
    (``<dir>/<part>``), a run dir (``<dir>/model[/<part>]``) or a model dir into ``model``
    wherever name and shape match; the rest (e.g. an action encoder whose input grew) keep
    their fresh init. Returns what was copied/skipped."""
    from safetensors.torch import load_file

    p = Path(str(path)).expanduser()
    cands = [p / part, p / "model" / part, p / "model", p]
    f = next((c / "diffusion_pytorch_model.safetensors" for c in cands
              if (c / "diffusion_pytorch_model.safetensors").is_file()), None)
    if f is None:
        stage = "dynamics" if part == "diffusion" else part
        raise UserError(f"init_from={path}: no {part}/diffusion_pytorch_model.safetensors there; pass the model/ "
                        f"folder of a stage={stage} run (or a shipped model dir)")
    if part == "diffusion" and (f.parent / "config.json").is_file():
        theirs = bool(json.loads((f.parent / "config.json").read_text()).get("context_skip", False))
        if theirs != bool(model.config.context_skip):
            raise UserError(f"init_from={path}: that model was trained with model.diffusion.context_skip="
                            f"{str(theirs).lower()} (its weights predict {'the change from' if theirs else 'not the change from'}"
                            f" the last context frame): set model.diffusion.context_skip={str(theirs).lower()}")
    src, own = load_file(str(f)), model.state_dict()
    copied = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    for k, v in src.items():  # an input layer that grew (e.g. action_history): old columns, zeros for the new
        w = own.get(k)
        if w is not None and k not in copied and v.ndim == 2 and w.ndim == 2 and w.shape[0] == v.shape[0] \
                and w.shape[1] > v.shape[1]:
            copied[k] = torch.cat([v.to(w.dtype), w.new_zeros(w.shape[0], w.shape[1] - v.shape[1])], dim=1)
    if not copied:
        raise UserError(f"init_from={path}: no weight of that model fits this architecture")
    model.load_state_dict(copied, strict=False)
    skipped = sorted(k for k in own if k not in src or src[k].shape != own[k].shape)
    if verbose:
        print(f"init_from {f.parent}: copied {len(copied)}/{len(own)} tensors"
              + (f"; widened or fresh: {', '.join(skipped)}" if skipped else ""), file=sys.stderr)
    return {"init_from": str(f.parent), "copied": len(copied), "fresh": skipped}


# ----------------------------------------------------------------------------- dynamics
class DynamicsStage(_Stage):
    """ActionVideoDiffusion on cached latent clips.

    batch: {"latents": (B, T, C, h, w), "actions": (B, T-1, A)} with T = clip_frames."""

    name = "dynamics"

    def setup(self, device: torch.device, is_main: bool = True, wait=None) -> None:
        from sfplan.world_model.learned import SlowFastWorldModelConfig
        from sfplan.world_model.sampler import (NoiseScheduleConfig, make_sampler, make_train_scheduler,
                                               sampler_timesteps)
        from sfplan.world_model.video_diffusion import VideoDiffusionConfig

        self.device = device
        cfg = self.cfg
        self.ds, self.train_ds, self.val_ds = open_dataset(cfg)
        self._load_vae(device)
        m = _container(cfg.model)
        self.wm_config = SlowFastWorldModelConfig(**_dataclass_kwargs(SlowFastWorldModelConfig, m.get("world_model")
                                                                      or {}, "model.world_model"))
        d = dict(m.get("diffusion") or {})
        if d.get("action_dim") not in (None, self.ds.action_dim):
            raise UserError(f"model.diffusion.action_dim={d['action_dim']} but the dataset's actions are "
                            f"{self.ds.action_dim}-d: leave it null (taken from the data)")
        d["action_dim"] = self.ds.action_dim
        d["max_context"] = self.wm_config.context_frames
        d["latent_channels"] = self.vae.latent_shape[0]
        dcfg = VideoDiffusionConfig(**_dataclass_kwargs(VideoDiffusionConfig, d, "model.diffusion"))
        self.clip_frames = int(cfg.get("clip_frames") or (self.wm_config.context_frames + self.wm_config.chunk_size))
        self.num_context = cfg.get("num_context")
        if self.num_context is not None and not 1 <= int(self.num_context) <= min(self.wm_config.context_frames,
                                                                                   self.clip_frames - 1):
            raise UserError(f"num_context={self.num_context} must be in [1, model.world_model.context_frames="
                            f"{self.wm_config.context_frames}] (and below clip_frames), or null to draw it per clip")
        if self.clip_frames < 2 or self.clip_frames > dcfg.max_frames:
            raise UserError(f"clip_frames={self.clip_frames} must be in [2, model.diffusion.max_frames="
                            f"{dcfg.max_frames}]")
        if self.wm_config.context_frames + self.wm_config.chunk_size > dcfg.max_frames:
            raise UserError(f"context_frames + chunk_size = {self.wm_config.context_frames + self.wm_config.chunk_size}"
                            f" exceeds model.diffusion.max_frames={dcfg.max_frames}")
        sched = _container(m.get("schedule") or {})
        _dataclass_kwargs(NoiseScheduleConfig, sched, "model.schedule")
        self.train_scheduler = make_train_scheduler(dcfg.prediction_type, sched)
        self.sampler_fraction = float(cfg.get("sampler_timesteps") or 0.0)
        if not 0.0 <= self.sampler_fraction <= 1.0:
            raise UserError(f"sampler_timesteps={self.sampler_fraction} is the fraction of each batch noised at the "
                            "sampler's timesteps: give a number in [0, 1] (0: uniform draws, the paper's training)")
        self.motion_mask = str(cfg.get("motion_mask", "latent"))
        if self.motion_mask not in ("pixel", "latent"):
            raise UserError(f"motion_mask={self.motion_mask!r}: pixel (where the frames' pixels move) or latent "
                            "(where the latents change)")
        self._sampler_t = (sampler_timesteps(make_sampler(self.wm_config.sampler, self.train_scheduler),
                                             self.wm_config.num_steps) if self.sampler_fraction > 0 else None)
        try:
            self.model = dcfg.build().to(device)
            self.model.set_noise_schedule(self.train_scheduler.alphas_cumprod)
        except ValueError as e:  # the denoiser's own check of its settings (widths, heads, context_skip ...)
            raise UserError(f"model.diffusion: {e}") from None
        lo, hi = self.ds.meta["action_low"], self.ds.meta["action_high"]
        self.model.set_action_normalizer(lo, hi)
        if cfg.get("init_from"):
            self.init_report = warm_start(self.model, cfg.init_from, is_main)
        self._load_latents(is_main, wait)
        self._index_clips("lower model.world_model.chunk_size or clip_frames, or collect longer episodes")

    def _index_clips(self, fix: str) -> None:
        """Clips of ``clip_frames`` latent frames in the cached train and val episodes (val
        falls back to train) -> self._index, self.lat_all, self.act_all; none to train on is
        a UserError ending in ``fix``."""
        self._index = {split: self._clip_index(self.cache.rows_of(sub.seeds))
                       for split, sub in (("train", self.train_ds), ("val", self.val_ds))}
        if len(self._index["train"][0]) == 0:
            raise UserError(f"no training clips of {self.clip_frames} frames: episodes in {self.ds.path} are "
                            f"shorter (longest {int(self.ds.lengths.max())} steps); {fix}")
        if len(self._index["val"][0]) == 0:
            self._index["val"] = self._index["train"]
        self.lat_all = self.cache.latents  # (N_frames, C, h, w) on the CPU
        self.act_all = self.cache.actions  # (N_steps, A)
        self.mov_all = self.cache.motion  # (N_frames, 1, h, w) uint8

    def _clip_index(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        fo, ao = self.cache.frame_offsets, self.cache.action_offsets
        fs, as_ = [], []
        T = self.clip_frames
        for r in rows:
            n_frames = int(fo[r + 1] - fo[r])
            for s in range(0, n_frames - T + 1):
                fs.append(int(fo[r]) + s)
                as_.append(int(ao[r]) + s)
        return torch.tensor(fs, dtype=torch.int64), torch.tensor(as_, dtype=torch.int64)

    def batch(self, g: torch.Generator, split: str = "train") -> dict:
        fs, as_ = self._index[split]
        k = torch.randint(0, len(fs), (int(self.cfg.batch_size),), generator=g)
        T = self.clip_frames
        fi = fs[k][:, None] + torch.arange(T)  # (B, T)
        ai = as_[k][:, None] + torch.arange(T - 1)  # (B, T-1)
        b = {"latents": self.lat_all[fi].to(self.device, non_blocking=True),  # (B, T, C, h, w)
             "actions": self.act_all[ai].to(self.device, non_blocking=True)}  # (B, T-1, A)
        if self.motion_mask == "pixel":
            b["moving"] = self.mov_all[fi].to(self.device, non_blocking=True)  # (B, T, 1, h, w)
        return b

    def train_timesteps(self, batch_size: int, g: torch.Generator) -> torch.Tensor | None:
        """(B,) noise levels: a ``sampler_timesteps`` fraction of the rows at the few-step
        sampler's own timesteps, the rest uniform; None (masked_loss's uniform draws) at 0.

        Uniform draws spend nearly all training on noise levels a 2-step sampler never
        visits; the one that decides the imagined dynamics, pure noise (t = 999), gets ~0.1%."""
        if self.sampler_fraction <= 0:
            return None
        n = int(self.train_scheduler.config.num_train_timesteps)
        uniform = torch.randint(0, n, (batch_size,), generator=g)
        picked = self._sampler_t[torch.randint(0, len(self._sampler_t), (batch_size,), generator=g)]
        at_sampler = torch.rand(batch_size, generator=g) < self.sampler_fraction
        return torch.where(at_sampler, picked, uniform).to(self.device)

    def loss(self, model, batch, g):
        return model.masked_loss(batch["latents"], batch["actions"], self.train_scheduler, generator=g,
                                 num_context=self.num_context, motion_weight=float(self.cfg.get("motion_weight") or 0.0),
                                 motion_threshold=float(self.cfg.get("motion_threshold", 0.01)),
                                 timesteps=self.train_timesteps(batch["latents"].shape[0], g),
                                 moving=batch.get("moving"))

    def world_model(self, diffusion, **overrides):
        from dataclasses import replace

        from sfplan.world_model.learned import SlowFastWorldModel

        return SlowFastWorldModel(self.vae, diffusion, self.train_scheduler, replace(self.wm_config, **overrides),
                                  device=self.device)

    @torch.no_grad()
    def sample(self, ema_model, step: int, out_dir: Path):
        """Imagine ``sample_horizon`` steps of a fixed held-out episode from its first
        context frames; real | imagined frames side by side."""
        from sfplan.eval.video_metrics import psnr
        from sfplan.video import side_by_side
        from sfplan.world_model.imagine import imagine_video

        src = self.val_ds if len(self.val_ds) else self.train_ds
        ctx = self.wm_config.context_frames
        i = next((j for j in range(len(src)) if int(src.lengths[j]) >= ctx), None)
        if i is None:
            return {}, {}, {}
        L = int(src.lengths[i])
        H = max(1, min(int(self.cfg.get("sample_horizon", 16)), L + 1 - ctx))
        real = src.read(i, 0, ctx + H)["pixels"]  # (ctx+H, H, W, 3)
        acts = src.read_actions(i)[ctx - 1: ctx - 1 + H]  # (H, A)
        was_training = ema_model.training
        wm = self.world_model(ema_model, return_frames="all")
        fake = imagine_video(wm, real[:ctx], acts)  # (H, H, W, 3)
        ema_model.train(was_training)
        video = side_by_side([real, np.concatenate([real[:ctx], fake])], ["real", "model"])
        p = psnr(fake, real[ctx:])
        logs = {"imagined_psnr": float(p.mean()), "imagined_psnr_last": float(p[-1])}
        strip = np.concatenate([np.concatenate(list(real[ctx:]), 1), np.concatenate(list(fake), 1)], 0)
        return logs, {"samples/real_vs_imagined": strip}, {"real_vs_imagined": video}

    def save_final(self, ema_model, directory: Path) -> dict:
        from sfplan.world_model.learned import trained_env_of

        wm = self.world_model(ema_model)
        wm.trained_env = trained_env_of(self.ds.meta["env_id"], self.ds.meta.get("env_kwargs") or {})
        sha = wm.save_pretrained(directory)
        planning = self._planning_of_init()
        if planning is not None:
            update_model_meta(directory, planning=planning)
        return {"checkpoint_sha256": sha}

    def _planning_of_init(self) -> dict | None:
        """The planning record (the cost a fit chose from how well its probe reads the true frames)
        of ``init_from``'s model dir, when this run keeps that dir's VAE: training the dynamics on
        from a fit's model (what its verdict advises) plans as the fit chose."""
        init = self.cfg.get("init_from")
        if not init or Path(str(self.cfg.vae)).expanduser().resolve() != Path(str(init)).expanduser().resolve():
            return None
        return read_model_meta(init).get("planning")

    def identity(self) -> dict:
        return {"stage": self.name, "model": _container(self.cfg.model),
                "clip_frames": self.cfg.get("clip_frames"),
                "data": str(Path(str(self.cfg.data.path)).expanduser().resolve()), "vae_sha256": self.vae_sha}

    def describe(self) -> dict:
        d = super().describe()
        d.update(vae=str(self.cfg.vae), latent_cache=str(self.cache.path), clip_frames=self.clip_frames,
                 train_clips=int(len(self._index["train"][0])), latent_shape=list(self.vae.latent_shape))
        return d


# ----------------------------------------------------------------------------- inverse dynamics
class _AttachedStage(_Stage):
    """A stage whose model also goes into a world model directory (``attach_to``): the IDM
    and the state probe. Subclasses set ``name``, ``subdir``, ``val_key`` and ``evaluate``."""

    subdir = val_key = "?"

    def _open(self, device: torch.device) -> None:
        """Dataset, frozen VAE; ``attach_to`` checked now, not after training: the model
        must read the latents of that world model's VAE."""
        self.device = device
        self.ds, self.train_ds, self.val_ds = open_dataset(self.cfg)
        self._load_vae(device)
        if self.cfg.get("attach_to"):
            _check_world_model_vae(self.cfg.attach_to, self.vae_sha, self.cfg.vae, self.name)

    def evaluate(self, model, split: str = "val") -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, ema_model, step: int, out_dir: Path):
        """Held-out metrics of ``evaluate`` (logged as sample/...)."""
        return self.evaluate(ema_model), {}, {}

    def save_final(self, ema_model, directory: Path) -> dict:
        from sfplan.io import save_pretrained_into

        ema_model.save_pretrained(str(directory), safe_serialization=True)
        out = {self.val_key: self.evaluate(ema_model)}
        if self.cfg.get("attach_to"):
            out["attached_to"] = str(save_pretrained_into(ema_model, self.cfg.attach_to, self.subdir))
        return out

    def identity(self) -> dict:
        return {"stage": self.name, "model": _container(self.cfg.model),
                "data": str(Path(str(self.cfg.data.path)).expanduser().resolve()), "vae_sha256": self.vae_sha}


class IdmStage(_AttachedStage):
    """InverseDynamicsModel on windows of cached latents (the frozen VAE's, as the world
    model imagines them) -> the action between the last two frames.

    A window ending at frame e with gap k holds frames e-(n-1)k, ..., e-k, e (indices before
    the episode start repeat frame 0, as the planner does with a short history); its
    target is the mean of actions e-k .. e-1, for every gap k in [1, max_gap].
    batch: {"latents": (B, n, C, h, w), "actions": (B, A), "gap": (B,)}."""

    name, subdir, val_key = "idm", "idm", "idm_val"

    def setup(self, device: torch.device, is_main: bool = True, wait=None) -> None:
        from sfplan.world_model.idm import IDMConfig

        cfg = self.cfg
        self._open(device)
        m = _container(cfg.model)
        for k in ("latent_channels", "latent_size", "action_dim"):
            if m.get(k) is not None:
                raise UserError(f"model.{k} is taken from the VAE and the data: leave it out")
            m.pop(k, None)
        C, h, w = self.vae.latent_shape
        icfg = IDMConfig(latent_channels=C, latent_size=h, action_dim=self.ds.action_dim,
                         **_dataclass_kwargs(IDMConfig, m, "model (stage=idm)"))
        self.model = icfg.build().to(device)
        self.model.set_action_normalizer(self.ds.meta["action_low"], self.ds.meta["action_high"])
        self._load_latents(is_main, wait)
        self.lat_all = self.cache.latents  # (N_frames, C, h, w) on the CPU
        self._windows = {split: self._window_index(self.cache.rows_of(sub.seeds), icfg)
                         for split, sub in (("train", self.train_ds), ("val", self.val_ds))}
        if len(self._windows["train"][0]) == 0:
            raise UserError(f"no training windows: the episodes in {self.ds.path} are shorter than max_gap="
                            f"{icfg.max_gap} steps; lower model.max_gap")
        if len(self._windows["val"][0]) == 0:
            self._windows["val"] = self._windows["train"]

    def _window_index(self, rows: list[int], icfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> frame indices (W, n) into lat_all, target actions (W, A), gaps (W,)."""
        fo, ao, acts = self.cache.frame_offsets, self.cache.action_offsets, self.cache.actions
        n = int(icfg.num_frames)
        fr, tg, gp = [], [], []
        for r in rows:
            f0, L, a0 = int(fo[r]), int(ao[r + 1] - ao[r]), int(ao[r])
            ep_acts = acts[a0: a0 + L]  # (L, A)
            csum = torch.cat([ep_acts.new_zeros(1, ep_acts.shape[1]), ep_acts.double().cumsum(0)])  # (L+1, A)
            for k in range(1, int(icfg.max_gap) + 1):
                e = torch.arange(k, L + 1)  # window end frames
                if len(e) == 0:
                    continue
                idx = (e[:, None] - k * torch.arange(n - 1, -1, -1)[None]).clamp_min(0)  # (W_k, n)
                fr.append(f0 + idx)
                tg.append(((csum[e] - csum[e - k]) / k).float())  # mean of actions e-k .. e-1
                gp.append(torch.full((len(e),), k, dtype=torch.int64))
        if not fr:
            A = int(acts.shape[1])
            return torch.zeros(0, n, dtype=torch.int64), torch.zeros(0, A), torch.zeros(0, dtype=torch.int64)
        return torch.cat(fr), torch.cat(tg), torch.cat(gp)

    def batch(self, g: torch.Generator, split: str = "train") -> dict:
        fr, tg, gp = self._windows[split]
        k = torch.randint(0, len(fr), (int(self.cfg.batch_size),), generator=g)
        return {"latents": self.lat_all[fr[k]].to(self.device, non_blocking=True),  # (B, n, C, h, w)
                "actions": tg[k].to(self.device, non_blocking=True),  # (B, A)
                "gap": gp[k].to(self.device, non_blocking=True)}  # (B,)

    @staticmethod
    def loss(model, batch, g):
        return model.loss(batch["latents"], batch["actions"], batch["gap"])

    @torch.no_grad()
    def evaluate(self, model, split: str = "val") -> dict[str, float]:
        """Held-out action MSE (env units and normalised) and R^2 per action dim, over up to
        ``val_windows`` windows of ``split`` (evenly spaced: the same ones every time)."""
        from sfplan.world_model.idm import action_metrics

        fr, tg, gp = self._windows[split]
        n = min(len(fr), int(self.cfg.get("val_windows") or 4096))
        sel = torch.linspace(0, len(fr) - 1, n).round().long()
        preds = []
        was_training = model.training
        model.eval()
        for i in range(0, n, 512):
            j = sel[i: i + 512]
            preds.append(model(self.lat_all[fr[j]].to(self.device), gp[j].to(self.device)).float().cpu())
        model.train(was_training)
        pred, target = torch.cat(preds), tg[sel]
        out = action_metrics(pred, target, prefix="action_")
        out["action_mse_normalized"] = float((model.normalize(pred.to(self.device)) -
                                             model.normalize(target.to(self.device))).pow(2).mean())
        return out

    def describe(self) -> dict:
        d = super().describe()
        d.update(vae=str(self.cfg.vae), latent_cache=str(self.cache.path), latent_shape=list(self.vae.latent_shape),
                 num_frames=int(self.model.config.num_frames), max_gap=int(self.model.config.max_gap),
                 train_windows=int(len(self._windows["train"][0])), val_windows=int(len(self._windows["val"][0])))
        return d


# ----------------------------------------------------------------------------- state probe
class ProbeStage(_AttachedStage):
    """StateProbe on cached latents -> the task's goal descriptor of each frame, labelled
    from the recorded simulator states (``env.goal_descriptor_of``). With ``imagined``, the
    world model also imagines one chunk from every ``imagined_stride``-th step of each
    training episode (2 context frames, the recorded actions) and those latents, labelled
    with the descriptor of the step they imagine, make up ``imagined_fraction`` of each
    batch: the probe learns to read the model's predictions, which is what it scores.
    batch: {"latents": (B, C, h, w), "targets": (B, D)}."""

    name, subdir, val_key = "probe", "probe", "probe_val"

    def setup(self, device: torch.device, is_main: bool = True, wait=None) -> None:
        from sfplan.world_model.probe import ProbeConfig

        cfg = self.cfg
        self._open(device)
        attach = cfg.get("attach_to")
        self._load_latents(is_main, wait)
        self.lat_all = self.cache.latents  # (N_frames, C, h, w) on the CPU
        self.targets = self._descriptors()  # (N_frames, D)
        m = _container(cfg.model)
        for k in ("latent_channels", "latent_size", "out_dim"):
            if m.get(k) is not None:
                raise UserError(f"model.{k} is taken from the VAE and the task: leave it out")
            m.pop(k, None)
        C, h, _ = self.vae.latent_shape
        pcfg = ProbeConfig(latent_channels=C, latent_size=h, out_dim=int(self.targets.shape[1]),
                           **_dataclass_kwargs(ProbeConfig, m, "model (stage=probe)"))
        self.model = pcfg.build().to(device)
        self.rows = {split: self._frames_of_rows(self.cache.rows_of(sub.seeds))
                     for split, sub in (("train", self.train_ds), ("val", self.val_ds))}
        if len(self.rows["val"]) == 0:
            self.rows["val"] = self.rows["train"]
        self.model.set_target_normalizer(self.targets[self.rows["train"]])
        self.imagined = {}
        if cfg.get("imagined"):
            wm_path = cfg.get("world_model") or attach
            if not wm_path:
                raise UserError("stage=probe imagined=true needs the world model to imagine with: pass attach_to=<world "
                                "model dir> (or world_model=<dir>), or set imagined=false")
            self.imagined = self._imagine(wm_path, progress=bool(cfg.progress) and is_main)

    def _descriptors(self) -> torch.Tensor:
        """Goal descriptor of every cached frame, from the dataset's recorded states -> (N_frames, D)."""
        from sfplan.world_model.probe import label_descriptors

        if list(self.cache.seeds.tolist()) != [int(x) for x in self.ds.seeds]:
            raise UserError(f"the latent cache {self.cache.path} does not match the dataset's episodes: delete it")

        def states():
            for i in range(len(self.ds)):
                st = self.ds.read(i, 0, int(self.ds.lengths[i]) + 1, states=True)["states"]
                if st is None:
                    raise UserError(f"episode {self.ds.seeds[i]} of {self.ds.path} has no recorded states (imported "
                                    f"data?): stage=probe labels frames from them; collect with `sfplan collect`")
                yield st

        out = label_descriptors(self.ds.meta, states())
        y = torch.as_tensor(np.concatenate(out), dtype=torch.float32)
        if len(y) != len(self.lat_all):
            raise UserError(f"{len(y)} recorded states but {len(self.lat_all)} cached frames: delete the latent cache "
                            f"{self.cache.path}")
        return y

    def _frames_of_rows(self, rows: list[int]) -> torch.Tensor:
        fo = self.cache.frame_offsets
        parts = [torch.arange(int(fo[r]), int(fo[r + 1])) for r in rows]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    @torch.no_grad()
    def _imagine(self, wm_path, progress: bool) -> dict:
        """One imagined chunk per start of each split's episodes -> {split: (latents (M, C, h, w),
        targets (M, D))}. The planner's imagination settings (bf16 where native)."""
        from sfplan.training.latent_cache import vae_fingerprint
        from sfplan.world_model.base import WorldState
        from sfplan.world_model.learned import load_world_model

        wm = load_world_model(str(wm_path), device=str(self.device), autocast="auto", cast_weights=True,
                              return_frames="all")
        if vae_fingerprint(wm.vae) != self.vae_sha:
            raise UserError(f"world model {wm_path} has another VAE than vae={self.cfg.vae}: pass vae={wm_path}")
        P, H = wm.context_frames, wm.chunk_size
        stride = int(self.cfg.imagined_stride)
        fo, ao, acts = self.cache.frame_offsets, self.cache.action_offsets, self.cache.actions
        out = {}
        for split, sub in (("train", self.train_ds), ("val", self.val_ds)):
            starts = []  # (first context frame index, first action index)
            for r in self.cache.rows_of(sub.seeds):
                L = int(ao[r + 1] - ao[r])
                starts += [(int(fo[r]) + t - P + 1, int(ao[r]) + t) for t in range(P - 1, L - H + 1, stride)]
            lat, tgt = [], []
            for i in range(0, len(starts), 64):
                f0 = torch.tensor([s[0] for s in starts[i: i + 64]])
                a0 = torch.tensor([s[1] for s in starts[i: i + 64]])
                ctx = self.lat_all[f0[:, None] + torch.arange(P)].to(wm.device)  # (b, P, C, h, w)
                a = acts[a0[:, None] + torch.arange(H)][:, None].to(wm.device)  # (b, 1, H, A)
                im = wm.imagine(WorldState(features=ctx[:, -1], context=ctx), a)  # (b, 1, H, C, h, w)
                lat.append(im.features[:, 0].flatten(0, 1).float().cpu())
                tgt.append(self.targets[f0[:, None] + P + torch.arange(H)].flatten(0, 1))  # the imagined steps
                if progress and (i // 64) % 20 == 0:
                    print(f"probe: imagined {split} {i + len(f0)}/{len(starts)} chunks", file=sys.stderr)
            if lat:
                out[split] = (torch.cat(lat), torch.cat(tgt))
        if "val" not in out and "train" in out:
            out["val"] = out["train"]
        return out

    def batch(self, g: torch.Generator, split: str = "train") -> dict:
        B = int(self.cfg.batch_size)
        n_im = int(round(B * float(self.cfg.imagined_fraction))) if split in self.imagined else 0
        rows = self.rows[split]
        k = rows[torch.randint(0, len(rows), (B - n_im,), generator=g)]
        lat, tgt = self.lat_all[k], self.targets[k]
        if n_im:
            il, it = self.imagined[split]
            j = torch.randint(0, len(il), (n_im,), generator=g)
            lat, tgt = torch.cat([lat, il[j]]), torch.cat([tgt, it[j]])
        return {"latents": lat.to(self.device, non_blocking=True), "targets": tgt.to(self.device, non_blocking=True)}

    @staticmethod
    def loss(model, batch, g):
        return model.loss(batch["latents"], batch["targets"])

    @torch.no_grad()
    def evaluate(self, model, split: str = "val") -> dict[str, float]:
        """Descriptor error (task units) on up to ``val_frames`` real (and imagined) frames of ``split``."""
        from sfplan.world_model.probe import descriptor_errors

        was_training = model.training
        model.eval()
        n = int(self.cfg.get("val_frames") or 8192)
        sets = {"real_": (self.lat_all, self.targets, self.rows[split])}
        if split in self.imagined:
            il, it = self.imagined[split]
            sets["imagined_"] = (il, it, torch.arange(len(il)))
        out = {}
        for prefix, (lat, tgt, idx) in sets.items():
            sel = idx[torch.linspace(0, len(idx) - 1, min(n, len(idx))).round().long()]
            pred = torch.cat([model(lat[sel[i: i + 1024]].to(self.device)).float().cpu()
                              for i in range(0, len(sel), 1024)])
            out.update(descriptor_errors(pred, tgt[sel], prefix))
        model.train(was_training)
        return out

    def identity(self) -> dict:
        return {**super().identity(), "imagined": bool(self.cfg.get("imagined"))}

    def describe(self) -> dict:
        d = super().describe()
        d.update(vae=str(self.cfg.vae), vae_sha256=self.vae_sha, latent_cache=str(self.cache.path),
                 descriptor_dim=int(self.targets.shape[1]),
                 train_frames=int(len(self.rows["train"])), val_frames=int(len(self.rows["val"])),
                 imagined_frames={k: int(len(v[0])) for k, v in self.imagined.items()})
        return d


# ----------------------------------------------------------------------------- one-step distillation
class DistillStage(DynamicsStage):
    """The one-step student of a world model (``sfplan.world_model.one_step``): LoRA on its
    denoiser, trained so that one call from pure noise returns what the model's own
    ``num_steps``-step sampler returns from the same noise, context and actions (on clips of
    the training data: context latents and the recorded actions). The loss is the motion-
    weighted latent MSE of ``masked_loss``: the moving object is what planning reads.

    batch: {"latents": (B, T, C, h, w), "actions": (B, T-1, A)} with T = context + chunk."""

    name = "distill"
    motion_mask = "latent"  # motion read off the teacher's own chunk, which the data's frames do not show

    def setup(self, device: torch.device, is_main: bool = True, wait=None) -> None:
        import copy

        from sfplan.world_model.learned import SlowFastWorldModel
        from sfplan.world_model.one_step import OneStepConfig, add_adapter

        self.device = device
        cfg = self.cfg
        if not cfg.get("attach_to"):
            raise UserError("stage=distill distils a trained world model: pass attach_to=<world model dir> (the "
                            "one-step adapter is written into it)")
        self.ds, self.train_ds, self.val_ds = open_dataset(cfg)
        wm = SlowFastWorldModel.from_pretrained(cfg.attach_to, device=device)
        if wm.config.num_steps < 2:
            raise UserError(f"{cfg.attach_to} samples with num_steps={wm.config.num_steps}: the teacher must take "
                            f"2 or more steps (its world_model.json num_steps)")
        self.wm = wm
        self.vae = wm.vae.requires_grad_(False)  # the latent cache is of this VAE
        if self.vae.config.image_size != self.ds.image_size:
            raise UserError(f"{cfg.attach_to} works on {self.vae.config.image_size}px frames but {self.ds.path} "
                            f"holds {self.ds.image_size}px: distil on the data the model was trained on")
        if wm.diffusion.config.action_dim != self.ds.action_dim:
            raise UserError(f"{cfg.attach_to} takes {wm.diffusion.config.action_dim}-d actions but {self.ds.path} "
                            f"holds {self.ds.action_dim}-d: distil on the data the model was trained on")
        self.teacher = wm.diffusion.eval().requires_grad_(False)
        self.train_scheduler = wm.train_scheduler
        self.adapter = OneStepConfig(**_dataclass_kwargs(OneStepConfig, _container(cfg.model), "model"))
        self.model = copy.deepcopy(self.teacher)
        add_adapter(self.model, self.adapter, seed=int(cfg.seed))
        self.clip_frames = wm.context_frames + wm.chunk_size
        self._load_latents(is_main, wait)
        self._index_clips("distil on the data the model was trained on")

    def _split(self, batch: dict, g: torch.Generator):
        """A batch -> (context (B, f_p, C, h, w), actions (B, K, A), noise (B, K, C, h, w))."""
        P, K = self.wm.context_frames, self.wm.chunk_size
        lat = batch["latents"]
        noise = torch.randn((lat.shape[0], K, *lat.shape[2:]), generator=g).to(lat.device)
        return lat[:, :P], batch["actions"][:, P - 1: P - 1 + K], noise

    @torch.no_grad()
    def teacher_sample(self, context, actions, noise) -> torch.Tensor:
        from sfplan.world_model.sampler import sample_chunk

        return sample_chunk(self.teacher, context, actions, self.wm.config.num_steps, self.wm.scheduler, noise=noise)

    def loss(self, model, batch, g):
        from sfplan.world_model.one_step import one_step_x0
        from sfplan.world_model.video_diffusion import motion_mask

        ctx, acts, noise = self._split(batch, g)
        target = self.teacher_sample(ctx, acts, noise)  # (B, K, C, h, w)
        x0 = one_step_x0(model, ctx, acts, noise, self.train_scheduler)
        err = (x0 - target.float()).pow(2)
        mw = float(self.cfg.get("motion_weight") or 0.0)
        moving = motion_mask(torch.cat([ctx, target], 1), float(self.cfg.get("motion_threshold", 0.01)))
        w = 1.0 + mw * moving[:, ctx.shape[1]:]  # (B, K, 1, h, w)
        loss = (err * w).sum() / (w.sum() * err.shape[2])
        return loss, {"loss": loss.item(), "mse": err.mean().item()}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """On ``val_clips`` held-out clips (fixed noise): latent MSE to the true chunk of the student
        (one call), the teacher (its steps) and the teacher in one call, and the student's MSE
        to the teacher; with the model's probe, the same as state errors (task units) of the
        chunk's last frame."""
        from sfplan.world_model.one_step import one_step_x0

        was = model.training
        model.eval()
        g = torch.Generator().manual_seed(1234)
        fs, as_ = self._index["val"]
        sel = torch.linspace(0, len(fs) - 1, min(int(self.cfg.val_clips), len(fs))).round().long()
        probe = self.wm.probe
        acc: dict[str, list[float]] = {}
        T = self.clip_frames
        for i in range(0, len(sel), 64):
            k = sel[i: i + 64]
            batch = {"latents": self.lat_all[fs[k][:, None] + torch.arange(T)].to(self.device),
                     "actions": self.act_all[as_[k][:, None] + torch.arange(T - 1)].to(self.device)}
            ctx, acts, noise = self._split(batch, g)
            truth = batch["latents"][:, ctx.shape[1]:]
            runs = {"student": one_step_x0(model, ctx, acts, noise, self.train_scheduler),
                    "teacher": self.teacher_sample(ctx, acts, noise),
                    "teacher_1step": one_step_x0(self.teacher, ctx, acts, noise, self.train_scheduler)}
            for name, x in runs.items():
                acc.setdefault(f"{name}_mse", []).append((x.float() - truth).pow(2).mean().item())
                if probe is not None:
                    err = (probe(x[:, -1].float()) - probe(truth[:, -1])).norm(dim=-1).mean().item()
                    acc.setdefault(f"{name}_state_error", []).append(err)
            for name in ("student", "teacher_1step"):
                acc.setdefault(f"{name}_to_teacher_mse", []).append(
                    (runs[name] - runs["teacher"]).pow(2).mean().item())
        model.train(was)
        return {k: float(np.mean(v)) for k, v in acc.items()}

    def sample(self, ema_model, step: int, out_dir: Path):
        return self.evaluate(ema_model), {}, {}

    def save_final(self, ema_model, directory: Path) -> dict:
        from sfplan.world_model.one_step import save_adapter

        val = self.evaluate(ema_model)
        meta = {"teacher_steps": int(self.wm.config.num_steps), "teacher_sampler": self.wm.config.sampler,
                "steps": int(self.cfg.steps), "held_out": val}
        save_adapter(ema_model, self.adapter, directory, meta)
        return {"distill_val": val, "attached_to": str(save_adapter(ema_model, self.adapter, self.cfg.attach_to, meta))}

    def _teacher_sha256(self) -> str:
        """The teacher's diffusion weights (not its dir's: the student written into it changes that)."""
        from sfplan.training.checkpoint import sha256_file

        return sha256_file(Path(str(self.cfg.attach_to)).expanduser() / "diffusion" /
                           "diffusion_pytorch_model.safetensors")

    def identity(self) -> dict:
        return {"stage": self.name, "model": _container(self.cfg.model), "teacher": self._teacher_sha256(),
                "data": str(Path(str(self.cfg.data.path)).expanduser().resolve())}

    def describe(self) -> dict:
        d = _Stage.describe(self)
        d.update(attach_to=str(self.cfg.attach_to), latent_cache=str(self.cache.path), clip_frames=self.clip_frames,
                 teacher_diffusion_sha256=self._teacher_sha256(),
                 train_clips=int(len(self._index["train"][0])), teacher_steps=int(self.wm.config.num_steps),
                 adapter_parameters=int(sum(p.numel() for p in self.model.parameters() if p.requires_grad)))
        return d


STAGES = {"vae": VaeStage, "dynamics": DynamicsStage, "idm": IdmStage, "probe": ProbeStage, "distill": DistillStage}
