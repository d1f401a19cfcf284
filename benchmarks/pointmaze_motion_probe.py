"""Does a learned PointMaze model move the ball as the simulator does?

    python benchmarks/pointmaze_motion_probe.py [--model DIR] [--seeds 50000 50001 50002]
        [--horizon 16] [--png FILE]

From each reset state, pushes the ball with a constant full force in each of the four
directions for ``--horizon`` steps, in the simulator and in the world model's imagination
(one context frame, DPM-Solver++ as configured), and finds the green ball in the real and
the decoded frames. Prints, per seed and direction, the ball's displacement in pixels
after one chunk (8 steps) and after the horizon, and how many ball pixels the imagined
frame still shows (the real ball covers ~20 at 64x64). ``--png`` writes the first seed's
``+x`` push: real frames on top, imagined below, every 4th step.
"""
from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import sfplan.envs  # noqa: F401  (registers sfplan/*)
from sfplan.world_model.learned import load_world_model

PUSHES = {"+x": (1.0, 0.0), "-x": (-1.0, 0.0), "+y": (0.0, 1.0), "-y": (0.0, -1.0)}


def ball(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """frame (H, W, 3) uint8 -> (centroid (x, y) in pixels or NaNs, green pixel count)."""
    f = frame.astype(np.float32)
    mask = (f[..., 1] - np.maximum(f[..., 0], f[..., 2])) > 40  # the ball is the only green
    if not mask.any():
        return np.array([np.nan, np.nan]), 0
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]), int(mask.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="world model dir (default: the shipped PointMaze UMaze model)")
    ap.add_argument("--task", default="sfplan/PointMazeUMaze-v0")
    ap.add_argument("--seeds", type=int, nargs="+", default=[50000, 50001, 50002])
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wm = load_world_model(path=args.model, task=args.task, device="cpu", autocast="auto", return_frames="all")
    # the env the model was trained on (its frame_skip sets how far a push carries the ball)
    kwargs = dict((wm.trained_env or {}).get("kwargs", {}))
    env = gym.make(args.task, render_mode="rgb_array", **kwargs)
    print(f"env {args.task} {kwargs}")
    H, k = args.horizon, min(wm.chunk_size, args.horizon)
    print(f"| seed | push | real d@{k} | imagined d@{k} | real d@{H} | imagined d@{H} | imagined ball px @{k} / @{H} |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for name, a in PUSHES.items():
            env.reset(seed=seed)
            real = [env.render()]
            for _ in range(H):
                env.step(np.asarray(a, np.float32))
                real.append(env.render())
            acts = torch.tensor(a).expand(1, 1, H, 2).clone()  # (B, N, H, A)
            with torch.no_grad():
                lat = wm.imagine(wm.encode(real[0][None, None]), acts).features  # (1, 1, H, C, h, w)
            imag = wm.decode(lat[0, 0]).numpy()  # (H, 64, 64, 3); imag[t - 1] is step t
            b0 = ball(real[0])[0]
            d = lambda p: f"{p[0] - b0[0]:+.1f}, {p[1] - b0[1]:+.1f}"  # noqa: E731
            (ik, nk), (iH, nH) = ball(imag[k - 1]), ball(imag[H - 1])
            print(f"| {seed} | {name} | {d(ball(real[k])[0])} | {d(ik)} | {d(ball(real[H])[0])} | {d(iH)} | {nk} / {nH} |")
            if args.png and seed == args.seeds[0] and name == "+x":
                import imageio.v3 as iio

                steps = list(range(0, H + 1, 4))
                top = np.concatenate([real[t] for t in steps], 1)
                bottom = np.concatenate([real[0]] + [imag[t - 1] for t in steps[1:]], 1)
                iio.imwrite(args.png, np.repeat(np.repeat(np.concatenate([top, bottom], 0), 3, 0), 3, 1))
    env.close()


if __name__ == "__main__":
    main()
