import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; "
                            "benchmarks/gpu_check.py runs them with -m cuda)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Toy tensors gain nothing from intra-op threads, and on a shared 2-core machine a
    2-thread OpenMP pool can be 30x slower for small kernels (measured: 2.3 s vs 68 s).
    Used as ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """4 Reacher episodes x 10 steps at 32x32 (near goals), collected once per test session:
    the toy training data of every module that does not define its own ``data``. Tests that
    damage a dataset copy it first."""
    from sfplan.data import collect

    out = tmp_path_factory.mktemp("toy_data") / "reacher"
    collect(out, "sfplan/Reacher-v0", {"image_size": 32, "goal": "near"}, episodes=4, steps=10, workers=1,
            progress=False)
    return out


def tiny_point_mass_model(directory, trained_env: dict | None = None):
    """An untrained 16x16, 2-action world model (chunk 2, 2 context frames) saved to
    ``directory``, its diffusion weights moved off their zero-initialised outputs so that
    memory writes change what it imagines: the memory benchmarks' end-to-end model.
    ``trained_env``: the env it records (``sfplan eval`` refuses a model without one)."""
    import torch

    from sfplan.world_model.learned import SlowFastWorldModel, SlowFastWorldModelConfig
    from sfplan.world_model.vae import VAEConfig
    from sfplan.world_model.video_diffusion import VideoDiffusionConfig

    wm = SlowFastWorldModel.build(
        VAEConfig(image_size=16, block_out_channels=(8, 8), norm_num_groups=4),
        VideoDiffusionConfig(action_dim=2, max_frames=8, block_out_channels=(16, 32), head_dim=8,
                             cross_attention_dim=16, norm_num_groups=4),
        config=SlowFastWorldModelConfig(context_frames=2, chunk_size=2), device="cpu", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in wm.diffusion.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    wm.trained_env = trained_env
    wm.save_pretrained(directory)
    return directory


def run_benchmark(script: str, args: list[str], cwd, timeout: int = 900):
    """``python benchmarks/<script> *args`` in a subprocess on one thread -> CompletedProcess."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)
