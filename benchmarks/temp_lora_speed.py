"""Cost of Temp-LoRA memory on this machine (untrained weights: speed only).

    python benchmarks/temp_lora_speed.py [--threads 1] [--device cpu] [--rank 32] [--candidates 64]

The default world model (``configs/stage/dynamics.yaml``: 64x64 frames -> 16x16x4 latents,
context 2 + chunk 8) with a Temp-LoRA of ``--rank`` on the attention projections. Measures
one memory write (clean context ⊕ one chunk = 10 latent frames, ``steps_per_write`` Adam
steps on the action-free loss) for 1-4 noise levels per step, and one ``imagine`` call
(``--candidates`` candidates x one chunk, 2 sampler steps) with the adapter active, with
it disabled (``memory.disabled()``), unmerged (peft's LoRA branch) and on a copy without
an adapter, interleaved. Prints a markdown table (best of ``--repeats`` after a warm-up).
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from sfplan.device import resolve_device
from sfplan.memory import TempLoRAConfig
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    wm = SlowFastWorldModel.build(VAEConfig(), VideoDiffusionConfig(), config=SlowFastWorldModelConfig(),
                                  device=device, seed=0)
    with torch.no_grad():  # off the zero-initialised output layers (speed is the same either way)
        for q in wm.diffusion.parameters():
            q.add_(torch.randn_like(q) * 0.02)
    C, h, w = wm.latent_shape
    K, ctx = wm.chunk_size, wm.context_frames
    state = wm.encode(np.zeros((1, ctx, 64, 64, 3), np.uint8))
    acts = torch.rand(1, args.candidates, K, wm.diffusion.config.action_dim) * 2 - 1
    rows = []
    plain = SlowFastWorldModel(wm.vae, copy.deepcopy(wm.diffusion), wm.train_scheduler, wm.config, device=device)
    base_params = sum(q.numel() for q in wm.diffusion.parameters())
    mem = wm.attach_memory(TempLoRAConfig(rank=args.rank, alpha=float(args.rank)))
    chunk = torch.randn(K, C, h, w, device=device)
    mem.write(torch.randn(ctx, C, h, w, device=device))  # fill the buffer: later writes carry 2 context frames
    for R in (1, 2, 4):
        mem.config.timesteps_per_step = R
        t = timeit(lambda: mem.write(chunk), args.repeats)
        rows.append((f"write, 1 step, {R} noise level(s) x {ctx + K} frames", t))
    mem.config.timesteps_per_step = 1

    def unmerged():
        mem.config.merge_for_imagine = False
        try:
            wm.imagine(state, acts)
        finally:
            mem.config.merge_for_imagine = True

    def disabled():
        with mem.disabled():
            wm.imagine(state, acts)

    # interleaved, best of each: the machine is shared, so back-to-back blocks would see different loads
    one = acts[:, :1]  # (1, 1, K, A): what `sfplan generate` imagines per chunk
    variants = {"no adapter (plain model)": lambda: plain.imagine(state, acts),
                "adapter active, merged (default)": lambda: wm.imagine(state, acts),
                "adapter active, unmerged (peft LoRA branch)": unmerged,
                "adapter disabled": disabled,
                "1 cand.: no adapter (plain model)": lambda: plain.imagine(state, one),
                "1 cand.: adapter active, merged": lambda: wm.imagine(state, one)}
    best = {k: float("inf") for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    rows += [(f"imagine {K} steps, {k}" if k.startswith("1 cand.") else
              f"imagine {args.candidates} cand. x {K} steps, {k}", v) for k, v in best.items()]
    t_plain, t_on = best["no adapter (plain model)"], best["adapter active, merged (default)"]
    print(f"device {device}, {torch.get_num_threads()} thread(s); diffusion {base_params / 1e6:.2f}M params; "
          f"Temp-LoRA rank {args.rank}: {mem.num_parameters / 1e6:.3f}M params, state {mem.state_bytes() / 2**20:.1f} "
          f"MiB (LoRA + Adam + buffer)")
    print("| what | seconds |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} |")
    print(f"adapter overhead on imagine: merged {100 * (t_on / t_plain - 1):+.1f}%, unmerged "
          f"{100 * (best['adapter active, unmerged (peft LoRA branch)'] / t_plain - 1):+.1f}%")


if __name__ == "__main__":
    main()
