"""Speed of the learned world model on this machine (untrained weights: speed only).

    python benchmarks/world_model_speed.py [--threads 2] [--device cpu] [--no-unet3d]

Measures imagination throughput (imagined frames/s) at batch 1 and 64, the time of one
CEM-like decision (3 iterations x 64 candidates x horizon 8 and 10, one `imagine` call per
iteration), one slow-learning training step (batch 16 clips of context + chunk frames,
forward + backward + Adam), one VAE training step, and the raw denoiser forward of the
default factorised backbone against diffusers' UNet3DConditionModel (the paper's
architecture). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from sfplan.device import resolve_device
from sfplan.world_model.learned import SlowFastWorldModel, SlowFastWorldModelConfig
from sfplan.world_model.vae import VAEConfig
from sfplan.world_model.video_diffusion import VideoDiffusionConfig


def timeit(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``repeats`` calls (seconds), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def denoiser_forward(cfg: VideoDiffusionConfig, device, B=64, ctx=2, tgt=4, repeats=3) -> tuple[float, float]:
    """(seconds, params in M) of one forward at B x (ctx + tgt) frames of 16x16x4."""
    model = cfg.build().to(device).eval()
    T = ctx + tgt
    x = torch.randn(B, T, cfg.latent_channels, 16, 16, device=device)
    mask = (torch.arange(T, device=device) < ctx)[None].expand(B, T)
    tok = model.condition(torch.randn(B, T, cfg.action_dim, device=device), mask)
    t = torch.full((B,), 500, device=device)
    with torch.no_grad():
        sec = timeit(lambda: model(x, t, mask, tok), repeats=repeats)
    return sec, sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-unet3d", action="store_true", help="skip the (slow) UNet3DConditionModel comparison")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    wm = SlowFastWorldModel.build(VAEConfig(), VideoDiffusionConfig(), config=SlowFastWorldModelConfig(),
                                  device=device, seed=0)
    c = wm.config
    A = wm.diffusion.config.action_dim
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, c.context_frames, 64, 64, 3), dtype=np.uint8)
    state = wm.encode(frames)
    rows: list[tuple[str, str, str]] = []

    def imagine_time(N: int, H: int, steps: int | None = None, calls: int = 1, repeats: int = 3, **settings) -> float:
        """Best time of ``calls`` consecutive imagine calls (1, N, H, A) under ``settings``."""
        settings = {"num_steps": steps or c.num_steps, **settings}
        old = {k: getattr(c, k) for k in settings}
        for k, v in settings.items():
            setattr(c, k, v)
        acts = torch.randn(1, N, H, A, device=device)
        try:
            return timeit(lambda: [wm.imagine(state, acts) for _ in range(calls)], repeats=repeats)
        finally:
            for k, v in old.items():
                setattr(c, k, v)

    for N in (1, 64):
        H = 8
        sec = imagine_time(N, H)
        rows.append((f"imagine, batch {N} x horizon {H} ({c.num_steps} steps)", f"{sec:.3f} s",
                     f"{N * H / sec:.0f} frames/s"))
    variants = [(H, steps, {}) for H in (8, 10) for steps in (2, 3, 4)]
    variants += [(8, 2, {"chunk_size": 4}), (4, 2, {"chunk_size": 4}), (8, 2, {"autocast": "bfloat16"}),
                 (10, 2, {"autocast": "bfloat16"})]
    for H, steps, extra in variants:
        sec = imagine_time(64, H, steps, calls=3, repeats=2, **extra)
        note = "".join(f", {k}={v}" for k, v in extra.items())
        rows.append((f"CEM decision: 3 iter x 64 cand x H={H}, {steps} steps{note}", f"{sec:.2f} s",
                     f"{3 * 64 * H / sec:.0f} frames/s"))
    # encode / decode
    sec = timeit(lambda: wm.encode(frames))
    rows.append((f"encode {c.context_frames} frames (64x64)", f"{sec * 1e3:.1f} ms", ""))
    lat = torch.randn(64, *wm.latent_shape, device=device)
    sec = timeit(lambda: wm.decode(lat), repeats=2)
    rows.append(("decode 64 latents -> 64x64 frames", f"{sec:.3f} s", f"{64 / sec:.0f} frames/s"))
    # training steps
    T = c.context_frames + c.chunk_size
    lat = torch.randn(16, T, *wm.latent_shape, device=device)
    acts = torch.randn(16, T, A, device=device)
    wm.diffusion.train()
    opt = torch.optim.Adam(wm.diffusion.parameters(), lr=1e-4)

    def train_step():
        loss, _ = wm.masked_loss(lat, acts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = timeit(train_step)
    rows.append((f"slow-learning train step, batch 16 x {T} frames", f"{sec:.3f} s", f"{16 / sec:.1f} clips/s"))
    wm.diffusion.eval()
    vae_frames = rng.integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    vopt = torch.optim.Adam(wm.vae.parameters(), lr=1e-4)

    def vae_step():
        loss, _ = wm.vae.loss(vae_frames)
        vopt.zero_grad(set_to_none=True)
        loss.backward()
        vopt.step()

    sec = timeit(vae_step, repeats=2)
    rows.append(("VAE train step, batch 64 frames", f"{sec:.3f} s", f"{64 / sec:.0f} frames/s"))
    # backbones
    sec, mp = denoiser_forward(VideoDiffusionConfig(), device)
    rows.append((f"denoiser forward 64 x (2+4) frames: factorized, {mp:.2f}M params", f"{sec:.3f} s", ""))
    if not args.no_unet3d:
        u3d = VideoDiffusionConfig(backbone="unet3d", patch_size=1, block_out_channels=(32, 64, 64),
                                   attention_levels=(False, True, True), head_dim=16, cross_attention_dim=64)
        sec, mp = denoiser_forward(u3d, device, repeats=1)
        rows.append((f"denoiser forward 64 x (2+4) frames: UNet3DConditionModel, {mp:.2f}M params",
                     f"{sec:.3f} s", ""))

    dc = wm.diffusion.config
    print(f"## World model speed ({platform.processor() or platform.machine()}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__})\n")
    print(f"Default config: latents {wm.latent_shape}, context_frames {c.context_frames}, chunk_size {c.chunk_size}, "
          f"sampler {c.sampler} x {c.num_steps} steps, denoiser {dc.backbone} patch {dc.patch_size} "
          f"channels {tuple(dc.block_out_channels)}.\n")
    print("| measurement | time | throughput |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
