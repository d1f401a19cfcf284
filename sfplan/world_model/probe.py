"""State probe: one latent frame -> the task's goal descriptor (what success is measured on).

A learned cost head for the planners (``sfplan.planners.ProbeCost``, ``sfplan eval
cost=probe``). Whole-image distances rank fine differences badly where the object of the
task is small (Reacher's fingertip, PointMaze's ball) or where a look-alike pose lies in
another basin (Reacher's mirrored elbow); a probe that reads the descriptor the task's
success test uses (Reacher: fingertip (x, y); PointMaze: ball (x, y); Pusher: cylinder
(x, y)) gives the planner that distance directly, in metres, from images alone.

Supervision comes from the dataset, never from the evaluation episode: ``sfplan train
stage=probe`` labels every recorded frame with the descriptor of its recorded simulator
state (the env's ``goal_descriptor_of(state)``), and with ``imagined: true`` it also trains on
the world model's own imagined latents of the training clips (labelled with the true
descriptor of the step they imagine), so the probe learns to read the model's blurred
predictions rather than only real frames. At planning time the probe sees the goal image
and the imagined frames, as any cost does.

Input: latents (N, C, h, w) of the frozen VAE; output: (N, D) descriptors in the task's
units (the normaliser that maps them to O(1) lives in the weights). Net: 3x3 convs at
h, h/2, h/4 (SiLU), then an MLP over the flattened h/4 x h/4 map (where the object is
matters, so no global pooling). 0.64M parameters at the defaults (2.5 MB); 512 latents of
16x16x4 (64 candidates x 8 frames) take 0.35 s on one thread of the project's 2-core CPU
while two other jobs ran: cheap with a final-frame cost, noticeable with a mean over frames.

Saved with ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``).
A world model directory may hold one in ``<world model>/probe/``; ``world_model.probe`` of a
loaded world model reads it on first use. ``probe_for`` hands the cost the module that reads a
world model's features (the cost itself reads no files).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sfplan.errors import UserError
from sfplan.world_model.vae import _require_diffusers

_require_diffusers()
from diffusers import ConfigMixin, ModelMixin  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402

PROBE_SUBDIR = "probe"
PROBE_HINT = ("train one with `sfplan train stage=probe data.path=<dataset> vae=<world model dir> "
              "attach_to=<world model dir>`")


@dataclass
class ProbeConfig:
    """``latent_channels``/``latent_size`` come from the VAE and ``out_dim`` from the task
    when ``sfplan train stage=probe`` builds it."""

    latent_channels: int = 4
    latent_size: int = 16
    out_dim: int = 2
    width: int = 64  # channels of the first conv level (the second has 2x)
    hidden_dim: int = 256

    def build(self) -> "StateProbe":
        return StateProbe(**asdict(self))


class StateProbe(ModelMixin, ConfigMixin):
    """forward(latents (N, C, h, w)) -> descriptors (N, out_dim), task units."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 4, latent_size: int = 16, out_dim: int = 2, width: int = 64,
                 hidden_dim: int = 256):
        super().__init__()
        if latent_size % 4:
            raise ValueError(f"latent_size must be divisible by 4 (two stride-2 levels), got {latent_size}")
        w = int(width)
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * w * (latent_size // 4) ** 2, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        # descriptor normaliser (task units <-> O(1) outputs), saved with the weights
        self.register_buffer("target_shift", torch.zeros(out_dim))
        self.register_buffer("target_scale", torch.ones(out_dim))

    @torch.no_grad()
    def set_target_normalizer(self, targets: torch.Tensor) -> None:
        """Fit the normaliser to descriptors (M, out_dim) of the training frames."""
        targets = targets.reshape(-1, self.config.out_dim).float()
        self.target_shift.copy_(targets.mean(0))
        self.target_scale.copy_(targets.std(0).clamp_min(1e-6))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        lead = latents.shape[:-3]
        out = self.net(latents.reshape(-1, *latents.shape[-3:]).to(self.target_scale.dtype))  # (N, D)
        return (out * self.target_scale + self.target_shift).reshape(*lead, -1)

    def loss(self, latents: torch.Tensor, targets: torch.Tensor):
        """latents (B, C, h, w), targets (B, D) task units -> (MSE on normalised descriptors, logs)."""
        pred = self.net(latents.to(self.target_scale.dtype))
        loss = F.mse_loss(pred, (targets.to(pred) - self.target_shift) / self.target_scale)
        return loss, {"loss": loss.item()}


def label_descriptors(meta: dict, episode_states) -> list:
    """Goal descriptors of recorded simulator states, labelled by the env a dataset was
    collected on (``meta``: its ``env_id`` and ``env_kwargs``): ``episode_states`` (an
    iterable of (L+1, S) arrays) -> one (L+1, D) array per episode. UserError where that env
    has no ``goal_descriptor_of``."""
    import json

    import numpy as np

    from sfplan.envs import make_env
    from sfplan.envs.spec import can_label_states

    kwargs = meta.get("env_kwargs") or {}
    env = make_env(meta["env_id"], **(json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs)))
    try:
        if not can_label_states(env):
            raise UserError(f"{meta['env_id']} cannot label a recorded state with its goal descriptor (sfplan tasks "
                            f"can; a GoalImageWrapper needs descriptor_fn=... on a MuJoCo env); stage=probe needs "
                            f"it, use another cost (cost=multiscale)")
        label = env.unwrapped.goal_descriptor_of
        return [np.stack([label(x) for x in st]) for st in episode_states]
    finally:
        env.close()


def descriptor_errors(pred: torch.Tensor, target: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """pred, target (M, D) -> mean and median Euclidean error (task units)."""
    e = (pred.float() - target.float()).norm(dim=-1)
    return {f"{prefix}error_mean": float(e.mean()), f"{prefix}error_median": float(e.median())}


def save_probe_into(probe: StateProbe, world_model_dir: str | Path) -> Path:
    """Write ``probe`` to ``<world_model_dir>/probe/`` atomically (temp folder, then rename)."""
    from sfplan.io import save_pretrained_into

    return save_pretrained_into(probe, world_model_dir, PROBE_SUBDIR)


def load_probe(directory: str | Path, device: str | torch.device = "cpu") -> StateProbe:
    d = Path(directory).expanduser()
    if not (d / "config.json").is_file() or not (d / "diffusion_pytorch_model.safetensors").is_file():
        raise UserError(f"no state probe at {d} (expected config.json + diffusion_pytorch_model.safetensors; "
                        f"sfplan reads weights from safetensors only, never pickles): {PROBE_HINT}")
    try:  # use_safetensors: diffusers would otherwise fall back to a pickled .bin
        return StateProbe.from_pretrained(str(d), use_safetensors=True).to(device).eval()
    except Exception as e:  # corrupt or foreign files
        raise UserError(f"the state probe at {d} is unreadable ({type(e).__name__}: {e}); {PROBE_HINT}") from e


class PixelProbe(nn.Module):
    """A state probe for pixel features (the oracle's): frames are encoded by the VAE the
    probe was trained on, then read. forward(frames (N, 3, H, W) float in [0, 1]) -> (N, D)."""

    def __init__(self, vae: nn.Module, probe: StateProbe):
        super().__init__()
        self.vae, self.probe = vae, probe

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.probe(self.vae.encode(frames.float() * 2.0 - 1.0))  # VAE input in [-1, 1]


def probe_for(world_model, model: str | Path | None = None, task: str | None = None) -> nn.Module:
    """The module that reads ``world_model``'s features as task descriptors, for ``cost=probe``
    (``ProbeCost.probe``): its own probe where it imagines latents (``<world model>/probe/``);
    for pixel features (a model without a VAE: the oracle) a ``PixelProbe`` of ``model`` (a
    world model dir with a probe), or with ``model`` None of ``task``'s shipped model. UserError
    naming the fix where there is none."""
    own_vae, own_probe = getattr(world_model, "vae", None), getattr(world_model, "probe", None)
    no_probe = (f"cost=probe needs a world model with a state probe (<world model>/probe/); "
                f"{type(world_model).__name__} has none: {PROBE_HINT}, ")
    if own_vae is not None:  # latents of the world model's own VAE: only its own probe reads them
        if own_probe is None:
            raise UserError(no_probe + "or pick another cost (cost=multiscale)")
        if model is not None:
            raise UserError("cost.model names the probe for pixel frames (world_model=oracle); a learned "
                            "model's latents are read by its own probe (<world model>/probe/): drop cost.model")
        return own_probe
    if model is None and task is None:
        raise UserError(no_probe + "or name a model that has one (cost.model=<world model dir>), or pick another "
                        "cost (cost=multiscale)")
    from sfplan.world_model.vae import FrameAutoencoder

    if model is not None:
        d = Path(str(model)).expanduser()
    else:
        from sfplan.models import shipped_model_path

        d = shipped_model_path(task)
    if not (d / "vae" / "config.json").is_file():
        raise UserError(f"cost.model={d} is not a world model directory (no vae/): {PROBE_HINT}")
    device = getattr(world_model, "device", "cpu")
    vae = FrameAutoencoder.from_pretrained(d / "vae").to(device).eval()
    return PixelProbe(vae, load_probe(d / PROBE_SUBDIR, device)).eval()
