"""FLOPs and time of one planning decision, per setting of the learned planner.

    python benchmarks/decision_flops.py --task reacher --out benchmarks/results/one_step/decision_reacher.json

Counts one ``planner.plan`` call (``torch.utils.flop_counter``) from a real first observation
(evaluation seed 100000) with the shipped model, for each lever of ``planning_suite.py --suite
decision_levers`` / ``--suite one_step``, and times ``--repeats`` more calls of each, side by
side in this one process with every CPU thread (run it on an idle machine). Success is measured
by the suites.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sfplan.config import load_config  # noqa: E402
from sfplan.eval.main import _build  # noqa: E402
from sfplan.io import atomic_write_text  # noqa: E402

# every lever names its sampler steps and candidates, so the rows do not depend on the shipped defaults;
# num_steps=1 is the model's distilled one-step student (its one_step/ part)
LEVERS = [[f"+world_model.num_steps={k}", f"env.search.learned.num_samples={n}"] for k, n in ((2, 64), (2, 32), (1, 64), (1, 32))]


def count_flops(fn, modules) -> tuple[int, dict]:
    """(total FLOPs, per-module counts) of one ``fn()`` call. The counter's module hooks need
    weights without grad, so ``modules`` are frozen for the call and restored after."""
    params = [q for m in modules for q in m.parameters() if q.requires_grad]
    for q in params:
        q.requires_grad_(False)
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
    finally:
        for q in params:
            q.requires_grad_(True)
    return counter.get_total_flops(), {str(k): v for k, v in counter.get_flop_counts().items()}


def decision_cost(task: str, extra: list[str], repeats: int) -> dict:
    """GFLOP of one decision (counted on one thread) and its wall time (median of ``repeats``,
    all threads) for the eval config ``env=task`` + ``extra``."""
    import time

    cfg = load_config("eval", [f"env={task}", "record=false", "device=cpu", *extra])
    env, planner, wm = _build(cfg)
    obs, info = env.reset(seed=100000)
    state = wm.encode(np.stack([obs["pixels"]] * wm.context_frames)[None], sim_state=info["state"][None])
    goal = wm.encode(obs["desired_goal"][None, None]).features
    planner.plan(state, goal)  # loads the probe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total, by_module = count_flops(lambda: planner.plan(state, goal), (wm.vae, wm.diffusion))
    torch.set_num_threads(threads)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        planner.plan(state, goal)
        times.append(time.perf_counter() - t0)
    env.close()
    denoiser = sum(by_module.get("ActionVideoDiffusion", {}).values())
    return {"overrides": extra, "gflop": total / 1e9, "denoiser_gflop": denoiser / 1e9,
            "seconds_median": float(np.median(times)) if times else None, "threads": threads,
            "one_step_student": wm.one_step is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="reacher")
    p.add_argument("--repeats", type=int, default=5, help="timed decisions per lever (0: FLOPs only)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/one_step/decision_reacher.json"))
    args = p.parse_args()
    from sfplan.training.trainer import cpu_info

    rows = [decision_cost(args.task, extra, args.repeats) for extra in LEVERS]
    for r in rows:
        t = f", {r['seconds_median']:.2f} s" if r["seconds_median"] is not None else ""
        print(f"{' '.join(r['overrides'])}: {r['gflop']:.1f} GFLOP per decision ({r['denoiser_gflop']:.1f} in the "
              f"denoiser){t}")
    cpu, isa = cpu_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"task": args.task, "cpu": cpu, "isa": isa, "cores": os.cpu_count(),
                                            "decisions": rows}, indent=2))


if __name__ == "__main__":
    main()
