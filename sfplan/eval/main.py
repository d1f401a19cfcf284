"""`sfplan eval`: build env, world model, cost and planner from a config; run the MPC loop;
write the report."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from sfplan.device import resolve_device
from sfplan.eval.report import write_report
from sfplan.eval.runner import evaluate


def _without(node: DictConfig, key: str) -> dict:
    d = OmegaConf.to_container(node, resolve=True)
    d.pop(key, None)
    return d


def _attach_memory(world_model, mem_cfg) -> None:
    """``memory=temp_lora``: Temp-LoRA on the learned world model; the runner resets it per
    episode and writes the executed real frames into it (``memory.write=real``)."""
    from sfplan.errors import UserError

    if mem_cfg is None or not mem_cfg.get("_target_"):
        return
    if world_model is None:
        raise UserError(f"memory={mem_cfg.get('_target_')} needs a planner that uses a world model")
    if not callable(getattr(world_model, "attach_memory", None)):
        raise UserError(f"memory={mem_cfg.get('_target_')} needs the learned world model (world_model=learned), "
                        f"not {type(world_model).__name__}")
    if mem_cfg.get("write") != "real":
        raise UserError("in `sfplan eval` the memory learns from the executed real frames: set memory.write=real")
    world_model.attach_memory(mem_cfg)


def run_eval(cfg: DictConfig) -> dict:
    """Runs the evaluation described by a composed ``eval`` config; returns the report dict."""
    from sfplan.envs import make_env

    device = resolve_device(cfg.device)
    cfg = cfg.copy()
    OmegaConf.update(cfg, "device", str(device))
    env_kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)

    env = make_env(cfg.env.id, **env_kwargs)  # closed by evaluate()
    low, high = env.action_space.low, env.action_space.high

    planner_cls = get_class(cfg.planner._target_)
    needs_model = getattr(planner_cls, "needs_world_model", True)
    # `kind` (oracle | learned) only picks the env's search row (configs/env/*.yaml `search`)
    world_model = instantiate(_without(cfg.world_model, "kind")) if needs_model else None
    _attach_memory(world_model, cfg.get("memory"))
    cost = instantiate(cfg.cost) if needs_model else None
    planner = instantiate(cfg.planner)(
        world_model=world_model,
        cost=cost,
        action_low=torch.as_tensor(low, dtype=torch.float32),
        action_high=torch.as_tensor(high, dtype=torch.float32),
    )
    seeds = [int(cfg.seed) + i for i in range(int(cfg.episodes))]
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("outputs/eval") / (
        f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.env.id.split('/')[-1]}_{planner_cls.__name__}"
    )
    t0 = time.perf_counter()
    results = list(evaluate(env, planner, world_model, seeds, int(cfg.budget), int(cfg.execute),
                            record=bool(cfg.record), progress=bool(cfg.progress),
                            waypoints=int(cfg.waypoints), subgoal_ratio=float(cfg.subgoal_ratio),
                            warm_fill=str(cfg.warm_fill)))
    wall = time.perf_counter() - t0
    meta = {
        "task": cfg.env.id,
        "planner": planner_cls.__name__,
        "world_model": type(world_model).__name__ if world_model is not None else None,
        "checkpoint_sha256": getattr(world_model, "checkpoint_sha256", None),
        "budget": int(cfg.budget),
        "execute": int(cfg.execute),
        "waypoints": int(cfg.waypoints),
        "device": str(device),
        "seeds": seeds,
        "wall_time_s": wall,
        "imagined_frames": getattr(world_model, "imagined_frames", 0),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if world_model is not None and hasattr(world_model, "close"):
        world_model.close()
    report = write_report(out_dir, results, OmegaConf.to_container(cfg, resolve=True), meta,
                          max_gifs=int(cfg.max_gifs) if cfg.record else 0)
    report["out_dir"] = str(out_dir)
    return report
