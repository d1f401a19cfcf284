"""benchmarks/world_model_quality.py's state error per imagined step: the probe's reading of
step k's imagined latent is compared with the true descriptor of step k (not k - 1 or k + 1)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _quality_module():
    spec = importlib.util.spec_from_file_location("world_model_quality", ROOT / "benchmarks" / "world_model_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_state_errors_align_imagined_steps_with_their_true_descriptors(tmp_path):
    from sfplan.data import EpisodeDataset, collect
    from sfplan.world_model.learned import load_world_model

    q = _quality_module()
    data = tmp_path / "reacher"
    collect(data, "sfplan/Reacher-v0", {"image_size": 64, "goal": "near"}, episodes=3, steps=12, workers=1,
            progress=False)
    ds = EpisodeDataset(data)
    eps = [ds[i] for i in range(len(ds))]
    wm = load_world_model(None, device="cpu", task="sfplan/Reacher-v0")  # shipped, with its fingertip probe
    P, K = 2, 8
    truth_lat = wm.vae.encode(np.stack([e.pixels[P:P + K] for e in eps]))  # (B, K, C, h, w)
    # an "imagination" that is the truth: its error is the probe's own, step for step
    e = q.state_errors(wm, ds, eps, P, truth_lat)
    assert len(e["imagined"]) == len(e["true_latents"]) == len(e["copy_last"]) == K
    assert np.allclose(e["imagined"], e["true_latents"], atol=1e-5)
    assert max(e["true_latents"]) < 0.02  # the shipped probe reads real frames to ~6 mm
    assert e["copy_last"][-1] > e["true_latents"][-1] + 0.02  # the arm moved over 8 steps
    # an imagination that holds the last context frame still: the copy-last baseline, up to the probe's error
    held = wm.vae.encode(np.stack([e.pixels[P - 1] for e in eps]))[:, None].expand_as(truth_lat)
    e2 = q.state_errors(wm, ds, eps, P, held)
    assert np.allclose(e2["imagined"], e2["copy_last"], atol=0.02)
    # shifted by one step (imagined step k read against truth k + 1): the alignment test above would fail
    shifted = wm.vae.encode(np.stack([e.pixels[P + 1:P + 1 + K] for e in eps]))
    assert not np.allclose(q.state_errors(wm, ds, eps, P, shifted)["imagined"], e["true_latents"], atol=0.005)
    wm.probe = None
    assert q.state_errors(wm, ds, eps, P, truth_lat) is None  # no probe: nothing to read
