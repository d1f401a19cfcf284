"""Evaluation reports: report.json, report.md and an HTML page with one GIF per episode
(real frames beside the goal image)."""
from __future__ import annotations

import html
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from sfplan.eval.runner import EpisodeResult
from sfplan.io import atomic_write_text


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sensible at 0 and n)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The sfplan source tree's commit (with '-dirty' for local changes), if it is a git checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _protocol_summary(results: list[EpisodeResult], name: str) -> dict[str, Any]:
    """Success under protocol ``name`` over ``results``: count, rate, 95% CI, steps to success."""
    n = len(results)
    verdicts = [r.outcomes.get(name, {"success": r.success, "steps_to_success": r.steps if r.success else None})
                for r in results]
    k = sum(bool(v["success"]) for v in verdicts)
    arrive = [v["steps_to_success"] for v in verdicts if v["success"]]
    return {
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "success_rate_ci95": list(wilson_interval(k, n)),
        "steps_to_success_mean": float(np.mean(arrive)) if arrive else None,
        "steps_to_success_median": float(np.median(arrive)) if arrive else None,
    }


def summarise(results: list[EpisodeResult]) -> dict[str, Any]:
    """The report's summary: success under the selected protocol (``protocol``) at the top and
    under every protocol in ``protocols``, with steps to success and the final and minimum
    task distances, so a near miss and a fluke read differently."""
    n = len(results)
    plan_times = [t for r in results for t in r.plan_times]
    protocol = results[0].protocol if results else "first"
    names = list(results[0].outcomes) if results and results[0].outcomes else [protocol]
    protocols = {name: _protocol_summary(results, name) for name in names}
    final = [r.final_distance for r in results]
    least = [r.min_distance for r in results]
    return {
        "episodes": n,
        "protocol": protocol,
        "hold_steps": results[0].hold_steps if results else None,
        **protocols[protocol],
        "protocols": protocols,
        "steps_mean": float(np.mean([r.steps for r in results])) if n else 0.0,
        "final_distance_mean": float(np.mean(final)) if n else 0.0,
        "final_distance_median": float(np.median(final)) if n else 0.0,
        "min_distance_mean": float(np.mean(least)) if n else 0.0,
        "min_distance_median": float(np.median(least)) if n else 0.0,
        "plan_time_per_decision_s": float(np.mean(plan_times)) if plan_times else 0.0,
        "plan_time_per_decision_p90_s": float(np.percentile(plan_times, 90)) if plan_times else 0.0,
        **({"waypoints_passed_mean": float(np.mean([r.waypoints_passed for r in results]))}
           if any(r.waypoints for r in results) else {}),
    }


def episode_gif(result: EpisodeResult, path: Path, fps: int = 10, scale: int = 2) -> None:
    """GIF of the episode: real frame | (the waypoint being planned for, with waypoints) |
    goal image, side by side, upscaled ``scale``x, with a green (success) or red bar under
    the last frames."""
    import imageio.v3 as iio

    goal = result.goal
    wp, subs = result.waypoint_images, result.frame_subgoals
    panels = []
    for i, f in enumerate(result.frames):
        gap = np.full((f.shape[0], 2, 3), 255, np.uint8)
        middle = [wp[subs[min(i, len(subs) - 1)] if subs else 0], gap] if wp is not None else []
        row = np.concatenate([f, gap, *middle, goal], axis=1)
        bar = np.zeros((4, row.shape[1], 3), np.uint8)
        if i == len(result.frames) - 1:
            bar[:] = (40, 200, 60) if result.success else (220, 40, 40)
        panels.append(np.concatenate([row, bar], axis=0))
    panels += [panels[-1]] * max(1, fps // 2)  # hold the last frame
    video = np.stack(panels).repeat(scale, axis=1).repeat(scale, axis=2)
    iio.imwrite(path, video, duration=1000 / fps, loop=0)


def write_report(out_dir: str | os.PathLike, results: list[EpisodeResult], config: dict, meta: dict,
                 max_gifs: int = 20) -> dict:
    """Writes report.json, report.md, index.html and gifs/ep_XXX.gif; returns the report."""
    out = Path(out_dir)
    (out / "gifs").mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    gifs = []
    for i, r in enumerate(results[:max_gifs]):
        if r.frames:
            name = f"gifs/ep_{i:03d}_seed{r.seed}.gif"
            episode_gif(r, out / name)
            gifs.append(name)
    report = {
        "summary": summary,
        "episodes": [r.summary() for r in results],
        "config": config,
        "meta": {**meta, "git_commit": git_commit(), "python": platform.python_version(),
                 "platform": platform.platform()},
        "gifs": gifs,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=_jsonable))
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "index.html", render_html(report))
    return report


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def protocol_label(summary: dict, name: str | None = None) -> str:
    """``hold k`` or ``first``: protocol ``name`` (default: the one a report summary counts);
    summaries from before protocols existed counted ``first``."""
    name = name or summary.get("protocol", "first")
    return f"hold {summary['hold_steps']}" if name == "hold" else name


def search_of(config: dict) -> dict | None:
    """The search a report's ``config`` planned with (candidates, CEM iterations, horizon,
    steps executed per plan); None for a planner that draws no candidates (random)."""
    planner = config.get("planner") or {}
    if "num_samples" not in planner:
        return None
    return {"num_samples": planner["num_samples"], "iterations": planner.get("iterations", 1),
            "horizon": planner.get("horizon"), "execute": config.get("execute")}


def search_label(search: dict | None) -> str:
    """``search_of``'s dict as a table cell: ``16 x 2, horizon 6, executing 2``."""
    if not search:
        return "-"
    return (f"{search['num_samples']} x {search['iterations']}, horizon {search['horizon']}, "
            f"executing {search['execute']}")


def _headline(report: dict) -> list[tuple[str, str]]:
    s, m = report["summary"], report["meta"]
    protocol = s.get("protocol", "first")
    rows = []
    for name, p in s.get("protocols", {protocol: s}).items():
        lo, hi = p["success_rate_ci95"]
        arrive = p.get("steps_to_success_mean")
        label = protocol_label(s, name) + (" (counted)" if name == protocol else "")
        rows.append((f"success, {label}", f"{p['success_rate']:.1%} ({p['successes']}/{s['episodes']}), 95% CI "
                     f"[{lo:.1%}, {hi:.1%}]" + (f", arrives at step {arrive:.1f} (mean)" if arrive is not None else "")))
    return [
        ("task", str(m.get("task"))),
        ("planner", str(m.get("planner"))),
        ("world model", str(m.get("world_model"))),
        *rows,
        ("steps played (mean)", f"{s['steps_mean']:.1f} of budget {m.get('budget')}"),
        ("final / min distance (median)", f"{s['final_distance_median']:.4f} / {s['min_distance_median']:.4f}"),
        *([("waypoints passed (mean)", f"{s['waypoints_passed_mean']:.1f} of {m.get('waypoints')} (then the goal)")]
          if "waypoints_passed_mean" in s else []),
        ("plan time / decision", f"{s['plan_time_per_decision_s']:.3f} s (p90 {s['plan_time_per_decision_p90_s']:.3f} s)"),
        ("device", str(m.get("device"))),
        ("seeds", f"{m.get('seeds', [None])[0]}..{m.get('seeds', [None])[-1]}"),
        ("git commit", str(m.get("git_commit"))),
    ]


def render_markdown(report: dict) -> str:
    lines = ["# sfplan eval report", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _headline(report)]
    lines += ["", "## Episodes", "", "| # | seed | success | arrives at step | steps played | final distance | "
              "min distance | plan time (s) |", "|---|---|---|---|---|---|---|---|"]
    protocol = report["summary"].get("protocol", "first")
    for i, e in enumerate(report["episodes"]):
        arrive = e.get("outcomes", {}).get(protocol, {}).get("steps_to_success")
        lines.append(f"| {i} | {e['seed']} | {'yes' if e['success'] else 'no'} | "
                     f"{'-' if arrive is None else arrive} | {e['steps']} | {e['final_distance']:.4f} | "
                     f"{e['min_distance']:.4f} | {e['plan_time_mean_s']:.3f} |")
    return "\n".join(lines) + "\n"


def render_html(report: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _headline(report))
    eps = report["episodes"]
    cards = []
    for i, g in enumerate(report["gifs"]):
        e = eps[i]
        tag = "success" if e["success"] else "failure"
        cards.append(f'<figure class="{tag}"><img src="{html.escape(g)}" alt="episode {i}">'
                     f"<figcaption>ep {i} · seed {e['seed']} · {tag} · {e['steps']} steps · "
                     f"d={e['final_distance']:.3f}</figcaption></figure>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sfplan eval</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
figure{{display:inline-block;margin:6px;padding:4px;border:3px solid #ccc}}
figure.success{{border-color:#3c3}} figure.failure{{border-color:#d33}}
figcaption{{font-size:12px}} img{{image-rendering:pixelated}}</style></head>
<body><h1>sfplan eval report</h1><table>{rows}</table>
<p>Each GIF: the real frames (left) beside the goal image (right).</p>
{''.join(cards)}
</body></html>
"""

