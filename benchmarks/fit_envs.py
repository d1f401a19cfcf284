"""`sfplan fit` on an env with its defaults, then a paired learned / oracle / random eval.

    python benchmarks/fit_envs.py --name puck --env tests/user_env:puck_env:make_puck --out outputs/fit/puck \
        --minutes 30 --episodes 20
    python benchmarks/fit_envs.py --name reacher --env sfplan/Reacher-v0 --out outputs/fit/reacher --episodes 50
    python benchmarks/fit_envs.py --name puck --env ... --out outputs/fit/puck --fit-eval   # the fit's own eval
    python benchmarks/fit_envs.py --table          # benchmarks/results/fit/README.md from the JSON

``--env`` is an env spec as ``env.id`` takes it; ``DIR:spec`` first puts DIR on the path (an env
module that is not installed). The fit resumes when run again; each eval is skipped when its
report exists. Writes ``benchmarks/results/fit/<name>.json``: the fit summary (stages, derived
recipe, held-out quality, hardware), the model size, and the evaluations on the evaluation
seeds (100000 + i), learned / oracle / random each on the same episodes (the oracle on the first
``--oracle-episodes`` of them where given: its decisions simulate every candidate).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "fit"


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                       cwd=Path(__file__).resolve().parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args) -> dict:
    import sfplan
    from sfplan.eval.report import protocol_label

    spec = args.env
    if spec.count(":") >= 2 and not spec.startswith("sfplan/"):  # DIR:module:callable
        path, spec = spec.split(":", 1)
        sys.path.insert(0, str(Path(path).resolve()))
    out = Path(args.out)
    done = out / "fit.json"
    if args.fit_eval and done.is_file() and json.loads(done.read_text())["stages"].get("eval", {}).get("status"):
        fit = json.loads(done.read_text())  # a finished fit, reported as it ran
    else:
        fit = sfplan.fit(spec, out=str(out), minutes=args.minutes, progress=False)
    evals = {}
    per = {"learned": {"model": str(out)}, "oracle": {"world_model": "oracle"}, "random": {"planner": "random"}}
    for name in args.baselines:
        episodes = args.oracle_episodes if name == "oracle" and args.oracle_episodes else args.episodes
        where = out / "eval" / (name if args.fit_eval else f"bench_{name}_{episodes}")
        if not (where / "report.json").is_file() and not args.fit_eval:
            sfplan.evaluate(spec, episodes=episodes, out_dir=str(where), progress=False, max_gifs=4, jobs=args.jobs,
                            **per[name])
        rep = json.loads((where / "report.json").read_text())
        s = rep["summary"]
        evals[name] = {"protocol": protocol_label(s), "successes": s["successes"], "episodes": s["episodes"],
                       "success_rate": s["success_rate"],
                       "ci95": s["success_rate_ci95"], "plan_time_per_decision_s": s["plan_time_per_decision_s"],
                       "steps_mean": s["steps_mean"], "seeds": [rep["meta"]["seeds"][0], rep["meta"]["seeds"][-1]],
                       "search": _search(rep["config"])}
    model_mb = sum(f.stat().st_size for f in (out / "model").rglob("*") if f.is_file()) / 2**20
    res = {"name": args.name, "env": fit["env"], "minutes": fit["minutes"], "commit": _git_commit(),
           "hardware": fit["hardware"], "stages": fit["stages"], "recipe": fit["recipe"],
           "action_repeat": fit.get("motion", {}).get("action_repeat", 1),
           "quality": fit.get("quality"), "model_mb": model_mb, "eval": evals}
    RESULTS.mkdir(parents=True, exist_ok=True)
    from sfplan.paths import portable

    (RESULTS / f"{args.name}.json").write_text(json.dumps(portable(res), indent=1))
    return res


def _state_error(q: dict) -> str:
    se = q.get("state_error")
    if not se:
        return "n/a"
    return f"{se['model']:.3f} / {se['copy_last']:.3f}" + (f" ({se['truth']:.3f})" if "truth" in se else "")


def _search(cfg: dict) -> dict | None:
    """The search an eval planned with (its report's config); None for a planner without one."""
    planner = cfg.get("planner") or {}
    if "num_samples" not in planner:
        return None
    return {"num_samples": planner["num_samples"], "iterations": planner.get("iterations", 1),
            "horizon": planner.get("horizon"), "execute": cfg.get("execute")}


def _search_label(d: dict | None) -> str:
    s = (d or {}).get("search")
    return f"{s['num_samples']} x {s['iterations']}, H {s['horizon']}, exec {s['execute']}" if s else "not recorded"


def table() -> str:
    from sfplan.training.fit import quality_verdict

    rows = [r for r in (json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))) if "eval" in r]
    lines = ["# `sfplan fit` with its defaults, per env", "",
             "Generated by `python benchmarks/fit_envs.py --table` from the JSON beside this file. Protocol: "
             "`sfplan fit` with no knob set by hand, then CEM on the evaluation seeds (100000 + i), the same "
             "episodes for each world model; success under the env's own protocol (`first`: the first step "
             "within its radius; `hold k`: k steps in a row there); 95% Wilson intervals. Learned search: CEM "
             "candidates x iterations, horizon and steps executed per plan, in the model's steps, from the "
             "learned eval's report.", "",
             "| env | protocol | learned | oracle | random | budget / wall min | collect / vae / dynamics / probe / "
             "idm s | data, policy | model MB | learned search | s / decision (learned) | hardware |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev, st = r["eval"], r["stages"]

        def cell(name):
            d = ev.get(name)
            return f"{d['successes']}/{d['episodes']} ({d['ci95'][0]:.0%}-{d['ci95'][1]:.0%})" if d else "n/a"
        walls = " / ".join(f"{st.get(k, {}).get('wall_s', 0):.0f}" for k in ("collect", "vae", "dynamics", "probe",
                                                                              "idm"))
        c = st["collect"]
        learned = ev.get("learned", {}).get("plan_time_per_decision_s")
        hw = r["hardware"]
        walled = [d for d in st.values() if d.get("status") != "skipped"]
        total = f"{sum(float(d['wall_s']) for d in walled) / 60:.1f}" if all("wall_s" in d for d in walled) else "n/a"
        protocol = next((d.get("protocol", "first") for d in ev.values()), "first")
        lines.append(f"| {r['name']} (`{r['env']['id']}`) | {protocol} | {cell('learned')} | {cell('oracle')} | {cell('random')} "
                     f"| {r['minutes']:g} / {total} | {walls} | {c['dataset_episodes']} ep x {c['steps']} steps "
                     f"({c['dataset_mb']:.0f} MB), {c.get('policy', 'correlated')} | {r['model_mb']:.1f} | "
                     f"{_search_label(ev.get('learned'))} | "
                     f"{f'{learned:.2f}' if learned else 'n/a'} | {hw['cpu']} ({hw['isa']}), {hw['cores']} cores |")
    lines += ["", "Derived recipe and held-out quality (one chunk, model / copy-last; adherence = object PSNR "
              "true minus shuffled actions; state error: the distance between the probe's reading of the frames "
              "and the true state, in the task's units, where the env reports one; in brackets the probe's own "
              "error on the true frames; ready: the fit's verdict, `sfplan.training.fit.quality_verdict`):", "",
              "| env | action repeat | fg_weight (balance) | motion_weight | PSNR dB | object PSNR dB | adherence dB "
              "| state error | ready |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q, rc = r.get("quality") or {}, r["recipe"]
        if "psnr" in q:
            lines.append(f"| {r['name']} | {r.get('action_repeat', 1)} | {rc['fg_weight']:.1f} ({rc.get('fg_balance', 'pixel')}) | {rc['motion_weight']:.1f} | "
                         f"{q['psnr']['model']:.2f} / {q['psnr']['copy_last']:.2f} | {q['object_psnr']['model']:.2f} / "
                         f"{q['object_psnr']['copy_last']:.2f} | {q['adherence_margin_db']:+.2f} | {_state_error(q)} | "
                         f"{'no' if quality_verdict(q) else 'yes'} |")
    lines += search_table()
    text = "\n".join(lines) + "\n"
    (RESULTS / "README.md").write_text(text)
    return text


SEARCH = RESULTS.parent / "fit_search"  # one `sfplan eval` folder per cell: <env>__<tuning|evaluation>__<row>
SEARCH_ROWS = {"chunk_64": ["env.search.learned.horizon=8", "env.search.learned.execute=4",
                            "env.search.learned.num_samples=64"],
               "replan_16": ["env.search.learned.horizon=6", "env.search.learned.execute=2",
                             "env.search.learned.num_samples=16"]}


def search_table() -> list[str]:
    """The learned row's search on fitted models: one chunk executing half of it at 64 candidates
    against three quarters of it re-planned every 2 steps at 16 (cells run with
    ``sfplan eval ... <SEARCH_ROWS[row]> out_dir=benchmarks/results/fit_search/<env>__<split>__<row>``),
    paired episode by episode."""
    from sfplan.eval.report import protocol_label
    from tables import plan_time  # benchmarks/tables.py: seconds per decision with the threads it ran on

    cells = {}
    for f in sorted(SEARCH.glob("*/report.json")):
        env, split, row = f.parent.name.split("__")
        cells.setdefault((env, split), {})[row] = json.loads(f.read_text())
    if not cells:
        return []
    lines = ["", "Learned search on fitted models, the same episodes per row (`fit_search/`): success under the "
             "env's protocol, episodes reached only by this row / only by the other, time per decision (AMD EPYC "
             "AVX512-BF16, 2 cores); tuning seeds 60000 + i chose the generic row, evaluation seeds 100000 + i "
             "report it:", "",
             "| env | seeds | row | search | success | only this / only other | s / decision |",
             "|---|---|---|---|---|---|---|"]
    for (env, split), rows in cells.items():
        wins = {k: {e["seed"] for e in r["episodes"] if e["success"]} for k, r in rows.items()}
        for k, r in rows.items():
            s = r["summary"]
            other = [wins[o] for o in wins if o != k and o in SEARCH_ROWS]  # the other search row, paired
            only = f"{len(wins[k] - other[0])} / {len(other[0] - wins[k])}" if k in SEARCH_ROWS and other else "-"
            seeds = r["meta"]["seeds"]
            lo, hi = s["success_rate_ci95"]
            search = _search_label({"search": _search(r["config"])}) if k != "random" else "random actions"
            lines.append(f"| {env} | {split} {seeds[0]}-{seeds[-1]} | {k} | {search} "
                         f"| {s['successes']}/{s['episodes']} ({lo:.0%}-{hi:.0%}), {protocol_label(s)} | {only} | "
                         f"{plan_time(f'{SEARCH.name}/{env}__{split}__{k}') if k != 'random' else '-'} |")
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name")
    ap.add_argument("--env")
    ap.add_argument("--out")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--baselines", nargs="+", default=["learned", "oracle", "random"])
    ap.add_argument("--oracle-episodes", type=int, default=None,
                    help="fewer episodes for the oracle, whose decisions simulate every candidate (default: --episodes)")
    ap.add_argument("--jobs", type=int, default=1, help="episodes run side by side (sfplan eval jobs=)")
    ap.add_argument("--fit-eval", action="store_true", help="report the fit's own closing eval (same seeds for "
                    "each baseline, as many episodes as its share allowed) instead of running --episodes more")
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    if not a.table:
        run(a)
    print(table())
