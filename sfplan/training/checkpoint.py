"""Training checkpoints: written atomically, verified on load, last K kept.

Layout of a run directory (``out_dir``)::

    OUT/
      config.yaml                 the resolved config of the first invocation
      checkpoints/
        step-00001000/
          model.safetensors       trainable weights (fp32, the unwrapped module's state_dict)
          ema.safetensors         EMA weights (what the final model is made of)
          training_state.pt       optimizer + LR scheduler state, RNG states (torch.save of
                                  tensors and plain Python values; loaded with weights_only=True)
          trainer_state.json      step, stage, config, recent losses, sha256 of every file above
        step-00002000/ ...
        .tmp-step-00003000-<pid>/ a checkpoint being written (ignored, removed on the next start)
      tb/                         TensorBoard event files
      samples/                    sample GIFs/PNGs written every ``sample_every`` steps
      latents-<key>.safetensors   (dynamics) latent cache of the dataset
      model/                      the final model (EMA weights), ``save_pretrained`` layout
      model_card.md

A checkpoint is written into a temp directory next to its final name, every file is
fsync'ed, then the directory is renamed into place (``os.replace``): a checkpoint
directory either is complete or does not exist. Older checkpoints beyond
``keep_checkpoints`` are renamed away before they are deleted, so a crash during the
clean-up never leaves a half-deleted checkpoint under a valid name. On load every file is
checked against the sha256 recorded in ``trainer_state.json``; a mismatch raises a
``CheckpointError`` that names the fix. A checkpoint counts as good only when its weights
are finite and below ``WEIGHT_LIMIT`` (``weight_problem``): the trainer writes no other,
and a loaded one that is not raises.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfplan.io import fsync_path
from sfplan.errors import UserError

FORMAT = "sfplan.train_checkpoint/1"
CKPT_RE = re.compile(r"^step-(\d{8})$")
FILES = ("model.safetensors", "ema.safetensors", "training_state.pt")
#: Largest |value| a good checkpoint's weights may hold. Every shipped model's weights stay
#: below 2; a diverging run's reach 1e30 while its loss is still finite. Far from both.
WEIGHT_LIMIT = 1e6


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the fix."""


def step_dir_name(step: int) -> str:
    return f"step-{int(step):08d}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under ``ckpt_root``, ascending by step."""
    if not ckpt_root.is_dir():
        return []
    out = []
    for p in ckpt_root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def clean_stale(ckpt_root: Path) -> int:
    """Remove temp/trash directories of interrupted writes; returns how many."""
    n = 0
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, numpy, python) as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except Exception:  # another number of GPUs: the per-step generators carry the randomness anyway
            pass


# ----------------------------------------------------------------------------- save / load
def _state_dict_for_file(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(ckpt_root: Path, step: int, model: torch.nn.Module, ema_model: torch.nn.Module,
                    training_state: dict, meta: dict, keep: int) -> Path:
    """Write ``ckpt_root/step-XXXXXXXX`` atomically; delete all but the newest ``keep``.

    training_state: optimizer/scheduler state dicts, RNG states etc. (torch-saveable with
    weights_only loading). meta: JSON-able (stage, config, losses)."""
    from safetensors.torch import save_file

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(_state_dict_for_file(model), str(tmp / "model.safetensors"))
        save_file(_state_dict_for_file(ema_model), str(tmp / "ema.safetensors"))
        torch.save(training_state, tmp / "training_state.pt")
        for f in FILES:
            fsync_path(tmp / f)
        info = {"format": FORMAT, "step": int(step), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta,
                "sha256": {f: sha256_file(tmp / f) for f in FILES}}
        (tmp / "trainer_state.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        fsync_path(tmp / "trainer_state.json")
        fsync_path(tmp)
        if final.exists():  # the same step saved again (e.g. on interrupt right after a save)
            trash = ckpt_root / f".trash-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for s, p in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
        trash = ckpt_root / f".trash-{p.name}-{os.getpid()}"
        os.replace(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return final


def weight_problem(state: dict[str, torch.Tensor]) -> str | None:
    """Why a state dict is not good weights (NaN/inf, or a value beyond WEIGHT_LIMIT), or None."""
    worst, where = 0.0, None
    for k, v in state.items():
        if not v.is_floating_point() or v.numel() == 0:
            continue
        if not bool(torch.isfinite(v).all()):
            return f"{k} holds NaN/inf"
        m = float(v.detach().abs().max())
        if m > worst:
            worst, where = m, k
    if worst > WEIGHT_LIMIT:
        return f"largest |weight| {worst:.3g} in {where}, beyond {WEIGHT_LIMIT:g}: the run diverged"
    return None


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    training_state: dict
    meta: dict


def _corrupt(path: Path, why: str, older: list[Path]) -> CheckpointError:
    alt = (f"delete it to resume from the previous checkpoint {older[-1].name}" if older
           else "delete it to start over")
    return CheckpointError(f"checkpoint {path} is corrupt or incomplete ({why}): {alt}, or train into a new "
                           f"out_dir (resume=never)")


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read and verify a checkpoint directory; raises CheckpointError naming the fix."""
    from safetensors.torch import load_file

    path = Path(path)
    m = CKPT_RE.match(path.name)
    older = [p for s, p in list_checkpoints(path.parent) if m and s < int(m.group(1))]
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: pass resume=auto (latest in out_dir), resume=never, or "
                              f"resume=<a checkpoints/step-XXXXXXXX directory>")
    try:
        meta = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        raise _corrupt(path, f"trainer_state.json unreadable: {type(e).__name__}", older) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, this sfplan reads {FORMAT!r}: "
                              f"train into a new out_dir (resume=never)")
    for f in FILES:
        if not (path / f).is_file():
            raise _corrupt(path, f"{f} missing", older)
        want = meta.get("sha256", {}).get(f)
        if want and sha256_file(path / f) != want:
            raise _corrupt(path, f"{f} does not match its recorded sha256", older)
    try:
        model = load_file(str(path / "model.safetensors"))
        ema = load_file(str(path / "ema.safetensors"))
        state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise _corrupt(path, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}", older) from None
    for name, weights in (("model", model), ("ema", ema)):
        bad = weight_problem(weights)
        if bad:  # written by a run that diverged (or an sfplan that did not check): never resume into it
            alt = (f"delete it to resume from the previous checkpoint {older[-1].name}" if older
                   else "delete it to start over")
            raise CheckpointError(f"checkpoint {path} does not hold good weights ({name}: {bad}): {alt} with a "
                                  f"lower lr, or train into a new out_dir (resume=never)")
    return LoadedCheckpoint(path, int(meta["step"]), model, ema, state, meta)
