"""Memory benchmark: does episodic memory (Temp-LoRA) let the world model recall places it
saw earlier in the episode?

    python benchmarks/memory_benchmark.py --model outputs/train/MemoryMaze-v0-dynamics/model \\
        [--slowfast-model outputs/train/MemoryMaze-v0-slowfast/model] --episodes 20 \\
        --out benchmarks/results/memory

Task: ``sfplan/MemoryMaze-v0`` (arena painted anew each episode, camera following the
agent; see ``envs/memory_maze.py``). Each episode (seed 100000 + i) is a retrace episode
(``sfplan.data.collect.retrace_rollout``): n steps out, then back along the same path,
so return frame n + j shows the place of outbound frame n - j. The model imagines the
whole return leg from the turn-around frame (its last ``context_frames`` real frames) with
the true return actions, chunk by chunk; the far part of the return shows scenery that
left the context long ago and that only this episode's frames can tell.

Arms (``--arms``):

- ``none``: the slow model (``--model``) alone;
- ``templora``: the same model with Temp-LoRA memory: reset, then it writes the outbound
  real frames 0..n (``SlowFastWorldModel.remember``), and after each imagined chunk the
  generated chunk (the paper's inference; ``--no-write-generated`` turns that off);
- ``slowfast_none`` / ``slowfast``: the same two for the slow-fast-trained model
  (``--slowfast-model``).

All arms see the same episodes and the same diffusion noise (a generator seeded by the
episode seed, passed through the chunks). Reference rows: ``true return`` (the real return
frames scored like a prediction: the ceiling of SRC and the scene cuts of real motion) and
``copy-last`` (the turn-around frame held still).

Metrics (``sfplan.eval.memory_metrics``): PSNR / SSIM against the true return frames (all
of the return, and its far half), Scene Revisit Consistency (feature cosine between the
first-visit frame and the imagined revisit), scene cuts per episode (jumps above a
threshold calibrated on the true frames of the benchmark's episodes), wall time per episode
(memory writes + imagination + decoding) and the peak memory above the arm's start (CUDA:
``max_memory_allocated``; CPU: resident set size sampled every 2 ms), with their overheads
against the memory-free arm of the same model.

Writes ``results.json`` (config, seeds, checkpoint hashes, git commit, per-episode and
per-step numbers) and ``results.md`` (the table) under ``--out``, and with ``--videos K``
a GIF per episode for the first K episodes (truth | arms side by side).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfplan.errors import UserError  # noqa: E402

EVAL_SEED_START = 100000
ARM_ORDER = ("none", "templora", "slowfast_none", "slowfast")
MEMORY_ARMS = ("templora", "slowfast")


def parse_memory_settings(pairs) -> dict:
    """KEY=VALUE strings (Temp-LoRA settings) -> {key: value}; values read as JSON (numbers,
    lists, null), else kept as strings."""
    cfg: dict = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise UserError(f"--memory takes KEY=VALUE pairs (Temp-LoRA settings), got {kv!r}")
        try:
            cfg[k] = json.loads(v)
        except json.JSONDecodeError:
            cfg[k] = v
    return cfg


# ----------------------------------------------------------------------------- memory use
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: the process-wide peak (coarser)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakMemory:
    """Peak memory above the level at entry, in bytes: CUDA allocator peak on a GPU, else the
    process's resident set size sampled every ``interval`` s by a thread."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = _rss_bytes()
            self._top = self.base
            self._stop = threading.Event()

            def poll():
                while not self._stop.is_set():
                    self._top = max(self._top, _rss_bytes())
                    self._stop.wait(self.interval)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._top, _rss_bytes()) - self.base


# ----------------------------------------------------------------------------- rollouts
def make_episodes(env_id: str, env_kwargs: dict, seeds: list[int], out_steps: int, mode: str) -> list:
    """The true retrace episodes (``sfplan.data.dataset.Episode``, 2n steps each)."""
    from sfplan.data.collect import make_task_env
    from sfplan.data.collect import retrace_rollout

    env = make_task_env(env_id, env_kwargs)
    try:
        return [retrace_rollout(env, s, out_steps, mode) for s in seeds]
    finally:
        env.close()


def imagine_return(wm, frames: np.ndarray, actions: np.ndarray, n: int, seed: int, memory: bool,
                   write_generated: bool, write_return: bool = False,
                   written: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """Imagine return frames n+1..2n of a retrace episode.

    wm: SlowFastWorldModel with ``return_frames="all"`` (and an attached memory when
    ``memory``). frames: (2n+1, H, W, 3) uint8; actions: (2n, A). With ``memory`` the
    memory is reset, then writes the outbound frames 0..n, and (``write_generated``) each
    imagined chunk after it is made; ``write_return`` (a diagnostic) writes the true return
    leg too, so the memory has seen every frame it is asked for. ``written`` (a control):
    (frames, actions) of another episode, whose outbound leg is written instead of this
    one's: what a write teaches beyond this episode's scene. Returns (imagined (n, H, W, 3)
    uint8, timings)."""
    from sfplan.world_model.base import WorldState

    t0 = time.perf_counter()
    write_s = 0.0
    if memory:
        wm.reset_memory(seed)
        upto = 2 * n if write_return else n
        wf, wa = written if written is not None else (frames, actions)
        wm.remember(wf[: upto + 1], actions=np.asarray(wa[:upto], np.float32))
        write_s += time.perf_counter() - t0
    ctx_n = wm.context_frames
    context = wm.encode(frames[None, max(0, n + 1 - ctx_n): n + 1]).context  # (1, T', C, h, w)
    if memory and write_generated:
        wm.memory.prime(context[0])  # the return leg's chunks follow the real outbound context
    gen = torch.Generator("cpu").manual_seed(int(seed))
    takes_gen = "generator" in inspect.signature(wm.imagine).parameters
    chunks = []
    for s in range(0, n, wm.chunk_size):
        k = min(wm.chunk_size, n - s)
        acts = torch.as_tensor(np.asarray(actions[n + s: n + s + k], np.float32))[None, None]  # (1, 1, k, A)
        state = WorldState(features=context[:, -1], context=context)
        im = wm.imagine(state, acts, generator=gen) if takes_gen else wm.imagine(state, acts)
        lat = im.features[0, 0]  # (k, C, h, w)
        chunks.append(lat)
        context = torch.cat([context, lat[None]], dim=1)[:, -ctx_n:]
        if memory and write_generated:  # the chunk and its actions; its context is the frame the memory holds last
            tw = time.perf_counter()
            wm.memory.write(lat, actions=acts[0, 0])
            write_s += time.perf_counter() - tw
    imagined = wm.decode(torch.cat(chunks)).numpy()  # (n, H, W, 3)
    if wm.device.type == "cuda":
        torch.cuda.synchronize(wm.device)
    return imagined, {"wall_s": time.perf_counter() - t0, "write_s": write_s}


# ----------------------------------------------------------------------------- arms
def load_model(path: str, device: str, overrides: dict):
    from sfplan.world_model.learned import load_world_model

    return load_world_model(path, device=device, return_frames="all", **overrides)


def memory_api_missing() -> str | None:
    """None when Temp-LoRA (sfplan.memory + SlowFastWorldModel.attach_memory) is importable,
    else the reason."""
    try:
        import sfplan.memory  # noqa: F401
    except ImportError as e:
        return f"sfplan.memory is not importable ({e})"
    from sfplan.world_model.learned import SlowFastWorldModel

    for m in ("attach_memory", "reset_memory", "remember"):
        if not hasattr(SlowFastWorldModel, m):
            return f"SlowFastWorldModel has no {m}()"
    return None


def summarise(per_episode: list[dict]) -> dict:
    keys = per_episode[0]["summary"].keys()
    out = {k: float(np.mean([e["summary"][k] for e in per_episode])) for k in keys}
    for k in ("wall_s", "write_s"):
        if k in per_episode[0]:
            out[k] = float(np.mean([e[k] for e in per_episode]))
    return out


def per_step_means(per_episode: list[dict]) -> dict:
    return {k: np.mean([e[k] for e in per_episode], axis=0).tolist() for k in ("psnr", "ssim", "src")}


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render_markdown(res: dict) -> str:
    c = res["config"]
    lines = [
        "# Memory benchmark",
        "",
        f"Task `{c['env_id']}`, {len(c['seeds'])} retrace episodes (seeds {c['seeds'][0]}..{c['seeds'][-1]}), "
        f"{c['out_steps']} steps out and {c['out_steps']} back (mode `{c['mode']}`); the return leg is imagined "
        f"from the turn-around frame with the true actions. Device: {res['device']}. Commit: "
        f"`{res.get('git_commit')}`.",
        "",
        "| arm | model | PSNR | SSIM | PSNR far half | SRC | SRC far half | scene cuts / ep. | wall s / ep. "
        "| time overhead | peak mem (MB) | mem overhead (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in res["arms"].items():
        s = a["summary"]
        lines.append(
            f"| {name} | {a.get('model_label', '-')} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['psnr_far']:.2f} | "
            f"{s['src']:.4f} | {s['src_far']:.4f} | {s['scene_cuts']:.2f} | {fmt(s.get('wall_s'), '.2f')} | "
            f"{fmt(a.get('time_overhead_pct'), '+.1f')}{'%' if a.get('time_overhead_pct') is not None else ''} | "
            f"{fmt(a.get('peak_mem_mb'), '.1f')} | {fmt(a.get('mem_overhead_mb'), '+.1f')} |")
    for name, a in res["skipped"].items():
        lines.append(f"| {name} | skipped: {a} | | | | | | | | | | |")
    lines += [
        "",
        f"PSNR capped at {res['psnr_cap_db']:.0f} dB. SRC: cosine of `{res['features']['name']}` features between "
        f"the first-visit (outbound) frame and the imagined frame at the same place. Scene cuts: consecutive-frame "
        f"feature distances above {res['cut_threshold']:.4f} (= {c['cut_factor']} x the q{c['cut_quantile']} of the "
        f"true episodes' frame-to-frame distances). Far half: return steps j > n/2 (scenery out of the turn-around "
        f"context). Overheads: against `{res['overhead_reference']}` arms of the same model. Temp-LoRA: "
        f"`{json.dumps(res.get('temp_lora'))}`, generated chunks written: {c['write_generated']}.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    from sfplan.eval.memory_metrics import (PSNR_CAP_DB, RandomConvFeatures, VAEFeatures, calibrate_cut_threshold,
                                            return_leg_metrics)
    from sfplan.eval.report import git_commit
    from sfplan.io import atomic_write_text

    if args.seed < EVAL_SEED_START:
        raise UserError(f"--seed {args.seed}: evaluation seeds start at {EVAL_SEED_START} (collection uses the ones "
                        f"below)")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    arms = list(args.arms) if args.arms else (["none", "templora"] + (["slowfast_none", "slowfast"]
                                                                     if args.slowfast_model else []))
    unknown = sorted(set(arms) - set(ARM_ORDER))
    if unknown:
        raise UserError(f"unknown arm(s) {unknown}: use {' '.join(ARM_ORDER)}")
    if any(a.startswith("slowfast") for a in arms) and not args.slowfast_model:
        raise UserError("the slowfast arms need --slowfast-model PATH (a slow-fast-trained world model)")
    arms = [a for a in ARM_ORDER if a in arms]
    overrides = {}
    if args.num_steps:
        overrides["num_steps"] = int(args.num_steps)
    mem_cfg = parse_memory_settings(args.memory or [])
    out = Path(args.out or f"outputs/memory_benchmark/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)

    missing = memory_api_missing() if any(a in MEMORY_ARMS for a in arms) else None
    skipped: dict[str, str] = {}
    if missing:
        for a in [a for a in arms if a in MEMORY_ARMS]:
            skipped[a] = f"Temp-LoRA API missing: {missing}"
            print(f"[memory_benchmark] skipping arm {a!r}: Temp-LoRA API missing: {missing}", file=sys.stderr)
        arms = [a for a in arms if a not in MEMORY_ARMS]

    models = {"model": load_model(args.model, args.device, overrides)}
    if any(a.startswith("slowfast") for a in arms):
        models["slowfast_model"] = load_model(args.slowfast_model, args.device, overrides)
    wm0 = models["model"]
    size = int(wm0.vae.config.image_size)
    n = int(args.out_steps)
    seeds = [args.seed + i for i in range(int(args.episodes))]
    env_kwargs = {"image_size": size}
    t0 = time.perf_counter()
    episodes = make_episodes(args.env, env_kwargs, seeds, n, args.mode)
    print(f"[memory_benchmark] {len(episodes)} retrace episodes of {2 * n} steps in {time.perf_counter() - t0:.1f} s")
    A = episodes[0].actions.shape[1]
    for key, wm in models.items():
        if wm.diffusion.config.action_dim != A:
            raise UserError(f"{key} was trained with {wm.diffusion.config.action_dim}-d actions; {args.env} has "
                            f"{A}-d actions")
    encoder = VAEFeatures(wm0) if args.features == "vae" else RandomConvFeatures(seed=0)
    cut_threshold = calibrate_cut_threshold([ep.pixels for ep in episodes], encoder, args.cut_quantile,
                                            args.cut_factor)

    def score(imagined, ep) -> dict:
        sc = return_leg_metrics(ep.pixels, imagined, n, encoder, cut_threshold)
        return {"seed": ep.seed, "summary": sc.summary(), "psnr": sc.psnr, "ssim": sc.ssim, "src": sc.src,
                "jumps": sc.jumps}

    for wm in models.values():  # warm-up (first-call allocations, kernel selection): not timed
        imagine_return(wm, episodes[0].pixels, episodes[0].actions, n, episodes[0].seed, False, False)
    res_arms: dict[str, dict] = {}
    videos: dict[str, list[np.ndarray]] = {}
    # reference rows: the real return leg, and the turn-around frame held still
    for name, make in (("true return", lambda ep: ep.pixels[n + 1:]),
                       ("copy-last", lambda ep: np.repeat(ep.pixels[n: n + 1], n, axis=0))):
        per = [score(make(ep), ep) for ep in episodes]
        res_arms[name] = {"model_label": "reference", "summary": summarise(per), "per_step": per_step_means(per),
                          "episodes": per}
    temp_lora = None
    for arm in arms:
        wm = models["slowfast_model" if arm.startswith("slowfast") else "model"]
        use_mem = arm in MEMORY_ARMS
        if use_mem and getattr(wm, "memory", None) is None:
            mem = wm.attach_memory(mem_cfg)
            temp_lora = dataclasses.asdict(mem.config)
        per, vids = [], []
        with PeakMemory(wm.device) as pm:
            for i, ep in enumerate(episodes):
                if use_mem:
                    other = episodes[(i + 1) % len(episodes)] if args.write_other_episode else None
                    imagined, timing = imagine_return(wm, ep.pixels, ep.actions, n, ep.seed, True,
                                                      not args.no_write_generated, args.write_return,
                                                      None if other is None else (other.pixels, other.actions))
                elif getattr(wm, "memory", None) is not None:
                    with wm.memory.disabled():
                        imagined, timing = imagine_return(wm, ep.pixels, ep.actions, n, ep.seed, False, False)
                else:
                    imagined, timing = imagine_return(wm, ep.pixels, ep.actions, n, ep.seed, False, False)
                per.append({**score(imagined, ep), **timing})
                if i < args.videos:
                    vids.append(imagined)
                print(f"[memory_benchmark] {arm} episode {i + 1}/{len(episodes)} (seed {ep.seed}): "
                      f"PSNR {per[-1]['summary']['psnr']:.2f} SRC {per[-1]['summary']['src']:.3f} "
                      f"cuts {per[-1]['summary']['scene_cuts']} {timing['wall_s']:.1f} s", flush=True)
        videos[arm] = vids
        label = "slow-fast" if arm.startswith("slowfast") else "slow"
        res_arms[arm] = {"model_label": label, "summary": summarise(per), "per_step": per_step_means(per),
                         "peak_mem_mb": pm.peak / 2**20, "episodes": per}
    for arm, ref in (("templora", "none"), ("slowfast", "slowfast_none")):
        if arm in res_arms and ref in res_arms:
            a, r = res_arms[arm], res_arms[ref]
            a["time_overhead_pct"] = 100.0 * (a["summary"]["wall_s"] / r["summary"]["wall_s"] - 1.0)
            a["mem_overhead_mb"] = a["peak_mem_mb"] - r["peak_mem_mb"]
    config = {"env_id": args.env, "env_kwargs": env_kwargs, "seeds": seeds, "out_steps": n, "mode": args.mode,
              "arms": arms, "model": str(args.model), "slowfast_model": args.slowfast_model,
              "world_model_overrides": overrides, "memory": mem_cfg, "write_generated": not args.no_write_generated,
              "write_return": args.write_return, "write_other_episode": args.write_other_episode,
              "features": args.features, "cut_quantile": args.cut_quantile, "cut_factor": args.cut_factor,
              "device": args.device, "threads": args.threads}
    res = {
        "benchmark": "memory", "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "config": config, "device": str(wm0.device), "git_commit": git_commit(),
        "checkpoint_sha256": {k: m.checkpoint_sha256 for k, m in models.items()},
        "chunk_size": wm0.chunk_size, "context_frames": wm0.context_frames, "num_steps": wm0.config.num_steps,
        "temp_lora": temp_lora, "features": encoder.describe(), "cut_threshold": cut_threshold,
        "psnr_cap_db": PSNR_CAP_DB, "overhead_reference": "none / slowfast_none",
        "host": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                 "cpus": os.cpu_count()},
        "arms": res_arms, "skipped": skipped,
    }
    from sfplan.paths import portable

    res = portable(res)  # committed: no machine paths
    atomic_write_text(out / "results.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(out / "results.md", render_markdown(res))
    if args.videos and videos:
        from sfplan.video import side_by_side, write_video

        for i in range(min(args.videos, len(episodes))):
            ep = episodes[i]
            cols = [ep.pixels] + [np.concatenate([ep.pixels[: n + 1], videos[a][i]]) for a in videos if videos[a]]
            write_video(out / f"episode_{ep.seed}.gif", side_by_side(cols, ["truth", *[a for a in videos if videos[a]]],
                                                                     scale=max(1, 128 // size)), fps=8)
    print(render_markdown(res))
    print(f"[memory_benchmark] wrote {out / 'results.json'} and {out / 'results.md'}")
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="slow world model (a `sfplan train` model dir)")
    p.add_argument("--slowfast-model", default=None, help="slow-fast-trained world model (for the slowfast arms)")
    p.add_argument("--env", default="sfplan/MemoryMaze-v0")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=EVAL_SEED_START, help="first evaluation seed (>= 100000)")
    p.add_argument("--out-steps", type=int, default=32, help="steps out (and back) per episode")
    p.add_argument("--mode", default="track", choices=("track", "negate", "auto"), help="how the return is driven")
    p.add_argument("--arms", nargs="*", default=None, help=f"subset of {' '.join(ARM_ORDER)}")
    p.add_argument("--memory", nargs="*", default=None, metavar="KEY=VALUE",
                   help="Temp-LoRA settings (TempLoRAConfig), e.g. lr=1e-3 steps_per_write=4 rank=16")
    p.add_argument("--no-write-generated", action="store_true", help="write only the outbound real frames")
    p.add_argument("--write-return", action="store_true",
                   help="diagnostic: also write the true return leg (can the memory recall frames it was shown?)")
    p.add_argument("--write-other-episode", action="store_true",
                   help="control: write the next episode's outbound leg instead (a gain that survives is not memory)")
    p.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--features", default="random_conv", choices=("random_conv", "vae"))
    p.add_argument("--cut-quantile", type=float, default=0.99)
    p.add_argument("--cut-factor", type=float, default=2.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--videos", type=int, default=2, help="GIFs for the first K episodes (0: none)")
    p.add_argument("--out", default=None, help="output dir (default outputs/memory_benchmark/<time>)")
    args = p.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
