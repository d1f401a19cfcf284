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


def sampler_timesteps(scheduler, num_steps: int) -> torch.Tensor:
    """(num_steps,) training-schedule timesteps at which a few-step ``scheduler``
    (``make_sampler``) evaluates the denoiser, e.g. [999, 499] for DPM-Solver++ x 2 with
    trailing spacing."""
    scheduler.set_timesteps(int(num_steps), device="cpu")
    return scheduler.timesteps.clone().long()


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


GOAL_GUIDANCE = ("replace", "reconstruction", "none")


def _x0_and_eps(pred: torch.Tensor, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, prediction_type: str):
    """Model output -> (x0, eps) at a noise level with sqrt(alpha_bar) = a, sqrt(1 - alpha_bar) = s."""
    if prediction_type == "v_prediction":
        return a * x - s * pred, s * x + a * pred
    return (x - s * pred) / a.clamp_min(1e-4), pred


def _pred_from_x0(x0: torch.Tensor, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, prediction_type: str):
    """x0 -> the model output (eps or v) that implies it at x_t."""
    eps = (x - a * x0) / s.clamp_min(1e-4)
    return a * eps - s * x0 if prediction_type == "v_prediction" else eps


def sample_chunk_to_goal(
    model,
    context: torch.Tensor,
    goal: torch.Tensor,
    num_frames: int,
    num_steps: int,
    scheduler,
    train_scheduler,
    generator: torch.Generator | None = None,
    guidance: str = "reconstruction",
    guidance_weight: float = 3.0,
) -> torch.Tensor:
    """Sample an action-free chunk that ends at ``goal``: the video-plan planner's imagination.

    model: ActionVideoDiffusion. context: (B, f_p, C, h, w) clean latents; goal: (B, C, h,
    w) latent the chunk's last frame is steered to; num_frames: K frames generated.
    The condition is the learned null token sequence (no actions: the video is planned,
    then the IDM reads the actions off it). scheduler: a DDIM / DPM-Solver++ sampler
    (``make_sampler``), train_scheduler: the model's training schedule (``add_noise``,
    ``alphas_cumprod``). Noise is drawn from ``generator`` (on its device).

    guidance:
    - ``replace`` (inpainting by replacement): before every denoiser call the last frame
      is set to the goal noised to the current level with a fixed noise draw
      (``add_noise(goal, n, t)``), so the model sees the goal at the same noise level as
      the frames it denoises; the frames before it are pulled to it by temporal attention.
      The final step's output is left as the model made it, so the returned last frame
      tells how well the video reached the goal (it is not the goal copied in).
    - ``reconstruction``: replacement plus reconstruction guidance (Ho et al. 2022, "Video
      diffusion models"): the predicted clean chunk is moved along
      -guidance_weight * sqrt(alpha_bar_t) / 2 * grad_{x_t} ||x0_hat[last] - goal||^2, which
      also corrects the earlier frames. Needs a backward pass per step (~2x the time).
      ``benchmarks/goal_guidance.py`` measures both: replacement fixes the last frame but
      leaves the frames before it about half-way; reconstruction with w ~ 3 brings them
      close to samples with the true actions (numbers in ``planners/video_plan.py``).
    - ``none``: unguided (action-free) sampling, for comparison.
    Returns the denoised chunk (B, K, C, h, w).
    """
    if guidance not in GOAL_GUIDANCE:
        raise ValueError(f"guidance must be one of {GOAL_GUIDANCE}, got {guidance!r}")
    ptype = model.config.prediction_type
    if scheduler.config.prediction_type != ptype:
        raise ValueError(f"scheduler predicts {scheduler.config.prediction_type!r} but the model was trained for "
                         f"{ptype!r}: build the sampler with make_sampler(kind, model's schedule)")
    B, f_p, C, h, w = context.shape
    K = int(num_frames)
    T = f_p + K
    if tuple(goal.shape) != (B, C, h, w):
        raise ValueError(f"goal must be (B, C, h, w) = {(B, C, h, w)}, got {tuple(goal.shape)}")
    dev, dtype = context.device, context.dtype
    gdev = generator.device if generator is not None else dev
    noise = torch.randn((B, K, C, h, w), generator=generator, device=gdev, dtype=torch.float32).to(dev, dtype)
    goal_noise = noise[:, -1].clone()  # (B, C, h, w): the goal frame keeps one noise draw across steps
    goal = goal.to(dev, dtype)
    x = noise * scheduler.init_noise_sigma  # (B, K, C, h, w)
    ctx_mask = (torch.arange(T, device=dev) < f_p)[None].expand(B, T)  # (B, T)
    tokens = model.null_condition(B, T).to(dtype)  # (B, T, D) action-free
    acp = train_scheduler.alphas_cumprod.to(dev, torch.float32)
    scheduler.set_timesteps(num_steps, device=dev)
    for t in scheduler.timesteps:
        tb = t.expand(B)
        if guidance != "none":
            x = x.clone()
            x[:, -1] = train_scheduler.add_noise(goal, goal_noise, tb)
        xin = scheduler.scale_model_input(x, t)
        if guidance == "reconstruction":
            a, s = acp[int(t)].sqrt(), (1 - acp[int(t)]).sqrt()
            with torch.enable_grad():
                xg = xin.detach().requires_grad_(True)
                pred = model(torch.cat([context, xg], dim=1), tb, ctx_mask, tokens)[:, f_p:].float()
                x0, _ = _x0_and_eps(pred, xg.float(), a, s, ptype)
                err = (x0[:, -1] - goal.float()).pow(2).sum()
                (grad,) = torch.autograd.grad(err, xg)
            x0 = x0.detach() - float(guidance_weight) * a / 2 * grad.float()
            pred = _pred_from_x0(x0, xin.float(), a, s, ptype).to(x.dtype)
        else:
            with torch.no_grad():
                pred = model(torch.cat([context, xin], dim=1), tb, ctx_mask, tokens)[:, f_p:].to(x.dtype)
        x = scheduler.step(pred, t, x).prev_sample
    return x.detach()
