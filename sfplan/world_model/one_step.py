"""One-step imagination: the few-step sampler distilled into a single denoiser call.

Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling
of diffusion models"), one halving: a student initialised as the model is trained so that
ONE call at the sampler's first timestep (pure noise, t = T-1) returns what the model's
``num_steps``-step sampler returns from the same noise, context and actions. The student is
the model plus a LoRA adapter (LCM-LoRA's form), so a world model dir carries it as a small
``one_step/`` part (``adapter_model.safetensors`` in fp16 + ``adapter_config.json``) beside
the unchanged weights; ``SlowFastWorldModel.from_pretrained`` with ``num_steps=1`` folds it
into the weights (no extra cost per call).

Without distillation one call at t = T-1 returns the model's conditional mean, and the
planner scores blurred futures (Reacher, hold 10: 8/50 against 20/50 with two steps).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

ADAPTER = "one_step"
SUBDIR = "one_step"
WEIGHTS = "adapter_model.safetensors"


@dataclass
class OneStepConfig:
    """The student's adapter. rank 16 on every linear and convolution of the denoiser:
    ~0.6M parameters, 1.2 MB in fp16 (a shipped model stays within 20 MB)."""

    rank: int = 16
    alpha: float = 16.0


def adapter_targets(diffusion: nn.Module) -> list[str]:
    """Names of every Linear and Conv2d of the denoiser: the student may change any of them."""
    return [n for n, m in diffusion.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def add_adapter(diffusion: nn.Module, config: OneStepConfig, seed: int = 0) -> list[nn.Parameter]:
    """Inject the student's LoRA into ``diffusion`` (base frozen; B = 0, so the student starts
    as the model) -> its trainable parameters."""
    from peft import LoraConfig

    lcfg = LoraConfig(r=int(config.rank), lora_alpha=float(config.alpha), target_modules=adapter_targets(diffusion),
                      lora_dropout=0.0, init_lora_weights=True, bias="none")
    diffusion.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        diffusion.add_adapter(lcfg, adapter_name=ADAPTER)
    params = [p for _, p in _adapter_parameters(diffusion)]
    for p in params:
        p.requires_grad_(True)
    return params


def _adapter_parameters(diffusion: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the student's LoRA tensors (peft names them ``...lora_A.one_step.weight``)."""
    return [(n, p) for n, p in diffusion.named_parameters() if f".{ADAPTER}." in n and ".lora_" in n]


def adapter_state_dict(diffusion: nn.Module) -> dict[str, torch.Tensor]:
    """The student's LoRA tensors by module name (``<module>.lora_A`` / ``.lora_B``)."""
    return {n.replace(f".{ADAPTER}.", ".").replace(".weight", ""): p.detach() for n, p in _adapter_parameters(diffusion)}


def save_adapter(diffusion: nn.Module, config: OneStepConfig, directory: str | Path, meta: dict) -> Path:
    """Write ``<directory>/one_step/`` (fp16 LoRA tensors + config and how they were made)."""
    from safetensors.torch import save_file

    from sfplan.io import atomic_dir

    tensors = {k: v.to(torch.float16).contiguous() for k, v in adapter_state_dict(diffusion).items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / "adapter_config.json").write_text(json.dumps({**asdict(config), **meta}, indent=2) + "\n")

    d = Path(directory) / SUBDIR
    atomic_dir(d, write)
    return d


def has_adapter(directory: str | Path | None) -> bool:
    return directory is not None and (Path(directory) / SUBDIR / WEIGHTS).is_file()


@torch.no_grad()
def fold_adapter(diffusion: nn.Module, directory: str | Path) -> dict:
    """Add the student's low-rank deltas of ``<directory>/one_step/`` to ``diffusion``'s
    weights in place (W += alpha/r B A) -> the adapter config. The module keeps its class
    and names, so Temp-LoRA and saving work on it as on any model."""
    from safetensors.torch import load_file

    d = Path(directory) / SUBDIR
    cfg = json.loads((d / "adapter_config.json").read_text())
    scale = float(cfg["alpha"]) / float(cfg["rank"])
    tensors = load_file(str(d / WEIGHTS))
    modules = dict(diffusion.named_modules())
    for name in {k.rsplit(".lora_", 1)[0] for k in tensors}:
        m = modules.get(name)
        if m is None:
            raise ValueError(f"{d}: the adapter names a module {name!r} that this model lacks")
        w = m.weight
        a = tensors[f"{name}.lora_A"].to(w.device, torch.float32)  # (r, in, kh, kw) or (r, in)
        b = tensors[f"{name}.lora_B"].to(w.device, torch.float32)  # (out, r, 1, 1) or (out, r)
        delta = (b.flatten(1) @ a.flatten(1)).view_as(w) * scale
        w.add_(delta.to(w.dtype))
    return cfg


def one_step_x0(model, context: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor,
                train_scheduler) -> torch.Tensor:
    """The clean chunk one denoiser call predicts from pure noise (differentiable).

    context (B, f_p, C, h, w) clean latents, actions (B, K, A) (``place_actions``), noise
    (B, K, C, h, w) -> (B, K, C, h, w). What ``sample_chunk(..., num_steps=1)`` returns with
    DDIM / DPM-Solver++ on a trailing zero-terminal-SNR schedule (to ~1e-3: DPM-Solver++
    keeps alpha_T slightly above 0)."""
    from sfplan.world_model.sampler import _x0_and_eps, place_actions

    B, f_p = context.shape[:2]
    K = actions.shape[1]
    T = f_p + K
    t_max = int(train_scheduler.config.num_train_timesteps) - 1
    acp = train_scheduler.alphas_cumprod[t_max].to(noise.device, torch.float32)
    ctx_mask = (torch.arange(T, device=noise.device) < f_p)[None].expand(B, T)
    tokens = model.condition(place_actions(actions, f_p), ctx_mask)
    x = noise  # init_noise_sigma is 1 for the trailing DDIM / DPM-Solver++ samplers
    pred = model(torch.cat([context, x], dim=1), torch.full((B,), t_max, device=noise.device), ctx_mask,
                 tokens)[:, f_p:].float()
    x0, _ = _x0_and_eps(pred, x.float(), acp.sqrt(), (1 - acp).sqrt(), model.config.prediction_type)
    return x0
