"""Temp-LoRA: SlowFast-VGen's fast learner, an episodic memory held in LoRA fast weights.

After each chunk of a rollout, the clean context ⊕ the new chunk is noised *as a whole*,
the action condition is dropped (null tokens) and a LoRA on the video diffusion model's
attention projections takes ``steps_per_write`` Adam steps on the ε/v-loss over all frames
(``ActionVideoDiffusion.action_free_loss``). The base (slow) weights never change. The
LoRA starts fresh (B = 0: the model's outputs equal the base model's exactly) at the start
of every episode (``reset``).

Shapes: T frames, C, h, w the latent shape of the world model's VAE.

Settings the paper leaves open (defaults here, all in ``TempLoRAConfig``):

- ``timesteps_per_step``: the paper takes one noise level per step; a batch of R noise
  levels per step lowers the variance of each update at R x the cost.
- ``context_frames``: clean frames in front of each written chunk: the world model's own
  context length by default (what the next chunk is conditioned on).
- ``max_write_frames``: a write longer than this (context + new frames) is split into
  consecutive windows, each with its own clean context; default: the model's max_frames.
- the LoRA's initial A is drawn once, from ``seed``, when the memory is attached; ``reset``
  copies that initial state back (so resets neither touch the global RNG nor rebuild the
  model), and reseeds the generator of the write noise.

Memory is bounded: the LoRA tensors and the Adam state have a fixed size, and the buffer of
past latents kept for the clean context holds at most ``context_frames`` frames.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from sfplan.memory.base import WRITE_MODES

ADAPTER_NAME = "temp_lora"
LOSSES = ("action_free", "masked")
REVERSE_ACTIONS = ("unconditional", "negate")


@dataclass
class TempLoRAConfig:
    """Temp-LoRA settings (paper: rank 32, Adam lr 1e-4, one step per chunk).

    rank, alpha: LoRA rank r and alpha (the update is scaled by alpha / r).
    lr: Adam learning rate of the LoRA weights.
    steps_per_write: gradient steps per written chunk.
    timesteps_per_step: batch rows per step, each noised at its own random timestep.
    target_modules: module names for peft; None: ``diffusion.lora_target_modules``
        (the attention projections to_q/to_k/to_v/to_out).
    write: what ``sfplan generate`` writes after each chunk: the ``generated`` chunk (the
        paper's inference) or the ``real`` ground-truth frames. The MPC runner (``sfplan
        eval``) writes the executed frames, the only ones an episode has.
    context_frames: clean past frames prepended to each written chunk; None: the world
        model's ``context_frames``. Also the size of the buffer of past latents.
    max_write_frames: longest clip one gradient step sees (context + new frames); longer
        writes are split into windows. None: the diffusion model's ``max_frames``.
    seed: initial LoRA A and the write noise.
    loss: ``action_free`` (the paper: the whole clip noised, null condition, loss over all
        frames) or ``masked`` (the slow learner's own objective on this episode: clean
        context, noised new frames, the true actions, loss on the new frames only; writes
        then need the actions between the clip's frames). ``masked`` trains the LoRA on
        the input the model sees when it imagines; on MemoryMaze the action-free update
        made imagination worse (docs/notes/2026-12-06-memory-temp-lora.md).
    forward: each written clip is trained on in time order (the paper). False, with
        ``reverse``: backward clips only.
    reverse: each written clip is also trained on played backwards (time reversed), for
        scenes revisited in reverse order, e.g. retracing a path.
    reverse_actions: the actions of a backward clip under ``loss="masked"``:
        ``unconditional`` (the null condition: they are unknown in general) or ``negate``
        (the clip's actions negated, in reverse order: the exact inverse where an action
        commands a velocity and nothing is hit, e.g. sfplan/MemoryMaze-v0; wrong for
        torque- or contact-driven tasks).
    merge_for_imagine: ``SlowFastWorldModel.imagine`` runs with W + (alpha/r) B A swapped
        in for each adapted W (``merged()``): one matmul per projection instead of three.
        At rank 32 on the default CPU-sized model the unmerged LoRA path costs about as
        much as the projections themselves. Outputs equal the unmerged adapter's up to
        float rounding; the base weights are never modified.
    """

    rank: int = 32
    alpha: float = 32.0
    lr: float = 1.0e-4
    steps_per_write: int = 1
    timesteps_per_step: int = 1
    target_modules: list[str] | None = None
    write: str = "generated"
    context_frames: int | None = None
    max_write_frames: int | None = None
    seed: int = 0
    loss: str = "action_free"
    forward: bool = True
    reverse: bool = False
    reverse_actions: str = "unconditional"
    merge_for_imagine: bool = True

    @classmethod
    def from_any(cls, cfg: "TempLoRAConfig | Mapping[str, Any] | None") -> "TempLoRAConfig":
        """A TempLoRAConfig from itself, a dict or an OmegaConf node (``_target_`` ignored)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a core dependency
            pass
        d = {k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Temp-LoRA setting(s) {unknown}; valid: {sorted(known)}")
        if d.get("target_modules") is not None:
            d["target_modules"] = list(d["target_modules"])
        return cls(**d)

    def validate(self) -> None:
        if self.rank < 1 or self.steps_per_write < 0 or self.timesteps_per_step < 1:
            raise ValueError("Temp-LoRA needs rank >= 1, steps_per_write >= 0 and timesteps_per_step >= 1")
        if not self.lr > 0:
            raise ValueError(f"Temp-LoRA lr must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise ValueError(f"Temp-LoRA loss must be one of {LOSSES}, got {self.loss!r}")
        if not (self.forward or self.reverse):
            raise ValueError("Temp-LoRA forward=false needs reverse=true: a write must train on the clip in some "
                             "direction")
        if self.reverse_actions not in REVERSE_ACTIONS:
            raise ValueError(f"Temp-LoRA reverse_actions must be one of {REVERSE_ACTIONS}, "
                             f"got {self.reverse_actions!r}")
        if self.reverse_actions == "negate" and self.loss != "masked":
            raise ValueError("Temp-LoRA reverse_actions='negate' conditions the backward clips on actions, which only "
                             "loss='masked' uses: set loss=masked (or reverse_actions=unconditional)")
        if self.write not in WRITE_MODES:
            raise ValueError(f"Temp-LoRA write must be one of {WRITE_MODES}, got {self.write!r}")
        if self.context_frames is not None and self.context_frames < 0:
            raise ValueError("Temp-LoRA context_frames must be >= 0")
        if self.max_write_frames is not None and self.max_write_frames < 1:
            raise ValueError("Temp-LoRA max_write_frames must be >= 1")


def _require_peft():
    try:
        import peft  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        from sfplan.errors import UserError

        raise UserError("Temp-LoRA memory needs peft: pip install 'sfplan[diffusion]' (or pip install peft)") from e


def is_lora_name(name: str) -> bool:
    """True for parameter names of a peft LoRA layer (lora_A/lora_B/...)."""
    return ".lora_" in name or name.startswith("lora_")


def base_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``module`` as it was before LoRA layers were injected: LoRA tensors
    dropped, ``.base_layer.`` folded away (what ``from_pretrained`` of the plain class reads)."""
    return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if not is_lora_name(k)}


def _last_frames(z: torch.Tensor, cap: int) -> torch.Tensor:
    """The last ``cap`` frames of z (T, ...), all of them when T <= cap. (``z[T - cap:]``
    would wrap around for T < cap < 2T and keep too few.)"""
    return z[max(0, z.shape[0] - cap):]


class TempLoRAMemory:
    """Temp-LoRA fast weights on ``world_model.diffusion`` (a diffusers ``PeftAdapterMixin``);
    the ``sfplan.memory.base.Memory`` role.

    ``reset()`` at episode start; ``write(latents)`` after each chunk; ``snapshot()`` /
    ``load()`` to save and restore the memory bit-exact; ``with memory.disabled():`` to
    imagine with the base model. The adapter is added once, in ``__init__``.

    freeze_base: set ``requires_grad=False`` on the base weights (inference). The slow-fast
    training loop passes False: it trains the base weights through the adapted model. Writes
    never touch base weights either way: gradients are taken w.r.t. the LoRA tensors only.
    """

    def __init__(self, world_model, config: TempLoRAConfig | Mapping[str, Any] | None = None,
                 freeze_base: bool = True):
        _require_peft()
        from peft import LoraConfig

        self.config = TempLoRAConfig.from_any(config)
        self.config.validate()
        self.world_model = world_model
        self.diffusion = world_model.diffusion
        cfg = self.config
        if getattr(self.diffusion, "peft_config", None) and ADAPTER_NAME in self.diffusion.peft_config:
            raise ValueError(f"the diffusion model already holds a {ADAPTER_NAME!r} adapter: attach one memory per "
                             f"model (reset() it between episodes)")
        if freeze_base:
            self.diffusion.requires_grad_(False)
        trainable = {id(q): q.requires_grad for q in self.diffusion.parameters()}
        targets = list(cfg.target_modules or self.diffusion.lora_target_modules)
        lcfg = LoraConfig(r=int(cfg.rank), lora_alpha=float(cfg.alpha), target_modules=targets, lora_dropout=0.0,
                          init_lora_weights=True, bias="none")
        # A is drawn from the global RNG inside peft: fork it so attaching a memory neither
        # depends on nor disturbs the caller's random stream.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(cfg.seed))
            self.diffusion.add_adapter(lcfg, adapter_name=ADAPTER_NAME)
        for q in self.diffusion.parameters():  # peft marks only adapters trainable: give the base its flags back
            if id(q) in trainable:
                q.requires_grad_(trainable[id(q)])
        self._names, self._params = [], []
        for name, p in self.diffusion.named_parameters():
            if is_lora_name(name) and f".{ADAPTER_NAME}." in name:
                # fp32 fast weights even where the base runs in half precision (autocast casts per op)
                if p.dtype != torch.float32:
                    p.data = p.data.float()
                p.requires_grad_(True)
                self._names.append(name)
                self._params.append(p)
        if not self._params:
            raise ValueError(f"no LoRA layers were injected for target_modules={targets}")
        self._layers = [m for m in self.diffusion.modules()
                        if hasattr(m, "get_delta_weight") and ADAPTER_NAME in getattr(m, "lora_A", {})]
        self._init = [p.detach().clone() for p in self._params]  # the fresh state reset() restores
        self._merged_cache: dict[int, tuple] = {}  # id(layer) -> ((id(W), versions of W, A, B), W + s B A)
        self._gen = torch.Generator("cpu")
        self.reset()

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.diffusion.parameters()).device

    @property
    def context_frames(self) -> int:
        c = self.config.context_frames
        return int(self.world_model.context_frames if c is None else c)

    @property
    def max_write_frames(self) -> int:
        m = int(self.diffusion.config.max_frames)
        return min(m, int(self.config.max_write_frames)) if self.config.max_write_frames else m

    @property
    def write_mode(self) -> str:
        """``config.write``: ``generated`` or ``real`` (what a rollout writes after each chunk)."""
        return self.config.write

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self._params)

    @property
    def parameter_names(self) -> list[str]:
        """Names of the LoRA tensors inside ``diffusion`` (keys of ``lora_state``)."""
        return list(self._names)

    def state_bytes(self) -> int:
        """Bytes held by the memory: LoRA tensors, Adam moments, latent buffer."""
        n = sum(p.numel() * p.element_size() for p in self._params)
        for st in self.optimizer.state.values():
            n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
        if self.buffer is not None:
            n += self.buffer.numel() * self.buffer.element_size()
        return n

    # ------------------------------------------------------------------ the Memory contract
    @torch.no_grad()
    def reset(self, seed: int | None = None) -> None:
        """Fresh memory: LoRA back to its initial state (B = 0), new Adam state, empty
        buffer, write noise reseeded (``seed`` or ``config.seed``). The adapter is enabled."""
        for p, p0 in zip(self._params, self._init):
            p.copy_(p0)
        self.optimizer = torch.optim.Adam(self._params, lr=float(self.config.lr))
        self.buffer: torch.Tensor | None = None  # (<= context_frames, C, h, w) latest latents
        self._gen.manual_seed(int(self.config.seed if seed is None else seed))
        self.writes = 0
        self.write_time_s = 0.0
        self._set_enabled(True)

    @torch.no_grad()
    def prime(self, latents: torch.Tensor) -> None:
        """Show the memory frames it should take as given, without training on them: latents
        (T, C, h, w), e.g. the context a generation starts from. They become the buffer,
        i.e. the clean context of the next ``write``, so every write can pass just its new
        frames (and their actions) whatever the loss."""
        z = torch.as_tensor(latents)
        z = z[0] if z.ndim == 5 else z
        if z.ndim != 4:
            raise ValueError(f"prime takes latents (T, C, h, w), got {tuple(z.shape)}")
        cap = self.context_frames
        self.buffer = _last_frames(z, cap).detach().to(self.device, torch.float32).clone() if cap > 0 else None

    def write(self, latents: torch.Tensor, actions=None, num_context: int = 0) -> dict[str, float]:
        """Memorise a chunk: ``steps_per_write`` Adam steps of the LoRA on the action-free loss
        of the clean context ⊕ the new frames.

        latents: (T, C, h, w) or (1, T, C, h, w) clean latents in time order. The first
            ``num_context`` of them are frames already seen (e.g. the real frame before an
            executed chunk); they stand in for the last ``num_context`` frames of the buffer,
            so the buffer does not hold them twice. The rest are new.
        actions: (T-1, A) actions between consecutive frames of ``latents`` (Gymnasium
            order: ``actions[t]`` takes frame t to t+1); needed by ``loss="masked"``,
            ignored by the action-free loss. A masked write trains on this call's frames only
            (its first frame, or its ``num_context`` frames, is the first window's context).
            Actions (T, A), one per frame: all T frames are new, and the frame the memory
            holds last (``prime`` or the previous write) is put in front as the context.
        Returns logs: ``loss`` (mean over steps), ``loss_first``, ``loss_last``, ``steps``,
        ``frames`` (clip frames per step, the last window), ``new_frames``, ``time_s``.
        """
        z = torch.as_tensor(latents)
        if z.ndim == 5:
            if z.shape[0] != 1:
                raise ValueError(f"write takes one clip: (T, C, h, w) or (1, T, C, h, w), got {tuple(z.shape)}")
            z = z[0]
        if z.ndim != 4 or z.dtype == torch.uint8:
            raise ValueError(f"write takes latents (T, C, h, w) (encode frames with the world model's VAE, or call "
                             f"SlowFastWorldModel.remember(frames)), got {tuple(z.shape)} {z.dtype}")
        n_new = z.shape[0] - int(num_context)
        if not 0 <= num_context < z.shape[0]:
            raise ValueError(f"num_context={num_context} must be in [0, {z.shape[0] - 1}] for {z.shape[0]} frames")
        masked = self.config.loss == "masked"
        if masked and num_context == 0 and actions is not None and len(actions) == z.shape[0]:
            # one action per frame: all frames are new, the context is the frame seen last
            if self.buffer is None:
                raise ValueError("a masked write of new frames only (one action per frame) takes its context from "
                                 "the memory: prime(context latents) first, or pass write(torch.cat([context, "
                                 "new]), actions, num_context=...)")
            z = torch.cat([self.buffer[-1:].to(z.device, z.dtype), z])
            num_context = 1
        if masked:
            if actions is None or z.shape[0] < 2:
                raise ValueError("Temp-LoRA loss='masked' writes need the actions between the frames and at least "
                                 "one context frame: write(torch.cat([context, new]), actions, num_context=...)")
            actions = torch.as_tensor(actions, dtype=torch.float32).to(self.device)
            if actions.ndim != 2 or actions.shape[0] != z.shape[0] - 1:
                raise ValueError(f"write got actions {tuple(actions.shape)} for {z.shape[0]} frames: need "
                                 f"({z.shape[0] - 1}, A)")
            num_context = max(1, int(num_context))
            n_new = z.shape[0] - num_context
        t0 = time.perf_counter()
        z = z.detach().to(self.device, torch.float32)
        # history: buffered past frames, then this call's frames (its context replaces the
        # buffer's tail: they are the same frames)
        if self.buffer is not None and self.buffer.shape[0] > num_context and not masked:
            hist = torch.cat([self.buffer[: self.buffer.shape[0] - num_context], z])  # (Th, C, h, w)
        else:
            hist = z
        ctx = min(self.context_frames, self.max_write_frames - 1)
        per_window = self.max_write_frames - ctx
        losses: list[float] = []
        s, frames = hist.shape[0] - n_new, 0
        was = self._enabled
        self._set_enabled(True)  # a write trains the adapter even inside ``disabled()``
        try:
            while s < hist.shape[0] and self.config.steps_per_write > 0:
                e = min(hist.shape[0], s + per_window)
                a = max(0, s - ctx)
                clip = hist[a: e]  # (ctx + new, C, h, w): clean context ⊕ new frames
                if self.config.forward:
                    losses += self._train_on(clip, actions[a: e - 1] if masked else None, s - a)
                if self.config.reverse:
                    losses += self._train_backward(clip, actions[a: e - 1] if masked else None, s - a)
                frames = clip.shape[0]
                s = e
        finally:
            self._set_enabled(was)
        cap = self.context_frames
        self.buffer = _last_frames(hist, cap).clone() if cap > 0 else None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        self.writes += 1
        self.write_time_s += dt
        nan = float("nan")
        return {"loss": sum(losses) / len(losses) if losses else nan, "loss_first": losses[0] if losses else nan,
                "loss_last": losses[-1] if losses else nan, "steps": float(len(losses)), "frames": float(frames),
                "new_frames": float(n_new), "time_s": dt}

    def _train_backward(self, clip: torch.Tensor, actions: torch.Tensor | None, num_context: int) -> list[float]:
        """``_train_on`` the clip (T, C, h, w) played backwards; with the masked loss under
        ``reverse_actions``: the null condition (``unconditional``), or ``actions`` (T-1, A) negated in reverse
        order (``-actions[T-2-k]`` takes backward frame k to k+1)."""
        if actions is None:
            return self._train_on(clip.flip(0), None, num_context, null_condition=True)
        if self.config.reverse_actions == "negate":
            return self._train_on(clip.flip(0), -actions.flip(0), num_context)
        return self._train_on(clip.flip(0), torch.zeros_like(actions), num_context, null_condition=True)

    def _train_on(self, clip: torch.Tensor, actions: torch.Tensor | None = None, num_context: int = 0,
                  null_condition: bool = False) -> list[float]:
        """``steps_per_write`` Adam steps on one clip (T, C, h, w) (with ``actions`` (T-1, A):
        the masked loss, ``num_context`` clean frames, under the null condition with
        ``null_condition``); returns the losses."""
        R = int(self.config.timesteps_per_step)
        x = clip[None].expand(R, *clip.shape)  # (R, T, C, h, w): R noise levels of the same clip
        out = []
        for _ in range(int(self.config.steps_per_write)):
            with torch.enable_grad():
                if actions is None:
                    loss, _ = self.world_model.action_free_loss(x, generator=self._gen)
                else:
                    loss, _ = self.world_model.masked_loss(x, actions[None].expand(R, *actions.shape), num_context,
                                                           generator=self._gen, p_uncond=1.0 if null_condition else 0.0)
                # gradients w.r.t. the LoRA tensors only: base weights get no .grad even when
                # they require grad (the slow-fast loop trains them in the same graph later)
                grads = torch.autograd.grad(loss, self._params)
            for p, g in zip(self._params, grads):
                p.grad = g
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            out.append(float(loss.detach()))
        return out

    # ------------------------------------------------------------------ snapshots
    def lora_state(self, device: torch.device | str | None = "cpu") -> dict[str, torch.Tensor]:
        """{name in diffusion: cloned LoRA tensor} (on ``device``; None: where they live)."""
        return {n: p.detach().to(device if device is not None else p.device, copy=True)
                for n, p in zip(self._names, self._params)}

    def snapshot(self) -> dict[str, Any]:
        """Everything that determines future writes and outputs, cloned to the CPU:
        ``lora`` tensors, ``optimizer`` state, latent ``buffer``, ``rng`` state, ``writes``."""
        opt = self.optimizer.state_dict()
        opt = {"state": {k: {n: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v))
                             for n, v in st.items()} for k, st in opt["state"].items()},
               "param_groups": copy.deepcopy(opt["param_groups"])}
        return {"lora": self.lora_state("cpu"), "optimizer": opt,
                "buffer": None if self.buffer is None else self.buffer.detach().to("cpu", copy=True),
                "rng": self._gen.get_state(), "writes": int(self.writes)}

    @torch.no_grad()
    def load(self, snapshot: Mapping[str, Any]) -> None:
        """Restore a ``snapshot()`` bit-exact (the snapshot itself is not aliased)."""
        lora = snapshot["lora"]
        missing = [n for n in self._names if n not in lora]
        if missing:
            raise ValueError(f"snapshot lacks LoRA tensors {missing[:3]}...: it was taken from another model or "
                             f"Temp-LoRA config")
        for n, p in zip(self._names, self._params):
            p.copy_(lora[n])
        self.optimizer = torch.optim.Adam(self._params, lr=float(self.config.lr))
        if "optimizer" in snapshot:
            opt = snapshot["optimizer"]
            # clone: Optimizer.load_state_dict keeps same-device tensors as they are, and
            # Adam updates its moments in place
            self.optimizer.load_state_dict({
                "state": {k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in st.items()}
                          for k, st in opt["state"].items()},
                "param_groups": copy.deepcopy(opt["param_groups"])})
        buf = snapshot.get("buffer")
        self.buffer = None if buf is None else buf.to(self.device, copy=True)
        if "rng" in snapshot:
            self._gen.set_state(snapshot["rng"])
        self.writes = int(snapshot.get("writes", 0))

    # ------------------------------------------------------------------ enable / disable
    def _set_enabled(self, on: bool) -> None:
        # only the layers holding this adapter (diffusers' enable/disable_adapters walks the
        # whole model: ~30 ms per call on the CPU, and imagine toggles twice per chunk)
        for layer in self._layers:
            layer.enable_adapters(on)
        for p in self._params:  # peft toggles requires_grad with the adapter; writes need it
            p.requires_grad_(True)
        self._enabled = on

    @property
    def enabled(self) -> bool:
        return self._enabled

    @contextmanager
    def disabled(self):
        """``with memory.disabled(): wm.imagine(...)`` imagines with the base model only."""
        was = self._enabled
        self._set_enabled(False)
        try:
            yield self
        finally:
            self._set_enabled(was)

    @contextmanager
    def merged(self):
        """Run the adapted model with each adapted weight W replaced by W + (alpha/r) B A
        (a new tensor; the original W objects are put back afterwards, so the base weights
        stay bit-identical) and the LoRA branches off. For inference only (no gradients
        reach the LoRA). A no-op while the memory is disabled.

        The merged weights are cached per layer until W, A or B change (tensor versions),
        so the many ``imagine`` calls of a planning decision between two writes merge once."""
        if not self._enabled:
            yield self
            return
        saved = []
        try:
            with torch.no_grad():
                for layer in self._layers:
                    base = layer.get_base_layer()
                    w = base.weight
                    a, b = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
                    key = (id(w), w._version, a._version, b._version)
                    hit = self._merged_cache.get(id(layer))
                    if hit is None or hit[0] != key:
                        delta = layer.get_delta_weight(ADAPTER_NAME).to(w.dtype)
                        hit = (key, torch.nn.Parameter(w.detach() + delta, requires_grad=False))
                        self._merged_cache[id(layer)] = hit
                    saved.append((base, w))
                    base._parameters["weight"] = hit[1]
            self._branches(False)
            yield self
        finally:
            for base, w in saved:
                base._parameters["weight"] = w
            self._branches(True)

    def _branches(self, on: bool) -> None:
        """LoRA branches on/off without peft's requires_grad bookkeeping (``enable_adapters``
        costs ~0.5 ms per layer, twice per sampler call); peft reads ``_disable_adapters``."""
        for layer in self._layers:
            if hasattr(layer, "_disable_adapters"):
                layer._disable_adapters = not on
            else:  # pragma: no cover - another peft layout: the public (slower) call
                layer.enable_adapters(on)

    def __repr__(self) -> str:
        c = self.config
        return (f"TempLoRAMemory(rank={c.rank}, alpha={c.alpha}, lr={c.lr}, steps_per_write={c.steps_per_write}, "
                f"params={self.num_parameters}, writes={self.writes})")
