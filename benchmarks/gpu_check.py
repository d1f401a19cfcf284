"""The GPU check: one short run on a lent CUDA device, one table of figures.

    python benchmarks/gpu_check.py                  # ~3-5 minutes on an H100
    python benchmarks/gpu_check.py --out gpu.json   # also the figures as JSON

It runs the CUDA-marked tests (`pytest -m cuda`), then with the shipped Reacher model
(`sfplan/models/Reacher-v0`) on the GPU:
- the device's bf16 and fp32 dense matmul rate (8192^3, TFLOP/s), the yardstick;
- imagination throughput: imagined frames/s at batch 64 and 256 (horizon 8, the model's
  sampler steps), fp32 and under bf16 autocast, and the achieved denoiser TFLOP/s as a
  fraction of the measured bf16 matmul rate (FLOPs from ``torch.utils.flop_counter``);
- the default planning decision (the task's learned search row, probe cost) in ms,
  from a real Reacher observation;
- training: a few hundred slow-learning steps (batch 64 clips, Adam) in steps/s.
On a machine without CUDA it says so and exits 2; `--device cpu --quick` runs every step at
toy size on the CPU (what `tests/test_gpu_check.py` runs, so the script cannot rot).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from decision_flops import count_flops  # noqa: E402  (beside this script)

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda")
QUICK = False  # toy sizes (a CPU dry run)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def sync_time(fn, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall seconds of ``fn`` on the device (synchronised)."""
    repeats, warmup = (1, 1) if QUICK else (repeats, warmup)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_tflops(dtype: torch.dtype) -> float:
    n = 256 if QUICK else 8192
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    sec = sync_time(lambda: a @ b, repeats=10)
    return 2 * n**3 / sec / 1e12


def cuda_tests() -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"rc": proc.returncode, "summary": last, "wall_s": time.perf_counter() - t0}


def imagination(wm, state, batch: int, horizon: int, autocast: str | None) -> dict:
    wm.config.autocast = autocast
    A = wm.diffusion.config.action_dim
    acts = torch.rand(1, batch, horizon, A, device=DEVICE) * 2 - 1
    with torch.no_grad():
        sec = sync_time(lambda: wm.imagine(state, acts), repeats=5)
    flops, _ = count_flops(lambda: wm.imagine(state, acts), (wm.vae, wm.diffusion))
    return {"batch": batch, "horizon": horizon, "autocast": autocast or "fp32", "seconds": sec,
            "frames_per_s": batch * horizon / sec, "tflops": flops / sec / 1e12, "gflop_per_call": flops / 1e9}


def decision_ms() -> dict:
    """The default eval's planner on a real Reacher observation, on the GPU."""
    from sfplan.config import load_config
    from sfplan.eval.main import _build

    cfg = load_config("eval", [f"device={DEVICE}", "record=false",
                               *(["env.search.learned.num_samples=4", "env.search.learned.iterations=1"] if QUICK else [])])
    env, planner, wm = _build(cfg)
    obs, info = env.reset(seed=100000)
    history = [obs["pixels"]] * wm.context_frames
    goal = wm.encode(obs["desired_goal"][None, None]).features

    def decide():
        state = wm.encode(np.stack(history)[None], sim_state=info["state"][None])
        planner.plan(state, goal)

    sec = sync_time(decide, repeats=10)
    env.close()
    return {"ms": sec * 1e3, "num_samples": int(cfg.env.num_samples), "iterations": int(cfg.env.iterations),
            "horizon": int(cfg.env.horizon)}


def training(wm, steps: int, batch: int = 64) -> dict:
    c = wm.config
    T = c.context_frames + c.chunk_size
    A = wm.diffusion.config.action_dim
    lat = torch.randn(batch, T, *wm.latent_shape, device=DEVICE)
    acts = torch.rand(batch, T, A, device=DEVICE) * 2 - 1
    wm.diffusion.train()
    opt = torch.optim.AdamW(wm.diffusion.parameters(), lr=1e-4)

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
            loss, _ = wm.masked_loss(lat, acts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(1 if QUICK else 10):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    wm.diffusion.eval()
    return {"steps": steps, "batch": batch, "steps_per_s": steps / (time.perf_counter() - t0),
            "autocast": "bf16" if DEVICE.type == "cuda" else "fp32"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N (cpu: a dry run, with --quick)")
    p.add_argument("--quick", action="store_true", help="toy sizes: check the script runs, measure nothing")
    args = p.parse_args(argv)
    global DEVICE, QUICK
    DEVICE, QUICK = torch.device(args.device), args.quick
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)
        return 2
    from sfplan.world_model.learned import SlowFastWorldModel

    name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"
    res = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}
    if not args.skip_tests:
        res["cuda_tests"] = cuda_tests()
    res["matmul_tflops"] = {"bf16": matmul_tflops(torch.bfloat16), "fp32": matmul_tflops(torch.float32)}
    wm = SlowFastWorldModel.from_pretrained(ROOT / "sfplan" / "models" / "Reacher-v0", device=DEVICE)
    rng = np.random.default_rng(0)
    state = wm.encode(rng.integers(0, 256, (1, wm.context_frames, 64, 64, 3), dtype=np.uint8))
    batches = (2, 4) if QUICK else (64, 256)
    res["imagine"] = [imagination(wm, state, b, 8, ac) for ac in (None, "bfloat16") for b in batches]
    res["decision"] = decision_ms()
    res["training"] = training(wm, 2 if QUICK else args.train_steps, batch=4 if QUICK else 64)
    bf16 = res["matmul_tflops"]["bf16"]
    rows = [("device", res["device"], f"torch {res['torch']}, CUDA {res['cuda']}")]
    if "cuda_tests" in res:
        rows.append(("CUDA tests", res["cuda_tests"]["summary"], f"rc {res['cuda_tests']['rc']}"))
    rows.append(("dense matmul (8192 x 8192)", f"{bf16:.0f} TFLOP/s bf16", f"{res['matmul_tflops']['fp32']:.0f} TFLOP/s fp32"))
    for r in res["imagine"]:
        rows.append((f"imagine batch {r['batch']} x H {r['horizon']}, {r['autocast']}",
                     f"{r['frames_per_s']:.0f} frames/s ({r['seconds'] * 1e3:.1f} ms)",
                     f"{r['tflops']:.1f} TFLOP/s = {r['tflops'] / bf16:.1%} of bf16 matmul"))
    d = res["decision"]
    rows.append((f"decision: CEM {d['num_samples']} x {d['iterations']} it, H {d['horizon']}", f"{d['ms']:.0f} ms",
                 "default Reacher planner, probe cost"))
    t = res["training"]
    rows.append((f"training, batch {t['batch']} clips, {t['autocast']}", f"{t['steps_per_s']:.1f} steps/s",
                 f"{t['steps']} steps"))
    print("| measurement | figure | note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    return 0 if res.get("cuda_tests", {}).get("rc", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
