"""Held-out quality of a learned world model, object-aware: a static or blank frame cannot win.

``object_psnr`` scores only the pixels where the truth or the prediction differs from the
episode's static background (the moving object); ``held_out_quality`` imagines one chunk of
held-out episodes under their recorded actions and under another episode's actions (action
adherence), each next to the copy-last-frame baseline. Where the model has a state probe and
the episodes their goal descriptors, it also reads the object's state off each imagined latent
(``state_error``): a model that loses the object (whose object PSNR can still beat copy-last's,
which pays twice for a moved object) then reads far from the truth.
"""
from __future__ import annotations

import numpy as np
import torch


def object_psnr(pred: np.ndarray, truth: np.ndarray, background: np.ndarray, thr: int = 12) -> np.ndarray:
    """pred, truth (B, T, H, W, 3) uint8, background (B, H, W, 3) -> (B, T) PSNR over the
    pixels where truth or pred differs from the background by more than ``thr`` levels."""
    p, t, bg = (torch.as_tensor(a).double() for a in (pred, truth, background))
    bg = bg[:, None]
    mask = (((t - bg).abs().amax(-1) > thr) | ((p - bg).abs().amax(-1) > thr)).double()  # (B, T, H, W)
    se = (p - t).pow(2).mean(-1)  # (B, T, H, W)
    mse = (se * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1.0)
    return (10 * torch.log10(255.0**2 / mse.clamp_min(1e-3))).numpy()


@torch.no_grad()
def held_out_quality(wm, episodes: list, descriptors: list[np.ndarray] | None = None) -> dict:
    """One imagined chunk from the first context frames of each held-out ``Episode`` ->
    ``{"episodes", "psnr", "object_psnr"}`` with ``model``, ``copy_last`` and
    ``shuffled_actions`` (the model under another episode's actions) means in dB, and
    ``adherence_margin_db`` (object PSNR, true minus shuffled actions). With ``descriptors``
    (one (L+1, D) array of goal descriptors per episode, task units) and ``wm.probe``, also
    ``state_error``: the mean distance between what the probe reads off each run's frames and the
    true descriptors (copy-last: the probe on the last context frame; truth: the probe on the true
    frames, its own reading error, which says whether the probe can read the state at all)."""
    from sfplan.eval.video_metrics import psnr

    ctx, C = wm.context_frames, wm.chunk_size
    keep = [i for i, e in enumerate(episodes) if e.length >= ctx - 1 + C]
    eps = [episodes[i] for i in keep]
    if len(eps) < 2:
        return {"episodes": len(eps), "note": f"needs >= 2 held-out episodes of >= {ctx - 1 + C} steps"}
    context = np.stack([e.pixels[:ctx] for e in eps])  # (B, ctx, H, W, 3)
    truth = np.stack([e.pixels[ctx: ctx + C] for e in eps])  # (B, C, H, W, 3)
    actions = np.stack([e.actions[ctx - 1: ctx - 1 + C] for e in eps]).astype(np.float32)  # (B, C, A)
    background = np.median(np.stack([e.pixels[: ctx + C] for e in eps]), axis=1).astype(np.uint8)  # (B, H, W, 3)

    probe = getattr(wm, "probe", None) if descriptors is not None else None
    read: dict[str, torch.Tensor] = {}  # run -> probe descriptors (B, C, D)

    state = wm.encode(context)  # the same context for every run

    def imagine(name: str, acts: np.ndarray) -> np.ndarray:
        lat = wm.imagine(state, torch.as_tensor(acts)[:, None]).features[:, 0]  # (B, C, c, h, w)
        if probe is not None:
            read[name] = probe(lat)
        return wm.decode(lat).numpy()  # (B, C, H, W, 3)

    runs = {"model": imagine("model", actions), "shuffled_actions": imagine("shuffled_actions",
                                                                              np.roll(actions, 1, axis=0)),
            "copy_last": np.repeat(context[:, -1:], C, axis=1)}
    out = {"episodes": len(eps), "chunk": C,
           "psnr": {k: float(psnr(v, truth).mean()) for k, v in runs.items()},
           "object_psnr": {k: float(object_psnr(v, truth, background).mean()) for k, v in runs.items()}}
    out["adherence_margin_db"] = out["object_psnr"]["model"] - out["object_psnr"]["shuffled_actions"]
    if probe is not None:
        true = torch.as_tensor(np.stack([descriptors[i][ctx: ctx + C] for i in keep]), dtype=torch.float32)
        read["copy_last"] = probe(state.features)[:, None].expand_as(true)  # (B, C, D)
        B, C_ = truth.shape[:2]
        read["truth"] = probe(wm.encode(truth.reshape(B * C_, 1, *truth.shape[2:])).features).reshape(B, C_, -1)
        out["state_error"] = {k: float((v.float() - true).norm(dim=-1).mean()) for k, v in read.items()}
    return out
