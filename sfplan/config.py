"""Hydra composition of the shipped configs (``sfplan.configs``), with errors that name the fix."""
from __future__ import annotations

import functools
from importlib import resources

from omegaconf import DictConfig, OmegaConf, open_dict

from sfplan.errors import UserError

CONFIG_MODULE = "sfplan.configs"


class ConfigError(UserError):
    """A config or override the user can fix; the message says how."""


#: (group, option) -> {package: the dataclass that is the one source of the defaults there ("": the
#: option's own node), or (the dataclass, the fields a stage takes from the data instead)}. Each is
#: stored in Hydra's ConfigStore (``schema_name``); the option's YAML extends it (``defaults:
#: [<schema>@<package>, _self_]``) and sets only what departs from it (Hydra targets,
#: interpolations of the env's search settings, deliberate choices), yet every field can be
#: overridden by name.
SCHEMAS = {
    ("planner", "cem"): {"": "sfplan.planners.cem.CEMConfig"},
    ("planner", "mppi"): {"": "sfplan.planners.mppi.MPPIConfig"},
    ("planner", "random"): {"": "sfplan.planners.random_planner.RandomPlannerConfig"},
    ("planner", "random_shooting"): {"": "sfplan.planners.random_shooting.RandomShootingConfig"},
    ("planner", "video_plan"): {"": "sfplan.planners.video_plan.VideoPlanConfig"},
    ("cost", "multiscale"): {"": "sfplan.planners.costs.MultiScaleCostConfig"},
    ("cost", "pixel_mse"): {"": "sfplan.planners.costs.PixelMSECostConfig"},
    ("cost", "probe"): {"": "sfplan.planners.costs.ProbeCostConfig"},
    ("memory", "temp_lora"): {"": "sfplan.memory.temp_lora.TempLoRAConfig"},
    ("stage", "vae"): {"model": "sfplan.world_model.vae.VAEConfig"},
    ("stage", "dynamics"): {
        # the model's own settings (runtime ones, e.g. autocast, are the planner's: world_model/learned.yaml)
        "model.world_model": ("sfplan.world_model.learned.SlowFastWorldModelConfig",
                              ("return_frames", "autocast", "cast_weights")),
        "model.diffusion": ("sfplan.world_model.video_diffusion.VideoDiffusionConfig",
                            ("latent_channels", "action_dim", "max_context")),
        "model.schedule": "sfplan.world_model.sampler.NoiseScheduleConfig"},
    ("stage", "probe"): {"model": ("sfplan.world_model.probe.ProbeConfig", ("latent_channels", "latent_size", "out_dim"))},
    ("stage", "idm"): {"model": ("sfplan.world_model.idm.IDMConfig", ("latent_channels", "latent_size", "action_dim"))},
    ("stage", "distill"): {"model": "sfplan.world_model.one_step.OneStepConfig"},
}


def schema_name(option: str, package: str) -> str:
    """The ConfigStore name of ``option``'s schema at ``package`` (in the option's group)."""
    return f"{option}_{package.replace('.', '_')}_defaults" if package else f"{option}_defaults"


def dataclass_defaults(cls) -> dict:
    """{field: default} of a config dataclass (tuples as lists, as YAML has them)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        v = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "???")
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


@functools.cache
def _register_schemas() -> None:
    """Once per process: the ConfigStore is global."""
    from hydra.core.config_store import ConfigStore
    from hydra.utils import get_class

    cs = ConfigStore.instance()
    for (group, option), packages in SCHEMAS.items():
        for package, spec in packages.items():
            cls, left_out = (spec, ()) if isinstance(spec, str) else spec
            node = {k: v for k, v in dataclass_defaults(get_class(cls)).items() if k not in left_out}
            cs.store(group=group, name=schema_name(option, package), node=node)


def config_options(group: str) -> list[str]:
    """Names of the options of a config group, e.g. ``config_options("planner")``."""
    root = resources.files(CONFIG_MODULE) / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with Hydra ``overrides`` (``key=value`` strings).

    The env is named the same way in every command (``sfplan.envs.spec``): ``env=<task
    config>``, ``env.id=<sfplan task | Gymnasium id | module:callable>`` (an id that is not a
    shipped task config composes ``env=custom``, whose settings are derived from the env),
    ``env=path/to/my_env.yaml`` (a user's own env config, merged over ``env=custom``), or,
    for ``eval``, nothing but ``world_model.path=DIR``: the env recorded in the model dir."""
    overrides, user_env = _env_overrides(name, list(overrides or []))
    # env.kwargs are the env's own constructor arguments (and action_repeat): any key may be set
    overrides = [f"++{o}" if o.startswith("env.kwargs.") and "=" in o else o for o in overrides]
    cfg = _compose(name, overrides)
    model_kwargs = model_env_kwargs(name, overrides, cfg)
    if user_env is not None or model_kwargs:
        with open_dict(cfg):
            if user_env is not None:
                cfg.env = OmegaConf.merge(cfg.env, user_env)
            for k, v in model_kwargs.items():
                if not any(o.split("=", 1)[0].lstrip("+") == f"env.kwargs.{k}" for o in overrides):
                    cfg.env.kwargs[k] = v
    if name == "eval":
        _steps_under_action_repeat(cfg, overrides)
    if "env" in cfg and _has_auto(cfg.env):
        derive_env_settings(cfg)
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation pointing nowhere, etc.
        raise ConfigError(f"config does not resolve: {_first_line(e)}") from None
    return cfg


#: commands whose config has the ``env`` group
ENV_COMMANDS = ("eval", "collect", "fit")


def shipped_env_configs() -> dict[str, str]:
    """Env id -> name of the shipped task config (``configs/env/<name>.yaml``) for it."""
    root = resources.files(CONFIG_MODULE) / "env"
    out = {}
    for p in sorted(root.iterdir()):
        if p.name.endswith(".yaml") and p.name != "custom.yaml":
            env_id = OmegaConf.create(p.read_text()).get("id")
            out.setdefault(str(env_id), p.name[:-5])
    return out


def override_keys(overrides: list[str]) -> set[str]:
    """The keys a command line set (``env.id=x`` -> ``env.id``; ``env=pusher`` -> ``env``)."""
    return {_split(o)[0] for o in overrides if "=" in o}


def _split(o: str) -> tuple[str, str]:
    k, _, v = o.partition("=")
    return k.lstrip("+~"), v


def _model_dir_env(path: str) -> dict | None:
    """The ``env`` a world model dir (or training run dir) records, if any."""
    from sfplan.io import read_model_meta

    return read_model_meta(path).get("env")


def _steps_under_action_repeat(cfg: DictConfig, overrides: list[str]) -> None:
    """A task config's ``budget`` and ``hold_steps`` count the task's own env steps. Under an
    action repeat k (``env.kwargs.action_repeat``, e.g. the one a fit derived and its model dir
    records) one step of the wrapped env is k of them, so the episode gets budget / k steps and
    success is held hold_steps / k (rounded up): the same time in the task as without the
    repeat, so a learned model that plans at k and a baseline that does not are compared on
    equal terms. The search rows of the world models that step the task itself (every row but
    ``learned``, which counts the model's own steps) plan ``horizon`` and
    ``execute`` task steps likewise: a Pusher oracle row of 16 / 4 becomes 4 / 1 at k = 4, not
    64 / 16 task steps. Values given on the command line, and a budget derived from the wrapped
    env's own limit (``auto``), are steps of the wrapped env and kept."""
    k = int(cfg.env.kwargs.get("action_repeat", 1) or 1) if "env" in cfg else 1
    if k <= 1:
        return
    given = {_split(o)[0] for o in overrides if "=" in o}
    with open_dict(cfg):
        if "budget" not in given and str(cfg.env.get("budget")) != "auto":
            cfg.budget = -(-int(cfg.budget) // k)
        if "hold_steps" not in given:
            cfg.hold_steps = -(-int(cfg.hold_steps) // k)
        for kind, row in (cfg.env.get("search") or {}).items():
            for key in ("horizon", "execute"):
                if kind != "learned" and isinstance(row.get(key), int) and f"env.search.{kind}.{key}" not in given:
                    row[key] = -(-row[key] // k)


def _shipped_for(cfg: DictConfig) -> str | None:
    """The model shipped for the env, where the learned world model's ``path`` is null (its default)."""
    wm = cfg.get("world_model") or {}
    if wm.get("kind") != "learned" or wm.get("path") is not None:
        return None
    from sfplan.models import shipped_models

    shipped = shipped_models().get(str(OmegaConf.select(cfg, "env.id")))
    return str(shipped) if shipped is not None else None


def model_env_kwargs(name: str, overrides: list[str], cfg: DictConfig) -> dict:
    """``eval``: the env kwargs recorded in the learned model's dir (``world_model.path``, or with
    ``path: null`` the model shipped for the env) when the env is the one it was trained on
    (applied under the command line's own ``env.kwargs.*``): a model made at an action repeat
    plans at it."""
    if name != "eval":
        return {}
    path = dict(_split(o) for o in overrides if "=" in o).get("world_model.path") or _shipped_for(cfg)
    if not path:
        return {}
    rec = _model_dir_env(path) or {}
    if not rec.get("id") or OmegaConf.select(cfg, "env.id") not in (None, rec["id"]):  # another env: not its kwargs
        return {}
    return dict(rec.get("kwargs") or {})


def _env_overrides(name: str, overrides: list[str]) -> tuple[list[str], DictConfig | None]:
    """Turn the ways of naming an env into Hydra overrides; returns (overrides, the user's own
    env YAML to merge over ``env=custom`` or None)."""
    from pathlib import Path

    if name not in ENV_COMMANDS:
        return overrides, None
    keys = dict(_split(o) for o in overrides if "=" in o)
    choice = keys.get("env")
    if choice is not None and choice.endswith((".yaml", ".yml")):
        path = Path(choice).expanduser()
        if not path.is_file():
            raise ConfigError(f"env={choice}: no such file (a task config name, e.g. env=reacher, or the path of "
                              f"your own env YAML)")
        user = OmegaConf.load(path)
        if not isinstance(user, DictConfig) or not user.get("id"):
            raise ConfigError(f"env={choice}: the file must be a mapping with at least `id:` (an sfplan task, a "
                              f"Gymnasium id or module:callable); see configs/env/custom.yaml")
        rest = [o for o in overrides if _split(o)[0] != "env"]
        return ["env=custom", *rest], user
    if choice is None:
        env_id = keys.get("env.id")
        if env_id is None and name == "eval" and keys.get("world_model.path"):
            env_id = (_model_dir_env(keys["world_model.path"]) or {}).get("id")
            if env_id:
                overrides = [*overrides, f"env.id={env_id}"]
        if env_id:
            return [f"env={shipped_env_configs().get(env_id, 'custom')}", *overrides], None
    return overrides, None


def _has_auto(env: DictConfig) -> bool:
    rows = env.get("search") or {}
    return env.get("budget") == "auto" or any(v == "auto" for row in rows.values() for v in row.values())


#: the learned row's ``auto`` search: a small search re-planned often, horizon three quarters of the
#: model's chunk (6 of 8) executing 2 steps of each plan; with 16 candidates it planned better than one
#: chunk executing half of it at 64 candidates, at a fifth of the FLOPs, with the shipped Reacher and
#: PointMaze UMaze models and fitted ones (benchmarks/RESULTS.md#plan-time, benchmarks/results/fit/README.md)
AUTO_HORIZON_SHARE, AUTO_EXECUTE = 0.75, 2


def derive_env_settings(cfg: DictConfig) -> None:
    """Fill the ``auto`` settings of ``env=custom`` from the env itself (made once here, so a
    bad env fails with its fix before anything slow) and from the world model dir:
    ``budget`` (the env's TimeLimit, ``sfplan.envs.spec.derived_budget``), the learned row's
    ``horizon`` and ``execute`` (``AUTO_HORIZON_SHARE`` of the model's chunk, ``AUTO_EXECUTE``
    steps of each plan) and ``cost`` (the one a fit chose, recorded in the model dir's
    ``world_model.json`` under ``planning``; else ``probe`` where the model dir has one). The
    model dir is ``world_model.path``, or the model shipped for the env where it is null."""
    import json
    from pathlib import Path

    from sfplan.envs.spec import check_goal_image_env, derived_budget, make_env

    if cfg.env.get("id") in (None, "???") or OmegaConf.is_missing(cfg.env, "id"):
        raise ConfigError("env=custom needs env.id=<a Gymnasium id your package registers, or module:callable "
                          "returning a goal-image env>, e.g. env.id=my_tasks:make_puck")
    env = make_env(str(cfg.env.id), **OmegaConf.to_container(cfg.env.kwargs, resolve=True))
    try:
        got = check_goal_image_env(env, str(cfg.env.id))
    finally:
        env.close()
    model_dir = None
    wm = cfg.get("world_model")
    path = (wm.get("path") if wm is not None and wm.get("kind") == "learned" else None) or _shipped_for(cfg)
    if path:
        p = Path(str(path)).expanduser()
        model_dir = p if (p / "world_model.json").is_file() else p / "model"
    with open_dict(cfg):
        if cfg.env.get("budget") == "auto":
            cfg.env.budget = derived_budget(got["max_episode_steps"])
        row = cfg.env.search.learned
        chunk, meta = 8, {}
        if model_dir is not None and (model_dir / "world_model.json").is_file():
            meta = json.loads((model_dir / "world_model.json").read_text())
            chunk = int(meta.get("chunk_size", 8))
        if row.get("horizon") == "auto":
            row.horizon = max(1, round(AUTO_HORIZON_SHARE * chunk))
        if row.get("execute") == "auto":
            row.execute = min(AUTO_EXECUTE, int(row.horizon))
        if row.get("cost") == "auto":  # the cost a fit chose by its held-out check, else probe where there is one
            has_probe = model_dir is not None and (model_dir / "probe" / "config.json").is_file()
            row.cost = (meta.get("planning") or {}).get("cost") or ("probe" if has_probe else "multiscale")


def _compose(name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    _register_schemas()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
    except MissingConfigException as e:
        group = _group_of(str(e))
        hint = f" Options for '{group}': {', '.join(config_options(group))}." if group else ""
        raise ConfigError(f"{_first_line(e)}{hint}") from None
    except ConfigCompositionException as e:
        msg = str(e.__cause__ or e)
        if "not in struct" in msg or "Could not override" in str(e) or "Key '" in msg:
            key = _key_of(str(e))
            if key in _top_keys(name):  # a section given a value (env=reacher where env is a section)
                example = " (e.g. env.id=sfplan/Reacher-v0)" if key == "env" else ""
                raise ConfigError(f"{key} is a section of `sfplan {name}`, not a value: set its fields{example}; "
                                  f"see them with `sfplan {name} --cfg`") from None
            raise ConfigError(
                f"unknown config key {key!r} for `sfplan {name}`. Valid top-level keys: "
                f"{', '.join(_top_keys(name))}. See every key with `sfplan {name} --cfg`; to add a new key "
                f"on purpose, prefix it with '+' (+{key}=...)."
            ) from None
        raise ConfigError(_first_line(e)) from None
    except OverrideParseException as e:
        raise ConfigError(f"cannot parse override: {_first_line(e)} (use key=value, e.g. episodes=10)") from None
    return cfg


MISSING_HINTS = {
    "data.path": "a dataset directory written by `sfplan collect`",
    "world_model.path": "the model/ folder of a `sfplan train stage=dynamics` run",
    "model": "the model/ folder of a `sfplan train stage=dynamics` run",
    "out": "the folder the fit writes (model/, work/, eval/)",
}


def require_complete(cfg: DictConfig, name: str) -> None:
    """Raise a ConfigError naming every required value (``???``) left unset."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        what = "; ".join(f"{k}=<{MISSING_HINTS[k]}>" if k in MISSING_HINTS else f"{k}=..." for k in missing)
        raise ConfigError(f"`sfplan {name}` needs {', '.join(missing)}: set it on the command line ({what})")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0]


def _group_of(msg: str) -> str | None:
    # Hydra: "In 'eval': Could not find 'env/foo'" / "Could not load 'planner/foo'"
    import re

    m = re.search(r"'([a-z_]+)/[^']+'", msg)
    return m.group(1) if m else None


def _key_of(msg: str) -> str:
    import re

    m = re.search(r"override '([^']+)'", msg) or re.search(r"Key '([^']+)'", msg)
    return m.group(1) if m else "?"


def _top_keys(name: str) -> list[str]:
    from hydra import compose, initialize_config_module

    _register_schemas()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return sorted(compose(config_name=name).keys())
