"""ActionVideoDiffusion: the slow learner, an action-conditioned masked latent video
diffusion model (SlowFast-VGen, "slow learning").

Input: latents (B, T, C, h, w) whose first f_p frames are clean context and the rest
noisy targets, plus a context-mask channel so the net knows which frames are context;
actions (B, T, A) -> an action encoder (MLP + per-frame position embedding) -> one
cross-attention token per frame (B, T, D). A learned null token sequence replaces the
tokens under condition dropout (classifier-free guidance; Temp-LoRA's action-free update).

Action convention (Gymnasium order, as a recorded clip stores it): ``actions[:, t]`` is
the action executed *after* frame t, so frame t+1 is conditioned on ``actions[:, t]``;
the last action of a clip is unused, and actions that lead into context frames are
replaced by a learned "context" embedding (the planner never knows them).

Backbone choice (measured on the project machine: AMD EPYC, 2 CPU threads, torch 2.13,
fp32; one forward of batch 64 x 6 frames (2 context + 4 target) of 16x16x4 latents;
ranges are over repeated runs):

=========================================================  ======  ==============
backbone                                                   params  forward
=========================================================  ======  ==============
UNet3DConditionModel (32, 64), attention at 8x8            2.0M    4.2 s
UNet3DConditionModel (32, 64, 64), attention at 8x8, 4x4   3.1M    1.95-2.7 s
UNet3DConditionModel (64, 128, 128), attention at 8, 4     12.3M   10.0 s
factorized, patch 1, (32, 64, 128) at 16/8/4, attn 8, 4    2.9M    0.46-0.53 s
factorized, patch 2, (64, 128) at 8/4, attn 8, 4 (default) 3.05M   0.33-0.39 s
  same under torch.autocast(bfloat16) (``autocast`` opt.)  3.05M   0.22 s
=========================================================  ======  ==============

A plan decision (3 CEM iterations x one chunk x 2-4 sampler steps at batch 64) needs
6-12 forwards in about 2 s, i.e. about 0.2-0.3 s per forward. The smallest UNet3D is ~10x
over: its ``transformer_in`` runs a temporal transformer (8 heads, GEGLU feed-forward) at
every pixel of the full-resolution latent (about 40% of its forward in the profile), and
each resnet is followed by four (3, 1, 1) Conv3d temporal convolutions. So the default
backbone (``backbone="factorized"``) is a small UNet applied per frame on 2x2 latent
patches (pixel_unshuffle: levels at 8x8 and 4x4; at 16x16 even 32-channel convolutions
cost ~25% of the time), conv resnets with FiLM time/action embeddings, and at every level
factorised spatio-temporal transformer blocks: spatial self-attention, temporal
self-attention across frames, cross-attention to the action tokens, feed-forward. The
cost is linear in frames: ~1 ms per frame at batch 64 (0.65 s for 64 x 10 frames).
Other measured speed-ups: channels_last activations (16x16 convs 2x faster), plain
softmax attention for short sequences (temporal/cross: 2-4x faster than the flash
kernel). ``backbone="unet3d"`` builds the paper's ModelScope architecture (diffusers
``UNet3DConditionModel``) from the same config, for GPU runs (``patch_size=1``).

The attention projections are named ``to_q/to_k/to_v/to_out`` (``to_out.0`` in
UNet3D) so Temp-LoRA can target them with peft (``model.lora_target_modules``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sfplan.world_model.vae import _require_diffusers

_require_diffusers()
from diffusers import ConfigMixin, ModelMixin  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402
from diffusers.loaders import PeftAdapterMixin  # noqa: E402


@dataclass
class VideoDiffusionConfig:
    """Defaults sized for planning on a CPU (see the module docstring for timings)."""

    latent_channels: int = 4
    action_dim: int = 2
    max_frames: int = 32  # position embeddings: context + target frames of one clip
    max_context: int = 2  # f_p is sampled in [1, max_context] during training
    patch_size: int = 2  # 2x2 latent pixels per token: levels run at 8x8 and 4x4
    block_out_channels: tuple[int, ...] = (64, 128)  # one entry per level
    attention_levels: tuple[bool, ...] = (True, True)  # spatio-temporal blocks per level
    spatial_attention_levels: tuple[bool, ...] | None = None  # None: wherever attention_levels
    layers_per_block: int = 1
    head_dim: int = 32
    cross_attention_dim: int = 128  # D of the action tokens
    norm_num_groups: int = 8
    ff_mult: int = 2
    action_film: bool = True  # also add each frame's action token to its FiLM embedding
    action_history: bool = True  # tokens also see running sums of the chunk's actions (see encode_actions)
    token_norm: bool = True  # LayerNorm on the condition tokens (see ActionVideoDiffusion.__init__)
    prediction_type: str = "v_prediction"  # epsilon | v_prediction
    p_uncond: float = 0.1  # condition dropout to the null tokens
    backbone: str = "factorized"  # factorized | unet3d
    context_skip: bool = False  # denoise target frames as the change from the last context frame (see _skip_offset)

    def build(self) -> "ActionVideoDiffusion":
        return ActionVideoDiffusion(**asdict(self))


#: training timesteps of the noise schedule (``NoiseScheduleConfig.num_train_timesteps``)
NUM_TRAIN_TIMESTEPS = 1000


# ----------------------------------------------------------------------------- blocks
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t: (N,) -> (N, dim) sinusoidal embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-init the last layer of a residual branch: each block starts as identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Attention(nn.Module):
    """Multi-head (cross-)attention on (N, L, C) tokens; kv from ``context`` (N, S, Ck)."""

    def __init__(self, dim: int, head_dim: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        if dim % self.heads:
            raise ValueError(f"width {dim} is not divisible into {self.heads} heads of ~{head_dim}: pick head_dim "
                             "dividing every entry of block_out_channels")
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        N, L, C = x.shape
        S = ctx.shape[1]
        q = self.to_q(x).view(N, L, self.heads, -1).transpose(1, 2)  # (N, heads, L, d)
        k = self.to_k(ctx).view(N, S, self.heads, -1).transpose(1, 2)  # (N, heads, S, d)
        v = self.to_v(ctx).view(N, S, self.heads, -1).transpose(1, 2)
        if L * S <= 1024:
            # Short sequences (temporal: T frames; cross: T tokens; 4x4 spatial): a plain
            # softmax(QK^T)V is 2-4x faster on the CPU than the flash kernel.
            attn = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (N, heads, L, S)
            out = attn.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, d)
        return self.to_out(out.transpose(1, 2).reshape(N, L, C))


class ResBlock(nn.Module):
    """Conv resnet on (N, C, h, w) with FiLM (scale, shift) from a per-frame embedding."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (N, cout, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class SpatioTemporalBlock(nn.Module):
    """Factorised transformer block on (B*T, C, h, w) feature maps (channels_last):
    [spatial self-attention within each frame], temporal self-attention across the T
    frames at each position, cross-attention to the action tokens, feed-forward.

    Pre-norm residual branches whose output projections start at zero, so a fresh block
    only adds its frame position embedding; tokens are the feature map's (h, w, C) view
    (free under channels_last).
    """

    def __init__(self, ch: int, head_dim: int, cross_dim: int, max_frames: int, ff_mult: int, spatial: bool = True):
        super().__init__()
        self.frame_pos = nn.Parameter(torch.randn(max_frames, ch) * 0.02)
        self.spatial = spatial
        if spatial:
            self.norm_s, self.attn_s = nn.LayerNorm(ch), Attention(ch, head_dim)
            _zero(self.attn_s.to_out)
        self.norm_t, self.attn_t = nn.LayerNorm(ch), Attention(ch, head_dim)
        self.norm_x, self.attn_x = nn.LayerNorm(ch), Attention(ch, head_dim, kv_dim=cross_dim)
        self.norm_ff = nn.LayerNorm(ch)
        self.ff = nn.Sequential(nn.Linear(ch, ff_mult * ch), nn.GELU(), _zero(nn.Linear(ff_mult * ch, ch)))
        _zero(self.attn_t.to_out)
        _zero(self.attn_x.to_out)

    def forward(self, x: torch.Tensor, T: int, tokens: torch.Tensor) -> torch.Tensor:
        BT, C, hh, ww = x.shape
        B, P = BT // T, hh * ww
        h = x.permute(0, 2, 3, 1).reshape(B, T, P, C) + self.frame_pos[:T][None, :, None, :]  # (B, T, P, C)
        if self.spatial:
            h = h.reshape(B * T, P, C)  # (B*T, P, C) spatial tokens
            h = h + self.attn_s(self.norm_s(h))
        h = h.reshape(B, T, P, C).transpose(1, 2).reshape(B * P, T, C)  # (B*P, T, C) temporal tokens
        h = h + self.attn_t(self.norm_t(h))
        # Every frame attends to the whole action sequence (as in UNet3D): one query set of
        # (T*P) per clip, so the tokens' K/V are computed once per clip, not per frame.
        h = h.reshape(B, P, T, C).transpose(1, 2).reshape(B, T * P, C)  # (B, T*P, C)
        h = h + self.attn_x(self.norm_x(h), tokens)
        h = h + self.ff(self.norm_ff(h))
        return h.reshape(B * T, hh, ww, C).permute(0, 3, 1, 2)  # (B*T, C, h, w), channels_last


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then conv; the conv also changes width so it runs narrow at high res."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class FactorizedVideoUNet(nn.Module):
    """Per-frame 2D UNet with spatio-temporal transformer blocks at the attention levels.

    forward(x (B*T, Cin, h, w), emb (B*T, E), T, tokens (B, S, D)) -> (B*T, Cout, h, w).
    """

    def __init__(self, cin, cout, chans, attn, layers, emb_dim, head_dim, cross_dim, max_frames, groups, ff_mult,
                 patch_size=1, spatial=None):
        super().__init__()
        L = len(chans)
        # patch_size p folds p x p latent pixels into channels (pixel_unshuffle), so the
        # first level runs at (h/p, w/p): the 16x16 level is the costliest on a CPU.
        self.patch_size = p = int(patch_size)
        cin, cout = cin * p * p, cout * p * p
        spatial = tuple(spatial) if spatial is not None else (True,) * L
        st = lambda i: SpatioTemporalBlock(chans[i], head_dim, cross_dim, max_frames, ff_mult, spatial[i])  # noqa: E731
        self.conv_in = nn.Conv2d(cin, chans[0], 3, padding=1)
        self.down_res, self.down_attn, self.down_samp = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skip_chans, c = [], chans[0]
        for i in range(L):
            for _ in range(layers):
                self.down_res.append(ResBlock(c, chans[i], emb_dim, groups))
                self.down_attn.append(st(i) if attn[i] else nn.Identity())
                c = chans[i]
                skip_chans.append(c)
            self.down_samp.append(Downsample(c) if i < L - 1 else nn.Identity())
        self.mid_res1 = ResBlock(c, c, emb_dim, groups)
        self.mid_attn = st(L - 1)
        self.mid_res2 = ResBlock(c, c, emb_dim, groups)
        self.up_res, self.up_attn, self.up_samp = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(L)):
            for _ in range(layers):
                self.up_res.append(ResBlock(c + skip_chans.pop(), chans[i], emb_dim, groups))
                self.up_attn.append(st(i) if attn[i] else nn.Identity())
                c = chans[i]
            self.up_samp.append(Upsample(c, chans[i - 1]) if i > 0 else nn.Identity())
            c = chans[i - 1] if i > 0 else c
        self.norm_out = nn.GroupNorm(min(groups, c), c)
        self.conv_out = _zero(nn.Conv2d(c, cout, 3, padding=1))
        self.layers, self.L = layers, L

    def _attn(self, block, h, T, tokens):
        return h if isinstance(block, nn.Identity) else block(h, T, tokens)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, T: int, tokens: torch.Tensor) -> torch.Tensor:
        # channels_last: mkldnn convolutions run ~2x faster at 16x16 on the CPU and the
        # transformer blocks' (N, h, w, C) token view becomes a free permute.
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)  # (N, Cin*p*p, h/p, w/p)
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        skips, k = [], 0
        for i in range(self.L):
            for _ in range(self.layers):
                h = self._attn(self.down_attn[k], self.down_res[k](h, emb), T, tokens)
                skips.append(h)
                k += 1
            h = self.down_samp[i](h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb), T, tokens), emb)
        k = 0
        for j in range(self.L):
            for _ in range(self.layers):
                h = self._attn(self.up_attn[k], self.up_res[k](torch.cat([h, skips.pop()], dim=1), emb), T, tokens)
                k += 1
            h = self.up_samp[j](h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if self.patch_size > 1:
            out = F.pixel_shuffle(out, self.patch_size)  # (N, Cout, h, w)
        return out.contiguous()


# ----------------------------------------------------------------------------- model
class ActionVideoDiffusion(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Masked conditional latent video diffusion with action cross-attention.

    forward(sample (B, T, C, h, w), timestep (B,) or (B, T), context_mask (B, T) bool,
    action_tokens (B, S, D)) -> prediction (B, T, C, h, w) (ε or v, ``prediction_type``).
    With a (B,) timestep, context frames get timestep 0 (they are clean).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        action_dim: int = 2,
        max_frames: int = 32,
        max_context: int = 2,
        patch_size: int = 2,
        block_out_channels: tuple[int, ...] = (64, 128),
        attention_levels: tuple[bool, ...] = (True, True),
        spatial_attention_levels: tuple[bool, ...] | None = None,
        layers_per_block: int = 1,
        head_dim: int = 32,
        cross_attention_dim: int = 128,
        norm_num_groups: int = 8,
        ff_mult: int = 2,
        action_film: bool = True,
        action_history: bool = False,  # False for checkpoints saved before the option existed
        token_norm: bool = False,  # likewise
        prediction_type: str = "v_prediction",
        p_uncond: float = 0.1,
        backbone: str = "factorized",
        context_skip: bool = False,
    ):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        if context_skip and prediction_type != "v_prediction":
            raise ValueError("context_skip works with prediction_type='v_prediction'")
        if context_skip:
            # sigma_t = sqrt(1 - alphas_cumprod[t]) of the training schedule (set_noise_schedule)
            self.register_buffer("skip_sigmas", torch.ones(NUM_TRAIN_TIMESTEPS))
        if len(attention_levels) != len(block_out_channels):
            raise ValueError("attention_levels needs one flag per entry of block_out_channels")
        chans, D, C = tuple(block_out_channels), cross_attention_dim, latent_channels
        emb_dim = 4 * chans[0]
        # action encoder: MLP + per-frame position embedding; learned context and null tokens
        self.action_mlp = nn.Sequential(nn.Linear(action_dim * (3 if action_history else 1), D), nn.SiLU(),
                                        nn.Linear(D, D))
        self.action_pos = nn.Parameter(torch.randn(max_frames, D) * 0.02)
        self.context_token = nn.Parameter(torch.randn(D) * 0.02)
        self.null_tokens = nn.Parameter(torch.randn(max_frames, D) * 0.02)
        # Without a norm the tokens leave the MLP at ~0.05 in magnitude: cross-attention keys
        # are then near-constant, attention is uniform over the frames, and the model learns
        # to ignore its actions (measured: a 2.3k-step Reacher model changed its output by
        # 0.3% between all +1 and all -1 actions). O(1) tokens, as text encoders give SD.
        # (named cond_norm: diffusers resolves config names before module attributes)
        self.cond_norm = nn.LayerNorm(D) if token_norm else nn.Identity()
        # normaliser statistics live in the state dict (saved with the weights)
        self.register_buffer("action_shift", torch.zeros(action_dim))
        self.register_buffer("action_scale", torch.ones(action_dim))
        if backbone == "factorized":
            self.time_mlp = nn.Sequential(nn.Linear(chans[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.action_to_emb = nn.Linear(D, emb_dim) if action_film else None
            self.net = FactorizedVideoUNet(
                C + 1, C, chans, tuple(attention_levels), layers_per_block, emb_dim, head_dim, D, max_frames,
                norm_num_groups, ff_mult, patch_size, spatial_attention_levels,
            )
        elif backbone == "unet3d":
            if patch_size != 1:
                raise ValueError("backbone='unet3d' works at the latent resolution: set patch_size=1")
            from diffusers import UNet3DConditionModel

            self.net = UNet3DConditionModel(
                in_channels=C + 1,
                out_channels=C,
                down_block_types=tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attention_levels),
                up_block_types=tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attention_levels)),
                block_out_channels=chans,
                layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups,
                cross_attention_dim=D,
                attention_head_dim=head_dim,
            )
        else:
            raise ValueError(f"backbone must be 'factorized' or 'unet3d', got {backbone!r}")

    # ------------------------------------------------------------------ conditioning
    @property
    def lora_target_modules(self) -> list[str]:
        """Module names of the attention projections, for peft ``LoraConfig``."""
        if self.config.backbone == "unet3d":
            return ["to_q", "to_k", "to_v", "to_out.0"]
        return ["to_q", "to_k", "to_v", "to_out"]

    @torch.no_grad()
    def set_noise_schedule(self, alphas_cumprod: torch.Tensor) -> None:
        """The training schedule's cumulative alphas (num_train_timesteps,), which
        ``context_skip`` needs to turn the last context frame into a v-prediction offset."""
        if not self.config.context_skip:
            return
        if len(alphas_cumprod) != len(self.skip_sigmas):
            raise ValueError(f"context_skip needs a schedule of {len(self.skip_sigmas)} training timesteps, "
                             f"got {len(alphas_cumprod)}")
        self.skip_sigmas.copy_((1 - alphas_cumprod.to(self.skip_sigmas)).clamp_min(0).sqrt())

    @torch.no_grad()
    def set_action_normalizer(self, low, high) -> None:
        """Map the env's action box [low, high] (each (A,)) to [-1, 1] inside the model."""
        low = torch.as_tensor(low, dtype=torch.float32, device=self.action_shift.device)
        high = torch.as_tensor(high, dtype=torch.float32, device=self.action_shift.device)
        self.action_shift.copy_((high + low) / 2)
        self.action_scale.copy_(2.0 / (high - low).clamp_min(1e-6))

    def encode_actions(self, actions: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """actions (B, T, A) or (B, T-1, A) in Gymnasium order, context_mask (B, T) -> tokens
        (B, T, D). (B, T-1, A) is what ``sfplan.data`` clips give: the unused last slot is
        padded.

        Token t encodes the action that led into frame t (``actions[:, t-1]``); tokens of
        context frames are the learned context token."""
        B, T = context_mask.shape
        if actions.shape[1] == T - 1:
            actions = torch.cat([actions, actions.new_zeros(B, 1, actions.shape[-1])], dim=1)
        if actions.shape[1] != T:
            raise ValueError(f"actions cover {actions.shape[1]} steps; a clip of {T} frames needs {T} or {T - 1}")
        a = (actions.to(self.action_scale.dtype) - self.action_shift) * self.action_scale
        a = torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], dim=1)  # (B, T, A): led into frame t
        if self.config.action_history:
            # Under force/torque control a frame's displacement from the context is set by
            # the first and second running sums of the actions since the context, not by
            # the last action; handing them to every token spares the temporal attention
            # from learning to integrate (measured: without them a model trained 2k steps
            # on Reacher ignored its actions). Scaled to O(1) over an 8-step chunk.
            a = a.masked_fill(context_mask[..., None], 0.0)
            s1 = a.cumsum(dim=1)
            a = torch.cat([a, s1 / 4.0, s1.cumsum(dim=1) / 16.0], dim=-1)  # (B, T, 3A)
        tok = self.action_mlp(a)  # (B, T, D)
        tok = torch.where(context_mask[..., None], self.context_token.to(tok.dtype), tok)
        return self.cond_norm(tok + self.action_pos[:T])

    def null_condition(self, batch_size: int, num_frames: int) -> torch.Tensor:
        """The learned null token sequence (B, T, D) (condition dropped)."""
        return self.cond_norm(self.null_tokens[:num_frames]).unsqueeze(0).expand(batch_size, -1, -1)

    def condition(self, actions: torch.Tensor | None, context_mask: torch.Tensor, drop: torch.Tensor | None = None):
        """Tokens (B, T, D): action tokens, the null sequence where ``drop`` (B,) is True,
        or the null sequence for all when ``actions`` is None."""
        B, T = context_mask.shape
        null = self.null_condition(B, T)
        if actions is None:
            return null
        tok = self.encode_actions(actions, context_mask)
        return tok if drop is None else torch.where(drop[:, None, None], null, tok)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context_mask: torch.Tensor,
        action_tokens: torch.Tensor,
    ) -> torch.Tensor:
        B, T, C, h, w = sample.shape
        if T > self.config.max_frames:
            raise ValueError(f"{T} frames exceed max_frames={self.config.max_frames} of this model")
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(B)
        mask = context_mask.to(sample.device, torch.bool)
        t_f = t[:, None].expand(B, T) if t.ndim == 1 else t
        if t.ndim == 1:
            t_f = torch.where(mask, torch.zeros_like(t_f), t_f)  # context frames are clean
        skip = self._skip_offset(sample, mask, t_f if self.config.backbone == "factorized" else t_f.max(1, True).values)
        if skip is not None:  # the net sees x_t - alpha_t ref: the change from ref, diffused
            sample = sample - skip[0][:, :, None, None, None] * skip[2][:, None]
        x = torch.cat([sample, mask[:, :, None, None, None].to(sample.dtype).expand(B, T, 1, h, w)], dim=2)
        if self.config.backbone == "unet3d":
            t_b = t if t.ndim == 1 else t.max(dim=1).values  # UNet3D takes one timestep per clip
            out = self.net(x.transpose(1, 2), t_b, encoder_hidden_states=action_tokens).sample  # (B, C, T, h, w)
            return self._unskip(out.transpose(1, 2), skip)
        temb = timestep_embedding(t_f.reshape(-1), self.config.block_out_channels[0]).to(sample.dtype)
        emb = self.time_mlp(temb)  # (B*T, E)
        if self.action_to_emb is not None and action_tokens.shape[1] == T:
            emb = emb + self.action_to_emb(action_tokens).reshape(B * T, -1)
        out = self.net(x.reshape(B * T, C + 1, h, w), emb, T, action_tokens).reshape(B, T, C, h, w)
        return self._unskip(out, skip)

    def _skip_offset(self, sample, mask, t_f):
        """With ``context_skip``, the target frames are diffused and predicted as the change
        from ref, the clip's last context frame: x0 - ref is diffused as x_t - alpha_t ref is,
        the net sees that and predicts its v, and ``_unskip`` adds -sigma_t ref back to give
        x_t's v. A static background is then pure noise to the net at every level, and a fresh
        net (zero-init output) imagines ref held still from pure noise: copy-last from the
        first step. -> (alpha (B, T), sigma (B, T), ref (B, C, h, w)), zero on context frames
        and on clips without context; None without the skip."""
        if not self.config.context_skip:
            return None
        B, T = mask.shape
        n_ctx = mask.sum(1)  # (B,)
        ref = sample[torch.arange(B, device=sample.device), (n_ctx - 1).clamp_min(0)]  # (B, C, h, w)
        on = (~mask & (n_ctx > 0)[:, None]).to(sample.dtype)  # (B, T) target frames of clips with context
        sig = self.skip_sigmas[t_f.long()].to(sample.dtype).expand(B, T)
        return on * (1 - sig ** 2).clamp_min(0).sqrt(), on * sig, ref

    @staticmethod
    def _unskip(out, skip):
        if skip is None:
            return out
        return out - skip[1][:, :, None, None, None].to(out.dtype) * skip[2][:, None].to(out.dtype)

    # ------------------------------------------------------------------ losses
    def _target(self, scheduler, latents, noise, t):
        if self.config.prediction_type == "epsilon":
            return noise
        return scheduler.get_velocity(latents, noise, t)

    def masked_loss(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        scheduler,
        num_context: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        p_uncond: float | None = None,
        motion_weight: float = 0.0,
        motion_threshold: float = 0.01,
        timesteps: torch.Tensor | None = None,
        moving: torch.Tensor | None = None,
    ):
        """Slow learning: masked conditional diffusion loss -> (loss, logs).

        latents (B, T, C, h, w) clean; actions (B, T, A) or (B, T-1, A), Gymnasium order
        (``actions[:, t]`` takes frame t to t+1); scheduler: a
        diffusers scheduler with ``add_noise``/``get_velocity`` (DDPM/DDIM). ``num_context``
        f_p: int, (B,) tensor, or None to sample per batch element in [1, max_context].
        Only target frames are noised; the MSE is taken over target positions only
        (context positions are indexed out, so they contribute no term).

        ``motion_weight`` > 0 weighs the error at latent positions that change between
        consecutive clean frames (see ``motion_mask``) by 1 + motion_weight (a weighted mean):
        where the moving object is small (a ball in a whole-maze view) the plain MSE is
        almost all static background, and a model that ignores the actions loses little.
        ``moving`` (B, T, 1, h, w): that mask given (e.g. ``pixel_motion_mask`` of the clip's
        frames, cached with the latents); default ``motion_mask`` of the latents.
        ``timesteps`` (B,): the noise level of each row; default uniform random draws."""
        B, T = latents.shape[:2]
        dev = latents.device
        if T < 2:
            raise ValueError("masked_loss needs clips of at least 2 frames (1 context + 1 target)")
        hi = max(1, min(int(self.config.max_context), T - 1))
        if num_context is None:
            f_p = _randint(1, hi + 1, (B,), generator, dev)
        else:
            f_p = torch.as_tensor(num_context, device=dev).long().expand(B)
        if bool((f_p < 1).any()) or bool((f_p >= T).any()):
            raise ValueError(f"num_context must be in [1, T-1] = [1, {T - 1}]")
        ctx = torch.arange(T, device=dev)[None] < f_p[:, None]  # (B, T) True = context
        if timesteps is None:
            t = _randint(0, scheduler.config.num_train_timesteps, (B,), generator, dev)
        else:
            t = torch.as_tensor(timesteps, device=dev).long().expand(B)
        noise = _randn(latents.shape, generator, dev)
        noisy = scheduler.add_noise(latents, noise, t)  # (B, T, C, h, w)
        x_in = torch.where(ctx[:, :, None, None, None], latents, noisy)
        p = self.config.p_uncond if p_uncond is None else p_uncond
        drop = _rand((B,), generator, dev) < p
        tokens = self.condition(actions.to(dev), ctx, drop)
        pred = self(x_in, t, ctx, tokens)
        target = self._target(scheduler, latents, noise, t)
        tgt = ~ctx  # (B, T) True = target
        logs = {"num_context": f_p.float().mean().item(), "p_uncond_hit": drop.float().mean().item()}
        if motion_weight > 0:
            err = (pred[tgt].float() - target[tgt].float()).pow(2)  # (N, C, h, w)
            moving = (motion_mask(latents, motion_threshold) if moving is None else moving.to(dev).float())[tgt]
            w = 1.0 + motion_weight * moving
            loss = (err * w).sum() / (w.sum() * err.shape[1])
            logs["motion_fraction"] = moving.mean().item()
        else:
            loss = F.mse_loss(pred[tgt].float(), target[tgt].float())
        logs["loss"] = loss.item()
        return loss, logs

    def action_free_loss(
        self,
        latents: torch.Tensor,
        scheduler,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        """Fast learning (Temp-LoRA): the whole clip (B, T, C, h, w) noised, null condition,
        loss over all frames -> (loss, logs). ``timesteps`` (B,) and ``noise`` default to
        random draws (from ``generator``). With ``context_skip`` the first frame stays clean
        (the frame the others are predicted from; the loss is over the rest): such a model
        never learned to denoise a clip without one."""
        B, T = latents.shape[:2]
        dev = latents.device
        if timesteps is None:
            t = _randint(0, scheduler.config.num_train_timesteps, (B,), generator, dev)
        else:
            t = torch.as_tensor(timesteps, device=dev).long().expand(B)
        noise = _randn(latents.shape, generator, dev) if noise is None else noise.to(dev)
        noisy = scheduler.add_noise(latents, noise, t)
        ctx = torch.zeros(B, T, dtype=torch.bool, device=dev)
        if self.config.context_skip:
            ctx[:, 0] = True
            noisy = torch.where(ctx[:, :, None, None, None], latents, noisy)
        pred = self(noisy, t, ctx, self.null_condition(B, T))
        tgt = ~ctx
        loss = F.mse_loss(pred[tgt].float(), self._target(scheduler, latents, noise, t)[tgt].float())
        return loss, {"loss": loss.item()}


def motion_mask(latents: torch.Tensor, threshold: float) -> torch.Tensor:
    """latents (B, T, C, h, w) -> (B, T, 1, h, w) float mask: positions where frame t differs
    from frame t-1 or t+1 by more than ``threshold`` (channel-mean absolute difference),
    dilated by one position. Covers the object where it was and where it went."""
    d = (latents[:, 1:] - latents[:, :-1]).abs().mean(2, keepdim=True).float()  # (B, T-1, 1, h, w)
    z = torch.zeros_like(d[:, :1])
    m = (torch.maximum(torch.cat([z, d], 1), torch.cat([d, z], 1)) > threshold).float()  # (B, T, 1, h, w)
    B, T = m.shape[:2]
    m = F.max_pool2d(m.flatten(0, 1), 3, stride=1, padding=1)
    return m.reshape(B, T, *m.shape[1:])


#: pixel change (|dx| on [-1, 1], max over RGB) that counts as motion in ``pixel_motion_mask``
PIXEL_MOTION_THRESHOLD = 0.05


def pixel_changes(frames: torch.Tensor) -> torch.Tensor:
    """frames (T, H, W, 3) uint8 -> (T-1, 1, H, W) bool: pixels that change between frames t
    and t+1 by more than ``PIXEL_MOTION_THRESHOLD``."""
    x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, 3, H, W)
    return (x[1:] - x[:-1]).abs().amax(1, keepdim=True) > PIXEL_MOTION_THRESHOLD


def pixel_motion_mask(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """frames (T, H, W, 3) uint8 of one episode -> (T, 1, H/factor, W/factor) bool: latent
    positions (``factor`` x ``factor`` pixel blocks) where frame t's pixels differ from frame
    t-1's or t+1's by more than ``PIXEL_MOTION_THRESHOLD``, dilated by one position.

    What moves in the picture, at the latents' resolution. ``motion_mask`` reads the same off
    the latents, where a small object's motion also ripples through the VAE's neighbouring
    positions (on PointMaze UMaze it marks 26% of the positions where the ball covers 6.5%), so
    a motion weight spent there mostly weighs background."""
    d = pixel_changes(frames).float()  # (T-1, 1, H, W)
    z = torch.zeros_like(d[:1])
    m = torch.maximum(torch.cat([z, d]), torch.cat([d, z]))  # (T, 1, H, W): moved into or out of frame t
    m = F.max_pool2d(m, factor)
    return F.max_pool2d(m, 3, stride=1, padding=1) > 0


# ----------------------------------------------------------------------------- rng helpers
# Draw on the generator's device, then move: seeded results do not depend on the model device.
def _gen_device(generator, device):
    return generator.device if generator is not None else device


def _randint(lo, hi, shape, generator, device):
    return torch.randint(lo, hi, shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _rand(shape, generator, device):
    return torch.rand(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _randn(shape, generator, device):
    return torch.randn(shape, generator=generator, device=_gen_device(generator, device)).to(device)
