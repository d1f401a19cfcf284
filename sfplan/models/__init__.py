"""World models shipped with sfplan, one folder per task (``<task name>/``, e.g. ``Reacher-v0/``).

Each folder is a :class:`~sfplan.world_model.learned.SlowFastWorldModel` checkpoint (see
``learned.py`` for the layout) plus ``README.md``, its model card: data, command, steps,
hardware, time and held-out metrics. ``world_model=learned`` with ``path: null`` (the
default) loads the model shipped for the env being evaluated.
"""
from __future__ import annotations

from pathlib import Path

from sfplan.errors import UserError

ROOT = Path(__file__).resolve().parent


def shipped_models() -> dict[str, Path]:
    """Task id (``sfplan/<name>``) -> checkpoint folder, for every complete shipped model
    (not the hidden ``.<name>.tmp`` a ship that stopped midway leaves behind)."""
    return {f"sfplan/{d.name}": d for d in sorted(ROOT.iterdir())
            if d.is_dir() and not d.name.startswith(".") and (d / "world_model.json").is_file()}


def shipped_model_path(task_id: str) -> Path:
    """The shipped checkpoint for ``task_id`` (``sfplan/Reacher-v0`` or ``Reacher-v0``)."""
    name = str(task_id).split("/")[-1]
    models = shipped_models()
    path = models.get(f"sfplan/{name}")
    if path is None:
        have = ", ".join(models) or "none"
        raise UserError(
            f"no world model is shipped for {task_id!r} (shipped: {have}): train one "
            f"(`sfplan collect env=...`, then `sfplan train stage=vae` and `stage=dynamics`, see README) and pass "
            f"world_model.path=<run>/model, or plan with world_model=oracle"
        )
    return path


__all__ = ["shipped_models", "shipped_model_path", "ROOT"]
