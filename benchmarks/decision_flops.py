"""FLOPs and time of planning decisions, per setting of the learned planner.

    python benchmarks/decision_flops.py --task reacher --out benchmarks/results/one_step/decision_reacher_<cpu>.json

For each lever of ``planning_suite.py --suite decision_levers`` / ``one_step`` / ``proposals`` / ``replan``,
with the shipped model, from a real first observation (evaluation seed 100000): the episode's
first plan (no warm start) and a re-plan warm-started from the plan before it shifted by the
executed steps, as ``sfplan eval`` does. Each is counted once (``torch.utils.flop_counter``, one
thread) and timed ``--repeats`` times (median, every CPU thread), side by side in this one
process (run it on an idle machine). The time per decision is the mean over a full-length
episode: (first + (D - 1) re-plans) / D, D = ceil(budget / execute) (an episode that ends at its
goal has fewer re-plans). Success is measured by the suites.

``--emulate-avx2`` times the same decisions as a CPU without AVX-512 would run them: torch's
kernels, oneDNN and MKL capped to AVX2 (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
``MKL_ENABLE_INSTRUCTIONS``) and the denoiser in fp32 (``world_model.autocast=none``, what
``auto`` picks without bf16 instructions). Every JSON records the machine's one-thread fp32
matmul rate, so an emulated figure can be scaled to a real AVX2 CPU's rate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# the AVX2 caps must be in the environment before torch (and its MKL / oneDNN) loads
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
if "--emulate-avx2" in sys.argv and any(os.environ.get(k) != v for k, v in AVX2_CAPS.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_CAPS})

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sfplan.config import load_config  # noqa: E402
from sfplan.eval.main import _build  # noqa: E402
from sfplan.io import atomic_write_text  # noqa: E402
from sfplan.planners import shift_plan  # noqa: E402

STUDENT_32 = ["+world_model.num_steps=1", "env.search.learned.num_samples=32"]
# the search the levers are measured against: horizon 8 (one imagined chunk) re-planned every `execute` steps,
# the tasks' default rows when the lever suites ran; a lever that names horizon or execute overrides it
BASE_SEARCH = {"reacher": {"horizon": 8, "execute": 4}, "pointmaze_umaze": {"horizon": 8, "execute": 5}}
# every lever names its sampler steps and candidates, so the rows do not depend on the shipped defaults;
# num_steps=1 is the model's distilled one-step student (its one_step/ part)
LEVERS = [[f"+world_model.num_steps={k}", f"env.search.learned.num_samples={n}"] for k, n in ((2, 64), (2, 32), (1, 64), (1, 32))]
# the student at 32 candidates with the previous decision's elites, also with a wider first plan, and at horizon 6
LEVERS += [[*STUDENT_32, *x] for x in (["planner.keep_elites=4"], ["+env.search.learned.cold_num_samples=128",
                                        "planner.keep_elites=4"], ["env.search.learned.horizon=6"])]
# re-planning every 2 steps with a small search (planning_suite.py --suite replan)
LEVERS += [[f"+world_model.num_steps={k}", f"env.search.learned.num_samples={n}", "env.search.learned.horizon=6",
            "env.search.learned.execute=2"] for k, n in ((2, 16), (1, 32))]


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


def _timed(fn, repeats: int) -> float | None:
    """Median wall time of ``repeats`` calls of ``fn`` (None when ``repeats`` is 0)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) if times else None


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of an n x n fp32 matmul on one thread: the machine's arithmetic rate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    dt = (time.perf_counter() - t) / repeats
    torch.set_num_threads(threads)
    return 2 * n**3 / dt / 1e9


def decision_cost(task: str, extra: list[str], repeats: int, common: tuple[str, ...] = ()) -> dict:
    """GFLOP (one thread) and median wall time (all threads) of the first plan and of a
    warm-started re-plan for the eval config ``env=task`` + ``extra``, and the episode's mean
    time per decision."""
    base = [f"env.search.learned.{k}={v}" for k, v in BASE_SEARCH.get(task, {}).items()
            if not any(o.startswith(f"env.search.learned.{k}=") for o in extra)]
    cfg = load_config("eval", [f"env={task}", "record=false", "device=cpu", *base, *extra, *common])
    env, planner, wm = _build(cfg)
    execute, budget, fill = int(cfg.env.execute), int(cfg.env.budget), str(cfg.warm_fill)
    obs, info = env.reset(seed=100000)
    state = wm.encode(np.stack([obs["pixels"]] * wm.context_frames)[None], sim_state=info["state"][None])
    goal = wm.encode(obs["desired_goal"][None, None]).features
    low, high = env.action_space.low, env.action_space.high
    last = {"plan": planner.plan(state, goal)}  # loads the probe

    def first():
        planner.start_episode(100000)
        last["plan"] = planner.plan(state, goal)

    def replan():  # the runner's re-plan: the previous plan less its executed steps
        planner.advance(execute)
        warm = shift_plan(last["plan"].actions, execute, fill=fill, action_low=low, action_high=high)
        last["plan"] = planner.plan(state, goal, warm_start=warm)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    first_flops, by_module = count_flops(first, (wm.vae, wm.diffusion))
    replan_flops, _ = count_flops(replan, (wm.vae, wm.diffusion))
    torch.set_num_threads(threads)
    first_s = _timed(first, repeats)
    replan_s = _timed(replan, repeats)  # a chain of re-plans, each warm-started from the one before
    env.close()
    d = math.ceil(budget / execute)
    denoiser = sum(by_module.get("ActionVideoDiffusion", {}).values())
    return {"overrides": extra, "gflop": replan_flops / 1e9, "first_plan_gflop": first_flops / 1e9,
            "denoiser_gflop_first_plan": denoiser / 1e9, "first_plan_s": first_s, "replan_s": replan_s,
            "decisions_per_episode": d, "execute": execute,
            "seconds_per_decision": None if first_s is None else (first_s + (d - 1) * replan_s) / d,
            "threads": threads, "one_step_student": wm.one_step is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="reacher")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed first plans and as many timed re-plans per lever (0: FLOPs only)")
    p.add_argument("--out", type=Path, required=True,
                   help="JSON to write; one per task and CPU (the tables read benchmarks/results/one_step/decision_*.json)")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="kernels capped to AVX2 and the denoiser in fp32: a CPU without AVX-512 (see above)")
    args = p.parse_args()
    from sfplan.training.trainer import cpu_info

    common = ("world_model.autocast=none",) if args.emulate_avx2 else ()
    rate = matmul_gflops()
    rows = [decision_cost(args.task, extra, args.repeats, common) for extra in LEVERS]
    for r in rows:
        t = (f"; first plan {r['first_plan_s']:.2f} s, re-plan {r['replan_s']:.2f} s, {r['seconds_per_decision']:.2f} s "
             f"per decision" if r["first_plan_s"] is not None else "")
        print(f"{' '.join(r['overrides'])}: {r['gflop']:.1f} GFLOP per re-plan, {r['first_plan_gflop']:.1f} the "
              f"first{t}")
    cpu, isa = cpu_info()
    if args.emulate_avx2:
        isa = f"AVX2 emulated on {isa}, fp32"
    print(f"{cpu} ({isa}): fp32 matmul {rate:.1f} GFLOP/s on one thread")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"task": args.task, "cpu": cpu, "isa": isa, "cores": os.cpu_count(),
                                            "matmul_gflops_1thread": rate,
                                            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                            "decisions": rows}, indent=2))


if __name__ == "__main__":
    main()
