"""The results tables of README.md and benchmarks/RESULTS.md, generated from the committed JSON.

    python benchmarks/tables.py           # rewrite the tables between their markers
    python benchmarks/tables.py --check   # exit 1 when a committed table differs from the JSON

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in its file. A cell
names one or more report folders under ``benchmarks/results/`` (``sfplan eval``'s
``report.json``); several are summed (e.g. a 50-episode result run as 20 + 30 seeds). The
hardware of each timing is named here, since a report records the platform, not the CPU.
``tests/test_docs.py`` runs ``--check``, so the tables cannot drift from the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sfplan.eval.report import protocol_label, wilson_interval

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

AVX2 = "AMD EPYC, 2 cores (AVX2, no AVX-512)"
AVX512 = "AMD EPYC, 2 cores (AVX512-BF16)"
SHARED = "2-core x86-64, shared"

# Headline: per task, the default planner (CEM) with the learned world model, the simulator as
# world model (oracle) and random actions, on the evaluation seeds (100000 + i). Plan times come
# from runs on an otherwise idle machine (the same planner settings as the success runs).
# the shipped UMaze model with its default search row (configs/env/pointmaze_umaze.yaml: re-plan every 2 steps, 16
# candidates) and 2 sampler steps (num_steps: 2 in its world_model.json)
_U1 = ("replan/pointmaze_umaze__cem__learned__world_model-num_steps-2__env-search-learned-num_samples-16"
       "__env-search-learned-horizon-6__env-search-learned-execute-2")
# the shipped Reacher model with its default search row (configs/env/reacher.yaml: re-plan every 2 steps, 16 candidates)
REACHER_DEFAULT = ("replan/reacher__cem__learned__world_model-num_steps-2__env-search-learned-num_samples-16"
                   "__env-search-learned-horizon-6__env-search-learned-execute-2")
HEADLINE = [
    dict(task="Reacher", goal="near", learned=[REACHER_DEFAULT],
         oracle=["headline/reacher__cem__oracle"], random=["headline/reacher__random__oracle"],
         time=REACHER_DEFAULT, hw=AVX512),
    dict(task="PointMaze UMaze", goal="near", learned=[_U1],
         oracle=["headline/pointmaze_umaze__cem__oracle"], random=["headline/pointmaze_umaze__random__oracle"],
         time=_U1, hw=AVX512, oracle_note="image cost"),
    dict(task="PointMaze UMaze", goal="far, 4 waypoint images",
         learned=[f"{_U1}__goal-far__waypoints-4"],
         oracle=["far_umaze/pointmaze_umaze__cem__oracle__goal-far__cost-probe__waypoints-4"],
         random=["far_umaze/pointmaze_umaze__random__oracle__goal-far"],
         time=f"{_U1}__goal-far__waypoints-4", hw=AVX512, oracle_note="probe cost"),
    dict(task="PointMaze Medium", goal="far, 10 waypoint images",
         learned=["far_medium/pointmaze_medium__cem__learned__goal-far__waypoints-10",
                  "far_medium/pmm_learned_far_w10_eval_100020"],
         oracle=["far_medium/pointmaze_medium__cem__oracle__goal-far__cost-probe__waypoints-10"],
         random=["far_medium/pointmaze_medium__random__oracle__goal-far"],
         time="far_medium/pmm_learned_far_w10_eval_100020", hw=SHARED, oracle_note="probe cost"),
    dict(task="MemoryMaze", goal="retrace, 8 waypoint images",
         learned=["memory_retrace/memory_maze__cem__learned__goal-retrace__waypoints-8",
                  "memory_retrace/memory_maze__cem__learned__goal-retrace__waypoints-8__seed-100010"],
         oracle=["memory_retrace/memory_maze__cem__oracle__goal-retrace__waypoints-8"],
         random=["memory_retrace/memory_maze__random__oracle__goal-retrace__waypoints-8"],
         time="memory_retrace/memory_maze__cem__learned__goal-retrace__waypoints-8", hw=SHARED,
         learned_note="not shipped"),
    dict(task="Pusher", goal="near", learned=None, oracle=["oracle_near_20/pusher__cem__oracle"],
         random=["oracle_near_20/pusher__random__oracle"], time=None, hw=None),
    # the shipped Lift model (a default `sfplan fit`), its task config's learned row derived from the model dir
    dict(task="robosuite Lift", goal="near", learned=["fit_search/lift__evaluation__replan_16"],
         oracle=["fit_search/lift__evaluation__oracle"], random=["fit_search/lift__evaluation__random"],
         time="fit_search/lift__evaluation__replan_16", hw=AVX512),
]

# Planners on the learned Reacher model (near goals, evaluation seeds 100000-100049).
PLANNERS = [
    ("CEM, probe cost (64 x 2 at horizon 8, re-planned every 4 steps)", "shipped", "reacher_dynamics8/shipped_default_eval"),
    ("CEM, image cost", "earlier weights", "learned_near_dyn4/reacher__cem__learned"),
    ("MPPI, image cost", "earlier weights", "planners_learned/reacher__mppi__learned"),
    ("video plan + IDM, scored by imagining the IDM's actions (`score=rollout`)", "earlier weights",
     "planners_learned/reacher__video_plan__learned__planner-score-rollout"),
    ("video plan + IDM, scored as generated (`score=video`, the paper)", "earlier weights",
     "planners_learned/reacher__video_plan__learned__planner-score-video"),
    ("CEM + Temp-LoRA (writes each executed chunk)", "earlier weights",
     "learned_near_dyn4/reacher__cem__learned+temp_lora"),
    ("CEM with the simulator as world model, the learned row's search, probe cost", "-",
     "reacher_same_search/reacher_oracle_learnedrow_probe_eval"),
    ("random actions", "-", "oracle_near/reacher__random__oracle"),
]

# Far goals: the goal image alone against waypoint images, per world model and cost.
FAR = {
    "far_umaze": ("PointMaze UMaze, far goals (75-step budget), evaluation seeds 100000-100049", 4, [
        ("learned (shipped), probe cost (default)", "pointmaze_umaze__cem__learned__goal-far",
         "pointmaze_umaze__cem__learned__goal-far__waypoints-4"),
        ("learned + Temp-LoRA", "pointmaze_umaze__cem__learned+temp_lora__goal-far", None),
        ("oracle, probe cost", "pointmaze_umaze__cem__oracle__goal-far__cost-probe",
         "pointmaze_umaze__cem__oracle__goal-far__cost-probe__waypoints-4"),
        ("oracle, image cost", "pointmaze_umaze__cem__oracle__goal-far",
         "pointmaze_umaze__cem__oracle__goal-far__waypoints-4"),
        ("random actions", "pointmaze_umaze__random__oracle__goal-far", None)]),
    "far_medium": ("PointMaze Medium, far goals across the maze (150-step budget), evaluation seeds "
                   "100000-100019", 10, [
        ("learned (shipped), probe cost (default)", "pointmaze_medium__cem__learned__goal-far",
         "pointmaze_medium__cem__learned__goal-far__waypoints-10"),
        ("oracle, probe cost", "pointmaze_medium__cem__oracle__goal-far__cost-probe",
         "pointmaze_medium__cem__oracle__goal-far__cost-probe__waypoints-10"),
        ("oracle, image cost, `subgoal_ratio=0.9`", "pointmaze_medium__cem__oracle__goal-far",
         "pointmaze_medium__cem__oracle__goal-far__waypoints-10__subgoal_ratio-0-9"),
        ("random actions", "pointmaze_medium__random__oracle__goal-far", None)]),
}

# Plan time per decision of the default Reacher planner (shipped model, its default search row, probe cost).
SPEED = [("replan/speed", AVX512, "bf16 denoiser (`world_model.autocast=auto`)"),
         # the same CPU as one without AVX-512: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
         # MKL_ENABLE_INSTRUCTIONS=AVX2 in the environment
         ("replan/speed_avx2_emulated", "AMD EPYC, 2 cores (AVX512-BF16 capped to AVX2 kernels)",
          "fp32 denoiser (`world_model.autocast=none`, what `auto` picks without bf16)")]

# Held-out quality of the shipped world models (benchmarks/world_model_quality.py, one chunk).
QUALITY = [("Reacher-v0", "wm_quality/Reacher-v0_dynamics8.json"),
           ("PointMazeUMaze-v0", "wm_quality/PointMazeUMaze-v0.json"),
           ("PointMazeMedium-v0", "wm_quality/PointMazeMedium-v0.json")]


def report(folder: str) -> dict:
    return json.loads((RESULTS / folder / "report.json").read_text())


def success(folders: list[str] | None, link: str | None, ci: bool = False) -> str:
    """``k/n (p%)`` over one or more report folders, linked to the first (``link``: the path
    prefix from the page to benchmarks/results/, None for no link)."""
    if not folders:
        return "-"
    k = sum(report(f)["summary"]["successes"] for f in folders)
    n = sum(report(f)["summary"]["episodes"] for f in folders)
    text = f"{k}/{n} ({k / n:.0%})"
    if ci:
        lo, hi = wilson_interval(k, n)
        text += f" [{lo:.0%}, {hi:.0%}]"
    if link is not None:
        text = f"[{text}]({link}{folders[0]}/report.json)"
    return text


def plan_time(folder: str) -> str:
    r = report(folder)
    jobs, threads = r["meta"].get("jobs", 1) or 1, r["meta"].get("torch_threads")
    how = f"{threads} thread{'s' if threads != 1 else ''}" + (f" x {jobs} episodes at once" if jobs > 1 else "")
    return f"{r['summary']['plan_time_per_decision_s']:.2f} s ({how})"


def protocol(folders: list[str] | None) -> str:
    """The success protocol a report counts."""
    return protocol_label(report(folders[0])["summary"]) if folders else "first"


def headline(link: str | None, ci: bool) -> str:
    lines = ["| task | goal | success | learned | oracle | random | learned plan time / decision | CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for row in HEADLINE:
        learned = success(row["learned"], link, ci)
        if row.get("learned_note"):
            learned += f", {row['learned_note']}"
        oracle = success(row["oracle"], link, ci)
        if row.get("oracle_note"):
            oracle += f", {row['oracle_note']}"
        t = plan_time(row["time"]) if row["time"] else "-"
        lines.append(f"| {row['task']} | {row['goal']} | {protocol(row['random'])} | {learned} | {oracle} "
                     f"| {success(row['random'], link, ci)} "
                     f"| {t} | {row['hw'] or '-'} |")
    return "\n".join(lines)


def planners(link: str) -> str:
    lines = ["| planner | dynamics weights | success [95% CI] | steps (mean) | plan time / decision |",
             "|---|---|---|---|---|"]
    for name, weights, folder in PLANNERS:
        r = report(folder)
        t = plan_time(folder) if "random" not in name else "-"
        lines.append(f"| {name} | {weights} | {success([folder], link, True)} | {r['summary']['steps_mean']:.1f} "
                     f"| {t} |")
    return "\n".join(lines)


def far(key: str, link: str) -> str:
    title, n_wp, rows = FAR[key]
    lines = [f"{title}:", "", f"| world model, cost | goal image only | + {n_wp} waypoint images "
             "| waypoints passed (mean) | plan time / decision |", "|---|---|---|---|---|"]
    for name, alone, wp in rows:
        wps = f"{report(f'{key}/{wp}')['summary'].get('waypoints_passed_mean') or 0:.1f} of {n_wp}" if wp else "-"
        t = plan_time(f"{key}/{wp or alone}") if "random" not in name else "-"
        lines.append(f"| {name} | {success([f'{key}/{alone}'], link, True)} "
                     f"| {success([f'{key}/{wp}'], link, True) if wp else '-'} | {wps} | {t} |")
    return "\n".join(lines)


def speed(link: str) -> str:
    lines = ["| CPU | denoiser | plan time / decision (mean, p90) | report |", "|---|---|---|---|"]
    for folder, cpu, how in SPEED:
        s = report(folder)["summary"]
        lines.append(f"| {cpu} | {how} | {s['plan_time_per_decision_s']:.2f} s, "
                     f"{s['plan_time_per_decision_p90_s']:.2f} s | [{folder}]({link}{folder}/report.json) |")
    return "\n".join(lines)


def quality(link: str) -> str:
    lines = ["| model | PSNR dB (copy-last) | object PSNR dB (copy-last) | SSIM | adherence dB (object PSNR, true - "
             "shuffled actions) | JSON |", "|---|---|---|---|---|---|"]
    for name, f in QUALITY:
        q = json.loads((RESULTS / f).read_text())
        m, c = q["one_chunk"]["model"], q["one_chunk"]["copy_last_frame"]
        a = q["adherence_one_chunk"]
        adh = a["true_actions"]["object_psnr"]["mean"] - a["shuffled_actions"]["object_psnr"]["mean"]
        lines.append(f"| {name} | {m['psnr']['mean']:.2f} ({c['psnr']['mean']:.2f}) | {m['object_psnr']['mean']:.2f} "
                     f"({c['object_psnr']['mean']:.2f}) | {m['ssim']['mean']:.3f} | {adh:+.2f} | [{Path(f).name}]"
                     f"({link}{f}) |")
    return "\n".join(lines)


# stable-worldmodel's evaluation (`planning_suite.py --suite peer`): goal 25 steps ahead, budget 50, `first`.
PEER = [("Reacher", "reacher"), ("PointMaze UMaze", "pointmaze_umaze")]
PEER_SUFFIX = "__goal-peer__budget-50__success-first"

# Levers on the Reacher decision (`planning_suite.py --suite decision_levers` / `one_step` / `coloured_noise` /
# `proposals`): (name, cell, the overrides that name its row in decision_flops.py's JSON; coloured noise costs no
# FLOPs, so it is timed as the student at 32). The undistilled 1-step cells ran before the shipped model carried its
# one_step/ part.
_S32 = ("+world_model.num_steps=1", "env.search.learned.num_samples=32")
_S32_CELL = "reacher__cem__learned__world_model-num_steps-1__env-search-learned-num_samples-32"
LEVERS = [("2 sampler steps, 64 candidates (horizon 8, re-plan every 4 steps: the rows' base)", "headline/reacher__cem__learned",
           ("+world_model.num_steps=2", "env.search.learned.num_samples=64")),
          ("2 sampler steps, 32 candidates",
           "decision_levers/reacher__cem__learned__world_model-num_steps-2__env-search-learned-num_samples-32",
           ("+world_model.num_steps=2", "env.search.learned.num_samples=32")),
          ("1 call of the undistilled model, 64 candidates", "decision_levers/reacher__cem__learned__world_model-num_steps-1",
           ("+world_model.num_steps=1", "env.search.learned.num_samples=64")),
          ("1 call of the undistilled model, 32 candidates", f"decision_levers/{_S32_CELL}", _S32),
          ("one-step student, 64 candidates", "one_step/reacher__cem__learned__world_model-num_steps-1",
           ("+world_model.num_steps=1", "env.search.learned.num_samples=64")),
          ("one-step student, 32 candidates", f"one_step/{_S32_CELL}", _S32),
          ("one-step student, 32 candidates, coloured noise (beta 2)", f"coloured_noise/{_S32_CELL}__planner-noise_beta-2",
           _S32),
          ("one-step student, 32 candidates (again, on the AVX512-BF16 CPU)", f"proposals/{_S32_CELL}", _S32),
          ("one-step student, 32 candidates, previous 4 elites kept", f"proposals/{_S32_CELL}__planner-keep_elites-4",
           (*_S32, "planner.keep_elites=4")),
          ("one-step student, 32 candidates, previous 4 elites kept, 128 in the first plan",
           f"proposals/{_S32_CELL}__env-search-learned-cold_num_samples-128__planner-keep_elites-4",
           (*_S32, "+env.search.learned.cold_num_samples=128", "planner.keep_elites=4")),
          ("one-step student, 32 candidates, horizon 6", f"proposals/{_S32_CELL}__env-search-learned-horizon-6",
           (*_S32, "env.search.learned.horizon=6"))]
# re-planning every 2 steps with a small search (`--suite replan`)
_R = ("env.search.learned.horizon=6", "env.search.learned.execute=2")
LEVERS += [(f"{what}, {n} candidates, horizon 6, re-plan every 2 steps{' (the default)' if k == 2 else ''}",
            f"replan/reacher__cem__learned__world_model-num_steps-{k}__env-search-learned-num_samples-{n}"
            "__env-search-learned-horizon-6__env-search-learned-execute-2",
            (f"+world_model.num_steps={k}", f"env.search.learned.num_samples={n}", *_R))
           for what, k, n in (("2 sampler steps", 2, 16), ("one-step student", 1, 32))]
# decision_flops.py's timings, one JSON per CPU
# (the emulated one: the AVX512-BF16 CPU with its kernels capped to AVX2 and the denoiser in fp32, --emulate-avx2)
LEVER_TIMINGS = ("one_step/decision_reacher.json", "one_step/decision_reacher_avx2emulated.json",
                 "one_step/decision_reacher_avx512bf16.json")
# PointMaze UMaze's one-step student (`planning_suite.py --suite one_step_umaze`, all cells on one machine)
_U = "one_step_umaze/pointmaze_umaze__cem__learned__world_model-num_steps-"
LEVERS_UMAZE = [("2 sampler steps, 64 candidates", f"{_U}2",
                 ("+world_model.num_steps=2", "env.search.learned.num_samples=64")),
                ("one-step student, 64 candidates", f"{_U}1",
                 ("+world_model.num_steps=1", "env.search.learned.num_samples=64")),
                ("one-step student, 32 candidates", f"{_U}1__env-search-learned-num_samples-32",
                 ("+world_model.num_steps=1", "env.search.learned.num_samples=32")),
                ("2 sampler steps, 16 candidates, horizon 6, re-plan every 2 steps (the default)", _U1,
                 ("+world_model.num_steps=2", "env.search.learned.num_samples=16", *_R))]
LEVER_TIMINGS_UMAZE = ("one_step/decision_pointmaze_umaze_avx2emulated.json", "one_step/decision_pointmaze_umaze_avx512bf16.json")

def peer(link: str) -> str:
    lines = ["| task | learned | oracle | random | steps to success, learned (mean) |", "|---|---|---|---|---|"]
    for name, task in PEER:
        cells = {k: f"peer/{task}__{k}{PEER_SUFFIX}" for k in ("cem__learned", "cem__oracle", "random__oracle")}
        have = {k: v for k, v in cells.items() if (RESULTS / v / "report.json").exists()}
        arrive = report(have["cem__learned"])["summary"].get("steps_to_success_mean") if "cem__learned" in have else None
        lines.append(f"| {name} | " + " | ".join(success([have[k]], link, True) if k in have else "not run"
                                                for k in cells) + f" | {'-' if arrive is None else f'{arrive:.1f}'} |")
    return "\n".join(lines)


def _mean_gflop(t: dict) -> float:
    """GFLOP per decision over an episode: the first plan and the re-plans (``decision_flops.py``);
    a row timed before re-plans were counted apart has one figure for both."""
    d = t.get("decisions_per_episode", 1)
    return (t.get("first_plan_gflop", t["gflop"]) + (d - 1) * t["gflop"]) / d


def levers(link: str, cells=LEVERS, timing_files=LEVER_TIMINGS) -> str:
    """A lever table: FLOPs per decision and idle time per decision on each CPU from
    ``decision_flops.py`` (one process per CPU, all threads, side by side), success from the
    suites' reports."""
    timings = [json.loads((RESULTS / f).read_text()) for f in timing_files if (RESULTS / f).exists()]
    rows = [{tuple(d["overrides"]): d for d in t["decisions"]} for t in timings]
    cols = "".join(f"s / decision, idle ({t['cpu']}, {t['isa']}, {t['decisions'][0]['threads']} threads) | "
                   for t in timings)
    lines = [f"| decision | GFLOP / decision | GFLOP / env step | {cols}success, hold 10 | success, first |",
             "|---|---|---|" + "---|" * len(timings) + "---|---|"]
    for name, folder, overrides in cells:
        if not (RESULTS / folder / "report.json").exists():
            continue
        timed = [r.get(overrides) for r in rows]
        gflop = max((_mean_gflop(t) for t in timed if t), default=None)
        times = []
        for t in timed:
            # seconds_per_decision: the episode's mean (first plan and re-plans); seconds_median: one plan
            sec = None if t is None else t.get("seconds_per_decision", t.get("seconds_median"))
            times.append("as the student's" if name.startswith("1 call") else "-" if sec is None else f"{sec:.2f}")
        s = report(folder)["summary"]
        first = s["protocols"]["first"]
        execute = next((t["execute"] for t in timed if t and "execute" in t), None)  # env steps a decision runs
        per_step = "-" if gflop is None or execute is None else f"{gflop / execute:.0f}"
        lines.append(f"| {name} | {'-' if gflop is None else f'{gflop:.0f}'} | {per_step} | "
                     f"{''.join(t + ' | ' for t in times)}"
                     f"{success([folder], link, True)} | "
                     f"{first['successes']}/{s['episodes']} ({first['success_rate']:.0%}) |")
    return "\n".join(lines)

def tables() -> dict[Path, dict[str, str]]:
    """{file: {table name: generated markdown}}."""
    readme, results = ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md"
    return {readme: {"headline": headline(None, ci=False)},
            results: {"headline": headline("results/", ci=True), "planners": planners("results/"),
                      "far_umaze": far("far_umaze", "results/"), "far_medium": far("far_medium", "results/"),
                      "speed": speed("results/"), "quality": quality("results/"), "peer": peer("results/"),
                      "levers": levers("results/"),
                      "levers_umaze": levers("results/", LEVERS_UMAZE, LEVER_TIMINGS_UMAZE)}}


def render(text: str, blocks: dict[str, str]) -> str:
    for name, body in blocks.items():
        start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
        if start not in text or end not in text:
            raise SystemExit(f"no {start} ... {end} markers")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{body}\n{end}{tail}"
    return text


def stale() -> list[str]:
    """The files whose committed tables differ from what the JSON gives."""
    return [str(p.relative_to(ROOT)) for p, blocks in tables().items() if render(p.read_text(), blocks) != p.read_text()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a committed table differs from the JSON")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for f in bad:
            print(f"{f}: its tables differ from benchmarks/results/ (run python benchmarks/tables.py)")
        return 1 if bad else 0
    for p, blocks in tables().items():
        p.write_text(render(p.read_text(), blocks))
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
