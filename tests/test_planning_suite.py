"""Every cell of every benchmark suite composes to a valid, fully resolvable `sfplan eval`
config (a typo in a suite would otherwise surface only hours into a benchmark run)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import planning_suite  # noqa: E402

from sfplan.config import ConfigError, load_config  # noqa: E402

CELLS = [(name, *cell) for name, cells in planning_suite.SUITES.items() for cell in cells]


@pytest.mark.parametrize("suite,task,planner,world_model,extra", CELLS,
                         ids=[f"{c[0]}:{planning_suite.cell_dir(Path(), *c[1:]).name}" for c in CELLS])
def test_suite_cell_composes(suite, task, planner, world_model, extra, tmp_path):
    cell = planning_suite.cell_dir(tmp_path, task, planner, world_model, extra)
    cfg = load_config("eval", planning_suite.cell_overrides(task, planner, world_model, extra, 2, cell))
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation (search rows, costs) resolves
    assert resolved["env"]["id"].startswith("sfplan/") and resolved["episodes"] == 2
    assert resolved["world_model"]["kind"] == world_model.partition("+")[0]
    assert (resolved["memory"]["_target_"] is not None) == world_model.endswith("+temp_lora")
    for override in extra:  # each of the cell's own overrides took effect
        key, _, value = override.lstrip("+").partition("=")
        node = OmegaConf.select(cfg, key) if "." in key or key in cfg else None
        if key in ("cost", "planner", "world_model", "env", "memory"):
            continue  # config groups: checked through their content above
        assert (node is None if value == "null" else str(node) == value), \
            f"{suite}: {override} did not take effect ({key} = {node})"


def test_a_misspelt_cell_fails_to_compose(tmp_path):
    with pytest.raises(ConfigError):
        load_config("eval", planning_suite.cell_overrides("reacher", "cemm", "oracle", [], 2, tmp_path))
    with pytest.raises(ConfigError):
        load_config("eval", planning_suite.cell_overrides("reacher", "cem", "oracle", ["waypionts=4"], 2, tmp_path))
