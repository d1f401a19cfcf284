"""Which arm does the world model imagine the goal room down? ForkMaze recall without planning.

    python benchmarks/arm_recall.py --model outputs/fit/fork_maze/model --episodes 24 --seed 90000 \\
        --setting none --setting paper: \\
        --setting back:loss=masked,reverse=true,reverse_actions=negate,forward=false,lr=1e-3,steps_per_write=8

The question behind ``benchmarks/memory_planning.py``, asked directly and cheaply. For each
``sfplan/ForkMaze-v0`` ``goal=recall`` episode (the env as the model dir records it, its action
repeat included) the model sees the last frames of the leg (the still junction view) and
imagines ``--horizon`` steps straight down each of the four arms at full speed (one batch of four candidates, the same diffusion noise for every setting). The
arm whose imagined last frame is nearest the goal image under the planner's image cost
(``MultiScaleCost``) is the model's choice; a planner with this model and cost can only do
as well as this choice. Without memory the four arms look alike from the junction, so the
choice is a guess (1 in 4); a memory that holds the leg should pick the arm the leg came along.

A setting is ``none`` (no memory) or ``name:key=value,...`` over ``TempLoRAConfig`` fields:
the memory is reset and writes the leg (``SlowFastWorldModel.remember``, the leg's frames
and actions, the first frame as context: what ``sfplan eval`` does with an episode's past),
then the four arms are imagined. Each memory setting also runs the control: the leg of
another episode (``past="other"``: another goal room and room colours, the same junction view).

Measured per setting: the share of episodes whose choice is the goal arm (with its 95%
interval), the mean rank of the goal arm (0 best, 3 worst), seconds per leg write; and what the
memory stores of the leg itself: the way back (the leg played backwards from the junction under
its negated actions, the same motion a write with ``reverse_actions=negate`` trains on) imagined
against the true frames (PSNR), and the share of its last imagined frame in the goal room's
colour (the truth's share is reported beside it: a blank or corridor-only frame scores 0). Writes JSON
(``--out``), a markdown table, and a PNG of the first episode (rows: settings; columns: the
four arms' last imagined frames, then the goal image).
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

from memory_benchmark import parse_memory_settings  # noqa: E402  (benchmarks/ is on sys.path as a script)
from memory_planning import ENV, check_model  # noqa: E402


def parse_setting(text: str) -> tuple[str, dict | None]:
    """``none`` -> ("none", None); ``name:k=v,k=v`` -> (name, {k: v})."""
    if text == "none":
        return "none", None
    name, _, rest = text.partition(":")
    return name, parse_memory_settings([kv for kv in rest.split(",") if kv])


def bad_setting(texts: list[str]) -> str | None:
    """What is wrong with a ``--setting`` (before any model loads), or None."""
    from sfplan.errors import UserError
    from sfplan.memory.temp_lora import TempLoRAConfig

    for text in texts:
        try:
            name, settings = parse_setting(text)
            if settings is not None:
                TempLoRAConfig.from_any(settings).validate()
        except (UserError, ValueError, TypeError) as e:
            return (f"--setting {text!r}: {e} (none, or name:key=value,... over TempLoRAConfig, e.g. "
                    f"back:loss=masked,reverse=true,steps_per_write=8)")
    return None


def episodes(seeds: list[int], env_kwargs: dict) -> list[dict]:
    """Per seed: the leg (frames (T+1, H, W, 3), actions (T, A), in the model's steps: its
    ``action_repeat`` applies), another episode's leg (the control), the goal image and the goal
    arm. ``env_kwargs``: the model dir's recorded env kwargs."""
    from sfplan.envs.spec import make_env

    kw = {k: v for k, v in env_kwargs.items() if k not in ("goal", "past")}
    own = make_env(ENV, **kw, goal="recall")
    other = make_env(ENV, **kw, goal="recall", past="other")
    out = []
    for seed in seeds:
        obs, info = own.reset(seed=seed)
        _, info_o = other.reset(seed=seed)
        out.append({"seed": seed, "goal": obs["desired_goal"], "arm": int(own.unwrapped.goal_room),
                    "leg": (info["history_frames"], info["history_actions"]),
                    "other_leg": (info_o["history_frames"], info_o["history_actions"])})
    own.close(), other.close()
    return out


def goal_colour_fraction(frame: np.ndarray, goal: np.ndarray) -> float:
    """Share of the pixels of ``frame`` (H, W, 3) uint8 painted in the goal room's colour (either
    shade of its checkered floor; the goal image is that floor)."""
    rgb = np.median(goal.reshape(-1, 3).astype(float), axis=0)
    px = frame.reshape(-1, 1, 3).astype(float)
    shades = np.stack([rgb, 0.85 * rgb])[None]  # (1, 2, 3)
    return float((np.abs(px - shades).max(-1).min(-1) < 40).mean())


def back_along_the_leg(ep: dict, horizon: int) -> tuple[torch.Tensor, np.ndarray]:
    """The leg played backwards from the junction: actions (1, 1, H, A) (the leg's, negated, in
    reverse order: the inverse motion of velocity actions) and the true frames (H, H, W, 3)."""
    frames, actions = np.asarray(ep["leg"][0]), np.asarray(ep["leg"][1], np.float32)
    back = -actions[::-1][:horizon]
    truth = frames[::-1][1: horizon + 1]
    return torch.as_tensor(back.copy())[None, None], truth


def arm_costs(wm, cost, ep: dict, horizon: int, leg: tuple | None, seed: int) -> dict:
    """Write ``leg`` (when given) into the memory, imagine the four arms from the junction, and
    the way back along the episode's own leg -> {costs (4,) per arm, last (4, H, W, 3) uint8
    last imagined frame per arm, write_s, back_psnr (dB, the way back against the truth),
    back_colour (the goal colour's share of the way back's last imagined frame)}."""
    from sfplan.envs.fork_maze import ARMS
    from sfplan.eval.video_metrics import psnr

    write_s = 0.0
    if leg is not None:
        wm.reset_memory(seed)
        t0 = time.perf_counter()
        wm.remember(np.asarray(leg[0]), num_context=1, actions=np.asarray(leg[1], np.float32))
        write_s = time.perf_counter() - t0
    frames = np.asarray(ep["leg"][0])
    state = wm.encode(frames[None, -wm.context_frames:])  # the junction view: the episode's own last frames
    goal = wm.encode(ep["goal"][None, None]).features  # (1, C, h, w)
    acts = torch.as_tensor(np.repeat(ARMS[:, None, :], horizon, axis=1), dtype=torch.float32)[None]  # (1, 4, H, 2)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    im = wm.imagine(state, acts, generator=gen)
    c = cost(im, goal)[0].detach().cpu().numpy()  # (4,)
    last = wm.decode(im.features[0, :, -1]).numpy()  # (4, H, W, 3)
    back, truth = back_along_the_leg(ep, horizon)
    way = wm.decode(wm.imagine(state, back, generator=torch.Generator("cpu").manual_seed(int(seed))).features[0, 0])
    return {"costs": c, "last": last, "write_s": write_s,
            "back_psnr": float(psnr(way.numpy(), truth).mean()),
            "back_colour": goal_colour_fraction(way.numpy()[-1], ep["goal"])}


def run(args) -> dict:
    from sfplan.eval.report import git_commit, wilson_interval
    from sfplan.memory.temp_lora import TempLoRAConfig
    from sfplan.paths import portable
    from sfplan.planners.costs import MultiScaleCost
    from sfplan.training.fit import hardware
    from sfplan.world_model.learned import load_world_model

    torch.set_num_threads(args.threads)
    seeds = [args.seed + i for i in range(args.episodes)]
    model = Path(args.model).expanduser()
    model = model if (model / "world_model.json").is_file() else model / "model"
    env = json.loads((model / "world_model.json").read_text()).get("env") or {}
    eps = episodes(seeds, env.get("kwargs", {}))
    cost = MultiScaleCost(reduce="last")
    rows, pictures = {}, []
    for text in args.setting:
        name, settings = parse_setting(text)
        wm = load_world_model(str(model), device=args.device)  # fresh: one memory per model
        if settings is not None:
            wm.attach_memory(TempLoRAConfig.from_any(settings))
        arms = [("", "leg")] + ([("other", "other_leg")] if settings is not None else [])
        for suffix, key in arms:
            label = f"{name} ({suffix} episode's leg)" if suffix else name
            per, pic = [], None
            for ep in eps:
                a = arm_costs(wm, cost, ep, args.horizon, ep[key] if settings is not None else None, ep["seed"])
                c = a["costs"]
                per.append({"seed": ep["seed"], "arm": ep["arm"], "choice": int(np.argmin(c)),
                            "rank": int((c < c[ep["arm"]]).sum()), "costs": c.tolist(), "write_s": a["write_s"],
                            "back_psnr": a["back_psnr"], "back_colour": a["back_colour"]})
                if pic is None:
                    pic = np.concatenate([*a["last"], ep["goal"]], axis=1)
            k = sum(p["choice"] == p["arm"] for p in per)
            rows[label] = {"settings": settings, "correct": k, "episodes": len(per), "accuracy": k / len(per),
                           "ci95": list(wilson_interval(k, len(per))),
                           **{m: float(np.mean([p[m] for p in per]))
                              for m in ("rank", "write_s", "back_psnr", "back_colour")},
                           "per_episode": per}
            pictures.append(pic)
            r = rows[label]
            print(f"{label}: {k}/{len(per)} goal arm chosen, mean rank {r['rank']:.2f}, way back {r['back_psnr']:.2f} "
                  f"dB, goal colour {r['back_colour']:.0%}, write {r['write_s']:.1f} s", file=sys.stderr)
    truth_colour = float(np.mean([goal_colour_fraction(back_along_the_leg(ep, args.horizon)[1][-1], ep["goal"])
                                  for ep in eps]))
    res = {"env": ENV, "goal": "recall", "model": args.model, "horizon": args.horizon, "seeds": [seeds[0], seeds[-1]],
           "back_colour_truth": truth_colour,
           "cost": "multiscale (last frame)", "rows": rows, "commit": git_commit(), "hardware": hardware(),
           "threads": args.threads, "device": args.device,
           "command": "python benchmarks/arm_recall.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(portable(res), indent=1))
    (out / "README.md").write_text(table(res))
    import imageio.v3 as iio

    iio.imwrite(out / "first_episode.png", np.concatenate(pictures, axis=0))
    return res


def table(res: dict) -> str:
    lines = [f"# Arm recall (ForkMaze recall, horizon {res['horizon']}, seeds {res['seeds'][0]}-{res['seeds'][1]})", "",
             "Which of the four arms the model imagines nearest the goal image from the junction "
             "(chance: 1 in 4).", "",
             "| setting | goal arm chosen | 95% CI | mean rank of the goal arm | way back PSNR dB | goal colour, "
             "way back's last frame | write s / leg |", "|---|---|---|---|---|---|---|"]
    for label, r in res["rows"].items():
        lo, hi = r["ci95"]
        lines.append(f"| {label} | {r['correct']}/{r['episodes']} ({r['accuracy']:.0%}) | {lo:.0%}-{hi:.0%} | "
                     f"{r['rank']:.2f} | {r['back_psnr']:.2f} | {r['back_colour']:.0%} | {r['write_s']:.1f} |")
    lines += ["", f"Way back: the episode's own leg played backwards from the junction (its actions negated, in "
              f"reverse order), imagined and compared with the true frames; in the true last frame the goal room's "
              f"colour covers {res['back_colour_truth']:.0%} of the pixels."]
    lines += ["", f"Command: `{res['command']}`; {res['hardware']['cpu']}, {res['threads']} thread(s).",
              "`first_episode.png`: per row (setting), the four arms' last imagined frames (east, north, west, "
              "south), then the goal image."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a ForkMaze world model dir")
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--seed", type=int, default=90000, help="first seed (tuning: below 100000)")
    ap.add_argument("--horizon", type=int, default=8, help="imagined steps down each arm")
    ap.add_argument("--setting", action="append", default=None, help="none | name:key=value,... (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default="outputs/arm_recall")
    args = ap.parse_args(argv)
    args.setting = args.setting or ["none", "paper:"]
    problem = check_model(args.model) or bad_setting(args.setting)
    if problem:
        print(f"arm_recall: {problem}", file=sys.stderr)
        return 2
    return 0 if run(args) else 1


if __name__ == "__main__":
    sys.exit(main())
