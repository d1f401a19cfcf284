"""`sfplan collect`: roll out exploration policies on a task and write an episode dataset.

Usage::

    sfplan collect                                  # Reacher, 200 x 50 steps, correlated noise
    sfplan collect env=pusher policy=goal episodes=500 workers=4 out=data/pusher
    sfplan collect append=true episodes=100 out=data/pusher   # more episodes like those there, fresh seeds
    # after a crash or Ctrl-C: append=true episodes=<lost> collects exactly the lost seeds
    # (append takes the dataset's env, steps, policy and first seed unless given)
    sfplan data info data/pusher

Python::

    from sfplan.data import collect, EpisodeDataset
    collect("data/reacher", "sfplan/Reacher-v0", {"image_size": 64}, episodes=200, steps=50, workers=2)
    ds = EpisodeDataset("data/reacher", image_size=64)
    train, val = ds.split(0.1)
    clips = train.clips(frames=16)          # torch Dataset: frames (16, 3, 64, 64), actions (15, A)

Episode ``i`` of a run uses seed ``seed + i`` for ``env.reset`` and, through a separate
stream, for its policy; seeds stay below 100000 (evaluation seeds start there). Episodes
are cut into shards of ``shard_episodes``; ``workers`` spawned processes collect shards
in parallel and each writes its shard atomically (temp file in the same directory, fsync,
``os.replace``), so a crash loses at most the shards being written. A ``.lock`` file
(``flock``) keeps two collects out of one directory; leftover temp files of an interrupted
run are removed by the next collect and never read.

Format choice (measured on the project machine, 2 CPU cores; 200 episodes x 50 steps of
Reacher at 64x64, 10,200 frames = 125 MB of raw pixels, plus states):

==========================================  ========  =======  =========  ==========  ========
format                                      write s   MB       read all   clip of 16  lossless
==========================================  ========  =======  =========  ==========  ========
h5py, no compression, chunk per episode     0.20-0.26 130.2    0.05 s     0.2 ms      yes
h5py, lzf                                   0.71      52.6     0.26 s     1.3 ms      yes
**h5py, gzip level 1 (chosen)**             **0.49**  **12.9** **0.17 s** **0.7 ms**  **yes**
h5py, gzip level 4                          0.68      11.6     0.16 s     0.8 ms      yes
Minari 0.5.3 (HDF5 backend), pixels only    0.88      14.9     1.89 s     6 ms [1]_   no [2]_
Minari 0.5.3, Dict obs pixels+goal image    1.67      25.3     3.15 s     12 ms [1]_  no [2]_
==========================================  ========  =======  =========  ==========  ========

.. [1] Minari loads whole episodes (``dataset[i]``); no partial reads.
.. [2] Minari 0.5 stores every uint8 image observation (>= 32x32) as a JPEG
   (quality 75): max abs pixel error 109, PSNR 35.2 dB on these frames, so stored
   frames are not the frames the simulator rendered (a replay check fails, and the
   world model would learn JPEG artefacts).

Minari also needs jax for its ``DataCollector`` (``minari[create]``), has no atomic or
parallel writes (a dataset is one directory built at the end), and keys datasets by a
global id under ``~/.minari``. So sfplan writes HDF5 shards (schema in
``sfplan.data.dataset``) with gzip level 1: lossless, ~10x smaller than raw, ~20k
frames/s to write (far above collection speed), ~1 ms per 16-frame training clip; and imports
Minari datasets with ``import_minari`` / ``sfplan data import-minari``.

Collection throughput, Reacher 64x64, 50-step episodes, resets (goal rendering) and
writing included: about 1500 steps per CPU-second per worker, the same for every policy
(rendering dominates; writing takes ~6%, at 17k frames per CPU-second). End to end,
``sfplan collect episodes=200 steps=50`` (10k steps, 13.4 MB on disk with states and goal
images) took 9.5 s with 1 worker (1050 steps/s) and 6.9-8.3 s with 2 workers (1200-1460
steps/s) on the 2-core machine while other jobs kept its load at 3-4; spawning a worker
costs ~1-2 s of imports. A script that calls ``collect(workers>1)`` needs the
``if __name__ == "__main__":`` guard (spawn).

Coverage of the policies on Reacher (40 episodes x 100 steps; fingertip cells are 1 cm,
joint cells 0.2 rad; ``sfplan.data.policies``):

==========================  ===============  ============  ===========
policy                      fingertip cells  joint cells   mean |qvel|
==========================  ===============  ============  ===========
random (repeat 1)           1193             2010          6.3 rad/s
random (repeat 4)           1207             2706          11.2 rad/s
correlated (rho .9, sc .5)  1000             2563          13.8 rad/s
goal (noise_steps 10)       1104             2859          14.9 rad/s
==========================  ===============  ============  ===========

Reacher's arm is almost undamped, so even white noise sweeps the 2-D fingertip workspace;
``correlated`` (the default) is the process the task itself uses to make its goals (same
AR(1), rho 0.9, std 0.5), so the data shows the motions that reach goal images, with twice
the joint speed and 25% more joint-space coverage than white noise. ``goal`` covers the
most joint space.

Across the tasks (64x64, 6 episodes x 50 steps; share of pixels that differ by > 16 levels
from the first frame at some step of the episode, i.e. how much of the image the episode
moves; wall steps/s for one process on the loaded 2-core machine):

======================  ======  ========  ==========  ======  ============
task                    random  random x4 correlated  goal    steps/s
======================  ======  ========  ==========  ======  ============
Reacher-v0              24.9%   32.7%     27.9%       30.7%   560-860
Pusher-v0               40.3%   44.4%     46.3%       41.6%   160-180
PointMazeUMaze-v0       0.9%    1.5%      2.0%        1.9%    250-320
PointMazeMedium-v0      0.4%    0.5%      0.7%        0.8%    250-320
Lift-v0                 12.6%   16.0%     13.0%       22.5%   40-48
Stack-v0                12.6%   16.1%     13.5%       23.9%   40-46
======================  ======  ========  ==========  ======  ============

``correlated`` beats white noise everywhere (2x on PointMaze, whose damped ball barely
drifts under white noise); on the robosuite tasks ``goal`` moves the arm (and objects)
over about 1.8x the image area: use ``policy=goal`` there. Every task and policy replays
bit-exactly from the stored start state and actions.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sfplan.data.dataset import (
    Episode,
    EpisodeDataset,
    ShardWriter,
    check_collection_seeds,
    check_compatible,
    list_shards,
    shard_name,
    temp_files,
)
from sfplan.data.policies import RetracePolicy, make_policy
from sfplan.errors import UserError

#: Policy rng stream: ``default_rng([POLICY_STREAM, seed])``, apart from the env's ``seed``.
POLICY_STREAM = 0x5F9A


# ----------------------------------------------------------------------------------
# Envs and rollouts
# ----------------------------------------------------------------------------------
def make_task_env(env_id: str, env_kwargs: dict | None = None):
    """The env named by ``env_id`` (``sfplan.envs.make_env``: an sfplan task, a Gymnasium id,
    or ``module:callable``)."""
    from sfplan.envs.spec import make_env

    return make_env(env_id, **dict(env_kwargs or {}))


def _pixels(obs) -> np.ndarray:
    if isinstance(obs, dict):
        if "pixels" not in obs:
            raise UserError(f"the env's observation has no 'pixels' key (keys: {sorted(obs)}); sfplan collect "
                            f"needs a goal-image task (wrap other envs in sfplan.envs GoalImageWrapper)")
        return obs["pixels"]
    return obs


def rollout(env, policy, seed: int, steps: int) -> Episode:
    """One episode: ``env.reset(seed=seed)``, then up to ``steps`` policy steps (fewer if
    the env terminates or truncates). Returns the ``Episode`` (see its shapes)."""
    obs, info = env.reset(seed=int(seed))
    policy.reset(env, np.random.default_rng([POLICY_STREAM, int(seed)]))
    px0 = np.asarray(_pixels(obs))
    has_state = "state" in info  # MuJoCo envs record it (probe labels, replay); others may not
    frames = np.empty((steps + 1, *px0.shape), np.uint8)
    frames[0] = px0
    states = [np.asarray(info["state"], np.float64)] if has_state else None
    succ, dist = [info.get("is_success")], [info.get("distance")]
    actions, rewards, terms, truncs = [], [], [], []
    for t in range(steps):
        a = np.asarray(policy.act(obs, info), np.float32)
        obs, r, term, trunc, info = env.step(a)
        frames[t + 1] = _pixels(obs)
        actions.append(a)
        rewards.append(r)
        terms.append(bool(term))
        truncs.append(bool(trunc))
        if has_state:
            states.append(np.asarray(info["state"], np.float64))
        succ.append(info.get("is_success"))
        dist.append(info.get("distance"))
        if term or trunc:
            break
    L = len(actions)
    truncs = np.asarray(truncs, bool)
    if L and not terms[-1]:
        truncs[-1] = True  # the collector's horizon ended the episode
    goal = obs.get("desired_goal") if isinstance(obs, dict) else info.get("goal_pixels")
    goal_state = getattr(env.unwrapped, "goal_state", None)
    return Episode(
        seed=int(seed),
        pixels=frames[: L + 1],
        actions=np.asarray(actions, np.float32).reshape(L, -1),
        rewards=np.asarray(rewards, np.float32),
        terminations=np.asarray(terms, bool),
        truncations=truncs,
        states=np.stack(states) if has_state else None,
        goal_pixels=None if goal is None else np.asarray(goal, np.uint8),
        goal_state=None if goal_state is None else np.asarray(goal_state, np.float64),
        is_success=None if any(s is None for s in succ) else np.asarray(succ, bool),
        distance=None if any(d is None for d in dist) else np.asarray(dist, np.float32),
        policy=policy.name,
    )


def retrace_rollout(env, seed: int, out_steps: int = 32, mode: str = "auto"):
    """One out-and-back episode of ``2 * out_steps`` steps with ``RetracePolicy``, as
    ``sfplan collect policy=retrace`` records it (same seeds, same frames).

    Returns an ``sfplan.data.dataset.Episode``: ``pixels`` (2n+1, H, W, 3) uint8 with the
    turn-around at frame n, ``actions`` (2n, A) (``actions[n:]`` are the return leg's),
    ``states`` (2n+1, S)."""
    ep = rollout(env, RetracePolicy(out_steps=out_steps, mode=mode), int(seed), 2 * int(out_steps))
    if ep.length != 2 * int(out_steps):
        raise UserError(f"the env ended the retrace episode after {ep.length} of {2 * out_steps} steps: raise its "
                        f"max_episode_steps or lower out_steps")
    return ep


def probe_env(env_id: str, env_kwargs: dict, seed: int, policy=None) -> dict:
    """Make the env once and read what a shard records: image size, action bounds, state
    dim; with ``policy``, check that it can run on the env (``policy.reset``)."""
    from sfplan.envs.spec import check_goal_image_env

    env = make_task_env(env_id, env_kwargs)
    try:
        got = check_goal_image_env(env, env_id, seed=int(seed))  # resets the env
        if policy is not None:
            policy.reset(env, np.random.default_rng(0))
        want = env_kwargs.get("image_size")
        if want is not None and got["image_size"] != int(want):
            raise UserError(f"{env_id} rendered {got['image_size']}x{got['image_size']} frames but image_size={want} "
                            f"was requested: the env ignores image_size; check its kwargs")
        space = env.action_space
        return {
            "env_id": env_id,
            "env_kwargs": dict(env_kwargs),
            "image_size": got["image_size"],
            "action_low": np.asarray(space.low, np.float32),
            "action_high": np.asarray(space.high, np.float32),
            "state_dim": got["state_dim"],
        }
    finally:
        env.close()


# ----------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {"queue": None, "envs": {}, "interrupted": False}


def _worker_init(queue) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    _WORKER["queue"] = queue
    _WORKER["interrupted"] = False


def _worker_env(env_id: str, env_kwargs: dict):
    import json

    key = (env_id, json.dumps(env_kwargs, sort_keys=True, default=str))
    env = _WORKER["envs"].get(key)
    if env is None:
        env = _WORKER["envs"][key] = make_task_env(env_id, env_kwargs)
    return env


def collect_shard(job: dict) -> dict:
    """Collect the episodes of one shard and write it atomically. ``job`` holds ``out``,
    ``name``, ``seeds``, ``steps``, ``policy``, ``policy_kwargs`` and ``meta``.
    Returns {"path", "episodes", "steps", "seconds"}."""
    if _WORKER.get("interrupted"):  # Ctrl-C reached this worker: skip the jobs queued to it
        raise KeyboardInterrupt
    t0 = time.perf_counter()
    meta = job["meta"]
    env = _worker_env(meta["env_id"], meta["env_kwargs"])
    policy = make_policy(job["policy"], **job["policy_kwargs"])
    q = _WORKER["queue"]
    n_steps = 0
    try:
        with ShardWriter(Path(job["out"]) / job["name"], meta) as w:
            for s in job["seeds"]:
                ep = rollout(env, policy, s, job["steps"])
                w.add(ep)
                n_steps += ep.length
                if q is not None:
                    q.put(1)
    except KeyboardInterrupt:
        _WORKER["interrupted"] = True
        raise
    return {"path": str(w.path), "episodes": len(job["seeds"]), "steps": n_steps,
            "seconds": time.perf_counter() - t0}


def _close_worker_envs() -> None:
    for env in _WORKER["envs"].values():
        with contextlib.suppress(Exception):
            env.close()
    _WORKER["envs"].clear()


# ----------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------
@contextlib.contextmanager
def dataset_lock(out: Path):
    """Exclusive ``flock`` on ``out/.lock`` for the duration of a collect."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fh = open(out / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another `sfplan collect` is writing to {out}; wait for it or choose another out=") \
                from None
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def plan_seeds(existing: Sequence[int], seed: int, episodes: int, append: bool) -> list[int]:
    """Seeds for a run: the first ``episodes`` integers from ``seed`` on that the dataset
    does not hold yet (``seed .. seed+episodes-1`` for a new dataset), so the seeds of
    shards an interrupted collect lost are collected first."""
    if int(episodes) < 1:
        raise UserError(f"episodes must be >= 1, got {episodes}")
    check_collection_seeds([seed])
    taken = set(int(s) for s in existing) if append else set()
    seeds, s = [], int(seed)
    while len(seeds) < int(episodes):
        if s not in taken:
            seeds.append(s)
        s += 1
    check_collection_seeds(seeds)
    return seeds


def plan_shards(seeds: Sequence[int], per: int) -> list[list[int]]:
    """Cut seeds into shards of at most ``per`` consecutive seeds (a gap starts a new shard,
    so a shard's name ``shard-<first>-<last>`` covers exactly its seeds)."""
    shards: list[list[int]] = []
    for s in seeds:
        if shards and len(shards[-1]) < per and s == shards[-1][-1] + 1:
            shards[-1].append(s)
        else:
            shards.append([s])
    return shards


def collect(
    out: str | Path,
    env_id: str,
    env_kwargs: dict | None = None,
    *,
    episodes: int = 200,
    steps: int = 50,
    policy: str = "correlated",
    policy_kwargs: dict | None = None,
    workers: int | str = 1,
    seed: int = 0,
    shard_episodes: int = 50,
    append: bool = False,
    progress: bool = True,
    config: dict | None = None,
) -> dict:
    """Collect ``episodes`` episodes of ``steps`` steps into the dataset directory ``out``.

    Returns {"out", "shards" (paths written), "episodes", "steps", "seeds" (first, last),
    "wall_s", "steps_per_s", "steps_per_s_per_worker", "workers"}. Raises ``UserError``
    for a non-empty ``out`` without ``append``, a dataset of another env/image size,
    seeds reaching the evaluation range, or a bad policy.
    """
    out = Path(out)
    env_kwargs = dict(env_kwargs or {})
    policy_kwargs = dict(policy_kwargs or {})
    if int(steps) < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    make_policy(policy, **policy_kwargs)  # fail fast on a bad policy or parameter
    n_workers = (os.cpu_count() or 1) if str(workers) == "auto" else int(workers)
    if n_workers < 1:
        raise UserError(f"workers must be >= 1 or 'auto', got {workers}")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; choose a directory")
    plan_seeds([], seed, episodes, append=False)  # bad seeds fail before out= is created
    with dataset_lock(out):
        for tmp in temp_files(out):  # left by an interrupted collect (we hold the lock)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        existing = None
        if list_shards(out):
            if not append:
                ds = EpisodeDataset(out)
                raise UserError(f"out={out} already holds a dataset ({len(ds)} episodes, seeds {ds.seeds.min()}-"
                                f"{ds.seeds.max()}): pass append=true to add episodes with fresh seeds, or "
                                f"choose another out=")
            existing = EpisodeDataset(out)
        seeds = plan_seeds(existing.seeds.tolist() if existing is not None else [], seed, episodes, append)
        meta = probe_env(env_id, env_kwargs, seeds[0], policy=make_policy(policy, **policy_kwargs))
        if existing is not None:
            check_compatible(existing.meta, meta, f"appending to {out}",
                             "collect into another out= or use the dataset's settings (`sfplan data info "
                             f"{out}`)")
        meta.update(policy=policy, policy_kwargs=make_policy(policy, **policy_kwargs).kwargs(),
                    steps_per_episode=int(steps), source="collect")
        if config is not None:
            meta["config"] = config
        per = max(1, min(int(shard_episodes), math.ceil(len(seeds) / n_workers)))
        jobs = []
        for chunk in plan_shards(seeds, per):
            jobs.append({"out": str(out), "name": shard_name(chunk[0], chunk[-1]), "seeds": chunk,
                         "steps": int(steps), "policy": policy, "policy_kwargs": policy_kwargs, "meta": meta})
        n_workers = min(n_workers, len(jobs))
        t0 = time.perf_counter()
        results = _run_jobs(jobs, n_workers, len(seeds), progress)
        wall = time.perf_counter() - t0
    total_steps = sum(r["steps"] for r in results)
    busy = sum(r["seconds"] for r in results)
    return {
        "out": str(out),
        "shards": sorted(r["path"] for r in results),
        "episodes": sum(r["episodes"] for r in results),
        "steps": total_steps,
        "seeds": (seeds[0], seeds[-1]),
        "wall_s": wall,
        "steps_per_s": total_steps / wall if wall > 0 else float("nan"),
        "steps_per_s_per_worker": total_steps / busy if busy > 0 else float("nan"),
        "workers": n_workers,
    }


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="ep", desc="collect", file=sys.stderr, dynamic_ncols=True)


def _run_jobs(jobs: list[dict], n_workers: int, n_episodes: int, progress: bool) -> list[dict]:
    bar = _progress_bar(n_episodes, progress)
    try:
        if n_workers == 1:  # in-process: no spawn cost, easy to debug
            _WORKER["interrupted"] = False
            results = []
            try:
                for job in jobs:
                    results.append(collect_shard(job))
                    if bar is not None:
                        bar.update(len(job["seeds"]))
            finally:
                _close_worker_envs()
            return results
        import multiprocessing as mp
        from concurrent.futures.process import BrokenProcessPool

        from sfplan.procs import init_worker  # a killed collect must not leave workers writing shards

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        results = []
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=init_worker,
                                 initargs=(os.getpid(), "sfplan.data.collect:_worker_init", queue)) as ex:
            pending = {ex.submit(collect_shard, job) for job in jobs}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(queue, bar)
                    for f in done:
                        results.append(f.result())
            except BrokenProcessPool:
                raise UserError(f"a collection worker died (out of memory, a simulator crash, or a script that "
                                f"calls collect(workers>1) without `if __name__ == '__main__':`); the "
                                f"{len(results)} finished shard(s) are kept: re-run with append=true to add "
                                f"the rest") from None
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
            _drain(queue, bar)
        return results
    finally:
        if bar is not None:
            bar.close()


def _drain(queue, bar) -> None:
    import queue as _q

    while True:
        try:
            n = queue.get_nowait()
        except (_q.Empty, OSError, ValueError):
            return
        if bar is not None:
            bar.update(n)


#: keys of `sfplan collect` that name the env (any of them given: the env is not inherited)
_ENV_KEYS = ("env", "image_size", "goal")


def _given(explicit: set[str], *names: str) -> bool:
    return any(k == n or k.startswith(n + ".") for k in explicit for n in names)


def append_settings(out: str | Path, explicit: set[str]) -> dict:
    """``append=true`` onto the dataset at ``out``: the settings the command line leaves out
    are the dataset's (env and its kwargs, steps, policy and its parameters, first seed), so
    `sfplan collect append=true out=DIR` adds episodes like the ones there and, after lost
    shards, collects exactly their seeds. A ``steps=`` other than the dataset's is refused:
    it would mix episode lengths. Returns the settings to use ({} for a new dataset)."""
    out = Path(out)
    if not out.is_dir() or not list_shards(out):
        return {}
    with EpisodeDataset(out) as ds:
        first = ds.shards[0].attrs
        # the first seed of the run that made it (the lowest seed left may be past a lost shard)
        seeds = [int(sh.attrs["config"]["seed"]) for sh in ds.shards if "seed" in (sh.attrs.get("config") or {})]
        got = {"seed": min(seeds) if seeds else int(ds.seeds.min())}
    rec_steps = int(first.get("steps_per_episode") or 0)
    if not _given(explicit, *_ENV_KEYS):
        got.update(env_id=str(first["env_id"]), env_kwargs=dict(first.get("env_kwargs") or {}))
    if rec_steps:
        got["steps"] = rec_steps
    if not _given(explicit, "policy", "policies"):
        got.update(policy=str(first.get("policy")), policy_kwargs=dict(first.get("policy_kwargs") or {}))
    return got


def run_collect(cfg, explicit: set[str] | None = None) -> dict:
    """`sfplan collect`: run ``collect`` from a composed ``configs/collect.yaml``. ``explicit``:
    the keys the command line set; with ``append=true`` the others come from the dataset
    (``append_settings``)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    env_kwargs = dict(c["env"].get("kwargs") or {})
    if c.get("image_size") is not None:
        env_kwargs["image_size"] = int(c["image_size"])
    policies = c.get("policies") or {}
    policy = str(c["policy"])
    policy_kwargs = dict(policies.get(policy) or {})
    env_id, steps, seed = c["env"]["id"], int(c["steps"]), int(c["seed"])
    out = c.get("out") or os.path.join("data", c["env"]["id"].split("/")[-1].replace(":", "_"))
    if c.get("append"):
        explicit = set(explicit or ())
        rec = append_settings(out, explicit)
        if "steps" in rec and "steps" in explicit and steps != rec["steps"]:
            raise UserError(f"append=true: {out} holds {rec['steps']}-step episodes, steps={steps} would mix episode "
                            f"lengths: drop steps= (append takes the dataset's settings) or collect into another out=")
        env_id, env_kwargs = rec.get("env_id", env_id), rec.get("env_kwargs", env_kwargs)
        policy, policy_kwargs = rec.get("policy", policy), rec.get("policy_kwargs", policy_kwargs)
        steps = rec.get("steps", steps)
        seed = seed if "seed" in explicit else rec.get("seed", seed)
    return collect(
        out, env_id, env_kwargs,
        episodes=int(c["episodes"]), steps=steps, policy=policy,
        policy_kwargs=policy_kwargs, workers=c.get("workers", 1), seed=seed,
        shard_episodes=int(c.get("shard_episodes", 50)), append=bool(c.get("append", False)),
        progress=bool(c.get("progress", True)), config=c,
    )


# ----------------------------------------------------------------------------------
# Minari import
# ----------------------------------------------------------------------------------
def import_minari(dataset: str, out: str | Path, *, env_id: str | None = None, pixels_key: str = "pixels",
                  state_key: str = "state", shard_episodes: int = 100, append: bool = False) -> dict:
    """Convert a Minari dataset (id or local path) with image observations into an sfplan
    dataset directory.

    Observations must be square (H, H, 3) uint8 images, or a Dict holding them under
    ``pixels_key``; simulator states are taken from ``infos[state_key]`` when recorded.
    Episode seeds are Minari's recorded reset seeds when every episode has a distinct one,
    else the episode ids (either way < 100000). ``env_id`` defaults to the Minari env spec's id. Minari's JPEG
    frames come in as decoded (lossy) pixels.
    """
    try:
        import minari
    except ImportError:
        raise UserError("importing Minari data needs minari: pip install 'sfplan[minari]'") from None
    try:
        md = minari.load_dataset(dataset) if not Path(dataset).exists() else _load_minari_path(minari, dataset)
    except Exception as e:
        raise UserError(f"cannot load Minari dataset {dataset!r}: {e}") from None
    from gymnasium import spaces

    obs_space = md.observation_space
    img_space = obs_space[pixels_key] if isinstance(obs_space, spaces.Dict) else obs_space
    if not (isinstance(img_space, spaces.Box) and len(img_space.shape) == 3 and img_space.shape[2] == 3
            and img_space.shape[0] == img_space.shape[1]):
        raise UserError(f"Minari dataset {dataset!r}: observations {obs_space} hold no square (H, H, 3) image "
                        f"(pixels_key={pixels_key!r})")
    act = md.action_space
    if not isinstance(act, spaces.Box):
        raise UserError(f"Minari dataset {dataset!r}: action space {act} is not a Box")
    spec = getattr(md.spec, "env_spec", None)
    env_id = env_id or (spec.id if spec is not None else f"minari:{dataset}")
    out = Path(out)
    episodes = []
    ids = [int(i) for i in md.episode_indices]
    recorded = [m.get("seed") for m in md.storage.get_episode_metadata(ids)]
    use_seeds = all(s is not None for s in recorded) and len(set(recorded)) == len(recorded)
    seed_of = dict(zip(ids, recorded)) if use_seeds else {}
    for e in md.iterate_episodes():
        obs = e.observations
        px = obs[pixels_key] if isinstance(obs, dict) else obs
        infos = e.infos or {}
        states = infos.get(state_key)
        seed = seed_of.get(int(e.id))
        episodes.append(Episode(
            seed=int(seed) if seed is not None else int(e.id), pixels=np.asarray(px, np.uint8),
            actions=np.asarray(e.actions, np.float32).reshape(len(e.rewards), -1),
            rewards=np.asarray(e.rewards, np.float32), terminations=np.asarray(e.terminations, bool),
            truncations=np.asarray(e.truncations, bool),
            states=None if states is None else np.asarray(states, np.float64), policy="minari"))
    seeds = [ep.seed for ep in episodes]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"Minari dataset {dataset!r} repeats episode seeds; cannot key episodes by seed")
    check_collection_seeds(seeds)
    meta = {"env_id": env_id, "env_kwargs": {}, "image_size": int(img_space.shape[0]),
            "action_low": np.asarray(act.low, np.float32), "action_high": np.asarray(act.high, np.float32),
            "state_dim": int(episodes[0].states.shape[1]) if episodes and episodes[0].states is not None else 0,
            "policy": "minari", "policy_kwargs": {"dataset": str(dataset)}, "source": f"minari:{dataset}",
            "steps_per_episode": int(max((ep.length for ep in episodes), default=0))}
    written = []
    with dataset_lock(out):
        if list_shards(out):
            existing = EpisodeDataset(out)
            if not append:
                raise UserError(f"out={out} already holds a dataset; pass --append or choose another directory")
            check_compatible(existing.meta, _meta_of_dict(meta), f"importing into {out}", "import into another "
                             "directory")
            clash = sorted(set(seeds) & set(existing.seeds.tolist()))
            if clash:
                raise UserError(f"seeds {clash[:5]} of {dataset!r} are already in {out}; import into another "
                                f"directory")
        episodes.sort(key=lambda ep: ep.seed)
        for i in range(0, len(episodes), shard_episodes):
            chunk = episodes[i:i + shard_episodes]
            with ShardWriter(out / shard_name(chunk[0].seed, chunk[-1].seed), meta) as w:
                for ep in chunk:
                    w.add(ep)
            written.append(str(w.path))
    return {"out": str(out), "shards": written, "episodes": len(episodes),
            "steps": int(sum(ep.length for ep in episodes))}


def _meta_of_dict(meta: dict) -> dict:
    return {k: meta[k] for k in ("env_id", "env_kwargs", "image_size", "action_low", "action_high", "state_dim")}


def _load_minari_path(minari, path: str):
    from minari.dataset.minari_dataset import MinariDataset

    p = Path(path)
    return MinariDataset(p / "data" if (p / "data").is_dir() else p)


__all__ = ["collect", "run_collect", "rollout", "collect_shard", "import_minari", "make_task_env", "plan_seeds",
           "plan_shards"]
