"""Latent cache for the dynamics stage: every frame of a dataset encoded once by the
(frozen) VAE, stored in one safetensors file beside the run.

File ``OUT/latents-<key>.safetensors``; ``key`` hashes the VAE weights and latent
scale/shift and the dataset's shards (names and bytes), so another VAE or other data
gives another file. Tensors::

    latents        float32 (N_frames, C, h, w)   scaled posterior means, episodes back to back
    frame_offsets  int64   (E+1,)               episode e has frames [off[e], off[e+1])
    actions        float32 (N_steps, A)          episode e has actions [aoff[e], aoff[e+1])
    action_offsets int64   (E+1,)
    seeds          int64   (E,)
    motion         uint8   (N_frames, 1, h, w)  where the frame's pixels move (``pixel_motion_mask``)

Written to a temp file, fsync'ed and renamed into place: a cache file is complete or
absent. A cache that fails to load is rebuilt (it is derived data).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfplan.world_model.vae import FrameAutoencoder


@dataclass
class LatentCache:
    path: Path
    latents: torch.Tensor  # (N_frames, C, h, w)
    frame_offsets: torch.Tensor  # (E+1,)
    actions: torch.Tensor  # (N_steps, A)
    action_offsets: torch.Tensor  # (E+1,)
    seeds: torch.Tensor  # (E,)
    motion: torch.Tensor  # (N_frames, 1, h, w) uint8

    def rows_of(self, seeds) -> list[int]:
        pos = {int(s): i for i, s in enumerate(self.seeds.tolist())}
        return [pos[int(s)] for s in seeds]

    def episode(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(L+1, C, h, w) latents and (L, A) actions of cache row ``row``."""
        f0, f1 = int(self.frame_offsets[row]), int(self.frame_offsets[row + 1])
        a0, a1 = int(self.action_offsets[row]), int(self.action_offsets[row + 1])
        return self.latents[f0:f1], self.actions[a0:a1]


def vae_fingerprint(vae: FrameAutoencoder) -> str:
    h = hashlib.sha256()
    for k, v in sorted(vae.vae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{vae.scaling_factor!r}/{vae.shift_factor!r}".encode())
    return h.hexdigest()


def dataset_fingerprint(ds) -> str:
    """sha256 over the shards' names and bytes: a dataset rewritten with other content under
    the same names, sizes and seeds (e.g. NaN actions) gets another cache, never the old one."""
    h = hashlib.sha256()
    for s in ds.shards:
        h.update(f"{Path(s.path).name}:{_file_sha256(Path(s.path))}".encode())
    return h.hexdigest()


_FILE_SHA: dict[tuple, str] = {}  # (path, inode, size, mtime_ns) -> sha256: each shard hashed once per process


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FILE_SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_SHA[key] = h.hexdigest()
    return _FILE_SHA[key]


#: bumped when the file's tensors change: an older cache is never read as a complete one
CACHE_FORMAT = 2


def cache_path(out_dir: Path, ds, vae: FrameAutoencoder) -> Path:
    key = hashlib.sha256(f"{CACHE_FORMAT}:{vae_fingerprint(vae)}:{dataset_fingerprint(ds)}".encode()).hexdigest()[:16]
    return Path(out_dir) / f"latents-{key}.safetensors"


def load_cache(path: Path) -> LatentCache:
    from safetensors.torch import load_file

    t = load_file(str(path))
    return LatentCache(path, t["latents"], t["frame_offsets"], t["actions"], t["action_offsets"], t["seeds"],
                       t["motion"])


@torch.no_grad()
def build_cache(path: Path, ds, vae: FrameAutoencoder, batch_size: int = 256, progress: bool = True) -> LatentCache:
    """Encode every episode of ``ds`` (EpisodeDataset) and write the cache atomically."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from sfplan.world_model.video_diffusion import pixel_motion_mask

    lat, mov, acts, foff, aoff = [], [], [], [0], [0]
    for i in tqdm(range(len(ds)), desc="caching latents", unit="episode", disable=not progress, leave=False):
        ep = ds[i]
        z = vae.encode(ep.pixels, batch_size=batch_size).float().cpu()  # (L+1, C, h, w)
        lat.append(z)
        mov.append(pixel_motion_mask(torch.from_numpy(np.asarray(ep.pixels)), ep.pixels.shape[1] // z.shape[-1]))
        acts.append(torch.from_numpy(np.asarray(ep.actions, np.float32)))
        foff.append(foff[-1] + z.shape[0])
        aoff.append(aoff[-1] + ep.length)
    tensors = {
        "latents": torch.cat(lat).contiguous(),
        "frame_offsets": torch.tensor(foff, dtype=torch.int64),
        "actions": torch.cat(acts).contiguous(),
        "action_offsets": torch.tensor(aoff, dtype=torch.int64),
        "seeds": torch.as_tensor(ds.seeds, dtype=torch.int64),
        "motion": torch.cat(mov).to(torch.uint8).contiguous(),
    }
    meta = {"dataset": str(ds.path), "episodes": str(len(ds)), "latent_shape": json.dumps(list(vae.latent_shape)),
            "scaling_factor": repr(vae.scaling_factor), "shift_factor": repr(vae.shift_factor)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return LatentCache(path, **{k: v for k, v in tensors.items()})


def load_or_build(out_dir: Path, ds, vae: FrameAutoencoder, progress: bool = True,
                  is_main: bool = True, wait=None) -> tuple[LatentCache, bool]:
    """The cache for (ds, vae) in ``out_dir``: loaded if present and readable, else built
    (by the main process; ``wait`` is a barrier for the others). Returns (cache, built)."""
    path = cache_path(out_dir, ds, vae)
    built = False
    if is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if path.is_file():
            try:
                cache = load_cache(path)
            except Exception:  # corrupt: derived data, rebuild
                path.unlink()
                cache = None
        else:
            cache = None
        if cache is None:
            cache = build_cache(path, ds, vae, progress=progress)
            built = True
    if wait is not None:
        wait()
    if not is_main:
        cache = load_cache(path)
    return cache, built
