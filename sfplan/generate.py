"""`sfplan generate`: roll out a long video with the learned world model, chunk by chunk.

Usage::

    sfplan generate model=outputs/train/Reacher-v0-dynamics/model data=data/Reacher-v0 episode=3
    sfplan generate                  # the shipped Reacher model on a fresh simulated episode (seed 100000)
    sfplan generate model=PATH image=start.png actions=actions.npy      # any start image
    sfplan generate model=PATH data=PATH episode=0 horizon=48 num_steps=4 out_dir=outputs/gen
    sfplan generate model=PATH data=PATH episode=0 memory=temp_lora       # with Temp-LoRA memory

From a dataset episode, the model starts from the episode's first ``context_frames``
ground-truth frames (default 1: the start frame), gets the episode's recorded actions and
imagines ``horizon`` steps (default: to the end of the episode) autoregressively, one
``chunk_size`` chunk per sampler call, each chunk conditioned on the latest imagined
frames. Written to ``out_dir``:

- ``video.mp4`` and ``video.gif``: ground truth | model side by side (model only for
  ``image=``), upscaled ``scale`` x;
- ``frames.npz``: ``generated`` (H, S, S, 3) uint8 (and ``ground_truth``);
- with ``memory=temp_lora``: every chunk (with its clean context) is written into
  Temp-LoRA fast weights before the next is imagined (``imagine_video_with_memory``);
  ``metrics.json`` then reports the memory's settings and its write time per chunk;
- ``metrics.json``: PSNR and SSIM per horizon step for the model and for the copy-last-
  frame baseline (the last known frame held still), their means over the rollout and
  per chunk; PSNR is capped at 100 dB (identical frames) so means stay finite.

A short table of the same numbers is printed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sfplan.errors import UserError
from sfplan.video import side_by_side, write_video
from sfplan.world_model.imagine import imagine_video, imagine_video_with_memory

PSNR_CAP_DB = 100.0
DEFAULT_ENV = "sfplan/Reacher-v0"  # with neither model= nor env.id=: the default shipped model and its env


# ----------------------------------------------------------------------------- helpers
def _cap(x: list[float]) -> list[float]:
    return [min(float(v), PSNR_CAP_DB) for v in x]


def frame_metrics(pred: np.ndarray, truth: np.ndarray, baseline: np.ndarray) -> dict:
    """Per-step PSNR/SSIM of ``pred`` and ``baseline`` against ``truth`` (each (K, H, W, 3))."""
    from sfplan.eval.video_metrics import psnr, ssim

    out = {}
    for name, x in (("model", pred), ("copy_last", baseline)):
        out[name] = {"psnr": _cap(psnr(x, truth).tolist()), "ssim": [float(v) for v in ssim(x, truth).tolist()]}
    return out


def format_table(per: dict, steps: list[int], chunk: int) -> str:
    """Rows at horizons 1, 2, 4, ... and the last step, then the means."""
    K = len(steps)
    show = sorted({k for k in [2**i for i in range(12)] if k <= K} | {K} | set(range(chunk, K + 1, chunk)))
    lines = [f"{'step':>6} | {'PSNR model':>10} {'copy-last':>10} | {'SSIM model':>10} {'copy-last':>10}",
             "-" * 58]
    m, b = per["model"], per["copy_last"]
    for k in show:
        i = k - 1
        lines.append(f"{k:>6} | {m['psnr'][i]:>10.2f} {b['psnr'][i]:>10.2f} | {m['ssim'][i]:>10.4f} "
                     f"{b['ssim'][i]:>10.4f}")
    lines.append("-" * 58)
    lines.append(f"{'mean':>6} | {np.mean(m['psnr']):>10.2f} {np.mean(b['psnr']):>10.2f} | "
                 f"{np.mean(m['ssim']):>10.4f} {np.mean(b['ssim']):>10.4f}")
    return "\n".join(lines)


def _load_image(path: str, size: int) -> np.ndarray:
    import imageio.v3 as iio

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no image at {p}: pass image=<a PNG/JPEG of the task's camera>")
    img = np.asarray(iio.imread(p))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.shape[:2] != (size, size):
        from PIL import Image

        print(f"note: resizing {p.name} from {img.shape[1]}x{img.shape[0]} to the model's {size}x{size}")
        img = np.array(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return img


def _load_actions(path: str, action_dim: int) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no actions at {p}: pass actions=<a .npy of shape (steps, {action_dim})>")
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:
        raise UserError(f"cannot read actions {p} ({type(e).__name__}): save them with numpy.save as a "
                        f"(steps, {action_dim}) float array") from None
    if a.ndim != 2 or a.shape[1] != action_dim or len(a) < 1:
        raise UserError(f"actions in {p} have shape {a.shape}; the model needs (steps, {action_dim})")
    return a.astype(np.float32)


# ----------------------------------------------------------------------------- command
def simulate_episode(task: str, seed: int, frames: int, size: int, action_dim: int, env_kwargs: dict | None = None):
    """Reset ``task`` at ``seed`` and drive it with correlated random actions (the
    collection policy) -> (frames (T, S, S, 3) uint8, actions (T - 1, A)), T <= ``frames``:
    the truth a model's rollout from ``frames[:ctx]`` is scored against. ``env_kwargs``:
    the env settings the model was trained with (e.g. PointMaze's ``frame_skip``)."""
    from sfplan.data.policies import CorrelatedPolicy
    from sfplan.envs import TASKS, make_env

    kwargs = dict(env_kwargs or {})
    if task in TASKS:
        kwargs["image_size"] = size
    env = make_env(task, **kwargs)
    try:
        if env.action_space.shape != (action_dim,):
            raise UserError(f"env {task} has actions of shape {env.action_space.shape}, the model {action_dim}-d: "
                            f"pass env.id=<the model's env>")
        obs, info = env.reset(seed=seed)
        if obs["pixels"].shape[0] != size:
            raise UserError(f"env {task} renders {obs['pixels'].shape[0]}x{obs['pixels'].shape[0]} frames, the model "
                            f"works at {size}x{size}: make the env at image_size={size}")
        policy = CorrelatedPolicy()
        policy.reset(env, np.random.default_rng(seed))
        pix, acts = [obs["pixels"]], []
        while len(pix) < frames:
            a = policy.act(obs, info)
            obs, _, terminated, truncated, info = env.step(a)
            pix.append(obs["pixels"])
            acts.append(a)
            if terminated or truncated:
                break
    finally:
        env.close()
    return np.stack(pix), np.stack(acts).astype(np.float32)


@dataclass
class _Start:
    """Where a generation starts: context frames (T, S, S, 3) uint8, the actions (H, A) to
    imagine, the ground truth (H, S, S, 3) to score against (None for a bare image), what it
    came from (``source`` in metrics.json) and a name for the output folder."""

    context: np.ndarray
    actions: np.ndarray
    truth: np.ndarray | None
    source: dict
    name: str


def run_generate(cfg: DictConfig) -> dict:
    """`sfplan generate` (config ``configs/generate.yaml``); returns the metrics dict."""
    from sfplan.device import resolve_device

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    wm, model_dir = _load_model(cfg, device)
    ctx_n = int(cfg.context_frames or 1)
    if not 1 <= ctx_n <= wm.context_frames:
        raise UserError(f"context_frames={ctx_n} must be in [1, {wm.context_frames}] (the model's context)")
    if cfg.get("image"):
        start, ctx_n = _start_from_image(cfg, wm), 1
    elif cfg.get("data"):
        start = _start_from_dataset(cfg, wm, ctx_n)
    else:
        start = _start_from_simulator(cfg, wm, ctx_n)
    memory = _attach_memory(cfg, wm, start.truth)
    out = Path(cfg.out_dir) if cfg.get("out_dir") else Path("outputs/generate") / (
        f"{time.strftime('%Y%m%d-%H%M%S')}_{start.name}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mem_info = None
    if memory is None:
        gen = imagine_video(wm, start.context, start.actions)  # (H, S, S, 3)
    else:
        gen, mem_info = imagine_video_with_memory(wm, start.context, start.actions, start.truth)  # (H, S, S, 3), logs
    wall = time.perf_counter() - t0
    H = len(gen)
    _write_videos(out, start, gen, int(cfg.scale), int(cfg.fps))
    result = {
        "model": str(model_dir), "checkpoint_sha256": wm.checkpoint_sha256, "source": start.source,
        "context_frames": ctx_n, "horizon": H, "chunk_size": wm.chunk_size,
        "sampler": wm.config.sampler, "num_steps": wm.config.num_steps, "guidance_scale": wm.config.guidance_scale,
        "seed": int(cfg.seed), "device": str(device), "wall_s": wall, "frames_per_s": H / wall if wall > 0 else None,
        "psnr_cap_db": PSNR_CAP_DB, "out_dir": str(out),
        "files": {"mp4": "video.mp4", "gif": "video.gif", "frames": "frames.npz"},
        "memory": None if memory is None else {"kind": "temp_lora", "config": asdict(memory.config),
                                               **mem_info},
    }
    if start.truth is not None:
        result.update(_scores(gen, start.truth, start.context, wm.chunk_size))
    from sfplan.paths import portable

    (out / "metrics.json").write_text(json.dumps(portable(result), indent=2) + "\n")
    return result


def _load_model(cfg: DictConfig, device: torch.device):
    """The world model of ``model=`` (a model dir or a training run dir), or the one shipped for
    ``env.id``, with ``cfg``'s sampling overrides -> (SlowFastWorldModel, its directory)."""
    from sfplan.world_model.learned import SlowFastWorldModel

    overrides = {k: cfg[k] for k in ("chunk_size", "num_steps", "sampler", "guidance_scale") if cfg.get(k) is not None}
    if cfg.get("model"):
        model_dir = Path(str(cfg.model)).expanduser()
    else:  # the model shipped for the env
        from sfplan.models import shipped_model_path

        model_dir = shipped_model_path(str(cfg.env.get("id") or DEFAULT_ENV))
    if not (model_dir / "world_model.json").is_file() and (model_dir / "model" / "world_model.json").is_file():
        model_dir = model_dir / "model"  # a training run directory
    wm = SlowFastWorldModel.from_pretrained(model_dir, device=device, return_frames="all",
                                            noise_seed=int(cfg.seed), **overrides)
    return wm, model_dir


def _start_from_image(cfg: DictConfig, wm) -> _Start:
    """``image=`` (one start frame, resized to the model's) and ``actions=`` (a .npy); no truth."""
    if cfg.get("data"):
        raise UserError("pass either data=PATH episode=K or image=PNG actions=NPY, not both")
    A = int(wm.diffusion.config.action_dim)
    if not cfg.get("actions"):
        raise UserError(f"image= needs actions=<.npy of shape (steps, {A})>")
    context = _load_image(str(cfg.image), int(wm.vae.config.image_size))[None]  # (1, S, S, 3)
    actions = _load_actions(str(cfg.actions), A)
    if cfg.get("horizon"):
        actions = actions[: int(cfg.horizon)]
    return _Start(context, actions, None, {"image": str(cfg.image), "actions": str(cfg.actions)},
                  Path(str(cfg.image)).stem)


def _start_from_dataset(cfg: DictConfig, wm, ctx_n: int) -> _Start:
    """Episode ``episode`` of the dataset ``data=``: its first ``ctx_n`` frames, its recorded
    actions and frames after them (``horizon`` steps, default to the episode's end)."""
    from sfplan.data import EpisodeDataset

    size, A = int(wm.vae.config.image_size), int(wm.diffusion.config.action_dim)
    ds = EpisodeDataset(Path(str(cfg.data)).expanduser())
    if ds.image_size != size:
        raise UserError(f"dataset {ds.path} holds {ds.image_size}x{ds.image_size} frames, the model works at "
                        f"{size}x{size}: use a dataset collected at image_size={size}")
    if ds.action_dim != A:
        raise UserError(f"dataset {ds.path} has {ds.action_dim}-d actions, the model {A}-d")
    k = int(cfg.episode)
    if not -len(ds) <= k < len(ds):
        raise UserError(f"episode={k} is out of range: {ds.path} holds {len(ds)} episodes (0..{len(ds) - 1})")
    ep = ds[k]
    L = ep.length
    if L < ctx_n:
        raise UserError(f"episode {k} has {L} steps, fewer than context_frames={ctx_n}")
    H = L + 1 - ctx_n if not cfg.get("horizon") else min(int(cfg.horizon), L + 1 - ctx_n)
    _, val = ds.split(float(cfg.val_fraction), salt=int(cfg.split_salt))
    source = {"data": str(ds.path), "episode": k, "seed": int(ep.seed), "held_out": int(ep.seed) in
              set(val.seeds.tolist()), "val_fraction": float(cfg.val_fraction)}
    start = _Start(ep.pixels[:ctx_n], ep.actions[ctx_n - 1: ctx_n - 1 + H], ep.pixels[ctx_n: ctx_n + H], source,
                   f"{ds.path.name}_ep{k}")
    ds.close()
    return start


def _start_from_simulator(cfg: DictConfig, wm, ctx_n: int) -> _Start:
    """A fresh episode of the task (``env.id``, else the model's own) at ``episode_seed``, under
    correlated random actions: the truth is what the simulator renders."""
    H = int(cfg.get("horizon") or 48)
    trained = getattr(wm, "trained_env", None) or {}
    task = str(cfg.env.get("id") or trained.get("id") or DEFAULT_ENV)
    env_kwargs = {**(trained.get("kwargs") or {}), **dict(cfg.env.get("kwargs") or {})} \
        if trained.get("id") == task else dict(cfg.env.get("kwargs") or {})
    frames, actions = simulate_episode(task, int(cfg.episode_seed), ctx_n + H, int(wm.vae.config.image_size),
                                       int(wm.diffusion.config.action_dim), env_kwargs)
    return _Start(frames[:ctx_n], actions[ctx_n - 1:], frames[ctx_n:],
                  {"task": task, "seed": int(cfg.episode_seed), "policy": "correlated"},
                  f"{task.split('/')[-1].replace(':', '_')}_seed{int(cfg.episode_seed)}")


def _attach_memory(cfg: DictConfig, wm, truth: np.ndarray | None):
    """``memory=temp_lora``: Temp-LoRA on the model, written with every chunk as it goes; None
    without. ``memory.write=real`` writes the ground truth, so it needs one."""
    mem_cfg = cfg.get("memory")
    if mem_cfg is None or not mem_cfg.get("_target_"):
        return None
    from sfplan.memory.temp_lora import TempLoRAConfig

    try:
        memory = wm.attach_memory(TempLoRAConfig.from_any(mem_cfg))
    except ValueError as e:
        raise UserError(f"memory: {e}") from None
    if memory.write_mode == "real" and truth is None:
        raise UserError("memory.write=real writes the ground-truth frames: start from a dataset episode "
                        "(data=<dataset> episode=K), or use memory.write=generated")
    return memory


def _write_videos(out: Path, start: _Start, gen: np.ndarray, scale: int, fps: int) -> None:
    """video.mp4 and video.gif (ground truth | model side by side, or the model alone) and
    frames.npz (``generated``, ``context``, ``ground_truth``)."""
    context, truth = start.context, start.truth
    if truth is not None:
        video = side_by_side([np.concatenate([context, truth]), np.concatenate([context, gen])],
                             ["ground truth", "model"], scale=scale)
    else:
        video = side_by_side([np.concatenate([context, gen])], ["model"], scale=scale)
    write_video(out / "video.mp4", video, fps)
    write_video(out / "video.gif", video, fps)
    np.savez_compressed(out / "frames.npz", generated=gen, context=context,
                        **({"ground_truth": truth} if truth is not None else {}))


def _scores(gen: np.ndarray, truth: np.ndarray, context: np.ndarray, chunk: int) -> dict:
    """PSNR/SSIM of the model and of the copy-last-frame baseline per step (``per_step``), their
    means over the rollout and per chunk (``summary``), and the printed ``table``."""
    H = len(gen)
    per = frame_metrics(gen, truth, np.repeat(context[-1:], H, axis=0))
    summary = {
        name: {"psnr_mean": float(np.mean(v["psnr"])), "ssim_mean": float(np.mean(v["ssim"])),
               "psnr_per_chunk": [float(np.mean(v["psnr"][i:i + chunk])) for i in range(0, H, chunk)],
               "ssim_per_chunk": [float(np.mean(v["ssim"][i:i + chunk])) for i in range(0, H, chunk)]}
        for name, v in per.items()}
    return {"per_step": {"step": list(range(1, H + 1)), **per}, "summary": summary,
            "table": format_table(per, list(range(1, H + 1)), chunk)}


__all__ = ["run_generate", "frame_metrics", "format_table"]
