"""Memory planning benchmark: does episodic memory change what the planner does where only
memory can tell it the way?

    python benchmarks/memory_planning.py --model outputs/fit/fork_maze/model --episodes 30 --jobs 2
    python benchmarks/memory_planning.py --model DIR --memory loss=masked reverse=true reverse_actions=negate

Task: ``sfplan/ForkMaze-v0`` ``goal=recall`` (``envs/fork_maze.py``): the episode starts at
the junction of a plus-shaped maze after a leg from the goal room; the rooms are painted
anew each episode and none is in view from the junction, so the arm to take is known only
from the leg. Five paired cells on the same evaluation seeds (100000 + i), each one
``sfplan eval`` run (``sfplan.evaluate``):

- ``oracle``: CEM with the simulator (what planning can do when every room is known);
- ``random``: random actions;
- ``no_memory``: the learned world model (``--model``), the leg as context only;
- ``memory``: the same with Temp-LoRA (``memory=temp_lora``, settings ``--memory``), the leg
  written before the first decision and each executed chunk after it;
- ``other_memory``: as ``memory``, but the memory is written with another episode's leg
  (``env.kwargs.past=other``): the control that shows a gain comes from this episode's past.

Writes under ``--out``: ``summary.json`` (episodes; success per cell with 95% intervals;
the paired per-seed outcomes; ``write_time_fraction``: memory writing over planning time in
the ``memory`` cell, all writes of an episode over all its decisions; the commands, hardware
and commit), ``README.md`` (the table) and ``episode.gif``: one episode as the planner without
and with memory saw it (observation | goal, each). Cells already run (``report.json`` present) are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "memory_planning"
ENV = "sfplan/ForkMaze-v0"
CELLS = ("oracle", "random", "no_memory", "memory", "other_memory")
#: summary.json key of each cell's success rate
SUCCESS_KEYS = {"oracle": "success_oracle", "random": "success_random", "no_memory": "success_no_memory",
                "memory": "success_memory", "other_memory": "success_other_episode_memory"}


def cell_overrides(name: str, model: str, memory: list[str]) -> dict:
    """The ``sfplan.evaluate`` keyword arguments of one cell."""
    mem = {"memory": "temp_lora", **{f"memory.{kv.split('=', 1)[0]}": kv.split("=", 1)[1] for kv in memory}}
    return {
        "oracle": {"world_model": "oracle"},
        "random": {"planner": "random"},
        "no_memory": {"model": model},
        "memory": {"model": model, **mem},
        "other_memory": {"model": model, **mem, "env.kwargs.past": "other"},
    }[name]


def check_model(path: str) -> str | None:
    """What is wrong with ``--model`` for this benchmark (before any cell runs), or None."""
    p = Path(path).expanduser()
    wm = next((f for f in (p / "world_model.json", p / "model" / "world_model.json") if f.is_file()), None)
    if wm is None:
        return (f"--model {path}: no world_model.json there (nor in {path}/model): give the model dir of a "
                "ForkMaze world model, e.g. `sfplan fit env=fork_maze out=DIR` then --model DIR")
    env = (json.loads(wm.read_text()).get("env") or {}).get("id")
    if env and env != ENV:
        return f"--model {path} was trained on {env}: this benchmark plans on {ENV} (`sfplan fit env=fork_maze`)"
    return None


def write_time_fraction(report: dict) -> float:
    """All memory writes of the cell's episodes over all their planning time."""
    eps = report["episodes"]
    write = sum(e.get("memory_write_total_s", 0.0) for e in eps)
    plan = sum(e["plan_time_mean_s"] * e["decisions"] for e in eps)
    return float(write / plan) if plan > 0 else float("nan")


def side_by_side_gif(reports: dict, out: Path, seed: int) -> Path | None:
    """One episode as the two learned planners saw it: the ``no_memory`` cell's recorded GIF
    (observation | goal) beside the ``memory`` cell's, the shorter held on its last frame."""
    import imageio.v3 as iio

    videos = []
    for cell in ("no_memory", "memory"):
        hits = sorted((Path(reports[cell]["dir"]) / "gifs").glob(f"*seed{seed}.gif"))
        if not hits:
            return None
        videos.append(iio.imread(hits[0])[..., :3])  # (T, H, W, 3)
    n = max(len(v) for v in videos)
    videos = [np.concatenate([v, np.repeat(v[-1:], n - len(v), 0)]) for v in videos]
    gap = np.full((n, videos[0].shape[1], 6, 3), 255, np.uint8)
    path = out / "episode.gif"
    iio.imwrite(path, np.concatenate([videos[0], gap, videos[1]], axis=2), duration=100, loop=0)
    return path


def run(args) -> dict:
    import sfplan
    from sfplan.eval.report import git_commit, wilson_interval
    from sfplan.paths import portable
    from sfplan.training.fit import hardware

    out = Path(args.out)
    reports = {}
    for cell in args.cells:
        where = out / cell
        if not (where / "report.json").is_file():
            kw = cell_overrides(cell, args.model, args.memory)
            if args.budget:
                kw["budget"] = args.budget
            sfplan.evaluate(ENV, goal="recall", episodes=args.episodes, seed=args.seed, jobs=args.jobs,
                            out_dir=str(where), progress=False, max_gifs=args.gifs, **kw)
        rep = json.loads((where / "report.json").read_text())
        reports[cell] = {"dir": str(where), "report": rep}
    n = args.episodes
    summary = {"env": ENV, "goal": "recall", "episodes": n, "budget": args.budget or "task",
               "seeds": [args.seed, args.seed + n - 1],
               "model": args.model, "memory": args.memory, "cells": {}, "per_seed": {},
               "commit": git_commit(), "hardware": hardware(),
               "command": "python benchmarks/memory_planning.py " + " ".join(sys.argv[1:])}
    for cell, r in reports.items():
        eps = r["report"]["episodes"]
        k = sum(bool(e["success"]) for e in eps)
        summary["cells"][cell] = {"successes": k, "episodes": len(eps), "success_rate": k / max(1, len(eps)),
                                  "ci95": list(wilson_interval(k, len(eps))),
                                  "plan_time_per_decision_s": r["report"]["summary"]["plan_time_per_decision_s"]}
        summary["per_seed"][cell] = [int(bool(e["success"])) for e in eps]
        summary[SUCCESS_KEYS[cell]] = summary["cells"][cell]["success_rate"]
    if "memory" in reports:
        summary["write_time_fraction"] = write_time_fraction(reports["memory"]["report"])
        gif = side_by_side_gif(reports, out, args.seed) if {"memory", "no_memory"} <= set(reports) else None
        summary["gif"] = gif.name if gif else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(portable(summary), indent=1))
    (out / "README.md").write_text(table(summary))
    return summary


def table(s: dict) -> str:
    names = {"oracle": "oracle (simulator)", "random": "random actions", "no_memory": "learned, no memory",
             "memory": "learned + Temp-LoRA", "other_memory": "learned + Temp-LoRA written with another episode's leg"}
    lines = ["# Memory planning benchmark (ForkMaze recall)", "",
             f"Generated by `{s['command']}`. Evaluation seeds {s['seeds'][0]}-{s['seeds'][1]}, the same "
             "episodes in every cell; success: the agent within 0.5 m of the goal room's centre within the "
             "budget; 95% Wilson intervals.", "",
             "| cell | success | plan time / decision |", "|---|---|---|"]
    for cell, c in s["cells"].items():
        lo, hi = c["ci95"]
        lines.append(f"| {names[cell]} | {c['successes']}/{c['episodes']} ({c['success_rate']:.0%}) "
                     f"[{lo:.0%}, {hi:.0%}] | {c['plan_time_per_decision_s']:.2f} s |")
    if "write_time_fraction" in s:
        lines += ["", f"Memory writing: {s['write_time_fraction']:.1%} of the planning time (all writes of an "
                  "episode, the leg's included, over all its decisions)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a ForkMaze world model dir (e.g. `sfplan fit env=fork_maze`)")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    ap.add_argument("--memory", nargs="*", default=[], help="Temp-LoRA settings, key=value (configs/memory/temp_lora.yaml)")
    ap.add_argument("--gifs", type=int, default=2, help="GIFs kept per cell")
    ap.add_argument("--budget", type=int, default=None, help="env steps per episode (default: the task's, 80)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.seed < 100000:
        print("memory_planning: --seed must be >= 100000 (evaluation seeds; lower seeds are training data)",
              file=sys.stderr)
        return 2
    problem = check_model(args.model) if {"no_memory", "memory", "other_memory"} & set(args.cells) else None
    if problem:
        print(f"memory_planning: {problem}", file=sys.stderr)
        return 2
    s = run(args)
    print(table(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
