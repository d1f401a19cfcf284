"""Atomic file writes: write beside the target, fsync, ``os.replace`` (a crash leaves the
old file or the new one, never half of one)."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (best effort: some filesystems refuse directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def atomic_dir(final: str | os.PathLike, write):
    """Run ``write(tmp_dir)`` on a fresh temp folder beside ``final``, then move it to
    ``final`` (replacing what is there): a reader sees the old folder or the whole new one.
    Returns what ``write`` returned."""
    import shutil

    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        out = write(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_pretrained_into(model, world_model_dir: str | os.PathLike, subdir: str) -> Path:
    """Write a diffusers ``ModelMixin`` to ``<world_model_dir>/<subdir>/`` atomically
    (``atomic_dir``): the IDM and the state probe live in a world model directory this
    way. Returns the directory."""
    from sfplan.errors import UserError

    wm = Path(world_model_dir).expanduser()
    if not (wm / "world_model.json").is_file():
        raise UserError(f"{wm} is not a world model directory (no world_model.json): attach_to must be the model/ "
                        f"folder of a `sfplan train stage=dynamics` run")
    atomic_dir(wm / subdir, lambda d: model.save_pretrained(str(d), safe_serialization=True))
    return wm / subdir


def read_model_meta(path: str | os.PathLike) -> dict:
    """A world model dir's ``world_model.json`` (``path`` the dir or the training run holding it
    as ``model/``); {} where there is none or it does not parse."""
    import json

    p = Path(path).expanduser()
    for f in (p / "world_model.json", p / "model" / "world_model.json"):
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except (OSError, ValueError):
                return {}
    return {}


def update_model_meta(model_dir: str | os.PathLike, **fields) -> None:
    """Set top-level fields of a world model dir's ``world_model.json`` (atomically)."""
    import json

    f = Path(model_dir) / "world_model.json"
    atomic_write_text(f, json.dumps({**json.loads(f.read_text()), **fields}, indent=2) + "\n")
