"""sfplan's episode dataset: the on-disk format (HDF5 shards) and its loaders.

Layout of a dataset directory::

    PATH/
      shard-00000-00049.h5      # one HDF5 file per shard: the episodes of seeds 0..49
      shard-00050-00099.h5
      .lock                     # held (flock) by a running `sfplan collect`
      .shard-00100-00149.h5.<pid>.tmp   # a shard being written; never read

A shard is written to a temp file in the same directory, fsync'ed and renamed into
place (``os.replace``), so a shard file either holds all its episodes or does not exist;
a crash loses at most the shard being written. Readers only open ``shard-*.h5``.

Schema of a shard (format ``sfplan.episodes``, version 1)::

    /                                attrs:
        format = "sfplan.episodes"   format_version = 1     sfplan_version
        env_id        (str)          env_kwargs (JSON str)  image_size (int)
        action_low, action_high (float32 (A,))              state_dim (int)
        policy (str)  policy_kwargs (JSON str)              steps_per_episode (int)
        seeds (int64 (N,))           n_episodes (int)       n_steps (int)
        created (ISO 8601 str)       source (str: "collect" | "minari:<id>")
        checksums = "fletcher32"     [absent in shards written before checksums]
    /episode_<seed:05d>/             attrs: seed, length L
        pixels       uint8   (L+1, H, W, 3)   frame t is the observation before action t
        actions      float32 (L, A)           the clipped actions actually stepped
        rewards      float32 (L,)
        terminations bool    (L,)
        truncations  bool    (L,)             True on the last step when the collector's
                                              horizon (steps=) ended the episode
        states       float64 (L+1, S)         simulator state (env.unwrapped.get_state())
                                              [optional: absent in imported data]
        goal_pixels  uint8   (H, W, 3)        the episode's goal image   [optional]
        goal_state   float64 (S,)             state the goal was rendered at [optional]
        is_success   bool    (L+1,)           info["is_success"]          [optional]
        distance     float32 (L+1,)           info["distance"]            [optional]

Pixels are chunked by episode (one chunk per episode, capped at ~1 MiB of frames so a
clip read decompresses little) with gzip level 1; the rest is small. Every dataset carries
HDF5's fletcher32 checksum per chunk: a flipped byte fails the read of its chunk (a
``DatasetError`` naming the shard and the fix), in training and in ``sfplan data info``,
which reads every chunk. Seeds are unique
across the dataset and stay below ``EVAL_SEED_START`` (100000): evaluation uses seeds from
there on, so no evaluation start state or goal is ever in the training data.

Loaders: ``EpisodeDataset(path)`` (episodes; ``len``, ``ds[i] -> Episode``, ``split``) and
``ClipDataset`` (a ``torch.utils.data.Dataset`` of fixed-length clips for training the
world model; ``ds.clips(frames=T)``). Why HDF5 and not Minari: see ``sfplan.data.collect``.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from sfplan.io import fsync_path
from sfplan.errors import UserError

FORMAT = "sfplan.episodes"
FORMAT_VERSION = 1
#: Evaluation seeds start here (``configs/eval.yaml``); collection seeds must stay below.
EVAL_SEED_START = 100_000
SHARD_GLOB = "shard-*.h5"
SHARD_RE = re.compile(r"^shard-(\d+)-(\d+)\.h5$")
TMP_SUFFIX = ".tmp"
REQUIRED_KEYS = ("pixels", "actions", "rewards", "terminations", "truncations")
OPTIONAL_KEYS = ("states", "goal_pixels", "goal_state", "is_success", "distance")
ROOT_ATTRS = ("format", "format_version", "env_id", "env_kwargs", "image_size", "action_low", "action_high",
              "policy", "seeds", "n_episodes", "n_steps")
GZIP_LEVEL = 1
CHUNK_BYTES = 1 << 20
CHECKSUM = "fletcher32"  # HDF5's per-chunk checksum filter


class DatasetError(UserError):
    """A dataset that cannot be read or does not match what was asked; the message names the fix."""


# ----------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------
@dataclass
class Episode:
    """One episode. L = number of steps; frame t is observed before action t.

    pixels (L+1, H, W, 3) uint8; actions (L, A) float32; rewards (L,) float32;
    terminations/truncations (L,) bool; states (L+1, S) float64 or None;
    goal_pixels (H, W, 3) uint8 or None; goal_state (S,) or None;
    is_success (L+1,) bool or None; distance (L+1,) float32 or None.
    """

    seed: int
    pixels: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    states: np.ndarray | None = None
    goal_pixels: np.ndarray | None = None
    goal_state: np.ndarray | None = None
    is_success: np.ndarray | None = None
    distance: np.ndarray | None = None
    policy: str | None = None

    @property
    def length(self) -> int:
        """Number of steps L (there are L+1 frames)."""
        return int(self.actions.shape[0])

    def validate(self) -> None:
        L = self.length
        H, W = self.pixels.shape[1:3]
        want = {"pixels": (L + 1, H, W, 3), "rewards": (L,), "terminations": (L,), "truncations": (L,)}
        for k, shape in want.items():
            if getattr(self, k).shape != shape:
                raise ValueError(f"episode {self.seed}: {k} has shape {getattr(self, k).shape}, expected {shape}")
        if self.pixels.dtype != np.uint8:
            raise ValueError(f"episode {self.seed}: pixels must be uint8, got {self.pixels.dtype}")
        if self.states is not None and self.states.shape[0] != L + 1:
            raise ValueError(f"episode {self.seed}: states has {self.states.shape[0]} rows, expected {L + 1}")


# ----------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------
def shard_name(first_seed: int, last_seed: int) -> str:
    return f"shard-{first_seed:05d}-{last_seed:05d}.h5"


def episode_key(seed: int) -> str:
    return f"episode_{seed:05d}"


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def check_collection_seeds(seeds: Sequence[int]) -> None:
    """Raise if a seed is negative or in the evaluation range (>= EVAL_SEED_START)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        return
    if min(seeds) < 0:
        raise UserError(f"collection seeds must be >= 0, got {min(seeds)}")
    if max(seeds) >= EVAL_SEED_START:
        raise UserError(
            f"collection seeds must stay below {EVAL_SEED_START} (evaluation uses seeds >= {EVAL_SEED_START}, "
            f"so training data never holds an evaluation start or goal); this run would use seeds "
            f"{min(seeds)}-{max(seeds)}: lower seed= or episodes= so that seed + episodes <= {EVAL_SEED_START}")


class ShardWriter:
    """Writes one shard atomically: episodes go into ``.<name>.<pid>.tmp`` in the target
    directory as they are added; ``close()`` writes the root attrs, fsyncs and renames it
    to ``<name>``. On an exception inside ``with`` the temp file is removed.

    Example::

        with ShardWriter(out_dir / shard_name(0, 9), meta) as w:
            for ep in episodes:
                w.add(ep)
    """

    def __init__(self, path: str | Path, meta: dict):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}{TMP_SUFFIX}")
        self.meta = dict(meta)
        self.seeds: list[int] = []
        self.n_steps = 0
        self._f = h5py.File(self.tmp, "w")

    def add(self, ep: Episode) -> None:
        ep.validate()
        check_collection_seeds([ep.seed])
        if ep.seed in self.seeds:
            raise ValueError(f"seed {ep.seed} is already in this shard")
        H, W = ep.pixels.shape[1:3]
        if H != self.meta["image_size"] or W != self.meta["image_size"]:
            raise ValueError(f"episode {ep.seed}: frames are {H}x{W}, shard image_size is {self.meta['image_size']}")
        g = self._f.create_group(episode_key(ep.seed))
        g.attrs["seed"] = int(ep.seed)
        g.attrs["length"] = ep.length
        frame_bytes = int(np.prod(ep.pixels.shape[1:]))
        chunk_t = max(1, min(ep.pixels.shape[0], CHUNK_BYTES // frame_bytes))
        put = functools.partial(g.create_dataset, fletcher32=True)  # a checksum per chunk
        put("pixels", data=ep.pixels, chunks=(chunk_t, *ep.pixels.shape[1:]), compression="gzip",
            compression_opts=GZIP_LEVEL)
        put("actions", data=np.asarray(ep.actions, np.float32))
        put("rewards", data=np.asarray(ep.rewards, np.float32))
        put("terminations", data=np.asarray(ep.terminations, bool))
        put("truncations", data=np.asarray(ep.truncations, bool))
        if ep.states is not None:
            put("states", data=np.asarray(ep.states, np.float64), compression="gzip", compression_opts=GZIP_LEVEL)
        if ep.goal_pixels is not None:
            put("goal_pixels", data=np.asarray(ep.goal_pixels, np.uint8))
        if ep.goal_state is not None:
            put("goal_state", data=np.asarray(ep.goal_state, np.float64))
        if ep.is_success is not None:
            put("is_success", data=np.asarray(ep.is_success, bool))
        if ep.distance is not None:
            put("distance", data=np.asarray(ep.distance, np.float32))
        self.seeds.append(int(ep.seed))
        self.n_steps += ep.length

    def close(self) -> Path:
        """Finish the shard: root attrs, fsync, rename into place. Returns its path."""
        a = self._f.attrs
        m = self.meta
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["sfplan_version"] = _sfplan_version()
        a["env_id"] = str(m["env_id"])
        a["env_kwargs"] = _json(m.get("env_kwargs") or {})
        a["image_size"] = int(m["image_size"])
        a["action_low"] = np.asarray(m["action_low"], np.float32)
        a["action_high"] = np.asarray(m["action_high"], np.float32)
        a["state_dim"] = int(m.get("state_dim", 0))
        a["policy"] = str(m.get("policy", "unknown"))
        a["policy_kwargs"] = _json(m.get("policy_kwargs") or {})
        a["steps_per_episode"] = int(m.get("steps_per_episode", 0))
        a["source"] = str(m.get("source", "collect"))
        a["checksums"] = CHECKSUM
        a["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        a["seeds"] = np.asarray(self.seeds, np.int64)
        a["n_episodes"] = len(self.seeds)
        a["n_steps"] = int(self.n_steps)
        if "config" in m:
            a["config"] = _json(m["config"])
        self._f.close()
        self._f = None
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists; seeds must not overlap")
        os.replace(self.tmp, self.path)
        fsync_path(self.path.parent)
        return self.path

    def abort(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except Exception:
                pass
            self._f = None
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        try:
            self.close()
        except BaseException:
            self.abort()
            raise
        return False


def _sfplan_version() -> str:
    from sfplan import __version__

    return __version__


def temp_files(path: str | Path) -> list[Path]:
    """Leftover temp files of interrupted writers in a dataset directory."""
    p = Path(path)
    return sorted(p.glob(f".shard-*{TMP_SUFFIX}")) if p.is_dir() else []


# ----------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------
@dataclass
class ShardInfo:
    path: Path
    attrs: dict
    seeds: np.ndarray  # (N,) int64
    lengths: np.ndarray  # (N,) int64
    keys: frozenset  # datasets present in every episode


def _fix_hint(path: Path) -> str:
    # append=true takes the dataset's env, steps, policy and first seed, so this collects
    # exactly the deleted shard's seeds (the first ones the dataset lacks)
    m = SHARD_RE.match(path.name)
    n = f"episodes={int(m.group(2)) - int(m.group(1)) + 1} " if m else ""
    return (f"delete {path} (the other shards stay usable) and re-collect those seeds with "
            f"`sfplan collect append=true {n}out={path.parent}`")


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read shard {path}: it is corrupt or truncated ({_first_line(e)}); "
                           f"{_fix_hint(path)}") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    if "filter returned failure" in s:  # fletcher32 (or gzip) refused a chunk
        return "a checksum does not match: bytes of the file changed on disk"
    return s.splitlines()[0] if s else type(e).__name__


def _decode_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_shard_info(path: str | Path) -> ShardInfo:
    """Open a shard, check its schema and return its index (no pixel data read)."""
    path = Path(path)
    with _open(path) as f:
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise DatasetError(f"{path} is not an sfplan dataset shard (format attr {attrs.get('format')!r}); "
                               f"remove it from the dataset directory, or import Minari data with "
                               f"`sfplan data import-minari`")
        missing = [k for k in ROOT_ATTRS if k not in attrs]
        if missing:
            raise DatasetError(f"shard {path} lacks the attributes {missing}: it was not finished by an sfplan "
                               f"writer; {_fix_hint(path)}")
        if int(attrs["format_version"]) > FORMAT_VERSION:
            raise DatasetError(f"shard {path} has format version {attrs['format_version']}, newer than this "
                               f"sfplan ({FORMAT_VERSION}); upgrade sfplan")
        for k in ("env_kwargs", "policy_kwargs", "config"):
            if k in attrs:
                attrs[k] = json.loads(attrs[k])
        seeds = np.asarray(attrs["seeds"], np.int64).reshape(-1)
        if len(seeds) != int(attrs["n_episodes"]):
            raise DatasetError(f"shard {path}: {len(seeds)} seeds but n_episodes={attrs['n_episodes']}; "
                               f"{_fix_hint(path)}")
        S = int(attrs["image_size"])
        lengths, keysets = [], []
        for s in seeds:
            name = episode_key(int(s))
            if name not in f:
                raise DatasetError(f"shard {path} lacks episode {name}; {_fix_hint(path)}")
            g = f[name]
            keys = set(g.keys())
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise DatasetError(f"shard {path}, {name}: missing keys {missing} (required: "
                                   f"{list(REQUIRED_KEYS)}); {_fix_hint(path)}")
            L = int(g["actions"].shape[0])
            px = g["pixels"].shape
            if px[0] != L + 1 or px[1:] != (S, S, 3) or g["pixels"].dtype != np.uint8:
                raise DatasetError(f"shard {path}, {name}: pixels have shape {px} {g['pixels'].dtype}, expected "
                                   f"({L + 1}, {S}, {S}, 3) uint8; {_fix_hint(path)}")
            for k in ("rewards", "terminations", "truncations"):
                if g[k].shape != (L,):
                    raise DatasetError(f"shard {path}, {name}: {k} has shape {g[k].shape}, expected ({L},); "
                                       f"{_fix_hint(path)}")
            if "states" in keys and g["states"].shape[0] != L + 1:
                raise DatasetError(f"shard {path}, {name}: states has {g['states'].shape[0]} rows, expected "
                                   f"{L + 1}; {_fix_hint(path)}")
            lengths.append(L)
            keysets.append(keys)
    common = frozenset.intersection(*map(frozenset, keysets)) if keysets else frozenset(REQUIRED_KEYS)
    return ShardInfo(path, attrs, seeds, np.asarray(lengths, np.int64), common)


def _meta_of(info: ShardInfo) -> dict:
    a = info.attrs
    return {
        "env_id": a["env_id"],
        "env_kwargs": a["env_kwargs"],
        "image_size": int(a["image_size"]),
        "action_low": np.asarray(a["action_low"], np.float32),
        "action_high": np.asarray(a["action_high"], np.float32),
        "state_dim": int(a.get("state_dim", 0)),
    }


def check_compatible(meta: dict, other: dict, what: str, fix: str) -> None:
    """Raise DatasetError if two shard metas (``_meta_of``) describe different data."""
    for k in ("env_id", "image_size", "state_dim"):
        if meta[k] != other[k]:
            raise DatasetError(f"{what}: {k} is {other[k]!r}, the dataset's is {meta[k]!r}; {fix}")
    if _json(meta["env_kwargs"]) != _json(other["env_kwargs"]):
        diff = sorted(k for k in set(meta["env_kwargs"]) | set(other["env_kwargs"])
                      if meta["env_kwargs"].get(k) != other["env_kwargs"].get(k))
        raise DatasetError(f"{what}: env kwargs differ in {diff} ({other['env_kwargs']} vs the dataset's "
                           f"{meta['env_kwargs']}); {fix}")
    if meta["action_low"].shape != other["action_low"].shape or not (
            np.allclose(meta["action_low"], other["action_low"]) and np.allclose(meta["action_high"],
                                                                                 other["action_high"])):
        raise DatasetError(f"{what}: action bounds [{other['action_low']}, {other['action_high']}] differ from the "
                           f"dataset's [{meta['action_low']}, {meta['action_high']}]; {fix}")


def list_shards(path: str | Path) -> list[Path]:
    """The shard files of a dataset directory (or ``[path]`` for a single shard file)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DatasetError(f"no dataset at {p}: make one with `sfplan collect out={p}`")
    return sorted(x for x in p.glob(SHARD_GLOB) if x.is_file())


class EpisodeDataset:
    """All episodes of a dataset directory (every ``shard-*.h5``), sorted by seed.

    Args:
        path: dataset directory (or one shard file).
        image_size: if given, the frame size the caller needs; a dataset of another size
            raises a ``DatasetError`` naming the fix.
        env_id: if given, the task the caller needs (same check).
        preload: read every episode into memory now (fast training on small datasets).

    ``len(ds)`` episodes; ``ds[i]`` -> ``Episode``; ``ds.seeds``, ``ds.lengths``,
    ``ds.num_steps``, ``ds.meta``; ``ds.split(val_fraction)`` -> (train, val) by seed;
    ``ds.clips(frames=T)`` -> ``ClipDataset``. File handles are opened lazily per
    process, so the dataset can be handed to DataLoader workers (fork or spawn).
    """

    def __init__(self, path: str | Path, *, image_size: int | None = None, env_id: str | None = None,
                 preload: bool = False, _shards: list[ShardInfo] | None = None, _index: np.ndarray | None = None):
        self.path = Path(path)
        if _shards is None:
            files = list_shards(self.path)
            if not files:
                tmp = temp_files(self.path)
                extra = (f" ({len(tmp)} unfinished temp file(s) from an interrupted collect are ignored)"
                         if tmp else "")
                raise DatasetError(f"no shards (shard-*.h5) in {self.path}{extra}: make a dataset with "
                                   f"`sfplan collect out={self.path}`")
            _shards = [read_shard_info(f) for f in files]
        self.shards = _shards
        self.meta = _meta_of(self.shards[0])
        for s in self.shards[1:]:
            check_compatible(self.meta, _meta_of(s), f"shard {s.path}",
                             f"it belongs to another dataset: move it to its own directory")
        if _index is None:
            rows = [(int(sd), si, ei) for si, s in enumerate(self.shards) for ei, sd in enumerate(s.seeds)]
            rows.sort()
            counts = Counter(r[0] for r in rows)
            dup = sorted(x for x, n in counts.items() if n > 1)
            if dup:
                where = [str(s.path.name) for s in self.shards if set(s.seeds.tolist()) & set(dup)]
                raise DatasetError(f"seeds {dup[:5]} appear in more than one shard ({', '.join(where)}); "
                                   f"delete the duplicate shard")
            _index = np.asarray([(si, ei) for _, si, ei in rows], np.int64).reshape(-1, 2)
        self._index = _index  # (N, 2): shard index, episode index within shard
        self._seeds = np.asarray([self.shards[si].seeds[ei] for si, ei in _index], np.int64).reshape(-1)
        self._lengths = np.asarray([self.shards[si].lengths[ei] for si, ei in _index], np.int64).reshape(-1)
        bad = [int(x) for x in self._seeds if x >= EVAL_SEED_START or x < 0]
        if bad:
            raise DatasetError(f"dataset {self.path} holds episodes with seeds {bad[:5]} outside the collection range "
                               f"[0, {EVAL_SEED_START}): they overlap the evaluation seeds; re-collect them")
        if env_id is not None and env_id != self.meta["env_id"]:
            raise DatasetError(f"dataset {self.path} was collected on {self.meta['env_id']}, not {env_id}: "
                               f"collect one with `sfplan collect env=<config of {env_id}> out=<new dir>`")
        if image_size is not None and int(image_size) != self.meta["image_size"]:
            s = self.meta["image_size"]
            raise DatasetError(f"dataset {self.path} holds {s}x{s} frames but {image_size}x{image_size} were "
                               f"requested: collect at that size (`sfplan collect image_size={image_size} "
                               f"out=<new dir>`) or use image_size={s}")
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()
        self._cache: dict[int, Episode] | None = None
        if preload:
            self._cache = {i: self[i] for i in range(len(self))}

    # ---- index ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.shape[0])

    @property
    def seeds(self) -> np.ndarray:
        """(N,) int64 episode seeds, ascending."""
        return self._seeds.copy()

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64 steps per episode (frames = steps + 1)."""
        return self._lengths.copy()

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def action_dim(self) -> int:
        return int(self.meta["action_low"].shape[0])

    def policy_of(self, i: int) -> str:
        return str(self.shards[self._index[i][0]].attrs.get("policy", "unknown"))

    def subset(self, indices: Sequence[int]) -> "EpisodeDataset":
        """A view on some episodes (indices into this dataset)."""
        idx = self._index[np.asarray(list(indices), np.int64)] if len(indices) else self._index[:0]
        view = EpisodeDataset(self.path, _shards=self.shards, _index=idx)
        if self._cache is not None:
            view._cache = {j: self._cache[int(i)] for j, i in enumerate(indices)}
        return view

    def split(self, val_fraction: float = 0.1, salt: int = 0) -> tuple["EpisodeDataset", "EpisodeDataset"]:
        """Held-out episodes by seed: (train, val).

        An episode is held out when a hash of (seed, salt) falls below ``val_fraction``, so
        an episode stays on its side when the dataset grows (``append``). With at least two
        episodes and ``val_fraction > 0``, at least one episode is held out.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        u = np.asarray([_seed_hash(int(s), salt) for s in self.seeds])
        val = u < val_fraction
        if val_fraction > 0 and not val.any() and len(self) >= 2:
            val[int(np.argmin(u))] = True
        return self.subset(np.flatnonzero(~val).tolist()), self.subset(np.flatnonzero(val).tolist())

    # ---- data ----------------------------------------------------------------------
    def _file(self, si: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked DataLoader worker: never share HDF5 handles
            self._handles = {}
            self._pid = os.getpid()
        f = self._handles.get(si)
        if f is None:
            f = self._handles[si] = _open(self.shards[si].path)
        return f

    def _group(self, i: int) -> tuple[h5py.Group, ShardInfo, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"episode {i} out of range ({len(self)} episodes)")
        si, ei = self._index[i]
        shard = self.shards[si]
        seed = int(shard.seeds[ei])
        return self._file(si)[episode_key(seed)], shard, seed

    def __getitem__(self, i: int) -> Episode:
        i = int(i)
        if self._cache is not None:
            return self._cache[i % len(self)]
        g, shard, seed = self._group(i)
        try:
            d = {k: g[k][()] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if k in g}
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"cannot read episode {seed} from {shard.path}: {_first_line(e)}; "
                               f"{_fix_hint(shard.path)}") from None
        return Episode(seed=seed, policy=str(shard.attrs.get("policy")), **d)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def read(self, i: int, start: int, stop: int, states: bool = False) -> dict:
        """Frames start..stop-1 of episode i and the actions between them.

        -> {"pixels": (stop-start, H, W, 3) uint8, "actions": (stop-start-1, A) float32,
        ["states": (stop-start, S) float64]}.
        """
        i = int(i)
        if self._cache is not None:
            ep = self._cache[i % len(self)]
            out = {"pixels": ep.pixels[start:stop], "actions": ep.actions[start:stop - 1]}
            if states:
                out["states"] = None if ep.states is None else ep.states[start:stop]
            return out
        g, shard, seed = self._group(i)
        try:
            out = {"pixels": g["pixels"][start:stop], "actions": g["actions"][start:stop - 1]}
            if states:
                out["states"] = g["states"][start:stop] if "states" in g else None
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read episode {seed} from {shard.path}: {_first_line(e)}; "
                               f"{_fix_hint(shard.path)}") from None
        return out

    def clips(self, frames: int, stride: int = 1, normalize: bool = True, states: bool = False):
        """A ``ClipDataset`` of ``frames``-frame clips over these episodes."""
        return _clip_dataset_class()(self, frames=frames, stride=stride, normalize=normalize, states=states)

    def close(self) -> None:
        for f in self._handles.values():
            try:
                f.close()
            except Exception:
                pass
        self._handles = {}

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_handles"] = {}
        return d

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return (f"EpisodeDataset({str(self.path)!r}, episodes={len(self)}, steps={self.num_steps}, "
                f"env={self.meta['env_id']}, image_size={self.image_size})")

    # ---- summary -------------------------------------------------------------------
    def nonfinite_actions(self) -> dict[int, int]:
        """Episode seed -> number of NaN/inf action values, for the episodes that have any
        (actions only are read)."""
        out = {}
        for i in range(len(self)):
            n = int((~np.isfinite(self.read_actions(i))).sum())
            if n:
                out[int(self._seeds[i])] = n
        return out

    def check_actions(self) -> None:
        """Raise a DatasetError naming the episodes whose actions are NaN/inf (training on
        them would turn every step into a skipped one)."""
        bad = self.nonfinite_actions()
        if bad:
            raise DatasetError(_nonfinite_message(self.path, bad, len(self)))

    def verify(self) -> list[str]:
        """Read every dataset of every episode, so each chunk's checksum is checked; returns
        the problems found (corrupt episodes, shards without checksums), each with its fix."""
        problems, unchecked = [], []
        for si, shard in enumerate(self.shards):
            rows = [ei for s, ei in self._index if s == si]
            try:
                f = self._file(si)
                if f.attrs.get("checksums") is None:
                    unchecked.append(shard.path.name)
                for ei in rows:
                    g = f[episode_key(int(shard.seeds[ei]))]
                    for k in g:
                        g[k][()]
            except (OSError, ValueError, KeyError) as e:
                problems.append(f"shard {shard.path} is corrupt ({_first_line(e)}); {_fix_hint(shard.path)}")
        if unchecked:
            problems.append(f"{len(unchecked)} shard(s) ({', '.join(unchecked[:3])}{', ...' if len(unchecked) > 3 else ''}) "
                            f"carry no checksums (written by an older sfplan): flipped bytes there go unnoticed; "
                            f"re-collect them to have them checked")
        return problems

    def summary(self, verify: bool = True) -> dict:
        """What `sfplan data info` prints: counts, sizes, env, policies, action stats and, with
        ``verify``, the problems found reading every chunk (``verify``) and the actions."""
        lengths = self.lengths
        seeds = self.seeds
        acts = [self.read_actions(i) for i in range(len(self))]
        A = np.concatenate(acts) if acts else np.zeros((0, self.action_dim), np.float32)
        problems = self.verify() if verify else []
        bad = self.nonfinite_actions()
        if bad:
            problems.append(_nonfinite_message(self.path, bad, len(self)))
        finite = A[np.isfinite(A).all(1)]
        policies: dict[str, dict] = {}  # one row per (policy, kwargs)
        for si, _ in self._index:
            a = self.shards[si].attrs
            key = f"{a.get('policy')} {_json(a.get('policy_kwargs') or {})}"
            row = policies.setdefault(key, {"policy": str(a.get("policy")), "kwargs": a.get("policy_kwargs") or {},
                                            "episodes": 0})
            row["episodes"] += 1
        shard_paths = sorted({str(self.shards[si].path) for si, _ in self._index})
        return {
            "path": str(self.path),
            "shards": len(shard_paths),
            "disk_bytes": int(sum(os.path.getsize(p) for p in shard_paths)),
            "leftover_temp_files": len(temp_files(self.path)),
            "env_id": self.meta["env_id"],
            "env_kwargs": self.meta["env_kwargs"],
            "image_size": self.image_size,
            "episodes": len(self),
            "steps": int(lengths.sum()),
            "frames": int((lengths + 1).sum()),
            "steps_per_episode": {"min": int(lengths.min()), "max": int(lengths.max()),
                                  "mean": float(lengths.mean())} if len(self) else None,
            "seeds": {"min": int(seeds.min()), "max": int(seeds.max())} if len(self) else None,
            "policies": sorted(policies.values(), key=lambda r: (r["policy"], _json(r["kwargs"]))),
            "action_low": self.meta["action_low"].tolist(),
            "action_high": self.meta["action_high"].tolist(),
            "actions": {"mean": finite.mean(0).tolist(), "std": finite.std(0).tolist(),
                        "min": finite.min(0).tolist(), "max": finite.max(0).tolist()} if len(finite) else None,
            "nonfinite_action_episodes": len(bad),
            "problems": problems,
            "state_dim": self.meta["state_dim"],
            "sfplan_versions": sorted({str(s.attrs.get("sfplan_version")) for s in self.shards}),
            "format_version": FORMAT_VERSION,
        }

    def read_actions(self, i: int) -> np.ndarray:
        """(L, A) float32 actions of episode i (no pixels read)."""
        i = int(i)
        if self._cache is not None:
            return self._cache[i % len(self)].actions
        g, shard, seed = self._group(i)
        try:
            return g["actions"][()]
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read episode {seed} from {shard.path}: {_first_line(e)}; "
                               f"{_fix_hint(shard.path)}") from None


def _nonfinite_message(path, bad: dict[int, int], n_episodes: int) -> str:
    seeds = sorted(bad)
    shown = ", ".join(map(str, seeds[:5])) + (", ..." if len(seeds) > 5 else "")
    return (f"dataset {path}: {len(seeds)} of {n_episodes} episode(s) (seeds {shown}) have NaN/inf actions "
            f"({sum(bad.values())} values): the policy or env that wrote them is broken; re-collect into a new "
            f"out= (or delete those episodes' shards and `sfplan collect append=true out={path}`)")


def _seed_hash(seed: int, salt: int) -> float:
    """A stable uniform number in [0, 1) for a seed (independent of Python's hash seed)."""
    return zlib.crc32(f"{salt}:{seed}".encode()) / 2**32


def load_dataset(path: str | Path, **kwargs) -> EpisodeDataset:
    """``EpisodeDataset(path, **kwargs)``."""
    return EpisodeDataset(path, **kwargs)


# ----------------------------------------------------------------------------------
# Clips for training (torch imported lazily: collection workers never load torch)
# ----------------------------------------------------------------------------------
def __getattr__(name: str):  # PEP 562: `from sfplan.data.dataset import ClipDataset`
    if name == "ClipDataset":
        return _clip_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _clip_dataset_class():
    import torch
    from torch.utils.data import Dataset

    class ClipDataset(Dataset):
        """Every ``frames``-frame window (start stride ``stride``) of every episode.

        Item ``k`` -> dict:
          - ``frames``: (T, 3, H, W) float32 in [-1, 1] (``normalize=True``), else
            (T, H, W, 3) uint8;
          - ``actions``: (T-1, A) float32, action t takes frame t to frame t+1;
          - ``states``: (T, S) float64 (only with ``states=True``);
          - ``seed``, ``start``: the episode seed and the first frame's step index.
        Episodes shorter than ``frames`` frames contribute no clip.
        """

        def __init__(self, episodes: EpisodeDataset, frames: int, stride: int = 1, normalize: bool = True,
                     states: bool = False):
            if int(frames) < 2:
                raise UserError(f"clips need at least 2 frames, got frames={frames}")
            if int(stride) < 1:
                raise UserError(f"clip stride must be >= 1, got {stride}")
            self.episodes = episodes
            self.frames, self.stride = int(frames), int(stride)
            self.normalize, self.states = bool(normalize), bool(states)
            seeds = episodes.seeds
            rows = []
            for i, L in enumerate(episodes.lengths):
                for s in range(0, int(L) + 2 - self.frames, self.stride):
                    rows.append((i, s, int(seeds[i])))
            if not rows and len(episodes):
                raise UserError(f"clips of {self.frames} frames need episodes of at least {self.frames - 1} steps; "
                                f"the longest in {episodes.path} has {int(episodes.lengths.max())}: ask for "
                                f"shorter clips or collect with steps>={self.frames - 1}")
            self.index = np.asarray(rows, np.int64).reshape(-1, 3)  # (N, 3): episode, start, seed

        def __len__(self) -> int:
            return int(self.index.shape[0])

        def __getitem__(self, k: int) -> dict:
            i, s, seed = (int(x) for x in self.index[k])
            d = self.episodes.read(i, s, s + self.frames, states=self.states)
            px = d["pixels"]  # (T, H, W, 3) uint8
            if self.normalize:  # in numpy: torch's strided uint8->float copy is ~100x slower on CPU here
                px = px.transpose(0, 3, 1, 2).astype(np.float32)  # (T, 3, H, W)
                px *= 1.0 / 127.5
                px -= 1.0  # in [-1, 1]
            px = torch.from_numpy(np.ascontiguousarray(px))
            out = {"frames": px, "actions": torch.from_numpy(np.asarray(d["actions"], np.float32)),
                   "seed": seed, "start": s}
            if self.states:
                if d.get("states") is None:
                    raise UserError(f"{self.episodes.path} has no simulator states (imported data?): "
                                    f"use states=False")
                out["states"] = torch.from_numpy(d["states"])
            return out

    ClipDataset.__module__ = __name__
    ClipDataset.__qualname__ = "ClipDataset"
    return ClipDataset


def format_summary(s: dict) -> str:
    """Human-readable text of ``EpisodeDataset.summary()`` (`sfplan data info`)."""
    def vec(v):
        return "[" + ", ".join(f"{x:+.3f}" for x in v) + "]"

    spe = s["steps_per_episode"]
    lines = [
        f"dataset:     {s['path']}  ({s['shards']} shard(s), {s['disk_bytes'] / 1e6:.1f} MB on disk)",
        f"env:         {s['env_id']}  kwargs {json.dumps(s['env_kwargs'], sort_keys=True)}",
        f"image size:  {s['image_size']}x{s['image_size']}",
        f"episodes:    {s['episodes']}  (seeds {s['seeds']['min']}-{s['seeds']['max']})" if s["seeds"] else
        f"episodes:    {s['episodes']}",
        f"steps:       {s['steps']}  ({s['frames']} frames; per episode min {spe['min']}, mean {spe['mean']:.1f}, "
        f"max {spe['max']})" if spe else f"steps:       {s['steps']}",
        "policies:    " + "; ".join(f"{r['policy']} x {r['episodes']} episodes {json.dumps(r['kwargs'], sort_keys=True)}"
                                    for r in s["policies"]),
        f"actions:     {len(s['action_low'])}-d, bounds {vec(s['action_low'])} .. {vec(s['action_high'])}",
    ]
    if s["actions"]:
        a = s["actions"]
        lines.append(f"             mean {vec(a['mean'])}  std {vec(a['std'])}  min {vec(a['min'])}  "
                     f"max {vec(a['max'])}" + ("  (finite steps only)" if s.get("nonfinite_action_episodes") else ""))
    lines.append(f"state dim:   {s['state_dim']}")
    lines.append(f"written by:  sfplan {', '.join(s['sfplan_versions'])} (format v{s['format_version']})")
    for p in s.get("problems", []):
        lines.append(f"PROBLEM:     {p}")
    if s["leftover_temp_files"]:
        lines.append(f"note:        {s['leftover_temp_files']} unfinished temp file(s) of an interrupted collect "
                     f"(ignored; the next `sfplan collect` removes them)")
    return "\n".join(lines)
