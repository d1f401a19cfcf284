"""`sfplan eval`: build env, world model, cost and planner from a config; run the MPC loop;
write the report."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from sfplan.device import resolve_device
from sfplan.eval.report import write_report
from sfplan.eval.runner import evaluate
from sfplan.planners.costs import ProbeCost
from sfplan.world_model.base import MemoryWorldModel, WorldModel


def _without(node: DictConfig, key: str) -> dict:
    d = OmegaConf.to_container(node, resolve=True)
    d.pop(key, None)
    return d


def _attach_memory(world_model: WorldModel | None, mem_cfg) -> None:
    """``memory=temp_lora``: Temp-LoRA on the learned world model; the runner resets it per
    episode and writes the executed frames into it (an MPC episode has no others: ``write``
    picks what ``sfplan generate`` writes)."""
    from sfplan.errors import UserError

    if mem_cfg is None or not mem_cfg.get("_target_"):
        return
    if world_model is None:
        raise UserError(f"memory={mem_cfg.get('_target_')} needs a planner that uses a world model")
    if not isinstance(world_model, MemoryWorldModel):
        raise UserError(f"memory={mem_cfg.get('_target_')} needs the learned world model (world_model=learned), "
                        f"not {type(world_model).__name__}")
    world_model.attach_memory(mem_cfg)


def _build(cfg: DictConfig):
    """env, planner, world model (None for the random baseline) from a composed eval config
    whose ``device`` is resolved."""
    from sfplan.envs import make_env

    env = make_env(cfg.env.id, **OmegaConf.to_container(cfg.env.kwargs, resolve=True))
    low, high = env.action_space.low, env.action_space.high
    planner_cls = get_class(cfg.planner._target_)
    needs_model = getattr(planner_cls, "needs_world_model", True)
    # `kind` (oracle | learned) only picks the env's search row (configs/env/*.yaml `search`)
    world_model = instantiate(_without(cfg.world_model, "kind")) if needs_model else None
    if world_model is not None and hasattr(world_model, "trained_env"):
        from sfplan.world_model.learned import check_env_matches

        check_env_matches(world_model, cfg.env.id, OmegaConf.to_container(cfg.env.kwargs, resolve=True))
    _attach_memory(world_model, cfg.get("memory"))
    cost = instantiate(cfg.cost) if needs_model else None
    if isinstance(cost, ProbeCost):  # loaded here, and only for cost=probe: costs and planners read no files
        from sfplan.world_model.probe import probe_for

        cost.probe = probe_for(world_model, cost.config.model, task=cfg.env.id)
    planner = instantiate(_without(cfg.planner, "idm_path"))(
        world_model=world_model,
        cost=cost,
        action_low=torch.as_tensor(low, dtype=torch.float32),
        action_high=torch.as_tensor(high, dtype=torch.float32),
        **_idm_of(cfg.planner),
    )
    return env, planner, world_model


def _idm_of(planner_cfg: DictConfig) -> dict:
    """``planner.idm_path`` (planner=video_plan: an IDM other than the world model's own) loaded
    into the planner's ``idm`` argument; nothing where it is unset."""
    path = planner_cfg.get("idm_path")
    if not path:
        return {}
    from sfplan.world_model.idm import load_idm

    return {"idm": load_idm(path)}


def _loop_kwargs(cfg: DictConfig) -> dict:
    return dict(budget=int(cfg.budget), execute=int(cfg.execute), record=bool(cfg.record),
                waypoints=int(cfg.waypoints), subgoal_ratio=float(cfg.subgoal_ratio),
                subgoal_threshold=cfg.get("subgoal_threshold"),
                warm_fill=str(cfg.warm_fill), success=str(cfg.success), hold_steps=int(cfg.hold_steps))


_WORKER: dict = {}  # per worker process: the env, planner and world model it built once


def _init_worker(cfg_yaml: str, threads: int) -> None:
    torch.set_num_threads(threads)
    cfg = OmegaConf.create(cfg_yaml)
    _WORKER["cfg"] = cfg
    _WORKER["env"], _WORKER["planner"], _WORKER["world_model"] = _build(cfg)


def _worker_episode(seed: int):
    """One episode in a worker -> (EpisodeResult, env steps the world model imagined)."""
    from sfplan.eval.runner import run_episode

    wm = _WORKER["world_model"]
    before = getattr(wm, "imagined_frames", 0)
    res = run_episode(_WORKER["env"], _WORKER["planner"], wm, seed, **_loop_kwargs(_WORKER["cfg"]))
    return res, getattr(wm, "imagined_frames", 0) - before


def _evaluate_parallel(cfg: DictConfig, seeds: list[int], jobs: int):
    """Episodes spread over ``jobs`` worker processes, each with its own env, planner and
    world model and ``threads // jobs`` torch threads -> (results in seed order, imagined
    frames). Per-episode seeding (planner noise from the episode seed) makes every episode
    the same as in a serial run. Spawned, not forked: MuJoCo's GL contexts and torch's
    thread pools do not survive a fork."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    threads = max(1, torch.get_num_threads() // jobs)
    by_seed, frames = {}, 0
    from sfplan.procs import init_worker  # a killed `sfplan eval` must not leave its workers running

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=init_worker,
                             initargs=(os.getpid(), "sfplan.eval.main:_init_worker",
                                       OmegaConf.to_yaml(cfg, resolve=True), threads)) as pool:
        futures = [pool.submit(_worker_episode, s) for s in seeds]
        bar = tqdm(as_completed(futures), total=len(seeds), desc=f"episodes ({jobs} jobs)",
                   disable=not bool(cfg.progress), dynamic_ncols=True)
        for fut in bar:
            res, n = fut.result()
            by_seed[res.seed], frames = res, frames + n
            bar.set_postfix(success=f"{sum(r.success for r in by_seed.values())}/{len(by_seed)}")
    return [by_seed[s] for s in seeds], frames


def check_eval_values(cfg: DictConfig) -> dict:
    """Validate the run's numbers before anything slow starts (env, model, workers); returns
    them as ints. Seeds below the evaluation range only get a note: tuning runs use them on
    purpose (benchmarks/RESULTS.md), and the report records which range it measured."""
    import sys

    from sfplan.data.dataset import EVAL_SEED_START
    from sfplan.errors import UserError, whole_number

    what = {"episodes": (1, "episodes to run"), "budget": (1, "env steps per episode"),
            "execute": (1, "actions executed per plan"), "waypoints": (0, "subgoal images before the goal (0: none)"),
            "jobs": (1, "worker processes (1: run in this process)"), "seed": (0, "the first episode's seed"),
            "max_gifs": (0, "episodes recorded as GIFs"),
            "hold_steps": (1, "consecutive steps inside the success radius that success=hold needs")}
    v = {k: whole_number(k, cfg.get(k), low, w) for k, (low, w) in what.items()}
    from sfplan.eval.runner import check_protocol

    check_protocol(str(cfg.success), v["hold_steps"])
    if cfg.get("time_limit_s") is not None:
        try:
            limit = float(cfg.time_limit_s)
        except (TypeError, ValueError):
            limit = -1.0
        if v["jobs"] > 1 or not limit > 0:
            raise UserError(f"time_limit_s={cfg.time_limit_s}: a positive number of seconds, with jobs=1")
    if v["seed"] < EVAL_SEED_START:
        last = v["seed"] + v["episodes"] - 1
        print(f"sfplan eval: note: seeds {v['seed']}-{last} lie below {EVAL_SEED_START}, where `sfplan collect` "
              f"draws training episodes: this measures tuning or training episodes, not held-out ones (use "
              f"seed>={EVAL_SEED_START} for a result to report)", file=sys.stderr)
    return v


def run_eval(cfg: DictConfig) -> dict:
    """Runs the evaluation described by a composed ``eval`` config; returns the report dict.
    ``jobs > 1`` runs the episodes in that many worker processes (same per-episode results)."""
    from sfplan.data.dataset import EVAL_SEED_START

    values = check_eval_values(cfg)
    device = resolve_device(cfg.device)
    cfg = cfg.copy()
    OmegaConf.update(cfg, "device", str(device))
    jobs = values["jobs"]
    env, planner, world_model = _build(cfg)  # env closed by evaluate()
    planner_cls = type(planner)
    seeds = [int(cfg.seed) + i for i in range(int(cfg.episodes))]
    jobs = min(jobs, len(seeds))
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("outputs/eval") / (
        f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.env.id.split('/')[-1].replace(':', '_')}_{planner_cls.__name__}"
    )
    t0 = time.perf_counter()
    if jobs > 1:
        list(evaluate(env, planner, world_model, [], progress=False, **_loop_kwargs(cfg)))  # a serial run's checks
        results, imagined = _evaluate_parallel(cfg, seeds, jobs)
    else:
        limit = cfg.get("time_limit_s")
        results, episodes = [], evaluate(env, planner, world_model, seeds, progress=bool(cfg.progress),
                                         **_loop_kwargs(cfg))
        for res in episodes:
            results.append(res)
            if limit is not None and time.perf_counter() - t0 > float(limit):  # a budgeted run (sfplan fit)
                episodes.close()
                break
        seeds = seeds[: len(results)]
        imagined = getattr(world_model, "imagined_frames", 0)
    wall = time.perf_counter() - t0
    meta = {
        "task": cfg.env.id,
        "planner": planner_cls.__name__,
        "world_model": type(world_model).__name__ if world_model is not None else None,
        "checkpoint_sha256": getattr(world_model, "checkpoint_sha256", None),
        # the learned model's sampler: its steps, and whether they run the distilled one-step student
        "sampler_steps": getattr(getattr(world_model, "config", None), "num_steps", None),
        "one_step_student": getattr(world_model, "one_step", None) is not None,
        "budget": int(cfg.budget),
        "action_repeat": int(cfg.env.kwargs.get("action_repeat", 1) or 1),  # the budget's steps are this many env steps
        "execute": int(cfg.execute),
        "waypoints": int(cfg.waypoints),
        "success_protocol": str(cfg.success),
        "hold_steps": int(cfg.hold_steps),
        "device": str(device),
        "seeds": seeds,
        "seed_range": "evaluation" if values["seed"] >= EVAL_SEED_START else "collection (tuning/training)",
        "wall_time_s": wall,
        "imagined_frames": imagined,
        "jobs": jobs,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads() if jobs == 1 else max(1, torch.get_num_threads() // jobs),
    }
    if world_model is not None and hasattr(world_model, "close"):
        world_model.close()
    report = write_report(out_dir, results, OmegaConf.to_container(cfg, resolve=True), meta,
                          max_gifs=int(cfg.max_gifs) if cfg.record else 0)
    report["out_dir"] = str(out_dir)
    return report
