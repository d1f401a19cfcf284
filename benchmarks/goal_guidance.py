"""Goal steering for planner=video_plan: does the goal reach the frames *before* it?

    python benchmarks/goal_guidance.py [--train-steps 2000] [--threads 1] [--videos 128]

(about 10 min of training and 10 min of sampling on one free CPU thread)

The IDM reads the actions off the frames between "now" and the goal, so what matters is
how well those frames follow a path to the goal, not only the last frame. A controlled
test where the answer is known: synthetic latent videos (8x8x4) of a blob that moves at
one velocity over the 2 context frames and at a new random velocity (the "action") over
the 4 target frames. A small ActionVideoDiffusion (p_uncond 0.5, so the null condition is
well trained) learns them with ``masked_loss``; then, for 128 held-out videos, an
action-free chunk is sampled from the context with the true last frame as the goal,
under each guidance of ``sample_chunk_to_goal``. Reported: MSE and blob-position error
(centroid, pixels of the 8x8 grid) of the 3 frames before the goal against the truth,
and of the last frame; "true actions" samples with the real actions (the best a planner
could read off). Mean over 2 sampling seeds; DPM-Solver++.
"""
from __future__ import annotations

import argparse
import time

import torch

from sfplan.world_model.sampler import make_sampler, make_train_scheduler, sample_chunk, sample_chunk_to_goal
from sfplan.world_model.video_diffusion import VideoDiffusionConfig

S, FP, K = 8, 2, 4  # grid, context frames, target frames
T = FP + K
YY, XX = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")


def render(p: torch.Tensor) -> torch.Tensor:
    """Blob positions (..., 2) -> latents (..., 4, S, S) (channels 0 and 1 hold it)."""
    d = (XX - p[..., 0, None, None]) ** 2 + (YY - p[..., 1, None, None]) ** 2
    b = torch.exp(-d / 2.0) * 2 - 0.3
    z = torch.zeros(*p.shape[:-1], 4, S, S)
    z[..., 0, :, :], z[..., 1, :, :] = b, -b
    return z


def data(n: int, g: torch.Generator):
    """-> latents (n, T, 4, S, S), actions (n, T-1, 2) (the new velocity), positions (n, T, 2)."""
    p1 = torch.rand(n, 2, generator=g) * 3 + 2.5  # position at the last context frame
    v0 = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.8  # velocity over the context
    v = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.8  # new velocity over the targets
    t = torch.arange(T).float()[:, None]
    p = torch.where((t < FP), p1[:, None] + v0[:, None] * (t - 1), p1[:, None] + v[:, None] * (t - 1))
    return render(p), v[:, None].expand(n, T - 1, 2), p


def centroid(frames: torch.Tensor) -> torch.Tensor:
    """(..., 4, S, S) -> blob position (..., 2)."""
    w = (frames[..., 0, :, :] + 0.3).clamp_min(0) ** 4
    w = w / w.sum((-1, -2), keepdim=True).clamp_min(1e-8)
    return torch.stack([(w * XX).sum((-1, -2)), (w * YY).sum((-1, -2))], -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--videos", type=int, default=128, help="held-out videos sampled per row")
    ap.add_argument("--sampler-steps", type=int, nargs="+", default=[3, 6, 12])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VideoDiffusionConfig(action_dim=2, max_frames=8, max_context=FP, block_out_channels=(32, 64), head_dim=16,
                                 cross_attention_dim=32, norm_num_groups=8, p_uncond=0.5).build()
    sched = make_train_scheduler("v_prediction")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for i in range(args.train_steps):
        z, a, _ = data(32, g)
        loss, logs = model.masked_loss(z, a, sched, num_context=FP, generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i % 500 == 0 or i == args.train_steps - 1:
            print(f"train step {i}: loss {logs['loss']:.4f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    z, a, p = data(args.videos, torch.Generator().manual_seed(7))
    ctx, goal, truth = z[:, :FP], z[:, -1], z[:, FP:]

    def row(name, sample):
        r = []
        for seed in (1, 2):
            x = sample(torch.Generator().manual_seed(seed))  # (n, K, 4, S, S)
            r.append([(x[:, :-1] - truth[:, :-1]).pow(2).mean().item(),
                      (centroid(x[:, :-1]) - p[:, FP:-1]).norm(dim=-1).mean().item(),
                      (x[:, -1] - goal).pow(2).mean().item(),
                      (centroid(x[:, -1]) - p[:, -1]).norm(dim=-1).mean().item()])
        m = torch.tensor(r).mean(0).tolist()
        print(f"| {name} | {m[0]:.4f} | {m[1]:.3f} | {m[2]:.4f} | {m[3]:.3f} |", flush=True)

    print("\n| guidance (DPM-Solver++) | frames before the goal: MSE | blob error [px] | last frame: MSE | "
          "blob error [px] |\n|---|---|---|---|---|")
    for steps in args.sampler_steps:
        for guid, w in (("none", 0.0), ("replace", 0.0), ("reconstruction", 1.0), ("reconstruction", 2.0),
                        ("reconstruction", 3.0), ("reconstruction", 4.0), ("reconstruction", 8.0)):
            row(f"{guid}{f' w={w:g}' if guid == 'reconstruction' else ''}, {steps} steps",
                lambda gen: sample_chunk_to_goal(model, ctx, goal, K, steps, make_sampler("dpmsolver++", sched), sched,
                                                 generator=gen, guidance=guid, guidance_weight=w))
    row("true actions (no goal), 6 steps",
        lambda gen: sample_chunk(model, ctx, a[:, FP - 1:FP - 1 + K], 6, make_sampler("dpmsolver++", sched),
                                 generator=gen))


if __name__ == "__main__":
    main()
