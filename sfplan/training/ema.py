"""Exponential moving average of a model's weights (the weights that get saved).

A full copy of the module (``ema.model``: eval mode, no gradients) is kept in fp32 and
updated after every optimizer step: ``ema = decay_t * ema + (1 - decay_t) * weights``
with ``decay_t = min(decay, (1 + n) / (10 + n))`` when ``warmup`` is on (n = updates so
far), so the average follows the weights closely early in training (the schedule of
diffusers' ``EMAModel`` with ``use_ema_warmup=False``). Buffers (e.g. the action
normaliser) are copied, not averaged.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """ema.model: the averaged copy; ``update(model)`` after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.model.parameters()]
        new_p = [p.detach() for p in model.parameters()]
        if len(ema_p) != len(new_p):
            raise RuntimeError("EMA and model parameters differ in number")
        torch._foreach_lerp_(ema_p, [p.to(e.dtype) for p, e in zip(new_p, ema_p)], 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1
