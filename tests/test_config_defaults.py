"""Each config dataclass is the one source of its defaults: a shipped YAML only departs from
them on purpose. Read as text (OmegaConf, nothing resolved or instantiated), so it is fast."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from sfplan.config import SCHEMAS, dataclass_defaults, load_config

ROOT = Path(__file__).resolve().parents[1]
# (YAML under configs/, the dataclass of its settings, keys the config holds besides them)
CASES = [
    ("world_model/learned.yaml", "sfplan.world_model.learned.SlowFastWorldModelConfig",
     {"kind"}),  # kind: read by `sfplan eval` (the env's search row), dropped before instantiation
    *((f"{group}/{option}.yaml", cls, {"defaults", "idm_path"})  # idm_path: loaded by `sfplan eval`
      for (group, option), cls in SCHEMAS.items()),
]


@pytest.mark.parametrize("yaml_path,config_cls,extra", CASES, ids=[c[0] for c in CASES])
def test_yaml_only_departs_from_the_dataclass_defaults(yaml_path, config_cls, extra):
    cfg = OmegaConf.load(ROOT / "configs" / yaml_path)
    cls = get_class(config_cls)
    defaults = dataclass_defaults(cls)
    # the Hydra target's own arguments (e.g. load_world_model's path, device, task) are not settings
    target = inspect.signature(get_method(cfg._target_)).parameters.values()
    args = {p.name for p in target if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in defaults and k not in args | extra)
    assert not unknown, f"{yaml_path} sets {unknown}, which {cls.__name__} does not have"
    repeated = sorted(k for k in cfg if k in defaults and not OmegaConf.is_interpolation(cfg, k)
                      and cfg[k] == defaults[k])
    assert not repeated, (f"{yaml_path} repeats {cls.__name__}'s defaults for {repeated}: drop them (the dataclass "
                          f"is their one source) or change the dataclass")


@pytest.mark.parametrize("group,option", sorted(SCHEMAS), ids=[f"{g}/{o}" for g, o in sorted(SCHEMAS)])
def test_every_dataclass_setting_composes_with_its_default_and_overrides_by_name(group, option):
    """The YAML extends its dataclass's defaults (``<option>_defaults``): each field is in the
    composed config, with the dataclass's value unless the YAML departs from it, and takes a
    plain ``group.key=value`` override (no ``+``)."""
    cls = get_class(SCHEMAS[(group, option)])
    yaml = OmegaConf.load(ROOT / "configs" / group / f"{option}.yaml")
    base = ["world_model=learned"] if option == "video_plan" else []
    cfg = load_config("eval", [*base, f"{group}={option}"])
    node = cfg[group]
    for key, default in dataclass_defaults(cls).items():
        assert key in node, f"{group}={option} lacks {key}"
        if key not in yaml:
            assert node[key] == default, (key, node[key], default)
    numeric = [k for k, v in dataclass_defaults(cls).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    key = next((k for k in numeric if k not in yaml), numeric[0])
    cfg = load_config("eval", [*base, f"{group}={option}", f"{group}.{key}=7"])
    assert cfg[group][key] == 7
