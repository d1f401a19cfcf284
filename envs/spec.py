"""One way to name an env, everywhere: ``make_env(spec, **kwargs)``.

An env spec is one of
- an sfplan task id (``sfplan/Reacher-v0``; ``sfplan info`` lists them),
- any Gymnasium id, registered by the user's package (``my_pkg/Puck-v0``; Gymnasium's
  ``"my_pkg:Puck-v0"`` form imports ``my_pkg`` first, which registers it),
- ``module:callable``: a zero-argument (or kwargs-taking) factory that returns a goal-image
  env, typically a ``GoalImageWrapper`` (``my_tasks:make_puck``).

Every command takes it as ``env.id=...`` with ``env.kwargs``. ``check_goal_image_env`` says
what a spec must give (pixels, a goal image, a Box action space) and names the fix where it
does not, before any slow work starts; ``episode_limit`` and ``derived_budget`` give the
budget of an env sfplan does not ship (``sfplan.config.derive_env_settings`` applies them).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sfplan.envs.wrappers import ActionRepeat, episode_limit
from sfplan.errors import UserError

#: In-process factories registered by ``register_factory`` (Python entry points that hand a
#: callable rather than a name), keyed by the spec string they are known under.
_FACTORIES: dict[str, Callable[..., gym.Env]] = {}

WRAP_HINT = ("wrap it as a goal-image task: sfplan.envs.GoalImageWrapper(gym.make(id, render_mode='rgb_array', "
             "width=64, height=64), goal_fn, success_fn, success_threshold=...) returned by a factory you name as "
             "env.id=my_module:make_env (see README, 'Your own env')")


def register_factory(factory: Callable[..., gym.Env]) -> str:
    """A spec string for a Python callable: ``module:qualname`` when it can be imported by
    that name (so worker processes can make it too), else an in-process key."""
    mod, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if mod == "__main__":  # a script's factory: its file is importable by name from the script's folder
        import sys
        from pathlib import Path

        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        mod = Path(main_file).stem if main_file else None
    if mod and name and "<" not in name:
        try:
            obj = _resolve_attr(mod, name)
            # a script's module imported by its file name defines a new, equivalent object
            if obj is factory or (callable(obj) and factory.__module__ == "__main__"):
                return f"{mod}:{name}"
        except (ImportError, AttributeError):
            pass
    key = f"callable:{id(factory)}"
    _FACTORIES[key] = factory
    return key


def _resolve_attr(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def is_factory_spec(spec: str) -> bool:
    """True for ``module:callable`` specs and in-process factories (not Gymnasium ids)."""
    if spec in _FACTORIES:
        return True
    if ":" not in spec or spec in gym.registry:
        return False
    mod, _, name = spec.partition(":")
    try:
        obj = _resolve_attr(mod, name)
    except ImportError as e:
        raise UserError(f"env.id={spec}: cannot import module {mod!r} ({e}); put it on PYTHONPATH (e.g. run from "
                        f"its folder) or install its package") from None
    except AttributeError:
        return False  # "module:EnvId": Gymnasium imports the module, which registers EnvId
    return callable(obj) and name not in gym.registry


def make_env(spec: str, **kwargs) -> gym.Env:
    """The env named by ``spec`` (see the module docstring), made with ``kwargs``; the key
    ``action_repeat`` (k, any env) is not passed on: the env is wrapped in ``ActionRepeat(env, k)``.

    Raises ``UserError`` naming the fix for an unknown id, an import error, a factory that
    raises or a bad ``action_repeat``."""
    import sfplan.envs  # noqa: F401  registers the sfplan/* tasks

    spec = str(spec)
    repeat = kwargs.pop("action_repeat", 1)
    if repeat is None:
        repeat = 1
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UserError(f"env.kwargs.action_repeat={repeat!r}: a whole number of env steps per action, >= 1")
    env = _make(spec, **kwargs)
    if repeat == 1:
        return env
    return ActionRepeat(env, repeat)


def _make(spec: str, **kwargs) -> gym.Env:
    if is_factory_spec(spec):
        factory = _FACTORIES.get(spec)
        if factory is None:
            mod, _, name = spec.partition(":")
            factory = _resolve_attr(mod, name)
        try:
            env = factory(**kwargs)
        except UserError:
            raise
        except TypeError as e:
            if kwargs:
                raise UserError(f"env.id={spec}: the factory does not take env.kwargs {sorted(kwargs)} ({e}); "
                                f"drop them or add the parameters to the factory") from None
            raise UserError(f"env.id={spec}: the factory raised {type(e).__name__}: {e}") from e
        except Exception as e:
            raise UserError(f"env.id={spec}: the factory raised {type(e).__name__}: {e}; fix the factory (call "
                            f"it in Python to see the traceback)") from e
        if not isinstance(env, gym.Env):
            raise UserError(f"env.id={spec}: the factory returned {type(env).__name__}, not a gymnasium.Env; "
                            f"{WRAP_HINT}")
        return env
    try:
        return gym.make(spec, **kwargs)
    except gym.error.Error as e:
        sf = sorted(k for k in gym.registry if k.startswith("sfplan/"))
        raise UserError(f"cannot make env {spec!r}: {e}. Name an sfplan task ({', '.join(sf)}), a Gymnasium id "
                        f"your package registers (env.id=my_pkg:MyEnv-v0 imports my_pkg first), or a factory "
                        f"(env.id=my_module:make_env)") from None
    except TypeError as e:
        raise UserError(f"cannot make env {spec!r} with env.kwargs {sorted(kwargs)}: {e}") from None


def check_goal_image_env(env: gym.Env, spec: str, seed: int = 0) -> dict:
    """Reset ``env`` once and check the goal-image contract; returns what was read:
    ``{"image_size", "action_low", "action_high", "state_dim", "max_episode_steps"}``
    (``state_dim`` 0 where ``info`` has no simulator ``state``).

    Raises ``UserError`` naming the fix for a non-Box action space, unbounded actions, an
    observation without ``pixels``, frames that are not square (H, H, 3) uint8, or no goal
    image."""
    space = env.action_space
    if not isinstance(space, spaces.Box):
        raise UserError(f"env.id={spec}: its action space is {type(space).__name__}; sfplan's planners search "
                        f"continuous actions and need a Box (wrap a discrete env with a continuous action adapter)")
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if space.shape is None or len(space.shape) != 1 or not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise UserError(f"env.id={spec}: the action space {space} must be a 1-D Box with finite bounds (planners "
                        f"sample within them); rescale the actions, e.g. gymnasium.wrappers.RescaleAction")
    obs, info = env.reset(seed=int(seed))
    if not isinstance(obs, dict) or "pixels" not in obs:
        keys = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise UserError(f"env.id={spec}: the observation ({keys}) has no 'pixels' image; {WRAP_HINT}")
    px = np.asarray(obs["pixels"])
    if px.ndim != 3 or px.shape[2] != 3 or px.dtype != np.uint8 or px.shape[0] != px.shape[1]:
        raise UserError(f"env.id={spec}: pixels are {px.shape} {px.dtype}; sfplan needs square (H, H, 3) uint8 "
                        f"frames (GoalImageWrapper(image_size=64) resizes any rgb_array render)")
    goal = obs.get("desired_goal", info.get("goal_pixels"))
    if goal is None or np.asarray(goal).shape != px.shape:
        raise UserError(f"env.id={spec}: no goal image of the pixels' shape (obs['desired_goal'] or "
                        f"info['goal_pixels']); {WRAP_HINT}")
    if "is_success" not in info:
        raise UserError(f"env.id={spec}: info has no 'is_success' (read off the simulator state); {WRAP_HINT}")
    max_steps = episode_limit(env)
    return {"image_size": int(px.shape[0]), "action_low": low.tolist(), "action_high": high.tolist(),
            "state_dim": int(np.asarray(info["state"]).size) if "state" in info else 0,
            "max_episode_steps": int(max_steps) if max_steps else None}


def can_label_states(env: gym.Env) -> bool:
    """Whether recorded simulator states can be labelled with the goal descriptor (what a
    state probe learns): sfplan tasks, and ``GoalImageWrapper``s given ``descriptor_fn``
    on a MuJoCo env."""
    inner = env.unwrapped
    if not callable(getattr(inner, "goal_descriptor_of", None)):
        return False
    if hasattr(inner, "descriptor_fn"):
        return inner.descriptor_fn is not None and bool(getattr(inner, "is_mujoco", False))
    return True


def derived_budget(max_episode_steps: int | None) -> int:
    """MPC budget of an env sfplan does not ship: its own episode length (TimeLimit), capped
    at 200 steps; 100 where it sets none."""
    return int(min(max_episode_steps, 200)) if max_episode_steps else 100


__all__ = ["make_env", "check_goal_image_env", "can_label_states", "register_factory", "is_factory_spec",
           "derived_budget"]
