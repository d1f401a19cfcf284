"""``model_card.md`` (and ``training_summary.json``) beside a finished run's ``model/``.

Both get shared and committed, so every path in them is portable (``sfplan.paths``): relative
to the directory the command ran in, never a machine's absolute path."""
from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from sfplan.paths import portable, scrub_paths


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in d.items()) if d else "n/a"


def write_model_card(out_dir: Path, cfg, result: dict, data: dict, hardware: str, command: str | None,
                     accelerator) -> Path:
    from sfplan.eval.report import git_commit

    out_dir = Path(out_dir)
    stage = result["stage"]
    world = accelerator.num_processes
    mp = str(accelerator.mixed_precision)
    cmd = command or f"sfplan train stage={stage} data.path={cfg.data.path} ..."
    model_dir = out_dir / "model"
    if stage == "vae":
        what = "FrameAutoencoder (diffusers AutoencoderKL), frames -> latents"
        use = (f"sfplan train stage=dynamics data.path={cfg.data.path} vae={model_dir}")
    elif stage == "idm":
        what = "InverseDynamicsModel: consecutive VAE latents -> the action between them (planner=video_plan)"
        wm = result.get("attached_to")
        use = (f"sfplan eval world_model=learned world_model.path={Path(wm).parent} planner=video_plan" if wm else
               f"sfplan eval world_model=learned world_model.path=<world model dir> planner=video_plan "
               f"planner.idm_path={model_dir}")
    elif stage == "probe":
        what = "StateProbe: one VAE latent -> the task's goal descriptor (cost=probe)"
        wm = result.get("attached_to")
        use = (f"sfplan eval world_model=learned world_model.path={Path(wm).parent} cost=probe" if wm else
               "copy model/ to <world model dir>/probe/, then: sfplan eval world_model=learned "
               "world_model.path=<world model dir> cost=probe")
    elif stage == "distill":
        what = ("One-step student: a LoRA on the denoiser, distilled so that one call returns what the model's "
                f"{data.get('teacher_steps')}-step sampler returns ({data.get('adapter_parameters')} parameters)")
        wm = result.get("attached_to")
        use = (f"sfplan eval world_model=learned world_model.path={Path(wm).parent} +world_model.num_steps=1" if wm
               else "")
    else:
        what = "SlowFastWorldModel: frame VAE + action-conditioned masked latent video diffusion (slow learner)"
        use = (f"sfplan generate model={model_dir} data={cfg.data.path} episode=0\n"
               f"sfplan eval world_model=learned world_model.path={model_dir} env=<task of the data>")
    sps = result.get("steps_per_s")
    lines = [
        f"# sfplan model card: {stage}",
        "",
        f"{what}. Weights: the EMA (decay {cfg.ema_decay}) of the trained weights.",
        "",
        "## Data",
        f"- dataset: `{data['dataset']}` ({data['env_id']}, {data['image_size']}x{data['image_size']} frames, "
        f"{data['action_dim']}-d actions)",
        f"- episodes: {data['episodes']} ({data['train_episodes']} train, {data['val_episodes']} held out by seed, "
        f"val_fraction {cfg.data.val_fraction}); {data['steps']} steps, {data['frames']} frames",
    ]
    if stage == "dynamics":
        lines += [f"- VAE: `{data.get('vae')}`; latent {data.get('latent_shape')}; latent cache "
                  f"`{Path(data.get('latent_cache', '')).name}`",
                  f"- clips of {data.get('clip_frames')} latent frames ({data.get('train_clips')} training clips)"]
    if stage == "idm":
        lines += [f"- VAE: `{data.get('vae')}`; latent {data.get('latent_shape')}; windows of {data.get('num_frames')} "
                  f"frames, gaps 1..{data.get('max_gap')} ({data.get('train_windows')} training windows)"]
    if stage == "distill":
        lines += [f"- teacher: `{data.get('attach_to')}` ({data.get('teacher_steps')} sampler steps); clips of "
                  f"{data.get('clip_frames')} latent frames ({data.get('train_clips')} training clips)"]
    if stage == "probe":
        lines += [f"- VAE: `{data.get('vae')}`; descriptor dim {data.get('descriptor_dim')}; frames: "
                  f"{data.get('train_frames')} train, {data.get('val_frames')} held out; imagined frames "
                  f"{data.get('imagined_frames')}"]
    lines += [
        "",
        "## Training",
        f"- command: `{cmd}`",
        f"- steps: {result['step']} (this invocation: {result['steps_this_run']}"
        + (f", resumed from `{result['resumed_from']}`" if result.get("resumed_from") else "") + ")"
        + (f"; ended by time_limit_s={result['stopped_early']['time_limit_s']:g} before the {result['steps']} "
           f"steps set (the LR schedule is the one for {result['steps']})" if result.get("stopped_early") else ""),
        f"- batch size: {cfg.batch_size} per process x {world} process(es); lr {cfg.lr} ({cfg.lr_schedule}, "
        f"warmup {cfg.warmup_steps}), grad clip {cfg.grad_clip}, weight decay {cfg.weight_decay}",
        f"- non-finite steps skipped: {result['nan_skipped_total']}",
        f"- seed: {cfg.seed}",
        "",
        "## Hardware and time",
        f"- device: {accelerator.device} ({hardware}); mixed precision: {mp}; processes: {world}",
        f"- wall time: {result.get('wall_time_s', 0):.1f} s (this invocation); training steps "
        f"{result['train_time_s']:.1f} s"
        + (f" = {sps:.3g} steps/s, {sps * int(cfg.batch_size) * world:.3g} samples/s" if sps else ""),
        "",
        "## Final losses",
        f"- train (mean of the last log window): {_kv(result.get('last_train', {}))}",
        f"- val (EMA weights, held-out episodes): {_kv(result.get('last_val', {}))}",
        f"- samples: {_kv(result.get('last_sample', {}))}",
    ]
    if stage == "distill":
        lines.append("- held-out clips, fixed noise (latent MSE to the true chunk; probe state error of its last "
                     f"frame; student = one call, teacher = its steps): {_kv(result.get('distill_val', {}))}")
        if result.get("attached_to"):
            lines.append(f"- written into the world model: `{result['attached_to']}`")
    if stage in ("idm", "probe"):
        key, what_val = ("idm_val", "held-out actions") if stage == "idm" else ("probe_val", "held-out descriptors")
        lines.append(f"- {what_val} (EMA weights): {_kv(result.get(key, {}))}")
        if result.get("attached_to"):
            lines.append(f"- written into the world model: `{result['attached_to']}`")
    if "latent_scale" in result:
        lines.append(f"- latent scale: {_kv(result['latent_scale'])}")
    if result.get("checkpoint_sha256"):
        lines.append(f"- checkpoint sha256: `{result['checkpoint_sha256']}`")
    lines += [
        "",
        "## Use",
        "```",
        use,
        "```",
        "",
        "## Provenance",
        f"- written {time.strftime('%Y-%m-%d %H:%M:%S %z')}; sfplan git commit {git_commit()}",
        "",
        "## Config",
        "```yaml",
        OmegaConf.to_yaml(cfg, resolve=True).rstrip(),
        "```",
        "",
    ]
    path = out_dir / "model_card.md"
    path.write_text(scrub_paths("\n".join(lines)))
    summary = {**{k: v for k, v in result.items()}, "data": data, "hardware": hardware, "command": cmd,
               "mixed_precision": mp, "num_processes": world, "git_commit": git_commit()}
    summary = portable(json.loads(json.dumps(summary, default=str)))
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path
