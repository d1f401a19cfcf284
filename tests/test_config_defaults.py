"""Each config dataclass is the one source of its defaults: a shipped YAML extends them
(``sfplan.config.SCHEMAS``) and only departs from them on purpose, yet every field can be set
by name on the command line."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from sfplan.config import SCHEMAS, dataclass_defaults, load_config

ROOT = Path(__file__).resolve().parents[1]


def _spec(spec) -> tuple[type, tuple[str, ...]]:
    cls, left_out = (spec, ()) if isinstance(spec, str) else spec
    return get_class(cls), tuple(left_out)


# (YAML under configs/, the node in it, the dataclass and the fields the stage takes from the data,
# keys the node holds besides the dataclass's)
CASES = [
    ("world_model/learned.yaml", "", ("sfplan.world_model.learned.SlowFastWorldModelConfig", ()),
     {"kind"}),  # kind: read by `sfplan eval` (the env's search row), dropped before instantiation
    *((f"{group}/{option}.yaml", package, spec, {"defaults", "idm_path"})  # idm_path: loaded by `sfplan eval`
      for (group, option), packages in SCHEMAS.items() for package, spec in packages.items()),
]
EVAL_GROUPS = ("planner", "cost", "memory")


@pytest.mark.parametrize("yaml_path,package,spec,extra", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_yaml_only_departs_from_the_dataclass_defaults(yaml_path, package, spec, extra):
    cfg = OmegaConf.load(ROOT / "configs" / yaml_path)
    node = OmegaConf.select(cfg, package) if package else cfg
    if node is None:
        return  # nothing departs here: the whole node comes from the dataclass
    cls, left_out = _spec(spec)
    defaults = dataclass_defaults(cls)
    # the Hydra target's own arguments (e.g. load_world_model's path, device, task) are not settings
    args = set()
    if "_target_" in node:
        target = inspect.signature(get_method(node._target_)).parameters.values()
        args = {p.name for p in target if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(k for k in node if not k.startswith("_") and k not in defaults and k not in args | extra)
    assert not unknown, f"{yaml_path} sets {unknown}, which {cls.__name__} does not have"
    assert not set(node) & set(left_out), f"{yaml_path} sets what the stage takes from the data: {left_out}"
    repeated = sorted(k for k in node if k in defaults and not OmegaConf.is_interpolation(node, k)
                      and node[k] == defaults[k])
    assert not repeated, (f"{yaml_path} repeats {cls.__name__}'s defaults for {repeated}: drop them (the dataclass "
                          f"is their one source) or change the dataclass")


@pytest.mark.parametrize("group,option", sorted(SCHEMAS), ids=[f"{g}/{o}" for g, o in sorted(SCHEMAS)])
def test_every_dataclass_setting_composes_with_its_default_and_overrides_by_name(group, option):
    """Each field is in the composed config, with the dataclass's value unless the YAML departs
    from it, and takes a plain ``key=value`` override (no ``+``)."""
    yaml = OmegaConf.load(ROOT / "configs" / group / f"{option}.yaml")
    if group in EVAL_GROUPS:
        command = ["eval", *(["world_model=learned"] if option == "video_plan" else []), f"{group}={option}"]
    else:
        command = ["train", f"{group}={option}", "data.path=x"]
    for package, spec in SCHEMAS[(group, option)].items():
        where = ".".join(p for p in (group if group in EVAL_GROUPS else "", package) if p)
        cls, left_out = _spec(spec)
        mine = OmegaConf.select(yaml, package) if package else yaml
        fields = {k: v for k, v in dataclass_defaults(cls).items() if k not in left_out}
        node = OmegaConf.select(load_config(command[0], command[1:]), where)
        for key, default in fields.items():
            assert key in node, f"{where} lacks {key}"
            if mine is None or key not in mine:
                assert node[key] == default, (key, node[key], default)
        numeric = [k for k, v in fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        key = next((k for k in numeric if mine is None or k not in mine), numeric[0])
        cfg = load_config(command[0], [*command[1:], f"{where}.{key}=7"])
        assert OmegaConf.select(cfg, f"{where}.{key}") == 7


@pytest.mark.parametrize("task", sorted(p.stem for p in (ROOT / "configs" / "env").glob("*.yaml")))
def test_every_search_row_setting_reaches_the_planner_cost_and_runner(task):
    # the per-world-model search row is the one place these live: a row's value must reach the
    # component that reads it on every task, not only on the tasks that spell it out
    from sfplan.config import load_config

    row = "env.search.learned"
    base = [f"env={task}", "world_model=learned", "cost=probe"] + (["env.id=sfplan/Reacher-v0"] if task == "custom" else [])
    cfg = load_config("eval", [*base, f"++{row}.cold_num_samples=7", f"++{row}.warm_fill=mid",
                               f"++{row}.terminal_weight=0.25"])
    assert cfg.planner.cold_num_samples == 7 and cfg.warm_fill == "mid" and cfg.cost.terminal_weight == 0.25
    plain = load_config("eval", base)
    assert plain.planner.cold_num_samples >= 0 and plain.warm_fill in ("last", "mid")
