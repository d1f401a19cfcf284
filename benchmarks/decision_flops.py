"""FLOPs of one planning decision (``torch.utils.flop_counter``), per setting of the learned planner.

    python benchmarks/decision_flops.py --task reacher --out benchmarks/results/decision_levers/flops.json

Counts one ``planner.plan`` call from a real first observation (evaluation seed 100000) with
the shipped model, for the default search and each lever of ``planning_suite.py --suite
decision_levers``. FLOPs do not depend on the machine; time them with the suite.
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

LEVERS = [[], ["+world_model.num_steps=1", "env.search.learned.num_samples=32"], ["+world_model.num_steps=1"],
          ["env.search.learned.num_samples=32"]]


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


def decision_gflop(task: str, extra: list[str]) -> dict:
    cfg = load_config("eval", [f"env={task}", "record=false", "device=cpu", *extra])
    env, planner, wm = _build(cfg)
    obs, info = env.reset(seed=100000)
    state = wm.encode(np.stack([obs["pixels"]] * wm.context_frames)[None], sim_state=info["state"][None])
    goal = wm.encode(obs["desired_goal"][None, None]).features
    planner.plan(state, goal)  # loads the probe
    total, by_module = count_flops(lambda: planner.plan(state, goal), (wm.vae, wm.diffusion))
    env.close()
    denoiser = sum(by_module.get("ActionVideoDiffusion", {}).values())
    return {"overrides": extra, "gflop": total / 1e9, "denoiser_gflop": denoiser / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="reacher")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/decision_levers/flops.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [decision_gflop(args.task, extra) for extra in LEVERS]
    for r in rows:
        print(f"{' '.join(r['overrides']) or 'default'}: {r['gflop']:.1f} GFLOP per decision "
              f"({r['denoiser_gflop']:.1f} in the denoiser)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"task": args.task, "decisions": rows}, indent=2))


if __name__ == "__main__":
    main()
