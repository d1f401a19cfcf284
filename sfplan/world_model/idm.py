"""Inverse dynamics model (IDM): consecutive latent frames -> the action taken between them.

SlowFast-VGen plans by generating a video toward a (sub)goal and turning its frame pairs
into actions with an inverse dynamics model (``sfplan.planners.video_plan``). The IDM runs
on the frozen VAE's latents, so it reads the world model's imagined latents directly,
without decoding them.

Input: latents (B, n, C, h, w), the last n = ``num_frames`` frames ending at the frame the
action led to: n = 2 is the paper's frame pair (z_t, z_{t+1}); n = 3 adds z_{t-1}, so the
velocity before the action is visible (torque/force-controlled tasks, e.g. Reacher,
PointMaze, where one frame pair does not determine the action). With a frame gap k
(``gap`` (B,) in [1, max_gap]) the frames are k steps apart and the target is the mean of
the k actions between the last two. Output: (B, A) actions in the env's action box:
tanh onto [-1, 1], then the saved normaliser onto [low, high].

Net: the n frames and their n-1 consecutive differences stacked on channels -> a small
conv net (3x3 convs, GroupNorm, SiLU; stride 2 after the first level) -> adaptive average
pool to ``pool_size`` x ``pool_size`` (keeps where things moved) -> MLP (+ a gap
embedding) -> A. About 0.47M parameters at the defaults; on one (shared) CPU thread the
72 windows of 8 videos x 9 steps of 16x16x4 latents take about 15 ms.

Saved with ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``,
the action normaliser inside the weights). A world model directory may hold one in
``<world model>/idm/``; ``world_model.idm`` of a loaded world model reads it on first use
(so a broken IDM stops only the planners that use it).
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

IDM_SUBDIR = "idm"
IDM_HINT = ("train one with `sfplan train stage=idm data.path=<dataset> vae=<world model dir> "
            "attach_to=<world model dir>`")
LOSSES = ("mse", "huber")


@dataclass
class IDMConfig:
    """``latent_channels``/``latent_size`` and ``action_dim`` come from the VAE and the data
    when ``sfplan train stage=idm`` builds it."""

    latent_channels: int = 4
    latent_size: int = 16
    action_dim: int = 2
    num_frames: int = 2  # frames per window: 2 = the frame pair; 3 also shows the velocity before the action
    max_gap: int = 1  # frame gaps k in [1, max_gap] the model is trained on (1: consecutive frames)
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # stride 2 after the first level: 16 -> 8 -> 4
    hidden_dim: int = 256
    pool_size: int = 4  # adaptive average pool to pool_size x pool_size before the MLP
    norm_num_groups: int = 8
    loss: str = "mse"  # mse | huber, on actions normalised to [-1, 1]
    huber_delta: float = 0.1

    def build(self) -> "InverseDynamicsModel":
        return InverseDynamicsModel(**asdict(self))


class InverseDynamicsModel(ModelMixin, ConfigMixin):
    """forward(latents (B, n, C, h, w), gap (B,) or None) -> actions (B, A) in the env's box.

    ``predict_normalized`` gives the [-1, 1] actions, ``loss`` the training loss,
    ``infer_sequence`` the actions along a whole latent video."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        latent_size: int = 16,
        action_dim: int = 2,
        num_frames: int = 2,
        max_gap: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        hidden_dim: int = 256,
        pool_size: int = 4,
        norm_num_groups: int = 8,
        loss: str = "mse",
        huber_delta: float = 0.1,
    ):
        super().__init__()
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (a frame pair at least), got {num_frames}")
        if max_gap < 1:
            raise ValueError(f"max_gap must be >= 1, got {max_gap}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not block_out_channels:
            raise ValueError("block_out_channels needs at least one entry")
        C, n = int(latent_channels), int(num_frames)
        cin = n * C + (n - 1) * C  # frames + consecutive differences
        layers: list[nn.Module] = []
        c = cin
        for i, ch in enumerate(block_out_channels):
            layers += [nn.Conv2d(c, ch, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(min(norm_num_groups, ch), ch), nn.SiLU(),
                       nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(min(norm_num_groups, ch), ch), nn.SiLU()]
            c = ch
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(int(pool_size))
        self.fc = nn.Linear(c * int(pool_size) ** 2, hidden_dim)
        self.gap_emb = nn.Embedding(int(max_gap), hidden_dim)
        nn.init.zeros_(self.gap_emb.weight)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
                                  nn.Linear(hidden_dim, action_dim))
        # normaliser statistics live in the state dict (saved with the weights), as in ActionVideoDiffusion
        self.register_buffer("action_shift", torch.zeros(action_dim))
        self.register_buffer("action_scale", torch.ones(action_dim))

    # ------------------------------------------------------------------ normaliser
    @torch.no_grad()
    def set_action_normalizer(self, low, high) -> None:
        """Map the env's action box [low, high] (each (A,)) to [-1, 1]."""
        low = torch.as_tensor(low, dtype=torch.float32, device=self.action_shift.device).reshape(-1)
        high = torch.as_tensor(high, dtype=torch.float32, device=self.action_shift.device).reshape(-1)
        if low.shape != self.action_shift.shape or high.shape != self.action_shift.shape:
            raise ValueError(f"action bounds must be ({self.config.action_dim},), got {tuple(low.shape)}, "
                             f"{tuple(high.shape)}")
        self.action_shift.copy_((high + low) / 2)
        self.action_scale.copy_(2.0 / (high - low).clamp_min(1e-6))

    @property
    def action_low(self) -> torch.Tensor:
        return self.action_shift - 1.0 / self.action_scale  # (A,)

    @property
    def action_high(self) -> torch.Tensor:
        return self.action_shift + 1.0 / self.action_scale  # (A,)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., A) env actions -> [-1, 1] (clamped: the box is where tanh can reach)."""
        return ((actions.to(self.action_scale.dtype) - self.action_shift) * self.action_scale).clamp(-1.0, 1.0)

    def denormalize(self, u: torch.Tensor) -> torch.Tensor:
        """(..., A) in [-1, 1] -> env actions in [low, high]."""
        return u / self.action_scale + self.action_shift

    # ------------------------------------------------------------------ forward
    def predict_normalized(self, latents: torch.Tensor, gap: torch.Tensor | int | None = None) -> torch.Tensor:
        """latents (B, n, C, h, w), gap (B,) / int / None (= 1) -> (B, A) in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.config.num_frames:
            raise ValueError(f"latents must be (B, num_frames={self.config.num_frames}, C, h, w), "
                             f"got {tuple(latents.shape)}")
        B, n, C, h, w = latents.shape
        if C != self.config.latent_channels:
            raise ValueError(f"latents have {C} channels, the IDM was built for {self.config.latent_channels}")
        x = latents.to(self.fc.weight.dtype)
        diff = x[:, 1:] - x[:, :-1]  # (B, n-1, C, h, w)
        feat = torch.cat([x.reshape(B, n * C, h, w), diff.reshape(B, (n - 1) * C, h, w)], dim=1)
        hid = self.fc(self.pool(self.convs(feat)).flatten(1))  # (B, hidden)
        if gap is None:
            gap = 1
        g = torch.as_tensor(gap, device=hid.device).long().reshape(-1).expand(B)
        if bool((g < 1).any()) or bool((g > self.config.max_gap).any()):
            raise ValueError(f"gap must be in [1, max_gap={self.config.max_gap}]")
        hid = hid + self.gap_emb(g - 1)
        return torch.tanh(self.head(hid))  # (B, A)

    def forward(self, latents: torch.Tensor, gap: torch.Tensor | int | None = None) -> torch.Tensor:
        """latents (B, n, C, h, w) -> actions (B, A) inside the env's action box."""
        return self.denormalize(self.predict_normalized(latents, gap))

    def loss(self, latents: torch.Tensor, actions: torch.Tensor, gap: torch.Tensor | int | None = None):
        """latents (B, n, C, h, w), actions (B, A) env units (for gap k: the mean of the k
        actions) -> (loss, logs). The loss is taken on normalised actions ([-1, 1])."""
        pred = self.predict_normalized(latents, gap).float()  # (B, A)
        target = self.normalize(actions.to(pred.device)).float()
        mse = F.mse_loss(pred, target)
        if self.config.loss == "huber":
            loss = F.huber_loss(pred, target, delta=float(self.config.huber_delta))
        else:
            loss = mse
        return loss, {"loss": loss.item(), "mse_normalized": mse.item(),
                      "mae_normalized": (pred - target).abs().mean().item()}

    @torch.no_grad()
    def infer_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        """Actions along a latent video: latents (..., T, C, h, w) -> (..., T-1, A), where
        action t takes frame t to t+1. Windows reaching before frame 0 repeat frame 0
        (as training does at episode starts). One batched forward."""
        *lead, T, C, h, w = latents.shape
        if T < 2:
            raise ValueError("infer_sequence needs at least 2 frames")
        n = int(self.config.num_frames)
        x = latents.reshape(-1, T, C, h, w)  # (M, T, C, h, w)
        ends = torch.arange(1, T, device=x.device)  # frame each action leads to
        idx = (ends[:, None] + torch.arange(-(n - 1), 1, device=x.device)[None]).clamp_min(0)  # (T-1, n)
        win = x[:, idx]  # (M, T-1, n, C, h, w)
        acts = self(win.reshape(-1, n, C, h, w))  # (M*(T-1), A)
        return acts.reshape(*lead, T - 1, -1)


# ----------------------------------------------------------------------------- metrics
def action_metrics(pred: torch.Tensor, target: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """pred, target (N, A) -> {mse, r2_mean, r2_<i> per action dim} (R^2 = 1 - SSE/SST per dim;
    a constant target dim gives NaN)."""
    pred, target = pred.double(), target.double()
    err = (pred - target).pow(2)
    sst = (target - target.mean(0)).pow(2).sum(0)  # (A,)
    r2 = 1.0 - err.sum(0) / sst  # (A,)
    out = {f"{prefix}mse": float(err.mean()), f"{prefix}r2_mean": float(r2.mean())}
    out.update({f"{prefix}r2_{i}": float(v) for i, v in enumerate(r2)})
    return out


# ----------------------------------------------------------------------------- persistence
def _is_idm_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and (p / "diffusion_pytorch_model.safetensors").is_file()


def load_idm(path: str | Path, device: str | torch.device | None = None) -> InverseDynamicsModel:
    """An IDM from ``path``: its model dir, a ``stage=idm`` run dir (``model/``), or a world
    model dir (``idm/``). Raises UserError naming the fix."""
    p = Path(str(path)).expanduser()
    for cand in (p, p / "model", p / IDM_SUBDIR):
        if _is_idm_dir(cand):
            try:
                m = InverseDynamicsModel.from_pretrained(str(cand), use_safetensors=True)
            except Exception as e:
                raise UserError(f"the IDM at {cand} is unreadable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:160] if str(e) else ''}): {IDM_HINT}") from None
            m.eval().requires_grad_(False)
            return m.to(device) if device is not None else m
    raise UserError(f"no inverse dynamics model at {p} (expected config.json + "
                    f"diffusion_pytorch_model.safetensors): {IDM_HINT}")


def save_idm_into(idm: InverseDynamicsModel, world_model_dir: str | Path) -> Path:
    """Write ``idm`` to ``<world_model_dir>/idm/`` atomically (temp dir, then rename),
    replacing one that is there. Returns the directory."""
    from sfplan.io import save_pretrained_into

    return save_pretrained_into(idm, world_model_dir, IDM_SUBDIR)
