"""Held-out quality of model dirs on a dataset, the check `sfplan fit` runs on its own model.

    python benchmarks/heldout_quality.py --data <the fit's data> --model A=<model dir> --model B=<model dir> \\
        --out benchmarks/results/<name>/quality.json [--episodes 32] [--min-seed 0]

Each model imagines one chunk from two context frames of the same held-out episodes (the
dataset's 10% split by seed, which training stages never see; ``--min-seed`` keeps those
from that seed on, e.g. the episodes a later ``append`` added). Reported per model, each beside
copy-last and the same model under shuffled actions: PSNR, object PSNR, and, where the model
dir has a state probe and the data record states, the state error (the distance between the
probe's reading of the frames and the true state); then the fit's verdict
(``sfplan.training.fit.quality_verdict``). One markdown row per model is printed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from sfplan.io import atomic_write_text
from sfplan.training.fit import model_quality


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset dir (the held-out split is taken from it)")
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR, repeatable")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--min-seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    models = dict(m.split("=", 1) if "=" in m else (Path(m).name, m) for m in a.model)
    for name, path in models.items():
        if not (Path(path) / "world_model.json").is_file():
            print(f"--model {name}={path}: not a model dir (no world_model.json)", file=sys.stderr)
            return 2
    res = {"data_episodes": a.episodes, "min_seed": a.min_seed, "cpu": platform.processor() or platform.machine(),
           "models": {}}
    print("| model | PSNR dB (copy-last) | object PSNR dB (copy-last) | adherence dB | state error (copy-last, shuffled) |")
    print("|---|---|---|---|---|")
    for name, path in models.items():
        q = model_quality(path, a.data, device=a.device, episodes=a.episodes, min_seed=a.min_seed)
        res["models"][name] = q
        se = q.get("state_error")
        se_s = f"{se['model']:.3f} ({se['copy_last']:.3f}, {se['shuffled_actions']:.3f})" if se else "n/a"
        print(f"| {name} | {q['psnr']['model']:.2f} ({q['psnr']['copy_last']:.2f}) | "
              f"{q['object_psnr']['model']:.2f} ({q['object_psnr']['copy_last']:.2f}) | "
              f"{q['adherence_margin_db']:+.2f} | {se_s} |", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out, json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
