"""The GPU check script runs end to end (at toy size on the CPU) and prints its table; the
CUDA-marked tests run only where CUDA is."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gpu_check_dry_run_on_the_cpu(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--skip-tests", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["batch"] for r in res["imagine"]] == [2, 4, 2, 4]
    assert all(r["frames_per_s"] > 0 and r["gflop_per_call"] > 0 for r in res["imagine"])
    assert res["decision"]["ms"] > 0 and res["training"]["steps_per_s"] > 0
    table = capsys.readouterr().out
    assert "| decision: CEM 4 x 1 it, H 6 |" in table and "frames/s" in table  # Reacher's learned row: horizon 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_without_cuda_says_so(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    assert gpu_check.main(["--skip-tests"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_imagination_on_cuda_matches_the_cpu():
    from sfplan.world_model.learned import SlowFastWorldModel

    path = ROOT / "sfplan" / "models" / "Reacher-v0"
    frames = np.random.default_rng(0).integers(0, 256, (1, 2, 64, 64, 3), dtype=np.uint8)
    acts = torch.rand(1, 3, 8, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outs = []
    for device in ("cpu", "cuda"):
        wm = SlowFastWorldModel.from_pretrained(path, device=device)
        state = wm.encode(frames)
        feats = wm.imagine(state, acts.to(wm.device), generator=torch.Generator().manual_seed(0)).features
        assert feats.device.type == device
        outs.append(feats.float().cpu())
    # same weights, actions and (CPU-drawn) noise: the same latents up to kernel rounding (TF32 convolutions)
    assert outs[0].shape == outs[1].shape and torch.isfinite(outs[1]).all()
    assert (outs[0] - outs[1]).abs().mean() < 0.05 * outs[0].std()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cem_plans_on_cuda_with_tensors_on_the_device():
    from sfplan.config import load_config
    from sfplan.eval.main import _build

    cfg = load_config("eval", ["device=cuda", "record=false", "env.search.learned.num_samples=8"])
    env, planner, wm = _build(cfg)
    obs, info = env.reset(seed=100000)
    state = wm.encode(np.stack([obs["pixels"]] * wm.context_frames)[None], sim_state=info["state"][None])
    goal = wm.encode(obs["desired_goal"][None, None]).features
    res = planner.plan(state, goal)
    assert res.actions.device.type == "cuda" and res.actions.shape[-1] == 2
    assert torch.all(res.actions.abs() <= 1.0 + 1e-6)
    env.close()
