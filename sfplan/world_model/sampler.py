"""Few-step sampling of the next latent chunk, following the diffusers contract
(``scheduler.set_timesteps``, ``scheduler.step``).

The noise schedule is a training-time choice (``NoiseScheduleConfig``, saved with the
model); samplers are built from it: DDIM or DPM-Solver++ (``make_sampler``). Defaults aim
at 2-4 steps: zero terminal SNR (Lin et al. 2024, "Common diffusion noise schedules and
sample steps are flawed") with v-prediction and "trailing" timesteps, so the first step
starts from pure noise at t = T-1 and predicts a sensible clean chunk in one go.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch

from sfplan.world_model.vae import _require_diffusers

SAMPLERS = ("ddim", "dpmsolver++")


@dataclass
class NoiseScheduleConfig:
    """The training noise schedule (a diffusers ``DDPMScheduler`` config)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"  # SD's schedule for unit-variance latents
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"


@dataclass
class SamplerConfig:
    kind: str = "dpmsolver++"  # ddim | dpmsolver++
    num_steps: int = 2
    guidance_scale: float = 1.0  # > 1: classifier-free guidance against the null tokens


def make_train_scheduler(prediction_type: str, schedule: NoiseScheduleConfig | dict | None = None):
    """DDPMScheduler for training losses (``add_noise``, ``get_velocity``)."""
    _require_diffusers()
    from diffusers import DDPMScheduler

    if isinstance(schedule, NoiseScheduleConfig):
        cfg = asdict(schedule)
    else:
        cfg = dict(schedule or asdict(NoiseScheduleConfig()))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(prediction_type=prediction_type, clip_sample=False)
    known = inspect.signature(DDPMScheduler.__init__).parameters
    return DDPMScheduler(**{k: v for k, v in cfg.items() if k in known})


def make_sampler(kind: str, train_scheduler):
    """A few-step sampler sharing ``train_scheduler``'s betas and prediction type."""
    _require_diffusers()
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cfg = dict(train_scheduler.config)
    if kind == "ddim":
        return DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=True)
    if kind == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(
            cfg, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", lower_order_final=True
        )
    raise ValueError(f"unknown sampler {kind!r}: choose one of {', '.join(SAMPLERS)}")


def place_actions(actions: torch.Tensor, num_context: int) -> torch.Tensor:
    """Target actions (B, K, A) -> clip actions (B, f_p + K, A) in Gymnasium order.

    ``actions[:, k]`` is executed after frame f_p - 1 + k (the first after the latest
    context frame) and yields target frame k; it sits at clip index f_p - 1 + k. Slots of
    earlier context frames and the clip's last slot are unused by the model (zeros)."""
    B, K, A = actions.shape
    full = actions.new_zeros(B, num_context + K, A)
    full[:, num_context - 1 : num_context - 1 + K] = actions
    return full


@torch.no_grad()
def sample_chunk(
    model,
    context: torch.Tensor,
    actions: torch.Tensor,
    num_steps: int = 2,
    scheduler=None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Sample the next chunk given clean context latents, batched over B.

    model: ActionVideoDiffusion. context: (B, f_p, C, h, w) clean latents (the last one is
    "now"). actions: (B, K, A); ``actions[:, k]`` yields target frame k (see
    ``place_actions``). scheduler: a DDIM / DPM-Solver++ scheduler (``make_sampler``);
    None builds DPM-Solver++ on the default schedule. noise: (B, K, C, h, w) initial noise
    (pass the same noise for all candidates of an env: common random numbers); otherwise
    drawn from ``generator`` (on the generator's device, so seeds give the same samples on
    any device). guidance_scale: classifier-free guidance toward the action condition.
    Returns the denoised target latents (B, K, C, h, w).
    """
    if scheduler is None:
        scheduler = make_sampler("dpmsolver++", make_train_scheduler(model.config.prediction_type))
    if scheduler.config.prediction_type != model.config.prediction_type:
        raise ValueError(
            f"scheduler predicts {scheduler.config.prediction_type!r} but the model was trained for "
            f"{model.config.prediction_type!r}: build the sampler with make_sampler(kind, model's schedule)"
        )
    B, f_p, C, h, w = context.shape
    K = actions.shape[1]
    T = f_p + K
    dev = context.device
    dtype = context.dtype
    if noise is None:
        gdev = generator.device if generator is not None else dev
        noise = torch.randn((B, K, C, h, w), generator=generator, device=gdev, dtype=dtype)
    x = noise.to(dev, dtype) * scheduler.init_noise_sigma  # (B, K, C, h, w)
    ctx_mask = (torch.arange(T, device=dev) < f_p)[None].expand(B, T)  # (B, T)
    tokens = model.condition(place_actions(actions.to(dev, dtype), f_p), ctx_mask)  # (B, T, D)
    cfg = guidance_scale != 1.0
    if cfg:  # one batched forward for conditional and unconditional branches
        tokens = torch.cat([tokens, model.null_condition(B, T)])
        ctx_mask = torch.cat([ctx_mask, ctx_mask])
        context = torch.cat([context, context])
    scheduler.set_timesteps(num_steps, device=dev)
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t)
        xin = torch.cat([xin, xin]) if cfg else xin
        inp = torch.cat([context, xin], dim=1)  # (B', T, C, h, w)
        pred = model(inp, t.expand(inp.shape[0]), ctx_mask, tokens)[:, f_p:].to(x.dtype)  # (B', K, C, h, w)
        if cfg:
            cond, uncond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(pred, t, x).prev_sample
    return x
