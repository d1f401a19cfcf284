"""Each config dataclass is the one source of its defaults: a shipped YAML only departs from
them on purpose. Read as text (OmegaConf, nothing resolved or instantiated), so it is fast."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
# (YAML under configs/, the dataclass of its settings, keys the config holds besides them)
CASES = [
    ("world_model/learned.yaml", "sfplan.world_model.learned.SlowFastWorldModelConfig",
     {"kind"}),  # kind: read by `sfplan eval` (the env's search row), dropped before instantiation
]


@pytest.mark.parametrize("yaml_path,config_cls,extra", CASES, ids=[c[0] for c in CASES])
def test_yaml_only_departs_from_the_dataclass_defaults(yaml_path, config_cls, extra):
    cfg = OmegaConf.load(ROOT / "configs" / yaml_path)
    cls = get_class(config_cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    # the Hydra target's own arguments (e.g. load_world_model's path, device, task) are not settings
    target = inspect.signature(get_method(cfg._target_)).parameters.values()
    args = {p.name for p in target if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in defaults and k not in args | extra)
    assert not unknown, f"{yaml_path} sets {unknown}, which {cls.__name__} does not have"
    repeated = sorted(k for k in cfg if k in defaults and not OmegaConf.is_interpolation(cfg, k)
                      and cfg[k] == defaults[k])
    assert not repeated, (f"{yaml_path} repeats {cls.__name__}'s defaults for {repeated}: drop them (the dataclass "
                          f"is their one source) or change the dataclass")
