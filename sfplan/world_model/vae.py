"""FrameAutoencoder: a small diffusers ``AutoencoderKL`` that maps task frames to latents.

64x64x3 uint8 frames -> 16x16x4 latents (two downsamplings), the space the video diffusion
model works in. The paper fine-tunes ModelScope with its frozen SD VAE; here the VAE is
small and trained on the task's own frames (pixel-space video diffusion is far too slow
on a CPU, see DESIGN.md "Facts measured").

Latents are the posterior mean, shifted and scaled so they have zero mean and unit std on
the training frames: ``z = (mean - shift_factor) * scaling_factor``. Both numbers live in
the AutoencoderKL config (``config.json``), measured from data with
:meth:`FrameAutoencoder.fit_latent_scale`.

Speed (2 CPU threads, default config, 0.92M parameters): encode 8 frames 0.024 s;
decode 128 frames 2.6 s (3.1 s with the mid-block attention on), so planning costs should
compare latents, not decoded pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sfplan.errors import UserError


def _require_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "the learned world model needs diffusers: pip install 'sfplan[diffusion]' "
            "(or pip install diffusers peft accelerate)"
        ) from e


@dataclass
class VAEConfig:
    """Architecture and loss of the frame autoencoder.

    Defaults: 64x64 frames, three blocks (two downsamplings) -> 16x16x4 latents; small
    widths and one layer per block keep the decoder near 20 ms/frame on a CPU thread.
    """

    image_size: int = 64
    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_block_add_attention: bool = False  # +20% decode time for little gain at 16x16
    # loss
    recon: str = "l1"  # l1 | mse
    kl_weight: float = 1e-6
    grad_weight: float = 0.5  # L1 on image gradients: cheap edge sharpness ("perceptual-ish")
    # Task frames are a static scene plus a small moving object (a 2-px ball, a thin arm);
    # an unweighted loss settles on the background and drops the object, the one thing a
    # planner needs. Pixels that differ from the batch's per-pixel median (the background)
    # by more than fg_threshold, dilated by one pixel, weigh 1 + fg_weight in the recon loss.
    fg_weight: float = 0.0
    fg_threshold: float = 0.05  # in [-1, 1] units
    # How the foreground weight is spread in a frame: "pixel", evenly over its pixels; "object",
    # evenly over its connected regions (``object_balance``), so a small object pushed by a large
    # arm is not drowned out by it (Pusher: a 30-minute fit's VAE lost the cylinder with "pixel").
    fg_balance: str = "pixel"

    def __post_init__(self):
        if self.fg_balance not in ("pixel", "object"):
            raise UserError(f"model.fg_balance={self.fg_balance!r}: pixel or object")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor


def frames_to_unit(frames: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if device is not None:
        x = x.to(device)
    x = x.permute(*range(x.ndim - 3), -1, -3, -2)  # (..., 3, H, W)
    return (x.float() / 127.5 - 1.0).contiguous()


def to_unit(frames: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 (..., H, W, 3) frames, or float (..., 3, H, W) already in [-1, 1] (what
    ``sfplan.data`` clips give with ``normalize=True``) -> float (..., 3, H, W) in [-1, 1]."""
    if isinstance(frames, torch.Tensor) and frames.is_floating_point():
        x = frames.to(device) if device is not None else frames
        return x.float().contiguous()  # one memory layout: the same conv kernels as the uint8 path
    return frames_to_unit(frames, device)


def unit_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), same device."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(*range(x.ndim - 3), -2, -1, -3).contiguous()


def _image_grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def foreground_mask(x: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """x (B, 3, H, W) in [-1, 1] -> (B, 1, H, W) float mask of pixels that differ from the
    batch's per-pixel median (the static background when the object moves between
    frames), dilated by one pixel so the object's edges count too."""
    bg = x.median(dim=0, keepdim=True).values  # (1, 3, H, W)
    m = ((x - bg).abs().amax(dim=1, keepdim=True) > threshold).float()
    return F.max_pool2d(m, 3, stride=1, padding=1)


def object_balance(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, 1, H, W) of 0/1 -> (B, 1, H, W) weights, 0 off the mask: every connected region
    (8-neighbourhood) of a frame's mask gets the same total weight whatever its area, and the
    weights average 1 over the frame's masked pixels (so a weight scale set for the masked
    fraction keeps its meaning). Regions are labelled on the tensor's device by max-pooling
    pixel ids until they settle (as many rounds as a region's longest path)."""
    B, _, H, W = mask.shape
    on = mask > 0.5
    ids = torch.arange(1, B * H * W + 1, device=mask.device, dtype=torch.float32).reshape(B, 1, H, W)  # exact to 2**24
    lab = torch.where(on, ids, torch.zeros_like(ids))
    for i in range(H * W):
        nxt = torch.where(on, F.max_pool2d(lab, 3, stride=1, padding=1), lab)
        if i % 8 == 7 and torch.equal(nxt, lab):
            break
        lab = nxt
    lab = lab.long().flatten()  # 0: off the mask; else a region's id, unique across the batch
    area = torch.bincount(lab, minlength=B * H * W + 1).to(mask.dtype)  # (B*H*W + 1,)
    area[0] = 0.0
    per_pixel = area[lab].reshape(B, 1, H, W)  # the area of each pixel's region
    on_f = on.to(mask.dtype)
    pixels = on_f.sum(dim=(1, 2, 3))  # (B,)
    regions = (on_f / per_pixel.clamp_min(1.0)).sum(dim=(1, 2, 3))  # (B,): each region sums to 1
    scale = (pixels / regions.clamp_min(1e-6))[:, None, None, None]
    return on_f * scale / per_pixel.clamp_min(1.0)


class FrameAutoencoder(nn.Module):
    """uint8 frames <-> scaled latents. Wraps ``diffusers.AutoencoderKL`` (``self.vae``).

    encode: (..., H, W, 3) uint8 -> (..., C, h, w) float latents (posterior mean, scaled).
    decode: (..., C, h, w) -> (..., H, W, 3) uint8 (on the latents' device).
    (encode/decode run without gradients: the VAE is frozen while the diffusion model trains.)
    loss:   (B, H, W, 3) uint8 -> (loss, logs).
    """

    def __init__(self, config: VAEConfig | None = None, vae=None):
        super().__init__()
        _require_diffusers()
        from diffusers import AutoencoderKL

        self.config = config or VAEConfig()
        if vae is None:
            c = self.config
            n = len(c.block_out_channels)
            vae = AutoencoderKL(
                in_channels=c.in_channels,
                out_channels=c.in_channels,
                down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n,
                block_out_channels=tuple(c.block_out_channels),
                layers_per_block=c.layers_per_block,
                latent_channels=c.latent_channels,
                norm_num_groups=c.norm_num_groups,
                sample_size=c.image_size,
                scaling_factor=1.0,
                shift_factor=0.0,
                mid_block_add_attention=c.mid_block_add_attention,
            )
        self.vae = vae

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.vae.config.shift_factor or 0.0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one frame's latent."""
        s = self.vae.config.sample_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (int(self.vae.config.latent_channels), s, s)

    # ------------------------------------------------------------------ encode / decode
    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) in [-1, 1] -> (N, C, h, w) unscaled posterior mean."""
        return self.vae.encode(x).latent_dist.mean

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """frames: (..., H, W, 3) uint8 (or a float (..., 3, H, W) tensor in [-1, 1]) ->
        latents (..., C, h, w) (scaled posterior mean)."""
        x = to_unit(frames, self.device)  # (..., 3, H, W)
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])  # (N, 3, H, W)
        z = torch.cat([self._posterior_mean(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        z = (z - self.shift_factor) * self.scaling_factor
        return z.reshape(*lead, *z.shape[1:])  # (..., C, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """latents: (..., C, h, w) -> frames (..., H, W, 3) uint8 on the latents' device."""
        z = latents.to(self.device, torch.float32)
        lead = z.shape[:-3]
        z = z.reshape(-1, *z.shape[-3:]) / self.scaling_factor + self.shift_factor  # (N, C, h, w)
        x = torch.cat([self.vae.decode(z[i : i + batch_size]).sample for i in range(0, len(z), batch_size)])
        return unit_to_frames(x.reshape(*lead, *x.shape[1:]))

    # ------------------------------------------------------------------ training
    def loss(self, frames: np.ndarray | torch.Tensor, generator: torch.Generator | None = None):
        """frames: (B, H, W, 3) uint8 (or (..., H, W, 3), or float (..., 3, H, W) in [-1, 1]) -> (loss, logs).

        Reconstruction (L1 or MSE) of a posterior sample + kl_weight * KL + grad_weight *
        L1 between image gradients (keeps edges of small objects sharp)."""
        c = self.config
        x = to_unit(frames, self.device)
        x = x.reshape(-1, *x.shape[-3:])  # (B, 3, H, W)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator)
        recon = self.vae.decode(z).sample  # (B, 3, H, W)
        err = (recon - x).abs() if c.recon == "l1" else (recon - x).pow(2)  # (B, 3, H, W)
        # the moving pixels (B, 1, H, W): weighted in the loss, scored apart in the logs
        fg = foreground_mask(x, c.fg_threshold) if x.shape[0] > 2 else torch.ones_like(x[:, :1])
        if c.fg_weight > 0 and x.shape[0] > 2:
            w = 1.0 + c.fg_weight * (object_balance(fg) if c.fg_balance == "object" else fg)
            rec = (err * w).sum() / (w.sum() * err.shape[1])
        else:
            rec = err.mean()
        kl = posterior.kl().mean() / float(np.prod(z.shape[1:]))  # per latent element
        gx_r, gy_r = _image_grads(recon)
        gx, gy = _image_grads(x)
        grad = F.l1_loss(gx_r, gx) + F.l1_loss(gy_r, gy)
        loss = rec + c.kl_weight * kl + c.grad_weight * grad
        with torch.no_grad():
            mse = F.mse_loss(recon, x)
            psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # range [-1, 1] -> peak^2 = 4
            fg_mse = ((recon - x).pow(2) * fg).sum() / (fg.sum() * 3).clamp_min(1.0)
            fg_psnr = 10 * torch.log10(4.0 / fg_mse.clamp_min(1e-10))  # on the moving object only
        logs = {"loss": loss.item(), "recon": rec.item(), "kl": kl.item(), "grad": grad.item(), "psnr": psnr.item(),
                "fg_psnr": fg_psnr.item()}
        return loss, logs

    @torch.no_grad()
    def fit_latent_scale(self, frames: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Measure shift (mean) and scale (1/std) of the posterior means on ``frames``
        ((..., H, W, 3) uint8, a few hundred suffice) and store them in the config, so the
        diffusion model sees unit-variance latents. Returns {shift_factor, scaling_factor}."""
        x = to_unit(frames, self.device)
        x = x.reshape(-1, *x.shape[-3:])  # (N, 3, H, W)
        z = torch.cat([self._posterior_mean(x[i : i + 256]) for i in range(0, len(x), 256)])
        shift = float(z.mean())
        scale = float(1.0 / z.std().clamp_min(1e-6))
        self.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        return {"shift_factor": shift, "scaling_factor": scale}

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json (architecture + latent shift/scale) + safetensors weights. The
        ``_name_or_path`` diffusers records (where the weights were loaded from: a machine
        path) is left out."""
        import json

        self.vae.save_pretrained(str(directory), safe_serialization=True)
        cfg_file = Path(directory) / "config.json"
        cfg = json.loads(cfg_file.read_text())
        if cfg.pop("_name_or_path", None) is not None:
            cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: VAEConfig | None = None) -> "FrameAutoencoder":
        _require_diffusers()
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(directory), use_safetensors=True)
        vc = vae.config
        cfg = config or VAEConfig(
            image_size=int(vc.sample_size),
            in_channels=int(vc.in_channels),
            latent_channels=int(vc.latent_channels),
            block_out_channels=tuple(vc.block_out_channels),
            layers_per_block=int(vc.layers_per_block),
            norm_num_groups=int(vc.norm_num_groups),
            mid_block_add_attention=bool(vc.mid_block_add_attention),
        )
        return cls(cfg, vae=vae)
