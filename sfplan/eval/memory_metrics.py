"""Metrics of episodic memory in generated video: how well an imagined *return* to places
seen earlier in the episode matches what was there.

Setting (``benchmarks/memory_benchmark.py``): a retrace episode goes out for n steps
(frames 0..n) and comes back along the same path (frames n..2n), so return frame
``n + j`` shows the place of outbound frame ``n - j`` (``mirror_index``). The model
imagines the return leg from the turn-around frame with the true return actions.

- ``return_leg_metrics``: PSNR / SSIM (``sfplan.eval.video_metrics``) of imagined vs
  true return frames, per step; PSNR capped at ``PSNR_CAP_DB`` so means stay finite.
- **Scene Revisit Consistency (SRC)** (``scene_revisit_consistency``): cosine similarity
  between the features of the first-visit frame (outbound frame ``n - j``, real) and the
  imagined revisit frame (``n + j``), averaged over the return leg. 1 = the model shows
  the same scene on the way back; the paper (SlowFast-VGen, Sec. 5) reports it x100.
- **Scene cuts** (``scene_cuts``): the number of frame-to-frame jumps in the imagined
  return leg (the turn-around frame, then every imagined frame) whose feature distance
  ``1 - cos(f_t, f_{t+1})`` exceeds a threshold calibrated on true video
  (``calibrate_cut_threshold``): ``factor`` (2) x the ``quantile`` (0.99) of the same
  distance over consecutive true frames. The paper counts cuts with PySceneDetect's
  content detector (HSV differences against a fixed threshold); that threshold is tuned
  for film, so here it is calibrated on the task's own true motion instead: a cut is a
  change twice as large as 99% of the real frame-to-frame changes.

Feature encoder (``RandomConvFeatures``, the default). No pretrained network can be
downloaded here (the paper uses learned features), and the two world models being compared
have different VAEs, so scoring with either VAE would favour one of them. The encoder is a
fixed, seeded random convolutional net, the same for every model and run: frames in
[-1, 1] -> conv 5x5/2 (16, ReLU) -> conv 3x3/2 (32, ReLU) -> conv 3x3/1 (64, ReLU) ->
average-pool to a 4x4 grid -> minus each channel's mean over the grid -> flatten (1024).
Weights: He-normal from ``torch.Generator().manual_seed(seed)`` (seed 0). Random conv
features keep colour and layout (which is what changes between places in
``sfplan/MemoryMaze-v0``), and subtracting the grid mean makes the cosine measure the
spatial *layout* of the scene rather than its average colour. Measured on 8 MemoryMaze
retrace episodes (32 + 32 steps) at 64x64: consecutive true frames have distance 0.17
(median) / 0.27 (q99) / 0.29 (max); frames 16 steps apart in the same episode 0.59 (min)
/ 0.86 (median); frames of two different episodes 0.61 (min) / 0.86 (median). So the cut
threshold 2 x q99 (0.54) separates normal motion from a jump to another scene, and the
cosine of unrelated scenes is -0.1 to 0.4 against 1.0 for the same place. Without the
centring, cosines of ReLU features sit at 0.86-0.9 even for unrelated scenes (little
dynamic range).

``VAEFeatures`` (the alternative) pools a world model's VAE encoder latents the same way
(grid 4x4, centred): cheaper, task-trained, but tied to one model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sfplan.eval.video_metrics import psnr, ssim

PSNR_CAP_DB = 100.0


# ----------------------------------------------------------------------------- features
class RandomConvFeatures:
    """Fixed random conv features (see the module docstring).

    ``enc(frames)``: frames (..., H, W, 3) uint8 -> (..., D) float32 (D = 64 * grid**2).
    Deterministic: the weights depend on ``seed`` only."""

    name = "random_conv"

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (16, 32, 64), grid: int = 4,
                 device: str | torch.device = "cpu"):
        g = torch.Generator().manual_seed(int(seed))
        self.seed, self.grid, self.widths = int(seed), int(grid), tuple(widths)
        self.layers = []  # (weight, stride, padding)
        cin = 3
        for i, cout in enumerate(widths):
            k, stride = (5, 2) if i == 0 else (3, 2 if i == 1 else 1)
            w = torch.randn(cout, cin, k, k, generator=g) * np.sqrt(2.0 / (cin * k * k))
            self.layers.append((w.to(device), stride, k // 2))
            cin = cout
        self.device = torch.device(device)

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "widths": list(self.widths), "grid": self.grid,
                "centred": True}

    @torch.no_grad()
    def __call__(self, frames) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if x.dtype != torch.uint8 or x.ndim < 4 or x.shape[-1] != 3:
            raise ValueError(f"features take uint8 frames (..., H, W, 3) with a batch dim, got {tuple(x.shape)} "
                             f"{x.dtype}")
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).to(self.device, torch.float32) / 127.5 - 1.0
        for w, stride, pad in self.layers:  # (N, C, h, w)
            x = F.relu(F.conv2d(x, w, stride=stride, padding=pad))
        x = F.adaptive_avg_pool2d(x, self.grid)  # (N, C, g, g)
        x = x - x.mean(dim=(2, 3), keepdim=True)  # layout, not average colour
        return x.flatten(1).reshape(*lead, -1).cpu()


class VAEFeatures:
    """A world model's VAE latents, pooled to a ``grid`` x ``grid`` grid and centred per
    channel: frames (..., H, W, 3) uint8 -> (..., C * grid**2)."""

    name = "vae"

    def __init__(self, world_model, grid: int = 4):
        self.wm, self.grid = world_model, int(grid)

    def describe(self) -> dict:
        return {"name": self.name, "grid": self.grid, "checkpoint_sha256": getattr(self.wm, "checkpoint_sha256", None)}

    @torch.no_grad()
    def __call__(self, frames) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        lead = x.shape[:-3]
        lat = self.wm.vae.encode(x.reshape(1, -1, *x.shape[-3:]))[0].float()  # (N, C, h, w)
        lat = F.adaptive_avg_pool2d(lat, self.grid)
        lat = lat - lat.mean(dim=(2, 3), keepdim=True)
        return lat.flatten(1).reshape(*lead, -1).cpu()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., D), (..., D) -> (...) cosine similarity (0 where a vector is all zeros)."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)


# ----------------------------------------------------------------------------- metrics
def mirror_index(n: int, j):
    """Return frame ``n + j`` of an n-step-out retrace episode revisits outbound frame ``n - j``
    (``j`` an int or an array)."""
    return n - j


def scene_revisit_consistency(first_visit, revisit, encoder) -> torch.Tensor:
    """first_visit, revisit: (T, H, W, 3) uint8, frame t of both at the same place ->
    (T,) cosine of their features (SRC per revisit; the benchmark reports the mean)."""
    first_visit, revisit = np.asarray(first_visit), np.asarray(revisit)
    if first_visit.shape != revisit.shape:
        raise ValueError(f"frame shapes differ: {first_visit.shape} vs {revisit.shape}")
    return cosine(encoder(first_visit), encoder(revisit)).float()


def frame_jumps(video, encoder) -> torch.Tensor:
    """video (T, H, W, 3) uint8 -> (T-1,) feature distance ``1 - cos`` of consecutive frames."""
    f = encoder(np.asarray(video))  # (T, D)
    return (1.0 - cosine(f[:-1], f[1:])).float()


def calibrate_cut_threshold(true_videos, encoder, quantile: float = 0.99, factor: float = 2.0) -> float:
    """``factor`` x the ``quantile`` of ``frame_jumps`` over true videos (a list of
    (T_i, H, W, 3) uint8): a jump larger than that is a scene cut."""
    d = torch.cat([frame_jumps(v, encoder) for v in true_videos if len(v) > 1])
    if d.numel() == 0:
        raise ValueError("calibrating the scene-cut threshold needs true videos of at least 2 frames")
    return float(factor * torch.quantile(d.double(), quantile))


def scene_cuts(video, encoder, threshold: float) -> int:
    """Number of consecutive-frame jumps in ``video`` (T, H, W, 3) above ``threshold``."""
    return int((frame_jumps(video, encoder) > threshold).sum())


@dataclass
class ReturnLegScores:
    """Per-episode scores of an imagined return leg (all over j = 1..n)."""

    psnr: list[float]        # (n,) dB, capped at PSNR_CAP_DB
    ssim: list[float]        # (n,)
    src: list[float]         # (n,) cosine(first visit n - j, imagined n + j)
    scene_cuts: int          # jumps above the threshold, turn-around frame included
    jumps: list[float]       # (n,) the distances counted

    def summary(self) -> dict:
        n = len(self.psnr)
        far = slice(n // 2, n)  # the far half of the return: scenery that left the context
        return {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)), "src": float(np.mean(self.src)),
                "scene_cuts": int(self.scene_cuts), "psnr_far": float(np.mean(self.psnr[far])),
                "ssim_far": float(np.mean(self.ssim[far])), "src_far": float(np.mean(self.src[far]))}


def return_leg_metrics(frames, imagined, n: int, encoder, cut_threshold: float) -> ReturnLegScores:
    """Score an imagined return leg.

    frames: (2n+1, H, W, 3) uint8, the true retrace episode (turn-around at frame n).
    imagined: (n, H, W, 3) uint8, the model's frames n+1..2n (imagined[j-1] is step j).
    """
    frames, imagined = np.asarray(frames), np.asarray(imagined)
    if frames.shape[0] != 2 * n + 1 or imagined.shape[0] != n or frames.shape[1:] != imagined.shape[1:]:
        raise ValueError(f"need frames (2n+1, H, W, 3) and imagined (n, H, W, 3) with n={n}, got "
                         f"{frames.shape} and {imagined.shape}")
    truth = frames[n + 1:]  # (n, H, W, 3) true return frames n+1..2n
    first = frames[n - 1::-1]  # (n, ...) outbound frames n-1..0: first visits of the same places
    p = psnr(imagined, truth).clamp(max=PSNR_CAP_DB)
    s = ssim(imagined, truth)
    src = scene_revisit_consistency(first, imagined, encoder)
    jumps = frame_jumps(np.concatenate([frames[n:n + 1], imagined]), encoder)  # (n,)
    return ReturnLegScores(psnr=p.tolist(), ssim=s.tolist(), src=src.tolist(),
                           scene_cuts=int((jumps > cut_threshold).sum()), jumps=jumps.tolist())


__all__ = ["RandomConvFeatures", "VAEFeatures", "cosine", "mirror_index", "scene_revisit_consistency",
           "frame_jumps", "calibrate_cut_threshold", "scene_cuts", "return_leg_metrics", "ReturnLegScores",
           "PSNR_CAP_DB"]
