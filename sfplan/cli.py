"""The `sfplan` command: `sfplan eval [key=value ...]`, `sfplan collect [key=value ...]`,
`sfplan data info PATH`, `sfplan train [key=value ...]`, `sfplan fit [key=value ...]`, `sfplan generate [key=value ...]`, `sfplan info`."""
from __future__ import annotations

import argparse
import os
import sys

from sfplan.config import config_options, load_config, require_complete
from sfplan.errors import UserError

USAGE_OVERRIDES = "Hydra overrides, e.g. env=pointmaze_umaze planner=mppi episodes=50 device=cpu"


def _compose(name: str, args: argparse.Namespace):
    """Compose ``configs/<name>.yaml`` with the command's overrides; with ``--cfg``, print
    it and return None (the command then stops). A required value left unset is an error."""
    cfg = load_config(name, args.overrides)
    if args.cfg:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    require_complete(cfg, name)
    return cfg


def _cmd_eval(args: argparse.Namespace) -> int:
    cfg = _compose("eval", args)
    if cfg is None:
        return 0
    from sfplan.eval.main import run_eval

    report = run_eval(cfg)
    s = report["summary"]
    lo, hi = s["success_rate_ci95"]
    from sfplan.eval.report import protocol_label

    print(f"success ({protocol_label(s)}) {s['successes']}/{s['episodes']} = {s['success_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%}); "
          f"steps {s['steps_mean']:.1f}; plan time/decision {s['plan_time_per_decision_s']:.3f} s")
    print(f"report: {report['out_dir']}/report.md  page: {report['out_dir']}/index.html")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    cfg = _compose("collect", args)
    if cfg is None:
        return 0
    from sfplan.data.collect import run_collect

    from sfplan.config import override_keys

    r = run_collect(cfg, explicit=override_keys(args.overrides))
    print(f"collected {r['episodes']} episodes, {r['steps']} steps (seeds {r['seeds'][0]}-{r['seeds'][1]}) in "
          f"{r['wall_s']:.1f} s: {r['steps_per_s']:.0f} steps/s, {r['workers']} worker(s) at "
          f"{r['steps_per_s_per_worker']:.0f} steps/s each")
    print(f"dataset: {r['out']}  (summary: sfplan data info {r['out']})")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "import-minari":
        from sfplan.data.collect import import_minari

        r = import_minari(args.dataset, args.out, env_id=args.env_id, append=args.append)
        print(f"imported {r['episodes']} episodes, {r['steps']} steps into {r['out']}")
        return 0
    import json

    from sfplan.data.dataset import DatasetError, EpisodeDataset, format_summary

    with EpisodeDataset(args.path) as ds:
        s = ds.summary()
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    if s["problems"]:  # a dataset that is not fit to train on: the summary above, then exit status 2
        more = f" (and {len(s['problems']) - 1} more above)" if len(s["problems"]) > 1 else ""
        raise DatasetError(f"{s['problems'][0]}{more}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import shlex

    cfg = _compose("train", args)
    if cfg is None:
        return 0
    from sfplan.training import run_train

    r = run_train(cfg, command=" ".join(["sfplan train", *map(shlex.quote, args.overrides)]))
    if not r.get("is_main", True):  # other DDP processes: the main one reports
        return 0
    sps = f"{r['steps_per_s']:.2f} steps/s" if r.get("steps_per_s") else "no steps run"
    if r.get("stopped"):
        print(f"stopped at step {r['step']}/{r['steps']} ({r['stopped']}); checkpoint: {r['checkpoint']} "
              f"(run the same command to resume)")
        return 0
    losses = "".join(f", {name} loss {d['loss']:.4g}"
                     for name, d in (("final", r["last_train"]), ("val", r["last_val"])) if d.get("loss") is not None)
    print(f"trained {r['stage']} to step {r['step']} ({r['steps_this_run']} steps in this run, {sps}){losses}")
    logs = f"  logs: tensorboard --logdir {r['out_dir']}/tb" if cfg.tensorboard else ""
    print(f"model: {r['model']}  card: {r['out_dir']}/model_card.md{logs}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    cfg = _compose("fit", args)
    if cfg is None:
        return 0
    from sfplan.training.fit import quality_verdict, run_fit

    s = run_fit(cfg)
    out = cfg.out
    print(f"world model: {out}/model  card: {out}/model/README.md  (sfplan eval world_model.path={out})")
    verdict = quality_verdict(s.get("quality", {}))
    if verdict:
        print(f"sfplan fit: warning: {verdict}", file=sys.stderr)
    for name, d in s["stages"].get("eval", {}).get("results", {}).items():
        lo, hi = d["ci95"]
        print(f"  {name:8s} success {d['successes']}/{d['episodes']} (95% CI {lo:.0%}-{hi:.0%}), "
              f"{d['plan_time_per_decision_s']:.2f} s per decision")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    cfg = _compose("generate", args)
    if cfg is None:
        return 0
    from sfplan.generate import run_generate

    r = run_generate(cfg)
    print(f"imagined {r['horizon']} steps in {r['wall_s']:.1f} s ({r['frames_per_s']:.1f} frames/s; chunks of "
          f"{r['chunk_size']}, {r['sampler']} x {r['num_steps']} steps)")
    if r.get("memory"):
        m = r["memory"]
        print(f"memory: Temp-LoRA rank {m['config']['rank']}, {m['writes']} writes of the {m['write']} chunks, "
              f"{m['write_s_per_chunk']:.2f} s per write ({m['write_s_total']:.1f} s of {r['wall_s']:.1f} s)")
    if "table" in r:
        src = r["source"]
        where = (f"episode {src['episode']} (seed {src['seed']}, held out from training: "
                 f"{'yes' if src['held_out'] else 'no'})" if "episode" in src else
                 f"{src['task']} reset at seed {src['seed']}, {src['policy']} random actions")
        print(f"{where}: PSNR [dB] / SSIM per horizon step")
        print(r["table"])
    print(f"video: {r['out_dir']}/video.mp4 (and .gif)  metrics: {r['out_dir']}/metrics.json")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from sfplan.envs import TASKS

    print("Tasks (gymnasium ids; `sfplan eval env=<config>`):")
    for tid, desc in TASKS.items():
        print(f"  {tid:28s} {desc}")
    print("Your own env: env.id=<a Gymnasium id your package registers, e.g. my_pkg:MyEnv-v0> or "
          "env.id=<module:callable returning a GoalImageWrapper>; sfplan fit env.id=... out=DIR makes its world model")
    for group, what in (("env", "Task configs"), ("planner", "Planners"), ("world_model", "World models"),
                        ("cost", "Costs")):
        print(f"{what} ({group}=...): {', '.join(config_options(group))}")
    return 0


def _config_command(sub, name: str, help: str, example: str, func) -> None:
    """A subcommand that composes ``configs/<name>.yaml`` with ``key=value`` overrides."""
    c = sub.add_parser(name, help=help)
    c.add_argument("overrides", nargs="*", help=f"Hydra overrides, e.g. {example}")
    c.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    c.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sfplan", description="Long-horizon visual planning with a learned video "
                                "world model (SlowFast-VGen).")
    sub = p.add_subparsers(dest="command", required=True)
    _config_command(sub, "eval", "MPC toward goal images on a task; writes a success-rate report",
                    "env=pointmaze_umaze planner=mppi episodes=50 device=cpu (env.id=my_tasks:make_task for your "
                    "own env)", _cmd_eval)
    _config_command(sub, "collect", "roll out exploration policies on a task; writes an episode dataset",
                    "env=pusher policy=goal episodes=500 workers=4 out=data/pusher", _cmd_collect)
    d = sub.add_parser("data", help="inspect or import episode datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    di = dsub.add_parser("info", help="summarise a dataset (episodes, steps, image size, env, policy, actions)")
    di.add_argument("path", help="dataset directory (or one shard file)")
    di.add_argument("--json", action="store_true", help="print the summary as JSON")
    dm = dsub.add_parser("import-minari", help="convert a Minari dataset with image observations")
    dm.add_argument("dataset", help="Minari dataset id or local path")
    dm.add_argument("out", help="sfplan dataset directory to write")
    dm.add_argument("--env-id", default=None, help="task id to record (default: the Minari env spec's id)")
    dm.add_argument("--append", action="store_true", help="add to an existing dataset directory")
    d.set_defaults(func=_cmd_data)
    _config_command(sub, "train", "train the learned world model: stage=vae, then stage=dynamics (and stage=idm "
                    "for planner=video_plan, stage=probe for cost=probe)",
                    "stage=vae data.path=data/Reacher-v0 steps=5000 (stage=dynamics, idm and probe also need "
                    "vae=<vae run>/model)", _cmd_train)
    _config_command(sub, "fit", "from an env to a planning world model in one command: collect, train every "
                    "stage, card, eval (resumes when run again)",
                    "env.id=my_tasks:make_puck out=models/puck minutes=30", _cmd_fit)
    _config_command(sub, "generate", "roll out a long video with a learned world model; PSNR/SSIM per step",
                    "model=<run>/model data=data/Reacher-v0 episode=3 (or image=start.png actions=actions.npy)",
                    _cmd_generate)
    i = sub.add_parser("info", help="list registered tasks, planners, world models and costs")
    i.set_defaults(func=_cmd_info)
    return p


def _user_error_cause(e: BaseException) -> UserError | None:
    """The UserError an exception was raised from (its __cause__/__context__ chain), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"sfplan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        cause = _user_error_cause(e)  # hydra's instantiate wraps what a _target_ raised
        if cause is None:
            raise
        print(f"sfplan {args.command}: error: {cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # sfplan train: "SIGINT at step N: checkpoint ...; run the same command again"
        print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
