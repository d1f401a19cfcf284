"""Does the learned world model rank the planner's candidates as the simulator would?

    python benchmarks/cost_agreement.py --model sfplan/models/Reacher-v0 --states 60 \\
        --out benchmarks/results/cost_agreement/reacher.json [-- sfplan eval overrides]

Splits "what limits the learned planner" into its two parts, on the states a planner passes
through on its way to the goal (the env's recorded goal path at fractions ``--fractions``
of its length; seeds from ``--seed``, tuning range by default):

- **dynamics**: the planner's own cost (``sfplan eval``'s cost, built from the same config)
  of N candidate chunks, imagined by the learned model, against the same cost of the chunks
  as the simulator plays them (the true frames, encoded like observations by the model's VAE);
- **cost function**: that true cost against the task's own distance after the chunk (for
  Reacher the fingertip's distance to the goal fingertip, in metres).

Candidates are CEM's first iteration (``sfplan eval``'s planner config: horizon, ``init_std``
around the mid action, clipped to the box). Per state: Spearman rank correlations, and the
**regret** of picking the candidate with the lowest learned (or true) cost: its task distance
minus the best candidate's, normalised by the median candidate's (0: the best candidate was
picked, 1: no better than a typical random one), and the regret of the **elite mean**: the
mean action sequence of the ``planner.num_elites`` lowest-cost candidates (what CEM refits
to), played in the simulator. Writes a JSON with the config, the
per-state figures and the means, and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TUNING_SEED = 50100


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two (N,) vectors."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def regret_of(distance: float, dist: np.ndarray) -> float:
    """(distance - min d) / (median d - min d) over the candidates' task distances ``dist``:
    0 = as good as the best candidate, 1 = a median one (below 0: better than every candidate)."""
    lo, med = float(dist.min()), float(np.median(dist))
    return float((distance - lo) / max(med - lo, 1e-9))


def regret(picked: int, dist: np.ndarray) -> float:
    """Regret of picking candidate ``picked``."""
    return regret_of(float(dist[picked]), dist)


def path_state(env, frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Simulator state at fraction ``frac`` of the goal path, and the two frames ending there
    (the planner's context), rendered with the goal marker as observations show it."""
    u = env.unwrapped
    path = [u.get_state()] + list(u._goal_path)  # the start, then the recorded goal drive
    i = int(round(frac * (len(path) - 1)))
    frames = []
    for j in (max(0, i - 1), i):
        u.set_state(path[j])
        u._on_goal_set()
        frames.append(u.render_pixels())
    return u.get_state(), np.stack(frames)


def true_rollouts(env, state: np.ndarray, cand: np.ndarray, steps: list[int]):
    """cand (N, H, A) played from ``state`` -> frames (N, K, H_img, W_img, 3) at the 1-based
    ``steps``, task distance after the last step (N,)."""
    u = env.unwrapped
    frames, dist = [], []
    for acts in cand:
        u.set_state(state)
        for t, a in enumerate(acts):
            u.sim_step(np.clip(a, env.action_space.low, env.action_space.high).astype(np.float64))
            if t + 1 in steps:
                frames.append(u.render_pixels())
        dist.append(u._distance(u._goal))
    N = len(cand)
    if not frames:  # no steps asked for: the distances only
        return None, np.asarray(dist)
    return np.stack(frames).reshape(N, len(steps), *frames[0].shape), np.asarray(dist)


def run(args, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from sfplan.config import load_config
    from sfplan.eval.main import _build
    from sfplan.world_model.base import Imagination

    torch.set_num_threads(args.threads)
    cfg = load_config("eval", ["world_model=learned", f"world_model.path={args.model}", "record=false", *overrides])
    env, planner, wm = _build(cfg)
    cost = planner.cost
    H, N = int(planner.horizon), int(args.candidates)
    low, high = env.action_space.low, env.action_space.high
    mid, rng_a = (low + high) / 2, high - low
    init_std = float(cfg.planner.get("init_std", 0.5))
    E = min(int(cfg.planner.get("num_elites", 8)), N)  # CEM's elites
    g = np.random.default_rng(args.seed)
    base_noise_seed = int(wm.config.noise_seed)
    rows = []
    t0 = time.perf_counter()
    for s in range(args.states):
        seed = args.seed + s
        obs, _ = env.reset(seed=seed)
        goal = wm.encode(obs["desired_goal"][None, None]).features  # (1, C, h, w)
        for frac in args.fractions:
            sim, ctx = path_state(env, frac)
            start_distance = float(env.unwrapped._distance(env.unwrapped._goal))  # before any rollout moves the sim
            state = wm.encode(ctx[None], sim_state=sim[None])
            cand = np.clip(mid + init_std * rng_a * g.standard_normal((N, H, len(low))), low, high).astype(np.float32)
            with torch.no_grad():
                # the learned cost, averaged over --noise-draws diffusion noise draws (common to the candidates)
                learned = 0.0
                for d in range(args.noise_draws):  # draw 0 is imagine's own noise (seeded noise_seed)
                    gen = torch.Generator("cpu").manual_seed(base_noise_seed + d)
                    im = wm.imagine(state, torch.from_numpy(cand)[None], generator=gen)  # features (1, N, K, C, h, w)
                    learned = learned + cost(im, goal)[0].float().cpu() / args.noise_draws  # (N,)
                steps = [int(k) for k in im.steps.tolist()]
                frames, dist = true_rollouts(env, sim, cand, steps)
                # the true frames in the cost's space: the model's latents
                z = wm.encode(frames.reshape(-1, 1, *frames.shape[2:])).features  # (N*K, C, h, w)
                z = z.reshape(N, len(steps), *z.shape[1:])[None].to(im.features.dtype)  # (1, N, K, C, h, w)
                true = cost(Imagination(features=z, steps=im.steps), goal)[0].float().cpu()
                # CEM refits its Gaussian to the E lowest-cost candidates: the elites' mean action sequence,
                # played in the simulator, is what a planner executing that mean would get
                means = [cand[c.argsort()[:E].numpy()].mean(0) for c in (learned, true)]  # 2 x (H, A)
                _, dist_mean = true_rollouts(env, sim, np.stack(means), [])
            d = torch.from_numpy(dist)
            rows.append({
                "seed": seed, "fraction": frac, "start_distance": start_distance,
                "spearman_learned_true": spearman(learned, true), "spearman_true_task": spearman(true, d),
                "spearman_learned_task": spearman(learned, d),
                "regret_learned": regret(int(learned.argmin()), dist), "regret_true": regret(int(true.argmin()), dist),
                "best_distance": float(dist.min()), "picked_learned_distance": float(dist[int(learned.argmin())]),
                "picked_true_distance": float(dist[int(true.argmin())]), "median_distance": float(np.median(dist)),
                "regret_learned_elite_mean": regret_of(float(dist_mean[0]), dist),
                "regret_true_elite_mean": regret_of(float(dist_mean[1]), dist),
                "picked_learned_elite_mean_distance": float(dist_mean[0]),
                "picked_true_elite_mean_distance": float(dist_mean[1]),
            })
        if args.progress:
            print(f"state {s + 1}/{args.states} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    keys = [k for k in rows[0] if k.startswith(("spearman", "regret", "picked", "best", "median"))]
    by_frac = {}
    for frac in args.fractions:
        sel = [r for r in rows if r["fraction"] == frac]
        by_frac[str(frac)] = {k: float(np.mean([r[k] for r in sel])) for k in keys}
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    env.close()
    return {"benchmark": "cost_agreement", "model": args.model, "overrides": overrides,
            "env": cfg.env.id, "horizon": H, "candidates": N, "noise_draws": args.noise_draws, "init_std": init_std,
            "cost": OmegaConf.to_container(cfg.cost, resolve=True), "seeds": [args.seed, args.seed + args.states - 1],
            "fractions": args.fractions, "threads": args.threads, "wall_s": time.perf_counter() - t0,
            "mean": means, "by_fraction": by_frac, "states": rows}


def render_markdown(res: dict) -> str:
    cols = ["spearman_learned_true", "spearman_true_task", "spearman_learned_task", "regret_learned", "regret_true",
            "regret_learned_elite_mean", "regret_true_elite_mean",
            "best_distance", "picked_learned_distance", "picked_true_distance", "median_distance"]
    lines = ["| goal-path fraction | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for frac, m in [*res["by_fraction"].items(), ("all", res["mean"])]:
        lines.append(f"| {frac} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sfplan/models/Reacher-v0", help="learned world model directory")
    p.add_argument("--states", type=int, default=40, help="episodes (goal paths) to take states from")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.9],
                   help="where along the goal path the states are taken (0: the start)")
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--noise-draws", type=int, default=1,
                   help="average the learned cost over this many diffusion noise draws")
    p.add_argument("--seed", type=int, default=TUNING_SEED, help="first episode seed (tuning range: below 100000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path (and a .md beside it)")
    p.add_argument("--progress", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    res = run(args, overrides)
    md = render_markdown(res)
    print(md)
    if args.out:
        from sfplan.io import atomic_write_text
        from sfplan.paths import portable, scrub_paths

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(portable(res), indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), scrub_paths(md))
    return res


if __name__ == "__main__":
    main()
