"""Hydra composition of the shipped configs (``sfplan.configs``), with errors that name the fix."""
from __future__ import annotations

from importlib import resources

from omegaconf import DictConfig, OmegaConf

from sfplan.errors import UserError

CONFIG_MODULE = "sfplan.configs"


class ConfigError(UserError):
    """A config or override the user can fix; the message says how."""


def config_options(group: str) -> list[str]:
    """Names of the options of a config group, e.g. ``config_options("planner")``."""
    root = resources.files(CONFIG_MODULE) / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with Hydra ``overrides`` (``key=value`` strings)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    overrides = list(overrides or [])
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
            raise ConfigError(
                f"unknown config key {key!r} for `sfplan {name}`. Valid top-level keys: "
                f"{', '.join(_top_keys(name))}. See every key with `sfplan {name} --cfg`; to add a new key "
                f"on purpose, prefix it with '+' (+{key}=...)."
            ) from None
        raise ConfigError(_first_line(e)) from None
    except OverrideParseException as e:
        raise ConfigError(f"cannot parse override: {_first_line(e)} (use key=value, e.g. episodes=10)") from None
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation pointing nowhere, etc.
        raise ConfigError(f"config does not resolve: {_first_line(e)}") from None
    return cfg


MISSING_HINTS = {
    "data.path": "a dataset directory written by `sfplan collect`",
    "world_model.path": "the model/ folder of a `sfplan train stage=dynamics` run",
    "model": "the model/ folder of a `sfplan train stage=dynamics` run",
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

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return sorted(compose(config_name=name).keys())
