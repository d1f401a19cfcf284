"""How much does one Temp-LoRA write store? Recall of the written chunk, and the chunk after it.

    python benchmarks/temp_lora_recall.py --model sfplan/models/Reacher-v0 \
        --data data/Reacher-v0-heldout [--episodes 8] [--threads 1] [--out FILE.json] \
        [--setting paper:lr=1e-4,steps_per_write=1 --setting strong:lr=1e-3,steps_per_write=64,timesteps_per_step=4,loss=masked]

For each held-out episode: the model's context (the first ``context`` true frames), chunk 1
(the next ``chunk_size`` frames) and chunk 2 (the ones after). Without memory the model
imagines chunk 1 from the true context and chunk 2 from the true frames before it. With
memory, the memory is reset, shown the context (``prime``) and then writes context + chunk 1
once (``SlowFastWorldModel.remember``, the real frames and their actions), and the same two
imaginations run again with the same diffusion noise. Measured per setting:

- **recall**: PSNR / object PSNR of chunk 1 after writing chunk 1 itself, against no memory:
  what a write stores (the ceiling of what memory can give back);
- **next**: the same for chunk 2, which was never written: what the stored chunk does for
  the prediction that follows it (on a fully observed task this is test-time adaptation to
  the episode, not recall of something out of view);
- seconds per write.

A setting is ``name:key=value,...`` over ``TempLoRAConfig`` fields (the rest default: the
paper's rank 32, lr 1e-4, one step per write, the action-free loss). Writes JSON (``--out``)
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from sfplan.data import EpisodeDataset
from sfplan.eval.video_metrics import psnr
from sfplan.paths import portable, portable_path
from sfplan.world_model.learned import load_world_model

from memory_benchmark import parse_memory_settings  # benchmarks/ is on sys.path when run as a script
from sfplan.eval.quality import object_psnr

DEFAULT_SETTINGS = [
    "paper:lr=1e-4,steps_per_write=1",
    "masked:lr=1e-4,steps_per_write=1,loss=masked",
    "lr1e-3x16:lr=1e-3,steps_per_write=16,loss=masked",
    "lr1e-3x64x4:lr=1e-3,steps_per_write=64,timesteps_per_step=4,loss=masked",
]


def parse_setting(text: str) -> tuple[str, dict]:
    """'name:k=v,k=v' -> (name, {k: v}), values read as ``memory_benchmark`` reads ``--memory``."""
    name, _, body = text.partition(":")
    return name, parse_memory_settings(filter(None, body.split(",")))


@torch.no_grad()
def imagine_chunk(wm, context: np.ndarray, actions: np.ndarray, seed: int) -> np.ndarray:
    """context (T, H, W, 3) uint8, actions (C, A) -> imagined frames (C, H, W, 3) uint8, noise from ``seed``."""
    state = wm.encode(context[None])
    g = torch.Generator("cpu").manual_seed(int(seed))
    im = wm.imagine(state, torch.as_tensor(actions, dtype=torch.float32)[None, None], generator=g)
    return wm.decode(im.features[0, 0]).numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="world model dir (or training run dir)")
    ap.add_argument("--data", required=True, help="held-out dataset dir (seeds never used in training)")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--setting", action="append", default=None, help="name:key=value,... (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [parse_setting(s) for s in (args.setting or DEFAULT_SETTINGS)]
    def load():  # fp32 weights: a memory disables the bf16 weight copy anyway; same for the no-memory arm
        return load_world_model(args.model, device=args.device, return_frames="all", cast_weights=False)

    wm = load()
    ctx, C = wm.context_frames, wm.chunk_size
    ds = EpisodeDataset(Path(args.data))
    eps = [e for e in (ds[i] for i in range(min(args.episodes, len(ds)))) if e.length >= ctx - 1 + 2 * C]
    if not eps:
        raise SystemExit(f"need episodes of >= {ctx - 1 + 2 * C} steps in {args.data}")
    truth1 = np.stack([e.pixels[ctx: ctx + C] for e in eps])  # (B, C, H, W, 3)
    truth2 = np.stack([e.pixels[ctx + C: ctx + 2 * C] for e in eps])
    bg = np.median(np.stack([e.pixels for e in eps]), axis=1).astype(np.uint8)  # (B, H, W, 3)

    def run(memory: bool) -> tuple[np.ndarray, np.ndarray, list[float]]:
        p1, p2, times = [], [], []
        for i, e in enumerate(eps):
            a = e.actions.astype(np.float32)
            if memory:
                wm.reset_memory(args.seed + i)
                wm.memory.prime(wm.vae.encode(torch.as_tensor(e.pixels[None, :ctx]))[0])
                logs = wm.remember(e.pixels[: ctx + C], num_context=ctx, actions=a[: ctx + C - 1])
                times.append(logs["time_s"])
            s = args.seed + 1000 * i
            p1.append(imagine_chunk(wm, e.pixels[:ctx], a[ctx - 1: ctx - 1 + C], s))
            p2.append(imagine_chunk(wm, e.pixels[C: ctx + C], a[ctx - 1 + C: ctx - 1 + 2 * C], s + 1))
        return np.stack(p1), np.stack(p2), times

    def scores(p1, p2) -> dict:
        return {"recall_psnr": float(psnr(p1, truth1).mean()), "recall_object_psnr": float(object_psnr(p1, truth1, bg).mean()),
                "next_psnr": float(psnr(p2, truth2).mean()), "next_object_psnr": float(object_psnr(p2, truth2, bg).mean())}

    base = scores(*run(False)[:2])
    rows = {"no memory": {**base, "write_s": 0.0}}
    for name, kw in settings:
        if wm.memory is not None:  # a fresh adapter per setting (rank or targets may differ)
            wm = load()
        wm.attach_memory(kw)
        p1, p2, times = run(True)
        rows[name] = {**scores(p1, p2), "write_s": float(np.mean(times)), "config": kw}
        print(f"{name}: {rows[name]}", flush=True)
    keys = ("recall_psnr", "recall_object_psnr", "next_psnr", "next_object_psnr")
    lines = ["| setting | recall PSNR | recall object PSNR | next-chunk PSNR | next-chunk object PSNR | s / write |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cells = [f"{r[k]:.2f}" + ("" if name == "no memory" else f" ({r[k] - base[k]:+.2f})") for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['write_s']:.2f} |")
    table = "\n".join([f"held-out {len(eps)} episodes of {args.data}, context {ctx}, chunk {C}; "
                       f"{torch.get_num_threads()} thread(s), {wm.device}", "", *lines])
    print(table)
    res = {"model": portable_path(args.model), "checkpoint_sha256": wm.checkpoint_sha256, "data": portable_path(args.data),
           "episodes": len(eps), "seeds": [int(e.seed) for e in eps], "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "rows": rows, "table": table}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(portable(res), indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
