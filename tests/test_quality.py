"""Held-out quality: a model that loses the moving object must not pass for a good one."""
from types import SimpleNamespace

import numpy as np
import torch

from sfplan.eval.quality import held_out_quality
from sfplan.world_model.base import Imagination, WorldState

H = 16


def _episode(seed: int, steps: int = 12):
    """A 2x2 white square moving right 1 px a step along the top of a black frame; descriptor =
    its (x, y) in px."""
    x0, y = 1 + seed, 1
    px = np.zeros((steps + 1, H, H, 3), np.uint8)
    desc = np.zeros((steps + 1, 2), np.float32)
    for t in range(steps + 1):
        px[t, y:y + 2, x0 + t:x0 + t + 2] = 255
        desc[t] = (x0 + t + 0.5, y + 0.5)
    return SimpleNamespace(pixels=px, actions=np.ones((steps, 1), np.float32), length=steps), desc


class _BlankModel:
    """Imagines a dim, uniform frame (the object vanished, the background a little off, as a
    blurry model does); its probe reads the centre of the brightness."""

    context_frames, chunk_size = 2, 4

    def encode(self, frames):
        f = torch.as_tensor(np.asarray(frames)).float()
        return WorldState(features=f[:, -1], context=f)

    def imagine(self, state, actions):
        B, N, K, _ = actions.shape
        return Imagination(features=torch.full((B, N, K, H, H, 3), 16.0), steps=torch.arange(1, K + 1))

    def decode(self, feats):
        return feats.to(torch.uint8)

    @staticmethod
    def probe(frames):  # (..., H, W, 3) -> (..., 2): the mean position of the bright pixels
        w = frames[..., 0].float()
        ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(H).float(), indexing="ij")
        m = w.sum((-2, -1)).clamp_min(1e-6)
        return torch.stack([(w * xs).sum((-2, -1)) / m, (w * ys).sum((-2, -1)) / m], -1)


def test_a_model_that_loses_the_object_reads_far_from_the_state_copy_last_reads_near():
    eps, desc = zip(*(_episode(s) for s in range(4)))
    q = held_out_quality(_BlankModel(), list(eps), descriptors=list(desc))
    # object PSNR cannot tell: copy-last pays for the object twice (where it was and where it is),
    # the blank frame once, diluted by the background pixels it is a little off on
    assert q["object_psnr"]["model"] > q["object_psnr"]["copy_last"] + 10
    # the probe's reading can: copy-last is off by the 1-4 px the square moved, the blank frame by more
    assert 1.0 <= q["state_error"]["copy_last"] <= 4.0
    assert q["state_error"]["model"] > 2 * q["state_error"]["copy_last"]
    # and the probe reads the true frames themselves to within a pixel (its own error)
    assert q["state_error"]["truth"] < 0.1 * q["state_error"]["copy_last"]


def test_no_state_error_without_descriptors():
    eps, _ = zip(*(_episode(s) for s in range(3)))
    assert "state_error" not in held_out_quality(_BlankModel(), list(eps))
