"""Ship a trained world model with the package: ``sfplan/models/<task>/`` + its model card.

    python scripts/ship_model.py --task Reacher-v0 \
        --dynamics-run outputs/train/Reacher-v0-dynamics --vae-run outputs/train/Reacher-v0-vae \
        --quality benchmarks/results/wm_quality_Reacher-v0.json [--idm-run outputs/train/Reacher-v0-idm]

Copies ``<dynamics run>/model`` (the full world model: VAE + diffusion + scheduler, and the
IDM from ``--idm-run`` into ``idm/``) into the package atomically (a temporary folder, then
a rename), refuses a result over ``--max-mb`` (20 MB: what a git repo should carry), and
writes ``README.md``: the model cards of both training stages, the wall time summed over
every invocation (read from TensorBoard event files, so resumed runs count in full) and the
held-out quality figures of ``benchmarks/world_model_quality.py``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "sfplan" / "models"


def train_seconds(run: Path) -> float:
    """Wall time summed over invocations: first to last event of each TensorBoard file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total = 0.0
    for f in sorted((run / "tb").glob("events.out.tfevents.*")):
        times = [e.wall_time for e in EventFileLoader(str(f)).Load()]
        if len(times) > 1:
            total += max(times) - min(times)
    return total


def card_section(run: Path, title: str) -> str:
    card = run / "model_card.md"
    if not card.is_file():
        raise SystemExit(f"{card} is missing: is {run} a finished `sfplan train` run?")
    body = card.read_text().split("\n", 1)[1]  # drop the card's own title
    return f"## {title}\n\nTraining wall time over all invocations: {train_seconds(run) / 60:.1f} min.\n{body}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, help="task name, e.g. Reacher-v0 (for sfplan/Reacher-v0)")
    ap.add_argument("--dynamics-run", required=True, type=Path)
    ap.add_argument("--vae-run", required=True, type=Path)
    ap.add_argument("--idm-run", type=Path, default=None)
    ap.add_argument("--quality", type=Path, default=None, help="JSON of benchmarks/world_model_quality.py")
    ap.add_argument("--max-mb", type=float, default=20.0)
    args = ap.parse_args(argv)

    src = args.dynamics_run / "model"
    if not (src / "world_model.json").is_file():
        raise SystemExit(f"{src} holds no world model: finish `sfplan train stage=dynamics` first")
    dst = MODELS / args.task
    tmp = MODELS / f".{args.task}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.md", "*.json.tmp"))
    if args.idm_run is not None:
        shutil.copytree(args.idm_run / "model", tmp / "idm")
    size_mb = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20
    if size_mb > args.max_mb:
        shutil.rmtree(tmp)
        raise SystemExit(f"the model is {size_mb:.1f} MB > --max-mb {args.max_mb}: save it smaller (fp16) first")

    parts = [f"# sfplan/{args.task}: shipped world model\n",
             f"SlowFast-VGen slow learner for `sfplan/{args.task}` ({size_mb:.1f} MB). Loaded by "
             f"`sfplan eval env=... world_model=learned` (path null = this folder) and `sfplan generate`.\n"]
    if args.quality is not None:
        q = json.loads(args.quality.read_text())
        parts.append("## Held-out quality (`benchmarks/world_model_quality.py`)\n\n"
                     f"Held-out dataset `{q['data']}`, seeds {q['seeds'][0]}-{q['seeds'][-1]} (never trained on); "
                     f"device {q['device']}, {q['threads']} thread(s).\n\n" + q["table"] + "\n")
    parts.append(card_section(args.dynamics_run, "Stage 2: dynamics (masked latent video diffusion)"))
    parts.append(card_section(args.vae_run, "Stage 1: frame VAE"))
    if args.idm_run is not None:
        parts.append(card_section(args.idm_run, "Inverse dynamics model (planner=video_plan)"))
    (tmp / "README.md").write_text("\n".join(parts))
    if dst.exists():
        old = MODELS / f".{args.task}.old"
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)
    print(f"shipped {dst} ({size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
