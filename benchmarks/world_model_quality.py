"""Quality of a trained world model on held-out episodes (PSNR, SSIM, object PSNR, action adherence, state error).

    python benchmarks/world_model_quality.py --model sfplan/models/Reacher-v0 \
        --data data/Reacher-v0-heldout [--episodes 48] [--chunks 8] [--start 0] [--threads 2] [--out FILE.json]

The held-out dataset must come from seeds the model never saw (e.g. `sfplan collect
seed=90000 steps=72 ...` when training used seeds 0-999) and its episodes must be at least
``start + context - 1 + chunks * chunk_size`` steps long. Every episode starts from its
true frames ``start .. start + context - 1`` and gets its recorded actions from there
(``--start 0``: the object at rest after the reset; later starts: already moving, which
the model must carry on from the context frames). Measured:

- **one chunk**: PSNR / SSIM of the first imagined chunk against the truth, next to the
  copy-last-frame baseline (the last context frame held still), and the VAE's own
  reconstruction of the truth (the ceiling any latent model can reach);
- **object PSNR**: PSNR over the pixels where the truth or the prediction differs from the
  episode's static background (its per-pixel median), i.e. the moving arm or ball; full
  frames are mostly static background, which flatters every model;
- **horizon**: PSNR per chunk over ``chunks`` chunks (autoregressive, no ground truth after
  the context);
- **action adherence**: the same rollouts under another episode's actions (a fixed
  derangement); the true actions must win by a clear margin;
- **throughput**: imagined frames/s at batch 1 and batch 64 (one ``imagine`` call, 1 chunk);
- **state error per imagined step** (models with a state probe, data with recorded states):
  the probe's reading of each imagined latent against the true goal descriptor of that step
  (Reacher: fingertip, PointMaze: ball; task units), next to the probe on the true frames'
  latents (its own floor) and the copy-last reading (how far the object really moved), and
  the imagined motion as a fraction of the true one (< 1: the model damps it). What
  ``cost=probe`` can resolve: an imagined error above the task's success radius is a limit.

Writes JSON (``--out``) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sfplan.data import EpisodeDataset
from sfplan.eval.quality import object_psnr
from sfplan.eval.video_metrics import psnr, ssim
from sfplan.paths import portable, portable_path
from sfplan.world_model.learned import load_world_model


@torch.no_grad()
def imagine_latents(wm, context: np.ndarray, actions: np.ndarray) -> torch.Tensor:
    """context (B, T, H, W, 3) uint8, actions (B, K, A) -> imagined latents (B, K, C, h, w)."""
    state = wm.encode(context)
    return wm.imagine(state, torch.as_tensor(actions, dtype=torch.float32)[:, None]).features[:, 0]


@torch.no_grad()
def state_errors(wm, ds: EpisodeDataset, eps: list, first: int, pred_lat: torch.Tensor) -> dict | None:
    """Probe reading of each imagined latent (B, K, C, h, w), imagined for the episodes' steps
    ``first .. first + K - 1``, against the true goal descriptor of its step -> {"imagined",
    "true_latents", "copy_last": K mean errors (task units); "motion_ratio": K ratios of the
    imagined to the true displacement since the last context frame (projected on it: 1 =
    the right speed, < 1 = the model damps the motion)}, or None where the model has no
    probe or the data no recorded states."""
    from sfplan.errors import UserError
    from sfplan.world_model.probe import label_descriptors

    probe = getattr(wm, "probe", None)
    if probe is None or any(e.states is None for e in eps):
        return None
    try:
        desc = torch.as_tensor(np.stack(label_descriptors(ds.meta, (e.states for e in eps))),
                               dtype=torch.float32)  # (B, L+1, D)
    except UserError:  # an env without goal descriptors: nothing to compare with
        return None
    B, K = pred_lat.shape[:2]
    truth = desc[:, first:first + K]  # (B, K, D): the steps the chunk imagines
    last = desc[:, first - 1:first]  # (B, 1, D): the last context frame's
    true_lat = wm.vae.encode(np.stack([e.pixels[first:first + K] for e in eps]).reshape(B * K, *eps[0].pixels.shape[1:]))
    imagined = probe(pred_lat.to(wm.device)).float().cpu()  # (B, K, D)

    def err(d: torch.Tensor) -> list[float]:
        return (d.float().cpu() - truth).norm(dim=-1).mean(0).tolist()  # (K,) mean over episodes

    moved, moved_im = truth - last, imagined - last  # (B, K, D) displacements since the context
    ratio = (moved_im * moved).sum((0, 2)) / (moved * moved).sum((0, 2)).clamp_min(1e-12)
    return {"imagined": err(imagined), "true_latents": err(probe(true_lat.to(wm.device)).reshape(B, K, -1)),
            "copy_last": err(last.expand_as(truth)), "motion_ratio": ratio.tolist()}


def throughput(wm, context: np.ndarray, A: int, batch: int, repeats: int = 3) -> float:
    """Imagined frames/s for ``batch`` candidates of one chunk from one context."""
    state = wm.encode(context[:1])
    acts = torch.zeros(1, batch, wm.chunk_size, A)
    wm.imagine(state, acts)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        wm.imagine(state, acts)
        best = min(best, time.perf_counter() - t0)
    return batch * wm.chunk_size / best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="world model dir (or training run dir)")
    ap.add_argument("--data", required=True, help="held-out dataset dir (seeds never used in training)")
    ap.add_argument("--episodes", type=int, default=48)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--context", type=int, default=None, help="true context frames (default: the model's)")
    ap.add_argument("--start", type=int, default=0,
                    help="first context frame within each episode (0: from rest at the reset; later: a moving object)")
    ap.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"return_frames": "all", "noise_seed": args.seed}
    if args.num_steps:
        overrides["num_steps"] = args.num_steps
    wm = load_world_model(args.model, device=args.device, **overrides)
    ctx_n = args.context or wm.context_frames
    C = wm.chunk_size
    K = args.chunks * C
    ds = EpisodeDataset(Path(args.data))
    eps = [ds[i] for i in range(min(args.episodes, len(ds)))]
    S0, step0 = args.start, args.start + ctx_n  # step0: the episode step of the first imagined frame
    eps = [e for e in eps if e.length >= step0 - 1 + K]
    if len(eps) < 2:
        raise SystemExit(f"need >= 2 episodes of >= {step0 - 1 + K} steps in {args.data}: collect with "
                         f"steps={step0 - 1 + K} (or lower --chunks / --start)")
    context = np.stack([e.pixels[S0:step0] for e in eps])  # (B, ctx, H, W, 3)
    truth = np.stack([e.pixels[step0 : step0 + K] for e in eps])  # (B, K, H, W, 3)
    actions = np.stack([e.actions[step0 - 1 : step0 - 1 + K] for e in eps]).astype(np.float32)  # (B, K, A)
    background = np.median(np.stack([e.pixels for e in eps]), axis=1).astype(np.uint8)  # (B, H, W, 3)
    B, A = len(eps), actions.shape[-1]
    shuffled = np.roll(actions, 1, axis=0)  # episode b gets episode b-1's actions: a derangement

    t0 = time.perf_counter()
    pred_lat = imagine_latents(wm, context, actions)  # (B, K, C, h, w)
    t_roll = time.perf_counter() - t0
    pred = wm.decode(pred_lat).numpy()  # (B, K, H, W, 3)
    pred_shuf = wm.decode(imagine_latents(wm, context, shuffled[:, :C])).numpy()  # one chunk is enough for adherence
    copy_last = np.repeat(context[:, -1:], K, axis=1)
    recon = wm.decode(wm.vae.encode(truth[:, :C])).numpy()  # (B, C, H, W, 3) VAE ceiling

    def stats(x: np.ndarray) -> dict:
        return {"mean": float(np.mean(x)), "std_over_episodes": float(np.std(np.mean(x, axis=1)))}

    first = slice(0, C)
    res = {
        "model": portable_path(args.model), "checkpoint_sha256": wm.checkpoint_sha256, "data": portable_path(args.data),
        "episodes": B, "seeds": [int(e.seed) for e in eps], "context_frames": ctx_n, "start": S0, "chunk_size": C,
        "chunks": args.chunks, "sampler": wm.config.sampler, "num_steps": wm.config.num_steps,
        "device": str(wm.device), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "one_chunk": {
            "model": {"psnr": stats(psnr(pred[:, first], truth[:, first]).numpy()),
                      "ssim": stats(ssim(pred[:, first], truth[:, first]).numpy()),
                      "object_psnr": stats(object_psnr(pred[:, first], truth[:, first], background))},
            "copy_last_frame": {"psnr": stats(psnr(copy_last[:, first], truth[:, first]).numpy()),
                                "ssim": stats(ssim(copy_last[:, first], truth[:, first]).numpy()),
                                "object_psnr": stats(object_psnr(copy_last[:, first], truth[:, first], background))},
            "vae_reconstruction": {"psnr": stats(psnr(recon, truth[:, first]).numpy()),
                                   "ssim": stats(ssim(recon, truth[:, first]).numpy()),
                                   "object_psnr": stats(object_psnr(recon, truth[:, first], background))},
        },
        "adherence_one_chunk": {
            "true_actions": {"psnr": stats(psnr(pred[:, first], truth[:, first]).numpy()),
                             "object_psnr": stats(object_psnr(pred[:, first], truth[:, first], background))},
            "shuffled_actions": {"psnr": stats(psnr(pred_shuf, truth[:, first]).numpy()),
                                 "object_psnr": stats(object_psnr(pred_shuf, truth[:, first], background))},
        },
        "horizon_psnr_per_chunk": {
            name: [float(psnr(x[:, i * C:(i + 1) * C], truth[:, i * C:(i + 1) * C]).mean()) for i in range(args.chunks)]
            for name, x in (("model", pred), ("copy_last_frame", copy_last))},
        "horizon_object_psnr_per_chunk": {
            name: [float(object_psnr(x[:, i * C:(i + 1) * C], truth[:, i * C:(i + 1) * C], background).mean())
                   for i in range(args.chunks)]
            for name, x in (("model", pred), ("copy_last_frame", copy_last))},
        "rollout_wall_s": t_roll,
        "throughput_frames_per_s": {f"batch_{b}": throughput(wm, context, A, b) for b in (1, 64)},
    }
    adh = res["adherence_one_chunk"]
    res["adherence_margin_db"] = {
        k: adh["true_actions"][k]["mean"] - adh["shuffled_actions"][k]["mean"] for k in ("psnr", "object_psnr")}
    oc = res["one_chunk"]
    lines = [
        f"| {name} | {v['psnr']['mean']:.2f} | {v['ssim']['mean']:.3f} | {v['object_psnr']['mean']:.2f} |"
        for name, v in oc.items()]
    table = "\n".join([
        f"held-out {B} episodes, context {ctx_n} from step {S0}, chunk {C}, {wm.config.sampler} x "
        f"{wm.config.num_steps} steps",
        "", "| one chunk | PSNR dB | SSIM | object PSNR dB |", "|---|---|---|---|", *lines,
        f"| model, shuffled actions | {adh['shuffled_actions']['psnr']['mean']:.2f} | | "
        f"{adh['shuffled_actions']['object_psnr']['mean']:.2f} |",
        "", "PSNR per chunk (model / copy-last): " + ", ".join(
            f"{m:.1f}/{c:.1f}" for m, c in zip(res["horizon_psnr_per_chunk"]["model"],
                                               res["horizon_psnr_per_chunk"]["copy_last_frame"])),
        "object PSNR per chunk (model / copy-last): " + ", ".join(
            f"{m:.1f}/{c:.1f}" for m, c in zip(res["horizon_object_psnr_per_chunk"]["model"],
                                               res["horizon_object_psnr_per_chunk"]["copy_last_frame"])),
        f"adherence margin (true - shuffled): {res['adherence_margin_db']['psnr']:.2f} dB PSNR, "
        f"{res['adherence_margin_db']['object_psnr']:.2f} dB object PSNR",
        "throughput: " + ", ".join(f"{k} {v:.0f} frames/s" for k, v in res["throughput_frames_per_s"].items()),
    ])
    errs = state_errors(wm, ds, eps, step0, pred_lat)
    if errs is not None:
        res["state_error_per_step"] = errs
        C1 = slice(0, C)
        table += "\n\nstate error per imagined step of the first chunk (probe on imagined / true latents, copy-last), " \
                 "task units: " + ", ".join(
                     f"{m:.3f}/{t:.3f}/{c:.3f}" for m, t, c in zip(errs["imagined"][C1], errs["true_latents"][C1],
                                                                  errs["copy_last"][C1]))
        table += "\nstate error per chunk (imagined / copy-last): " + ", ".join(
            f"{np.mean(errs['imagined'][i * C:(i + 1) * C]):.3f}/{np.mean(errs['copy_last'][i * C:(i + 1) * C]):.3f}"
            for i in range(args.chunks))
        table += "\nimagined / true motion per step of the first chunk: " + ", ".join(
            f"{r:.2f}" for r in errs["motion_ratio"][C1])
    res["table"] = table
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(portable(res), indent=2) + "\n")
        out_npz = Path(args.out).with_suffix(".npz")
        np.savez_compressed(out_npz, truth=truth[:4], pred=pred[:4], shuffled=pred_shuf[:4], context=context[:4])
    return res


if __name__ == "__main__":
    main()
