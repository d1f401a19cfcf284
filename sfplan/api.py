"""Python entry points: the same runs as the CLI, on your own env, without writing a loop.

    import sfplan
    from my_tasks import make_puck            # returns a GoalImageWrapper

    sfplan.fit(make_puck, out="models/puck", minutes=30)            # = sfplan fit
    report = sfplan.evaluate(make_puck, model="models/puck", episodes=20)   # = sfplan eval
    report["summary"]["success_rate"]

``env`` is anything ``env.id`` takes (an sfplan task id, a Gymnasium id, ``"module:callable"``)
or the factory itself. Keyword arguments are the CLI's ``key=value`` overrides
(``planner="mppi"`` selects a config group; ``**{"env.kwargs.image_size": 64}`` sets a key).
Each call writes the same report or model dir as its command.
"""
from __future__ import annotations

import json
from typing import Any, Callable


def _env_spec(env: str | Callable) -> str:
    from sfplan.envs.spec import register_factory

    return env if isinstance(env, str) else register_factory(env)


def _overrides(values: dict[str, Any]) -> list[str]:
    out = []
    for k, v in values.items():
        if isinstance(v, (list, tuple, dict)) or v is None or isinstance(v, bool):
            v = json.dumps(v)
        out.append(f"{k}={v}")
    return out


def evaluate(env: str | Callable, model: str | None = None, **overrides) -> dict:
    """MPC toward goal images on ``env`` (``sfplan eval``) -> the report dict (also written
    to ``report.json``/``report.md`` under ``out_dir``). ``model``: a world model dir
    (``sfplan fit`` out= or a trained model); None with ``world_model="oracle"`` or
    ``planner="random"`` for the baselines, or the model shipped for an sfplan task."""
    from sfplan.config import load_config, require_complete
    from sfplan.eval.main import run_eval

    ov = [f"env.id={_env_spec(env)}", *_overrides(overrides)]
    if model is not None:
        ov.append(f"world_model.path={model}")
    cfg = load_config("eval", ov)
    require_complete(cfg, "eval")
    return run_eval(cfg)


def fit(env: str | Callable, out: str, minutes: float = 30, **overrides) -> dict:
    """Collect, train every stage, write the model card and run the closing eval
    (``sfplan fit``) -> the fit summary (``OUT/fit.json``). Running it again resumes."""
    from sfplan.config import load_config
    from sfplan.training.fit import run_fit

    spec = _env_spec(env)
    if spec.startswith("callable:"):  # an in-process factory cannot be made in worker processes
        overrides.setdefault("collect.workers", 1)
    cfg = load_config("fit", [f"env.id={spec}", f"out={out}", f"minutes={minutes}", *_overrides(overrides)])
    return run_fit(cfg)


__all__ = ["evaluate", "fit"]
