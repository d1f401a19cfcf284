"""SlowFastWorldModel: the learned world model (SlowFast-VGen's slow learner) behind the
WorldModel contract of ``base.py``.

frames --VAE--> latents (B, T', C, h, w) --masked video diffusion, chunk by chunk--> imagined
latents (B, N, K, C, h, w) --VAE--> frames. Imagination is autoregressive over chunks of
``chunk_size`` env steps (one latent frame per env step); all B*N candidates go through
ONE batched sampler call per chunk, with the same diffusion noise for the N candidates of
an env (common random numbers: candidates differ only through their actions).

Checkpoint layout (``save_pretrained`` / ``from_pretrained``; no pickles)::

    world_model.json          sampling settings (context_frames, chunk_size, sampler, ...)
    vae/config.json           AutoencoderKL config incl. latent shift/scale
    vae/diffusion_pytorch_model.safetensors
    diffusion/config.json     ActionVideoDiffusion config
    diffusion/diffusion_pytorch_model.safetensors   (incl. action normaliser buffers)
    scheduler/scheduler_config.json                 training noise schedule
    one_step/ (optional)      the distilled one-step student, a LoRA folded in for num_steps=1
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from sfplan.device import resolve_device
from sfplan.errors import UserError
from sfplan.world_model.base import Imagination, WorldState
from sfplan.world_model.vae import FrameAutoencoder, VAEConfig

AUTOCAST = (None, "none", "bfloat16", "float16", "auto")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (x86 AVX512-BF16 or AMX-BF16, read from
    /proc/cpuinfo once: ``autocast=auto`` asks on every ``imagine``); without them bf16
    autocast is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_autocast(setting: str | None, device: torch.device) -> str | None:
    """``config.autocast`` -> the dtype name to autocast the denoiser to, or None (fp32).
    ``auto``: bfloat16 where the hardware computes it natively (CUDA with bf16 support, a
    CPU with bf16 instructions), else fp32."""
    if setting not in AUTOCAST:
        raise ValueError(f"autocast must be one of {AUTOCAST}, got {setting!r}")
    if setting == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else None
        return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else None
    return None if setting in (None, "none") else setting


FORMAT = "sfplan.SlowFastWorldModel/1"
TRAIN_HINT = "train one with `sfplan train ...` or use world_model=oracle"


@dataclass
class SlowFastWorldModelConfig:
    """Imagination settings: the single source of their defaults (YAML and callers override).

    Two kinds. The model's settings (``context_frames`` to ``resample_noise``) are saved in
    ``world_model.json``: the model was trained for them. The runtime settings
    (``RUNTIME_SETTINGS``: ``return_frames``, ``autocast``, ``cast_weights``) say how this
    process reads and runs imagination; they are neither saved nor read from a checkpoint, so
    their default is the one here unless the caller overrides it (``sfplan eval``:
    ``configs/world_model/learned.yaml``).

    context_frames: latent frames of history the model conditions on (the runner keeps
        this many past observations). 2 gives velocity; more costs time at every step.
    chunk_size: env steps generated per sampler call; a horizon-8 plan is one chunk.
    sampler, num_steps: DPM-Solver++ with 2 steps (see sampler.py for the schedule).
        ``num_steps=1`` on a model dir with a ``one_step/`` part imagines with its distilled
        student (``one_step.py``): half the FLOPs of 2 steps.
    guidance_scale: > 1 doubles the batch (classifier-free guidance on the actions).
    noise_seed: each ``imagine`` call redraws the same noise from this seed, so the model
        is a deterministic function of (state, actions) across CEM iterations;
        ``resample_noise=True`` draws fresh noise per call instead.
    return_frames: which imagined frames ``imagine`` returns: ``all`` (every step: what the
        costs, ``sfplan generate`` and the training previews read), ``chunk_ends`` (the last
        frame of each chunk, always incl. step H) or ``last``.
    autocast: ``bfloat16`` runs the denoiser under torch.autocast in imagine (sampler
        arithmetic stays fp32); ``auto`` does so where the hardware has bf16 instructions
        (``resolve_autocast``; what ``sfplan eval`` uses). On the project CPU (AVX512-BF16) the denoiser forward goes
        from 0.35 to 0.22 s for 64 x 6 frames at ~1% relative error. Off (fp32) by default:
        training, ``sfplan generate`` and the quality benchmarks measure the model itself.
    cast_weights: with autocast on, imagine with a copy of the denoiser whose weights are
        stored in the autocast dtype, so autocast stops re-casting every weight and every
        norm's activations on each call (the fp32 weights stay the master: training and
        Temp-LoRA use them, and the copy is re-made when they change). With a memory
        attached the fp32 weights run under autocast instead: its fast weights change on
        every write. Measured on the project CPU (one thread, imagine 64 x 8): 1.06 ->
        0.85 s; error against fp32 0.0051 mean abs latent, against 0.0038 for autocast.
    """

    context_frames: int = 2
    chunk_size: int = 8
    sampler: str = "dpmsolver++"
    num_steps: int = 2
    guidance_scale: float = 1.0
    noise_seed: int = 0
    resample_noise: bool = False
    # runtime settings (RUNTIME_SETTINGS): not saved with the model
    return_frames: str = "all"  # all | chunk_ends | last
    autocast: str | None = None  # None | bfloat16 | float16 | auto
    cast_weights: bool = False  # imagine with the weights stored in the autocast dtype (a copy)


#: settings of how a process runs imagination, not of the model: never saved in or read from
#: ``world_model.json`` (older checkpoints that hold them are read without them)
RUNTIME_SETTINGS = ("return_frames", "autocast", "cast_weights")


class SlowFastWorldModel:
    """VAE + action-conditioned masked video diffusion + few-step sampler.

    Build fresh with :meth:`build`, load with :meth:`from_pretrained` (or
    :func:`load_world_model`, the Hydra target). Attributes read by the runner:
    ``device``, ``context_frames``, ``chunk_size``, ``checkpoint_sha256``, ``imagined_frames``.
    """

    def __init__(self, vae: FrameAutoencoder, diffusion, train_scheduler,
                 config: SlowFastWorldModelConfig | None = None, device: str | torch.device = "auto"):
        from sfplan.world_model.sampler import make_sampler

        self.config = config or SlowFastWorldModelConfig()
        if self.config.return_frames not in ("chunk_ends", "all", "last"):
            raise ValueError(f"return_frames must be chunk_ends, all or last, got {self.config.return_frames!r}")
        resolve_autocast(self.config.autocast, torch.device("cpu"))  # validates the setting early
        if self.config.context_frames < 1 or self.config.chunk_size < 1:
            raise ValueError("context_frames and chunk_size must be >= 1")
        if self.config.context_frames + self.config.chunk_size > diffusion.config.max_frames:
            raise ValueError(
                f"context_frames + chunk_size = {self.config.context_frames + self.config.chunk_size} exceeds the "
                f"model's max_frames={diffusion.config.max_frames}"
            )
        self.device = resolve_device(device)
        self.vae = vae.to(self.device).eval()
        self.diffusion = diffusion.to(self.device).eval()
        self.train_scheduler = train_scheduler
        self.scheduler = make_sampler(self.config.sampler, train_scheduler)
        self.checkpoint_sha256: str | None = None
        self.one_step: dict | None = None  # the one_step/ adapter's config once folded into the weights
        self.imagined_frames = 0  # imagined env steps, summed over candidates (throughput reports)
        self.memory = None  # TempLoRAMemory once attach_memory() ran
        # parts only some planners and costs use, loaded from <directory>/<part>/ on first use
        # (``idm``, ``probe``), so a broken IDM stops planner=video_plan and not planner=cem
        self._parts: dict[str, object] = {}
        # The task the model was trained on, {"id": env id, "kwargs": env kwargs that shape
        # the frames and dynamics (goal excluded)}; saved as "env" in world_model.json and
        # checked by `sfplan eval` (check_env_matches). None: unknown (eval refuses the model).
        self.trained_env: dict | None = None
        self.directory: str | None = None  # where from_pretrained read it: its idm/ and probe/ load from there
        self._cast_copy: tuple[tuple, torch.nn.Module] | None = None  # (fp32 weights' key, copy)
        self._goal_samplers: dict[str, object] = {}  # imagine_to_goal's few-step samplers, by kind

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, vae_config: VAEConfig | None = None, diffusion_config=None, schedule=None,
              config: SlowFastWorldModelConfig | None = None, device: str | torch.device = "auto",
              seed: int | None = None) -> "SlowFastWorldModel":
        """A fresh (untrained) model from configs; ``seed`` fixes the initial weights."""
        from sfplan.world_model.sampler import make_train_scheduler
        from sfplan.world_model.video_diffusion import VideoDiffusionConfig

        if seed is not None:
            torch.manual_seed(seed)
        vae = FrameAutoencoder(vae_config or VAEConfig())
        dcfg = diffusion_config or VideoDiffusionConfig()
        if dcfg.latent_channels != vae.latent_shape[0]:
            raise ValueError(f"diffusion latent_channels={dcfg.latent_channels} != VAE latent channels "
                             f"{vae.latent_shape[0]}")
        diffusion = dcfg.build()
        return cls(vae, diffusion, make_train_scheduler(dcfg.prediction_type, schedule), config, device)

    @property
    def context_frames(self) -> int:
        return int(self.config.context_frames)

    @property
    def chunk_size(self) -> int:
        return int(self.config.chunk_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.vae.latent_shape

    @property
    def max_frames(self) -> int:
        """Context + generated latent frames the diffusion model attends over at once."""
        return int(self.diffusion.config.max_frames)

    # ------------------------------------------------------------------ contract
    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor, sim_state: np.ndarray | None = None) -> WorldState:
        """frames (B, T, H, W, 3) uint8 (or (B, H, W, 3)) -> WorldState(features (B, C, h, w)
        latent of the latest frame, context (B, T', C, h, w) the last T' <= context_frames
        latents). Costs compare latents: nothing is decoded in the planning loop.
        ``sim_state`` is ignored."""
        frames = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if frames.ndim == 4:
            frames = frames[:, None]
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (B, T, H, W, 3) uint8, got {tuple(frames.shape)}")
        lat = self.vae.encode(frames[:, -self.context_frames :])  # (B, T', C, h, w)
        return WorldState(features=lat[:, -1], context=lat)

    @torch.no_grad()
    def imagine(self, state: WorldState, actions: torch.Tensor,
                generator: torch.Generator | None = None) -> Imagination:
        """actions (B, N, H, A) -> Imagination(features (B, N, K, C, h, w), steps (K,)).

        Autoregressive over chunks of ``chunk_size`` steps; each chunk is one batched
        sampler call over B*N rows; the N candidates of an env share their noise.
        ``generator`` (CPU): draw the noise from it instead of reseeding from
        ``noise_seed`` (a caller imagining chunk by chunk, e.g. to write memory in between,
        passes one generator and gets the noise of a single long call). With a memory
        attached, its adapter is active unless imagining inside ``memory.disabled()``."""
        from sfplan.world_model.sampler import sample_chunk

        if state.context is None:
            raise ValueError("SlowFastWorldModel.imagine needs a WorldState from SlowFastWorldModel.encode")
        B, N, H, A = actions.shape
        if A != self.diffusion.config.action_dim:
            raise ValueError(f"actions have dim {A}, the world model was trained with "
                             f"action_dim={self.diffusion.config.action_dim}")
        ctx = state.context[:, -self.context_frames :].to(self.device, torch.float32)  # (B, T', C, h, w)
        Tc, C, h, w = ctx.shape[1:]
        ctx = ctx[:, None].expand(B, N, Tc, C, h, w).reshape(B * N, Tc, C, h, w)  # (B*N, T', C, h, w)
        acts = actions.to(self.device, torch.float32).reshape(B * N, H, A)  # (B*N, H, A)
        gen = generator
        if gen is None:
            gen = torch.Generator("cpu")
            if self.config.resample_noise:
                gen.seed()
            else:
                gen.manual_seed(int(self.config.noise_seed))
        chunks = []
        amp_ctx = self.autocast_context()
        denoiser = self._imagine_denoiser()  # once per call: the weights do not change within it
        for s in range(0, H, self.chunk_size):
            k = min(self.chunk_size, H - s)
            noise = torch.randn((B, 1, k, C, h, w), generator=gen)  # (B, 1, k, C, h, w): one draw per env
            noise = noise.expand(B, N, k, C, h, w).reshape(B * N, k, C, h, w)  # common random numbers
            with amp_ctx, self._memory_for_imagine():
                x = sample_chunk(denoiser, ctx, acts[:, s : s + k], self.config.num_steps, self.scheduler,
                                 noise=noise.to(self.device), guidance_scale=self.config.guidance_scale)
            x = x.float()  # (B*N, k, C, h, w)
            chunks.append(x)
            ctx = torch.cat([ctx, x], dim=1)[:, -self.context_frames :]
        lat = torch.cat(chunks, dim=1).reshape(B, N, H, C, h, w)  # (B, N, H, C, h, w)
        steps = self._returned_steps(H)
        self.imagined_frames += B * N * H
        feats = lat[:, :, [s - 1 for s in steps]]  # (B, N, K, C, h, w)
        return Imagination(features=feats, steps=torch.tensor(steps))

    @torch.no_grad()
    def imagine_to_goal(self, state: WorldState, goal: torch.Tensor, horizon: int, num_videos: int = 1,
                        num_steps: int = 6, sampler: str = "dpmsolver++", guidance: str = "reconstruction",
                        guidance_weight: float = 3.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Plan videos rather than imagine actions: ``num_videos`` action-free videos of ``horizon``
        latent frames per env, from ``state``'s context (B, T', C, h, w) and steered to end at
        ``goal`` (B, C, h, w), in ONE batched sampler call (``sample_chunk_to_goal``: ``guidance``
        and ``guidance_weight`` there) -> (B, K, H, C, h, w). ``sampler``, ``num_steps``: the
        few-step sampler for these videos (the goal needs more steps than ``imagine``'s to shape
        the frames before it). An attached memory's adapter is active as it is."""
        from sfplan.world_model.sampler import make_sampler, sample_chunk_to_goal

        if state.context is None:
            raise ValueError("imagine_to_goal needs a WorldState from SlowFastWorldModel.encode")
        ctx = state.context[:, -self.context_frames :].to(self.device, torch.float32)  # (B, T', C, h, w)
        B, _, C, h, w = ctx.shape
        K, H = int(num_videos), int(horizon)
        if sampler not in self._goal_samplers:  # stateful (set_timesteps), so apart from imagine's own
            self._goal_samplers[sampler] = make_sampler(sampler, self.train_scheduler)
        with self.autocast_context():
            video = sample_chunk_to_goal(self.diffusion, ctx.repeat_interleave(K, dim=0),  # (B*K, T', C, h, w)
                                         goal.to(self.device, torch.float32).repeat_interleave(K, dim=0), H,
                                         int(num_steps), self._goal_samplers[sampler], self.train_scheduler,
                                         generator=generator, guidance=guidance, guidance_weight=float(guidance_weight))
        self.imagined_frames += B * K * H
        return video.float().reshape(B, K, H, C, h, w)  # (B, K, H, C, h, w)

    @property
    def autocast(self) -> str | None:
        """The denoiser's autocast dtype name on this device (``config.autocast`` resolved)."""
        return resolve_autocast(self.config.autocast, self.device)

    def autocast_context(self):
        """``torch.autocast`` for denoiser calls (a disabled one in fp32)."""
        amp = self.autocast
        return torch.autocast(self.device.type, dtype=getattr(torch, amp or "bfloat16"), enabled=amp is not None)

    def _imagine_denoiser(self) -> torch.nn.Module:
        """The denoiser ``imagine`` calls: ``self.diffusion``, or with ``cast_weights`` (and
        autocast on, no memory) a copy in the autocast dtype, re-made when the fp32 weights
        change (tracked by the tensors' in-place version counters and identities)."""
        amp = self.autocast
        if not self.config.cast_weights or amp is None or self.memory is not None:
            return self.diffusion
        key = tuple((id(t), t._version) for t in self.diffusion.state_dict(keep_vars=True).values())
        if self._cast_copy is None or self._cast_copy[0] != key:
            import copy

            dup = copy.deepcopy(self.diffusion)
            torch.nn.Module.to(dup, getattr(torch, amp))  # not ModelMixin.to: no keep-in-fp32 warning
            dup.eval().requires_grad_(False)
            self._cast_copy = (key, dup)
        return self._cast_copy[1]

    def _memory_for_imagine(self):
        """Temp-LoRA folded into the weights for a sampler call (``TempLoRAMemory.merged``)."""
        from contextlib import nullcontext

        mem = self.memory
        return mem.merged() if mem is not None and mem.config.merge_for_imagine else nullcontext()

    def _returned_steps(self, H: int) -> list[int]:
        mode = self.config.return_frames
        if mode == "all":
            return list(range(1, H + 1))
        if mode == "last":
            return [H]
        ends = list(range(self.chunk_size, H + 1, self.chunk_size))
        return ends if ends and ends[-1] == H else ends + [H]

    @torch.no_grad()
    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """features (..., C, h, w) latents -> frames (..., H, W, 3) uint8 on the CPU."""
        return self.vae.decode(features).cpu()

    # ------------------------------------------------------------------ episodic memory (Temp-LoRA)
    def attach_memory(self, config=None, freeze_base: bool = True):
        """Add Temp-LoRA fast weights (``sfplan.memory.TempLoRAMemory``) to the diffusion
        model; returns the memory (also ``self.memory``). ``config``: a TempLoRAConfig, a
        dict or a Hydra node. One memory per model."""
        from sfplan.memory.temp_lora import TempLoRAMemory

        if self.memory is not None:
            raise ValueError("a memory is already attached to this world model: reset_memory() starts it afresh")
        self.memory = TempLoRAMemory(self, config, freeze_base=freeze_base)
        return self.memory

    def reset_memory(self, seed: int | None = None) -> None:
        """Fresh memory (episode start); a no-op without one."""
        if self.memory is not None:
            self.memory.reset(seed)

    def remember(self, frames: np.ndarray | torch.Tensor, num_context: int = 0, actions=None) -> dict[str, float] | None:
        """Write real frames (T, H, W, 3) uint8 into the memory (encoded with the VAE); the
        first ``num_context`` are already-seen context (e.g. the frame before an executed
        chunk); ``actions`` (T-1, A) between them (used by a masked-loss memory). Returns
        the write logs, or None without a memory."""
        if self.memory is None:
            return None
        frames = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"remember takes frames (T, H, W, 3) uint8, got {tuple(frames.shape)}")
        lat = self.vae.encode(frames[None])[0]  # (T, C, h, w)
        return self.memory.write(lat, actions=actions, num_context=num_context)

    # ------------------------------------------------------------------ training helpers
    def masked_loss(self, latents: torch.Tensor, actions: torch.Tensor, num_context=None, generator=None,
                    p_uncond: float | None = None, timesteps=None):
        """Slow-learning loss on a clip: latents (B, T, C, h, w), actions (B, T, A) -> (loss, logs)."""
        return self.diffusion.masked_loss(latents, actions, self.train_scheduler, num_context, generator, p_uncond,
                                          timesteps=timesteps)

    def action_free_loss(self, latents: torch.Tensor, timesteps=None, noise=None, generator=None):
        """Temp-LoRA's loss: latents (B, T, C, h, w), whole clip noised, null condition -> (loss, logs)."""
        return self.diffusion.action_free_loss(latents, self.train_scheduler, timesteps, noise, generator)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> str:
        """Write the checkpoint (see module docstring); returns its sha256."""
        if self.one_step is not None:
            raise ValueError("this model's weights hold its one-step adapter (loaded with num_steps=1): load it with "
                             "num_steps=2 to save it")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(d / "vae")
        if self.memory is not None:  # the checkpoint holds the slow weights; episodic memory is not saved
            from sfplan.memory.temp_lora import base_state_dict
            from sfplan.world_model.video_diffusion import ActionVideoDiffusion

            plain = ActionVideoDiffusion.from_config(self.diffusion.config)
            plain.load_state_dict(base_state_dict(self.diffusion))
            plain.save_pretrained(str(d / "diffusion"), safe_serialization=True)
        else:
            self.diffusion.save_pretrained(str(d / "diffusion"), safe_serialization=True)
        self.train_scheduler.save_pretrained(str(d / "scheduler"))
        meta = {"format": FORMAT, **{k: v for k, v in asdict(self.config).items() if k not in RUNTIME_SETTINGS}}
        if self.trained_env is not None:
            meta["env"] = self.trained_env
        (d / "world_model.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.checkpoint_sha256 = checkpoint_sha256(d)
        return self.checkpoint_sha256

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "auto",
                        **overrides) -> "SlowFastWorldModel":
        """Load a checkpoint; ``overrides`` replace fields of SlowFastWorldModelConfig
        (e.g. ``num_steps=3``): the saved model settings, or the runtime settings, which
        otherwise keep their defaults. Raises UserError naming the fix when it is missing/corrupt."""
        from diffusers import DDPMScheduler

        from sfplan.world_model.one_step import fold_adapter, has_adapter
        from sfplan.world_model.video_diffusion import ActionVideoDiffusion

        d = Path(directory).expanduser()
        meta_path = d / "world_model.json"
        if not meta_path.is_file():
            raise UserError(f"no world model at {d}: {TRAIN_HINT}")
        for sub in ("vae", "diffusion"):
            if not (d / sub / "diffusion_pytorch_model.safetensors").is_file():
                raise UserError(f"world model at {d} is incomplete ({sub}/diffusion_pytorch_model.safetensors "
                                f"missing): {TRAIN_HINT}")
        try:
            meta = json.loads(meta_path.read_text())
            known = {f.name for f in fields(SlowFastWorldModelConfig)}
            unknown = set(overrides) - known
            if unknown:
                raise UserError(f"unknown world model setting(s) {sorted(unknown)}; valid: {sorted(known)}")
            saved = {k: v for k, v in meta.items() if k in known and k not in RUNTIME_SETTINGS}
            cfg = SlowFastWorldModelConfig(**{**saved, **overrides})
            vae = FrameAutoencoder.from_pretrained(d / "vae")
            diffusion = ActionVideoDiffusion.from_pretrained(str(d / "diffusion"), use_safetensors=True)
            sched = DDPMScheduler.from_pretrained(str(d / "scheduler"))
            # one step: the distilled student (one_step.py) where the dir holds one
            one_step = fold_adapter(diffusion, d) if cfg.num_steps == 1 and has_adapter(d) else None
        except UserError:
            raise
        except Exception as e:  # corrupt json / safetensors header / shape mismatch
            raise UserError(
                f"world model checkpoint at {d} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                f"re-save it, {TRAIN_HINT}"
            ) from None
        model = cls(vae, diffusion, sched, cfg, device)
        model.one_step = one_step
        model.trained_env = meta.get("env")
        model.directory = str(d)
        model.checkpoint_sha256 = checkpoint_sha256(d)
        return model  # idm/ and probe/ load on first use (the properties below)

    def _part(self, name: str):
        """``<directory>/<name>/`` loaded once, on first use; None where there is none. A part
        that fails to load raises (a UserError naming the fix) each time it is asked for."""
        if name not in self._parts:
            d = Path(self.directory) / name if self.directory else None
            if d is None or not d.is_dir():
                self._parts[name] = None
            elif name == "idm":  # inverse dynamics model for planner=video_plan
                from sfplan.world_model.idm import load_idm

                self._parts[name] = load_idm(d, self.device)
            else:  # the state probe of cost=probe
                from sfplan.world_model.probe import load_probe

                self._parts[name] = load_probe(d, self.device)
        return self._parts[name]

    @property
    def idm(self):
        """The InverseDynamicsModel of ``<directory>/idm/`` (planner=video_plan), or None."""
        return self._part("idm")

    @idm.setter
    def idm(self, model) -> None:
        self._parts["idm"] = model

    @property
    def probe(self):
        """The StateProbe of ``<directory>/probe/`` (cost=probe), or None."""
        return self._part("probe")

    @probe.setter
    def probe(self, model) -> None:
        self._parts["probe"] = model


def checkpoint_sha256(directory: str | Path) -> str:
    """sha256 over the weight files (relative path + bytes, sorted): names the weights, not the settings."""
    d = Path(directory)
    h = hashlib.sha256()
    for f in sorted(d.rglob("*.safetensors")):
        h.update(f.relative_to(d).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def trained_env_of(env_id: str, env_kwargs: dict) -> dict:
    """``SlowFastWorldModel.trained_env`` for a dataset of ``env_id`` made with ``env_kwargs``
    (the goal protocol is dropped: only the stored goal images depend on it)."""
    return {"id": str(env_id), "kwargs": {k: v for k, v in sorted(dict(env_kwargs).items()) if k != "goal"}}


def check_env_matches(model: "SlowFastWorldModel", env_id: str, env_kwargs: dict) -> None:
    """Raise UserError when ``model`` was trained on another task or other env settings
    (e.g. PointMaze's ``frame_skip``) than ``env_id(**env_kwargs)``: its imagined futures
    would silently be those of another simulator. A model that does not record its task is
    refused too: nothing then stops it planning on any task."""
    trained = getattr(model, "trained_env", None)
    if not trained or not trained.get("id"):
        where = getattr(model, "directory", None) or "the world model"
        raise UserError(f"{where}/world_model.json does not record the task the model was trained on (no \"env\"): "
                        f"add \"env\": {json.dumps(trained_env_of(env_id, env_kwargs))} to it if it was trained on "
                        f"this env (the task and settings of its training data: `sfplan data info <dataset>`), or "
                        f"re-save it with `sfplan train stage=dynamics`")
    here = trained_env_of(env_id, env_kwargs)
    if trained.get("id") != here["id"]:
        raise UserError(f"the world model was trained on {trained.get('id')}, not {env_id}: pick the env it was "
                        f"trained on (env=...) or a model trained on {env_id} (world_model.path=...)")
    diff = {k: (v, here["kwargs"].get(k)) for k, v in trained.get("kwargs", {}).items()
            if here["kwargs"].get(k) != v}
    if diff:
        fix = " ".join(f"env.kwargs.{k}={v[0]}" for k, v in diff.items())
        shown = ", ".join(f"{k}={v[0]} (this env: {v[1]})" for k, v in diff.items())
        raise UserError(f"the world model was trained on {env_id} with {shown}: set {fix}, or use a model trained "
                        f"with these env settings (world_model.path=...)")


def load_world_model(path: str | None = None, device: str = "auto", task: str | None = None,
                     **overrides) -> SlowFastWorldModel:
    """Hydra target (``configs/world_model/learned.yaml``): the checkpoint at ``path``, or with
    ``path`` null the model shipped for ``task`` (``sfplan.models``)."""
    if not path:
        if not task:
            raise UserError(f"world_model.path is empty: {TRAIN_HINT}")
        from sfplan.models import shipped_model_path

        path = shipped_model_path(task)
    path = Path(str(path)).expanduser()
    if not (path / "world_model.json").is_file() and (path / "model" / "world_model.json").is_file():
        path = path / "model"  # a training run directory
    return SlowFastWorldModel.from_pretrained(path, device=device, **overrides)
