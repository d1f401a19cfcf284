"""Your own env, end to end: wrap it, fit a world model, plan with it, imagine with it.

    python examples/own_env.py                 # a 3-minute fit: complete but poor (a smoke test)
    python examples/own_env.py --minutes 30    # a usable model on a 2-core CPU

The env here is Gymnasium's Reacher-v5 made a goal-image task; put your own in ``make_task``.
The same runs from the shell, with this file on PYTHONPATH (``cd examples``)::

    sfplan fit env.id=own_env:make_task out=outputs/own_env minutes=30
    sfplan eval world_model.path=outputs/own_env
    sfplan generate model=outputs/own_env
"""
import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import sfplan  # noqa: E402
from sfplan.envs import GoalImageWrapper  # noqa: E402


def fingertip(env) -> np.ndarray:
    """The goal descriptor of the current state: what success is measured on."""
    return env.unwrapped.get_body_com("fingertip")[:2].copy()


def goal_fn(env, rng) -> np.ndarray:
    """Drive the env from its start to a goal state (here: 30 random torques)."""
    for _ in range(30):
        env.step(rng.uniform(-1, 1, 2))
    return fingertip(env)


def success_fn(env, goal) -> float:
    """Read off simulator state: a distance (success below ``success_threshold``)."""
    return float(np.linalg.norm(fingertip(env) - goal))


def make_task() -> gym.Env:
    base = gym.make("Reacher-v5", render_mode="rgb_array", width=64, height=64, max_episode_steps=50)
    return GoalImageWrapper(base, goal_fn, success_fn, image_size=64, success_threshold=0.02,
                            descriptor_fn=fingertip)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--out", default="outputs/own_env")
    args = ap.parse_args()
    fit = sfplan.fit(make_task, out=args.out, minutes=args.minutes)  # = sfplan fit; resumes when run again
    print(open(os.path.join(args.out, "model", "README.md")).read())
    report = sfplan.evaluate(make_task, model=args.out, episodes=5, out_dir=f"{args.out}/eval/example")
    s = report["summary"]
    print(f"learned CEM: {s['successes']}/{s['episodes']} successes; report {report['out_dir']}/report.md")
    from sfplan.config import load_config
    from sfplan.generate import run_generate

    g = run_generate(load_config("generate", [f"model={args.out}/model", f"out_dir={args.out}/generate"]))
    print(f"imagined video: {g['out_dir']}/video.mp4")
