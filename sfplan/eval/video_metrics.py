"""Frame metrics for generated videos: PSNR and SSIM on uint8 frames, batched in torch.

Both take frames (..., H, W, 3) uint8 (numpy or torch; any leading batch/time dims) and
return one value per frame, shape (...):

- ``psnr``: 10 log10(255^2 / MSE) over all pixels and channels of a frame; identical
  frames give ``inf``.
- ``ssim``: Wang et al. 2004 with the usual constants (Gaussian window 11, sigma 1.5,
  K1 = 0.01, K2 = 0.03, L = 255), computed per channel on the valid part of the image
  (no padding) and averaged over positions and channels -- the convention of
  torchmetrics / pytorch-msssim. Frames smaller than the window use a window of the
  frame's size (odd). Identical frames give exactly 1.0.

``per_step`` rolls both over a (T, H, W, 3) prediction against its ground truth, which is
what ``sfplan generate`` reports per horizon step.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PEAK = 255.0


def _as_float(frames, device=None) -> torch.Tensor:
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if device is not None:
        x = x.to(device)
    if x.dtype != torch.uint8:
        raise TypeError(f"video metrics take uint8 frames (..., H, W, 3), got {x.dtype}")
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    return x.to(dtype)


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_float(a)
    y = _as_float(b, x.device)
    if x.shape != y.shape:
        raise ValueError(f"frame shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (..., H, W, 3), got {tuple(x.shape)}")
    return x, y


def psnr(pred, target) -> torch.Tensor:
    """pred, target: (..., H, W, 3) uint8 -> (...) PSNR in dB (``inf`` where identical)."""
    x, y = _pair(pred, target)
    mse = (x - y).pow(2).mean(dim=(-3, -2, -1))  # (...)
    return 10.0 * torch.log10(PEAK**2 / mse)  # mse == 0 -> inf


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def ssim(pred, target, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """pred, target: (..., H, W, 3) uint8 -> (...) mean SSIM per frame (1.0 where identical)."""
    x, y = _pair(pred, target)
    lead = x.shape[:-3]
    H, W = x.shape[-3:-1]
    win = min(window, H, W)
    win -= 1 - win % 2  # odd
    x = x.reshape(-1, H, W, 3).permute(0, 3, 1, 2).reshape(-1, 1, H, W)  # (N*3, 1, H, W)
    y = y.reshape(-1, H, W, 3).permute(0, 3, 1, 2).reshape(-1, 1, H, W)
    g = _gaussian_window(win, sigma, x.dtype, x.device)
    gh, gw = g.view(1, 1, 1, win), g.view(1, 1, win, 1)

    def blur(t):  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(t, gh), gw)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * PEAK) ** 2, (k2 * PEAK) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    s = s.mean(dim=(-2, -1)).reshape(-1, 3).mean(dim=-1)  # (N,)
    return s.reshape(lead)


def per_step(pred, target) -> dict[str, list[float]]:
    """pred, target: (T, H, W, 3) uint8 -> {"psnr": [T], "ssim": [T]} (python floats)."""
    return {"psnr": psnr(pred, target).tolist(), "ssim": ssim(pred, target).tolist()}
