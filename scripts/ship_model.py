"""Ship a trained world model with the package: ``sfplan/models/<task>/`` + its model card.

    python scripts/ship_model.py --task Reacher-v0 \
        --dynamics-run outputs/train/Reacher-v0-dynamics --vae-run outputs/train/Reacher-v0-vae \
        --quality benchmarks/results/wm_quality_Reacher-v0.json [--idm-run outputs/train/Reacher-v0-idm]

    # a new dynamics run on the VAE of the model already shipped (e.g. trained with
    # vae=sfplan/models/Reacher-v0 init_from=sfplan/models/Reacher-v0): no --vae-run
    python scripts/ship_model.py --task Reacher-v0 --dynamics-run outputs/train/Reacher-v0-dynamics4 \
        --quality ...json

    # add (or replace) the state probe of cost=probe on the model already shipped
    # (trained with vae=sfplan/models/Reacher-v0): no --dynamics-run
    python scripts/ship_model.py --task Reacher-v0 --probe-run outputs/train/Reacher-v0-probe

    # add (or replace) the one-step student (a `sfplan train stage=distill` run whose teacher
    # was the shipped model): no --dynamics-run
    python scripts/ship_model.py --task Reacher-v0 --distill-run outputs/train/Reacher-v0-distill

    # a `sfplan fit` out dir: its model dir and card, the card's planning table from the
    # given `sfplan eval` reports (NAME=DIR, e.g. 50 evaluation episodes per world model)
    python scripts/ship_model.py --task Lift-v0 --fit outputs/fit/lift \
        --report learned=outputs/eval/lift_learned --report random=outputs/eval/lift_random

Copies ``<dynamics run>/model`` (the full world model: VAE + diffusion + scheduler, and the
IDM from ``--idm-run`` into ``idm/``) into the package atomically (a temporary folder, then
a rename), refuses a result over ``--max-mb`` (20 MB: what a git repo should carry), and
writes ``README.md``: the model cards of both training stages, the wall time summed over
every invocation (read from TensorBoard event files, so resumed runs count in full) and the
held-out quality figures of ``benchmarks/world_model_quality.py``.

Without ``--vae-run`` the dynamics run must use the VAE of the model already shipped for the
task (same weights, checked by hash); that model's IDM and state probe (unless ``--idm-run``,
``--probe-run``) and its card's lineage, VAE, IDM and probe sections are carried over (edit
the lineage table by hand). The one-step student is not: it was distilled from the old weights. A probe is trained on the shipped VAE's latents: the script
checks that its run used that VAE (``vae_sha256`` of its training summary).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from sfplan.paths import portable_path, scrub_paths
from sfplan.training.checkpoint import sha256_file

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


VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"
DIFFUSION_WEIGHTS = "diffusion/diffusion_pytorch_model.safetensors"
PROBE_TITLE = "State probe (cost=probe)"
ONE_STEP_TITLE = "One-step student (num_steps=1)"
KEPT_SECTIONS = ("## Lineage", "## Stage 1: frame VAE", "## Inverse dynamics model", f"## {PROBE_TITLE}")
# the card's top-level sections; each stage's own card brings sub-sections (## Data, ...) at the same level
TOP_SECTIONS = ("## Held-out quality", "## Stage 2: dynamics", *KEPT_SECTIONS, f"## {ONE_STEP_TITLE}")


def split_card(card: str) -> tuple[str, list[str]]:
    """A card -> (the text before its first top-level section, the top-level sections, each
    up to the next top-level heading)."""
    lines = card.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(TOP_SECTIONS)] + [len(lines)]
    sections = ["".join(lines[a:b]).rstrip("\n") + "\n" for a, b in zip(starts, starts[1:])]
    return "".join(lines[: starts[0]]), sections


def kept_sections(card: str) -> list[str]:
    """The top-level sections of a shipped card that a dynamics-only re-ship carries over."""
    return [sec for sec in split_card(card)[1] if sec.startswith(KEPT_SECTIONS)]


def ship_part_only(task: str, run: Path, stage: str) -> None:
    """Put a ``stage=probe`` run's probe (``probe/``) or a ``stage=distill`` run's one-step
    student (``one_step/``) into ``sfplan/models/<task>/`` (atomically) and its card section into
    the model card, replacing one shipped before. The run must have been made on the shipped
    model: the probe on its VAE, the student from its diffusion weights."""
    from sfplan.io import atomic_dir, atomic_write_text
    from sfplan.training.latent_cache import vae_fingerprint
    from sfplan.world_model.vae import FrameAutoencoder

    dst = MODELS / task
    if not (dst / "world_model.json").is_file():
        raise SystemExit(f"no model is shipped at {dst}: ship one with --dynamics-run first")
    summary = json.loads((run / "training_summary.json").read_text())
    if summary.get("stage") != stage:
        raise SystemExit(f"{run} is not a finished `sfplan train stage={stage}` run")
    data = summary.get("data", {})
    if stage == "probe":
        sub, title, src = "probe", PROBE_TITLE, run / "model"
        if vae_fingerprint(FrameAutoencoder.from_pretrained(dst / "vae")) != data.get("vae_sha256"):
            raise SystemExit(f"{run} was trained on another VAE than the one shipped at {dst}: train it with vae={dst}")
    else:
        sub, title, src = "one_step", ONE_STEP_TITLE, run / "model" / "one_step"
        if sha256_file(dst / DIFFUSION_WEIGHTS) != data.get("teacher_diffusion_sha256"):
            raise SystemExit(f"{run} was distilled from other diffusion weights than those shipped at {dst}: "
                             f"distil a copy of {dst}")
    atomic_dir(dst / sub, lambda d: shutil.copytree(src, d, dirs_exist_ok=True))
    head, sections = split_card((dst / "README.md").read_text())
    kept = [sec for sec in sections if not sec.startswith(f"## {title}")]
    atomic_write_text(dst / "README.md", scrub_paths("\n".join([head.rstrip("\n") + "\n", *kept,
                                                               card_section(run, title)])))
    print(f"shipped {dst / sub}")


def planning_table(reports: list[str]) -> str:
    """The model card's planning section from ``NAME=DIR`` `sfplan eval` report folders."""
    from sfplan.eval.report import protocol_label, search_label, search_of

    lines = ["## Planning (CEM, evaluation seeds)", "",
             "| world model | success | 95% CI | protocol | search | seeds | plan s / decision |",
             "|---|---|---|---|---|---|---|"]
    for item in reports:
        name, _, folder = item.partition("=")
        if not folder or not (Path(folder) / "report.json").is_file():
            raise SystemExit(f"--report {item}: give NAME=DIR, DIR an `sfplan eval` out_dir with report.json")
        rep = json.loads((Path(folder) / "report.json").read_text())
        s = rep["summary"]
        lo, hi = s["success_rate_ci95"]
        search = search_label(search_of(rep["config"]))
        seeds = rep["meta"]["seeds"]
        lines.append(f"| {name} | {s['successes']}/{s['episodes']} | {lo:.0%}-{hi:.0%} | {protocol_label(s)} | "
                     f"{search} | {seeds[0]}-{seeds[-1]} | {s['plan_time_per_decision_s']:.2f} |")
    return "\n".join(lines) + "\n"


def ship_fit(task: str, fit: Path, reports: list[str], max_mb: float) -> None:
    """Ship a `sfplan fit` out dir's model (``OUT/model``: world model, state probe, IDM and
    the fit's model card) as ``sfplan/models/<task>/``, atomically; with ``reports`` the card's
    planning section (the fit's short closing eval) is replaced by those evaluations."""
    from sfplan.io import atomic_dir

    src = fit / "model"
    if not (src / "world_model.json").is_file() or not (src / "README.md").is_file():
        raise SystemExit(f"{src} holds no finished fit model: run the `sfplan fit ... out={fit}` command to its end")
    size_mb = sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) / 2**20
    if size_mb > max_mb:
        raise SystemExit(f"the model is {size_mb:.1f} MB > --max-mb {max_mb}")
    card = (src / "README.md").read_text()
    title, _, body = card.partition("\n")
    card = (f"{title}\n\nShipped with sfplan: `sfplan eval env.id=sfplan/{task}` (or the task's config name) loads it "
            f"by default.\n{body}")
    if reports:
        head, _, rest = card.partition("\n## Planning")
        tail = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
        card = head.rstrip("\n") + "\n\n" + planning_table(reports) + (f"\n## {tail}" if tail else "")

    def write(d: Path) -> None:
        shutil.copytree(src, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md", "*.json.tmp"))
        (d / "README.md").write_text(scrub_paths(card))  # the card ships in the repo: no machine paths

    atomic_dir(MODELS / task, write)
    print(f"shipped {MODELS / task} ({size_mb:.1f} MB)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, help="task name, e.g. Reacher-v0 (for sfplan/Reacher-v0)")
    ap.add_argument("--dynamics-run", type=Path, default=None,
                    help="omit it to add only --probe-run to the model already shipped")
    ap.add_argument("--vae-run", type=Path, default=None,
                    help="the VAE's training run; omit it to keep the shipped model's VAE (see above)")
    ap.add_argument("--idm-run", type=Path, default=None)
    ap.add_argument("--probe-run", type=Path, default=None, help="a `sfplan train stage=probe` run")
    ap.add_argument("--distill-run", type=Path, default=None, help="a `sfplan train stage=distill` run")
    ap.add_argument("--quality", type=Path, default=None, help="JSON of benchmarks/world_model_quality.py")
    ap.add_argument("--fit", type=Path, default=None, help="a `sfplan fit` out dir: ship its model dir and card")
    ap.add_argument("--report", action="append", default=[], metavar="NAME=DIR",
                    help="with --fit: an `sfplan eval` report folder for the card's planning table (repeatable)")
    ap.add_argument("--max-mb", type=float, default=20.0)
    args = ap.parse_args(argv)

    if args.fit is not None:
        if args.dynamics_run or args.vae_run or args.probe_run or args.distill_run or args.idm_run:
            raise SystemExit("--fit ships a fit's whole model dir: give it alone (with --report)")
        ship_fit(args.task, args.fit, args.report, args.max_mb)
        return

    if args.dynamics_run is None:
        if args.probe_run is None and args.distill_run is None:
            raise SystemExit("pass --dynamics-run (a new world model), or --probe-run / --distill-run (a probe or "
                             "one-step student for the shipped one)")
        for run, stage in ((args.probe_run, "probe"), (args.distill_run, "distill")):
            if run is not None:
                ship_part_only(args.task, run, stage)
        return
    if args.distill_run is not None:
        raise SystemExit("--distill-run adds a student to the model already shipped: ship the dynamics run first, "
                         "then distil that model")
    src = args.dynamics_run / "model"
    if not (src / "world_model.json").is_file():
        raise SystemExit(f"{src} holds no world model: finish `sfplan train stage=dynamics` first")
    dst = MODELS / args.task
    carried: list[str] = []
    if args.vae_run is None:
        if not (dst / VAE_WEIGHTS).is_file():
            raise SystemExit(f"no model is shipped at {dst}: pass --vae-run (the VAE's training run)")
        if sha256_file(dst / VAE_WEIGHTS) != sha256_file(src / VAE_WEIGHTS):
            raise SystemExit(f"{args.dynamics_run} was trained on another VAE than the one shipped at {dst}: "
                             f"pass --vae-run, or train with vae={dst}")
        carried = kept_sections((dst / "README.md").read_text()) if (dst / "README.md").is_file() else []
    tmp = MODELS / f".{args.task}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.md", "*.json.tmp"))
    for sub, run in (("idm", args.idm_run), ("probe", args.probe_run)):
        # a run given replaces what the world model holds (attach_to may have put a copy there already)
        if run is not None:
            shutil.rmtree(tmp / sub, ignore_errors=True)
            shutil.copytree(run / "model", tmp / sub)
        elif args.vae_run is None and (dst / sub).is_dir() and not (tmp / sub).is_dir():
            shutil.copytree(dst / sub, tmp / sub)
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
                     f"Held-out dataset `{portable_path(q['data'])}`, seeds {q['seeds'][0]}-{q['seeds'][-1]} (never trained on); "
                     f"device {q['device']}, {q['threads']} thread(s).\n\n" + q["table"] + "\n")
    lineage = [c for c in carried if c.startswith("## Lineage")]
    parts.extend(lineage)
    parts.append(card_section(args.dynamics_run, "Stage 2: dynamics (masked latent video diffusion)"))
    if args.vae_run is not None:
        parts.append(card_section(args.vae_run, "Stage 1: frame VAE"))
    else:
        parts.extend(c for c in carried if c.startswith("## Stage 1"))
    if args.idm_run is not None:
        parts.append(card_section(args.idm_run, "Inverse dynamics model (planner=video_plan)"))
    else:
        parts.extend(c for c in carried if c.startswith("## Inverse dynamics"))
    if args.probe_run is not None:
        parts.append(card_section(args.probe_run, PROBE_TITLE))
    else:
        parts.extend(c for c in carried if c.startswith(f"## {PROBE_TITLE}"))
    # the card ships in the repo: no machine paths, also from cards written before they were portable
    (tmp / "README.md").write_text(scrub_paths("\n".join(parts)))
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
    try:
        main()
    except SystemExit as e:  # a refusal (a message, not a status): bad input, exit 2 as the CLI does
        if isinstance(e.code, str):
            print(f"ship_model.py: {e.code}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
