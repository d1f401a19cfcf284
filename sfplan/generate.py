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
  Temp-LoRA fast weights before the next is imagined (``rollout_with_memory``);
  ``metrics.json`` then reports the memory's settings and its write time per chunk;
- ``metrics.json``: PSNR and SSIM per horizon step for the model and for the copy-last-
  frame baseline (the last known frame held still), their means over the rollout and
  per chunk; PSNR is capped at 100 dB (identical frames) so means stay finite.

A short table of the same numbers is printed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sfplan.errors import UserError

PSNR_CAP_DB = 100.0
DEFAULT_ENV = "sfplan/Reacher-v0"  # with neither model= nor env.id=: the default shipped model and its env


# ----------------------------------------------------------------------------- helpers
@torch.no_grad()
def rollout(wm, context: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Imagine len(actions) steps after the context frames.

    wm: SlowFastWorldModel with ``return_frames="all"``. context: (T, H, W, 3) uint8 real
    frames (the last is "now"; the model keeps its last ``context_frames``). actions:
    (K, A); ``actions[k]`` yields imagined frame k. Returns (K, H, W, 3) uint8."""
    if wm.config.return_frames != "all":
        raise ValueError("rollout needs a world model with return_frames='all'")
    state = wm.encode(np.asarray(context)[None])  # context (1, T', C, h, w)
    acts = torch.as_tensor(np.asarray(actions, np.float32))[None, None]  # (1, 1, K, A)
    im = wm.imagine(state, acts)  # features (1, 1, K, C, h, w)
    return wm.decode(im.features[0, 0]).numpy()  # (K, H, W, 3)


@torch.no_grad()
def rollout_with_memory(wm, context: np.ndarray, actions: np.ndarray,
                        truth: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """``rollout`` chunk by chunk, writing each chunk into ``wm.memory`` (Temp-LoRA) before
    the next one is imagined. The memory is taken as it is (``wm.reset_memory()`` first
    for a fresh episode).

    What is written follows ``wm.memory.config.write``: ``generated`` (the imagined chunk,
    as in the paper) or ``real`` (the ground-truth frames ``truth`` (K, H, W, 3) of the
    chunk). The first write carries the encoded real context in front of the chunk; later
    writes take their clean context from the memory's buffer. The last chunk is not written
    (nothing imagines after it). The noise is drawn from one generator seeded with
    ``noise_seed`` across the chunks, so with the memory disabled (or never written) the
    frames equal ``rollout``'s. Returns (frames (K, H, W, 3) uint8, info: per-write logs
    and times)."""
    from sfplan.world_model.base import WorldState

    mem = wm.memory
    if mem is None:
        raise ValueError("rollout_with_memory needs a world model with a memory (wm.attach_memory(...))")
    if wm.config.return_frames != "all":
        raise ValueError("rollout_with_memory needs a world model with return_frames='all'")
    mode = mem.config.write
    if mode == "real" and truth is None:
        raise UserError("memory.write=real writes the ground-truth frames: start from a dataset episode "
                        "(data=<dataset> episode=K), or use memory.write=generated")
    acts = torch.as_tensor(np.asarray(actions, np.float32))  # (K, A)
    K = acts.shape[0]
    state = wm.encode(np.asarray(context)[None])  # context (1, T', C, h, w)
    mem.prime(state.context[0])  # the real context: in front of the first written chunk
    real = wm.vae.encode(np.asarray(truth)) if mode == "real" else None  # (K, C, h, w)
    gen = torch.Generator("cpu").manual_seed(int(wm.config.noise_seed))
    lats, writes = [], []
    t_imagine = 0.0
    for s in range(0, K, wm.chunk_size):
        k = min(wm.chunk_size, K - s)
        t0 = time.perf_counter()
        z = wm.imagine(state, acts[None, None, s: s + k], generator=gen).features[0, 0]  # (k, C, h, w)
        t_imagine += time.perf_counter() - t0
        lats.append(z)
        if s + k < K:  # the chunk and its actions; the memory puts the frame it holds last in front
            new = z if mode == "generated" else real[s: s + k].to(z.device)
            writes.append(mem.write(new, actions=acts[s: s + k]))
        nxt = torch.cat([state.context.to(z.device), z[None]], dim=1)[:, -wm.context_frames:]  # (1, T', C, h, w)
        state = WorldState(features=nxt[:, -1], context=nxt)
    frames = wm.decode(torch.cat(lats)).numpy()  # (K, H, W, 3)
    wt = [w["time_s"] for w in writes]
    info = {"write": mode, "writes": len(writes), "write_s_total": float(sum(wt)),
            "write_s_per_chunk": float(np.mean(wt)) if wt else 0.0, "imagine_s": t_imagine,
            "write_loss_first": [w["loss_first"] for w in writes], "write_loss_last": [w["loss_last"] for w in writes],
            "lora_parameters": mem.num_parameters, "state_bytes": mem.state_bytes()}
    return frames, info


def _label(width: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, 12), (0, 0, 0))
    ImageDraw.Draw(img).text((2, 0), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(img)


def side_by_side(columns: list[np.ndarray], labels: list[str] | None = None, scale: int = 1,
                 gap: int = 2) -> np.ndarray:
    """columns: each (T_i, H, W, 3) uint8 -> (T, H', W', 3) video with the columns side
    by side (shorter ones hold their last frame), upscaled ``scale`` x, labels on top."""
    T = max(len(c) for c in columns)
    cols = []
    for c in columns:
        c = np.asarray(c)
        if len(c) < T:
            c = np.concatenate([c, np.repeat(c[-1:], T - len(c), axis=0)])
        c = c.repeat(scale, axis=1).repeat(scale, axis=2)
        cols.append(c)
    if labels:
        cols = [np.concatenate([np.broadcast_to(_label(c.shape[2], lab), (T, 12, c.shape[2], 3)), c], axis=1)
                for c, lab in zip(cols, labels)]
    sep = np.full((T, cols[0].shape[1], gap, 3), 255, np.uint8)
    parts = []
    for i, c in enumerate(cols):
        parts += [c] if i == 0 else [sep, c]
    return np.concatenate(parts, axis=2)


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """(T, H, W, 3) uint8 -> mp4 (H.264, dims padded to even) or gif, by suffix (imageio v3)."""
    import imageio.v3 as iio

    path = Path(path)
    frames = np.ascontiguousarray(frames)
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
        return
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
    iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)


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


def run_generate(cfg: DictConfig) -> dict:
    """`sfplan generate` (config ``configs/generate.yaml``); returns the metrics dict."""
    from sfplan.device import resolve_device
    from sfplan.world_model.learned import SlowFastWorldModel

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    overrides = {k: cfg[k] for k in ("chunk_size", "num_steps", "sampler", "guidance_scale") if cfg.get(k) is not None}
    env_id = cfg.env.get("id")
    if cfg.get("model"):
        model_dir = Path(str(cfg.model)).expanduser()
    else:  # the model shipped for the env
        from sfplan.models import shipped_model_path

        model_dir = shipped_model_path(str(env_id or DEFAULT_ENV))
    if not (model_dir / "world_model.json").is_file() and (model_dir / "model" / "world_model.json").is_file():
        model_dir = model_dir / "model"  # a training run directory
    wm = SlowFastWorldModel.from_pretrained(model_dir, device=device, return_frames="all",
                                            noise_seed=int(cfg.seed), **overrides)
    size = int(wm.vae.config.image_size)
    A = int(wm.diffusion.config.action_dim)
    ctx_n = int(cfg.context_frames or 1)
    if not 1 <= ctx_n <= wm.context_frames:
        raise UserError(f"context_frames={ctx_n} must be in [1, {wm.context_frames}] (the model's context)")
    truth = None
    source: dict = {}
    if cfg.get("image"):
        if cfg.get("data"):
            raise UserError("pass either data=PATH episode=K or image=PNG actions=NPY, not both")
        if not cfg.get("actions"):
            raise UserError(f"image= needs actions=<.npy of shape (steps, {A})>")
        context = _load_image(str(cfg.image), size)[None]  # (1, S, S, 3)
        actions = _load_actions(str(cfg.actions), A)
        ctx_n = 1
        if cfg.get("horizon"):
            actions = actions[: int(cfg.horizon)]
        source = {"image": str(cfg.image), "actions": str(cfg.actions)}
        name = Path(str(cfg.image)).stem
    elif cfg.get("data"):
        from sfplan.data import EpisodeDataset

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
        context = ep.pixels[:ctx_n]
        actions = ep.actions[ctx_n - 1: ctx_n - 1 + H]
        truth = ep.pixels[ctx_n: ctx_n + H]
        _, val = ds.split(float(cfg.val_fraction), salt=int(cfg.split_salt))
        held_out = int(ep.seed) in set(val.seeds.tolist())
        source = {"data": str(ds.path), "episode": k, "seed": int(ep.seed), "held_out": held_out,
                  "val_fraction": float(cfg.val_fraction)}
        name = f"{ds.path.name}_ep{k}"
        ds.close()
    else:  # a fresh episode of the task in the simulator: ground truth under correlated random actions
        H = int(cfg.get("horizon") or 48)
        trained = getattr(wm, "trained_env", None) or {}
        task = str(env_id or trained.get("id") or DEFAULT_ENV)
        env_kwargs = {**(trained.get("kwargs") or {}), **dict(cfg.env.get("kwargs") or {})} \
            if trained.get("id") == task else dict(cfg.env.get("kwargs") or {})
        frames, actions = simulate_episode(task, int(cfg.episode_seed), ctx_n + H, size, A, env_kwargs)
        context, truth, actions = frames[:ctx_n], frames[ctx_n:], actions[ctx_n - 1:]
        source = {"task": task, "seed": int(cfg.episode_seed), "policy": "correlated"}
        name = f"{task.split('/')[-1].replace(':', '_')}_seed{int(cfg.episode_seed)}"

    mem_cfg = cfg.get("memory")
    memory = None
    if mem_cfg is not None and mem_cfg.get("_target_"):
        from sfplan.memory.temp_lora import TempLoRAConfig

        try:
            memory = wm.attach_memory(TempLoRAConfig.from_any(mem_cfg))
        except ValueError as e:
            raise UserError(f"memory: {e}") from None
        if memory.config.write == "real" and truth is None:
            raise UserError("memory.write=real writes the ground-truth frames: start from a dataset episode "
                            "(data=<dataset> episode=K), or use memory.write=generated")
    out = Path(cfg.out_dir) if cfg.get("out_dir") else Path("outputs/generate") / (
        f"{time.strftime('%Y%m%d-%H%M%S')}_{name}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mem_info = None
    if memory is None:
        gen = rollout(wm, context, actions)  # (H, S, S, 3)
    else:
        gen, mem_info = rollout_with_memory(wm, context, actions, truth)  # (H, S, S, 3), logs
    wall = time.perf_counter() - t0
    H = len(gen)
    scale, fps = int(cfg.scale), int(cfg.fps)
    if truth is not None:
        video = side_by_side([np.concatenate([context, truth]), np.concatenate([context, gen])],
                             ["ground truth", "model"], scale=scale)
    else:
        video = side_by_side([np.concatenate([context, gen])], ["model"], scale=scale)
    write_video(out / "video.mp4", video, fps)
    write_video(out / "video.gif", video, fps)
    np.savez_compressed(out / "frames.npz", generated=gen, context=context,
                        **({"ground_truth": truth} if truth is not None else {}))
    result = {
        "model": str(model_dir), "checkpoint_sha256": wm.checkpoint_sha256, "source": source,
        "context_frames": ctx_n, "horizon": H, "chunk_size": wm.chunk_size, "sampler": wm.config.sampler,
        "num_steps": wm.config.num_steps, "guidance_scale": wm.config.guidance_scale, "seed": int(cfg.seed),
        "device": str(device), "wall_s": wall, "frames_per_s": H / wall if wall > 0 else None,
        "psnr_cap_db": PSNR_CAP_DB, "out_dir": str(out),
        "files": {"mp4": "video.mp4", "gif": "video.gif", "frames": "frames.npz"},
        "memory": None if memory is None else {"kind": "temp_lora", "config": asdict(memory.config),
                                               **mem_info},
    }
    if truth is not None:
        per = frame_metrics(gen, truth, np.repeat(context[-1:], H, axis=0))
        C = wm.chunk_size
        result["per_step"] = {"step": list(range(1, H + 1)), **per}
        result["summary"] = {
            name: {"psnr_mean": float(np.mean(v["psnr"])), "ssim_mean": float(np.mean(v["ssim"])),
                   "psnr_per_chunk": [float(np.mean(v["psnr"][i:i + C])) for i in range(0, H, C)],
                   "ssim_per_chunk": [float(np.mean(v["ssim"][i:i + C])) for i in range(0, H, C)]}
            for name, v in per.items()}
        result["table"] = format_table(per, list(range(1, H + 1)), C)
    from sfplan.paths import portable

    (out / "metrics.json").write_text(json.dumps(portable(result), indent=2) + "\n")
    return result


__all__ = ["run_generate", "rollout", "rollout_with_memory", "side_by_side", "write_video", "frame_metrics",
           "format_table"]
