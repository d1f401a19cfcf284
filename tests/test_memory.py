"""Temp-LoRA episodic memory and the slow-fast loop at toy size (CPU): reset, write, snapshot,
disable, bounds, the world-model hooks, the MPC runner hook, `sfplan generate
memory=temp_lora` and `sfplan train loop=slowfast` with exact resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from sfplan.memory import TempLoRAConfig, TempLoRAMemory, base_state_dict  # noqa: E402
from sfplan.memory.base import Memory  # noqa: E402
from sfplan.world_model.base import MemoryWorldModel  # noqa: E402
from sfplan.world_model.learned import SlowFastWorldModel, SlowFastWorldModelConfig  # noqa: E402
from sfplan.world_model.vae import VAEConfig  # noqa: E402
from sfplan.world_model.video_diffusion import VideoDiffusionConfig  # noqa: E402

# 16x16 frames -> 8x8x4 latents (the toy model of test_world_model.py)
TINY_VAE = dict(image_size=16, block_out_channels=(8, 8), norm_num_groups=4)
TINY_DIFF = dict(action_dim=2, max_frames=8, block_out_channels=(16, 32), head_dim=8, cross_attention_dim=16,
                 norm_num_groups=4)
FAST = dict(rank=4, alpha=4.0, lr=1e-2, steps_per_write=2)  # a memory that visibly learns in a few steps


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def tiny_model(image_size: int = 16, **cfg) -> SlowFastWorldModel:
    """A tiny untrained world model whose zero-initialised output layers are moved off zero
    (so the LoRA'd attention changes the outputs)."""
    cfg = {"context_frames": 2, "chunk_size": 2, **cfg}
    vae = VAEConfig(**{**TINY_VAE, "image_size": image_size})
    wm = SlowFastWorldModel.build(vae, VideoDiffusionConfig(**TINY_DIFF), config=SlowFastWorldModelConfig(**cfg),
                                  device="cpu", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in wm.diffusion.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return wm


def frames(T=3, seed=0, size=16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, size, size, 3), dtype=np.uint8)


def latents(wm, T=4, seed=1) -> torch.Tensor:
    return wm.vae.encode(frames(T, seed))  # (T, C, h, w)


def imagine(wm, B=1, N=3, H=4, seed=0):
    state = wm.encode(np.stack([frames(2, seed + b) for b in range(B)]))
    acts = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (B, N, H, 2)).astype(np.float32))
    return wm.imagine(state, acts).features  # (B, N, K, C, h, w)


def lora_B(mem: TempLoRAMemory) -> list[torch.Tensor]:
    return [p for n, p in zip(mem.parameter_names, mem._params) if ".lora_B." in n]


# ----------------------------------------------------------------------------- the memory itself
def test_reset_restores_base_outputs_exactly():
    wm = tiny_model()
    base = imagine(wm)
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    assert wm.memory is mem and torch.equal(imagine(wm), base)  # fresh LoRA: B = 0
    assert isinstance(mem, Memory) and isinstance(wm, MemoryWorldModel) and mem.write_mode == "generated"
    mem.write(latents(wm))
    assert not torch.equal(imagine(wm), base)
    assert not all(torch.equal(p, p0) for p, p0 in zip(mem._params, mem._init))  # A and B moved
    wm.reset_memory()
    assert torch.equal(imagine(wm), base)
    assert all(torch.equal(p, p0) for p, p0 in zip(mem._params, mem._init))  # back to the fresh init
    assert mem.buffer is None and mem.writes == 0 and not mem.optimizer.state
    with pytest.raises(ValueError, match="already attached"):
        wm.attach_memory(TempLoRAConfig(**FAST))


def test_write_changes_only_lora_weights():
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    base = {k: v.clone() for k, v in base_state_dict(wm.diffusion).items()}
    assert all(float(b.detach().abs().max()) == 0 for b in lora_B(mem))
    assert all(p.requires_grad for p in mem._params)
    assert not any(p.requires_grad for n, p in wm.diffusion.named_parameters() if n not in mem.parameter_names)
    logs = mem.write(latents(wm), actions=np.zeros((4, 2)))
    assert logs["steps"] == FAST["steps_per_write"] and logs["time_s"] > 0 and np.isfinite(logs["loss"])
    after = base_state_dict(wm.diffusion)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    assert all(float(b.detach().abs().max()) > 0 for b in lora_B(mem))
    assert all(p.grad is None for p in wm.diffusion.parameters())
    with pytest.raises(ValueError, match="latents"):
        mem.write(torch.zeros(3, 16, 16, 3, dtype=torch.uint8))


def test_write_reduces_the_action_free_loss_on_the_written_clip():
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(rank=8, alpha=8.0, lr=1e-2, steps_per_write=1, timesteps_per_step=4,
                                          context_frames=0))  # each write: exactly the clip
    z = latents(wm, T=4)[None].expand(8, -1, -1, -1, -1)  # (8, T, C, h, w)
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(z.shape, generator=g)

    def held_out_loss():  # fixed noise levels and noise: the same measurement before and after
        with torch.no_grad():
            return float(wm.action_free_loss(z, timesteps=t, noise=noise)[0])

    before = held_out_loss()
    for _ in range(8):
        mem.write(latents(wm, T=4))
    assert held_out_loss() < 0.85 * before  # measured: 0.72 x


def test_masked_write_lowers_the_masked_loss_and_needs_actions():
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(rank=8, alpha=8.0, lr=1e-2, steps_per_write=1, timesteps_per_step=4,
                                          loss="masked"))
    base = {k: v.clone() for k, v in base_state_dict(wm.diffusion).items()}
    z, acts = latents(wm, T=4), torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="actions"):
        mem.write(z)
    with pytest.raises(ValueError, match="actions"):
        mem.write(z, actions=acts[:2])
    sched = wm.train_scheduler

    def held_out_loss():  # the same noise and levels before and after; context = frame 0
        with torch.no_grad():
            return float(np.mean([wm.diffusion.masked_loss(z[None], acts[None], sched, num_context=1, p_uncond=0.0,
                                                           generator=torch.Generator().manual_seed(s))[0]
                                  for s in range(8)]))

    before = held_out_loss()
    for _ in range(8):
        mem.write(z, actions=acts)
    assert held_out_loss() < 0.85 * before
    after = base_state_dict(wm.diffusion)
    assert all(torch.equal(after[k], base[k]) for k in base)  # only the LoRA learnt
    with pytest.raises(ValueError, match="loss"):
        TempLoRAConfig(loss="l1").validate()


@pytest.mark.parametrize("loss", ["action_free", "masked"])
def test_reversed_clips(loss, monkeypatch):
    """reverse=True adds one pass over each clip played backwards (masked: under the null condition)."""
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(rank=4, steps_per_write=3, timesteps_per_step=4, loss=loss,
                                          reverse=True, max_write_frames=8))
    calls = []
    for name in ("action_free_loss", "masked_loss"):
        orig = getattr(wm, name)

        def spy(x, *a, _orig=orig, **kw):
            calls.append((x.detach().clone(), kw.get("p_uncond")))
            return _orig(x, *a, **kw)
        monkeypatch.setattr(wm, name, spy)
    z, acts = latents(wm, T=5), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    mem.write(z, actions=acts, num_context=1)
    assert len(calls) == 2 * 3  # one window: 3 steps forward, 3 backward
    for i, (x, p_uncond) in enumerate(calls):
        assert x.shape[0] == 4
        assert torch.equal(x[0], z if i < 3 else z.flip(0))
        if loss == "masked":
            assert p_uncond == (0.0 if i < 3 else 1.0)


def test_negated_reverse_actions_condition_the_backward_clip(monkeypatch):
    """reverse_actions=negate trains the backward clip under the masked loss with the
    actions negated in reverse order (backward frame k -> k+1 is undone by -a[T-2-k]), not
    the null condition; it needs the masked loss."""
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(rank=4, steps_per_write=2, timesteps_per_step=2, loss="masked",
                                          reverse=True, reverse_actions="negate", max_write_frames=8))
    calls = []
    orig = wm.masked_loss

    def spy(x, actions, *a, **kw):
        calls.append((x.detach().clone(), actions.detach().clone(), kw.get("p_uncond")))
        return orig(x, actions, *a, **kw)
    monkeypatch.setattr(wm, "masked_loss", spy)
    z, acts = latents(wm, T=5), torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    mem.write(z, actions=acts, num_context=1)
    assert len(calls) == 4
    for i, (x, a, p_uncond) in enumerate(calls):
        assert p_uncond == 0.0  # both directions conditioned on actions
        assert torch.equal(x[0], z if i < 2 else z.flip(0))
        assert torch.equal(a[0], acts if i < 2 else -acts.flip(0))
    assert torch.equal(calls[2][1][0][0], -acts[3])  # the first backward step undoes the last forward one
    calls.clear()
    mem.config.forward = False  # backward only: one pass per window
    mem.write(z, actions=acts, num_context=1)
    assert len(calls) == 2 and all(torch.equal(x[0], z.flip(0)) for x, _, _ in calls)
    with pytest.raises(ValueError, match="forward=false"):
        TempLoRAConfig(forward=False).validate()
    with pytest.raises(ValueError, match="loss=masked"):
        TempLoRAConfig(reverse=True, reverse_actions="negate").validate()
    with pytest.raises(ValueError, match="reverse_actions"):
        TempLoRAConfig(loss="masked", reverse_actions="flip").validate()


def test_snapshot_load_round_trips_bit_exact():
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    mem.write(latents(wm, seed=1))
    snap = mem.snapshot()
    out_at_snap = imagine(wm)
    mem.write(latents(wm, seed=2))
    cont = imagine(wm)  # the memory after one more write from the snapshot
    assert not torch.equal(cont, out_at_snap)
    mem.load(snap)
    assert torch.equal(imagine(wm), out_at_snap)
    mem.write(latents(wm, seed=2))  # Adam state, buffer and noise were restored: the same write again
    assert torch.equal(imagine(wm), cont)
    mem.load(snap)  # the snapshot was not aliased by the optimizer or the LoRA
    assert torch.equal(imagine(wm), out_at_snap)
    assert all(v.device.type == "cpu" for v in snap["lora"].values())


def test_disabled_gives_base_outputs_while_a_written_memory_is_attached():
    wm = tiny_model()
    base = imagine(wm)
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    mem.write(latents(wm))
    with_mem = imagine(wm)
    with mem.disabled():
        assert torch.equal(imagine(wm), base)
        mem.write(latents(wm, seed=3))  # a write inside still trains the adapter
    assert mem.enabled and not torch.equal(imagine(wm), with_mem)


def test_imagine_batched_over_candidates_with_the_adapter():
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    mem.write(latents(wm))
    state = wm.encode(np.stack([frames(2, 0), frames(2, 1)]))
    acts = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 4, 2)).astype(np.float32))
    out = wm.imagine(state, acts).features
    assert out.shape == (2, 3, 4, 4, 8, 8) and torch.isfinite(out).all()  # every step (return_frames="all")
    for j in range(3):  # the noise is per env, not per candidate: candidate j alone gives the same frames
        torch.testing.assert_close(out[:, j], wm.imagine(state, acts[:, j: j + 1]).features[:, 0], rtol=1e-4,
                                   atol=1e-4)
    with mem.disabled():
        assert not torch.allclose(wm.imagine(state, acts).features, out, atol=1e-3)  # the adapter was active


def test_merged_imagine_matches_the_adapter_and_leaves_the_base_weights():
    wm = tiny_model()
    base = imagine(wm)
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    mem.write(latents(wm))
    weights = {n: (p, p.detach().clone()) for n, p in wm.diffusion.named_parameters()}
    merged = imagine(wm)  # merge_for_imagine: W + s BA swapped in per sampler call
    assert all(p is dict(wm.diffusion.named_parameters())[n] and torch.equal(p, c) for n, (p, c) in weights.items())
    mem.config.merge_for_imagine = False
    unmerged = imagine(wm)  # peft's LoRA branch
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, base, atol=1e-3)


def test_memory_stays_bounded_and_long_writes_split_into_windows():
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(rank=4, steps_per_write=1, context_frames=2, max_write_frames=5))
    n_params = mem.num_parameters
    mem.write(latents(wm, T=3))
    size = mem.state_bytes()
    for i in range(20):
        logs = mem.write(latents(wm, T=3, seed=i))
    assert mem.buffer.shape[0] == 2 and mem.num_parameters == n_params and mem.state_bytes() == size
    assert logs["frames"] == 5  # 2 clean context + 3 new
    logs = mem.write(latents(wm, T=7))  # 7 new frames, 3 per window of 5: 3 windows
    assert logs["steps"] == 3 and logs["frames"] == 3  # last window: 2 context + 1 new
    # the context an earlier write left: num_context frames stand in for the buffer's tail
    z = latents(wm, T=4, seed=9)
    mem.write(z, num_context=1)
    assert torch.equal(mem.buffer, z[-2:])


def test_buffer_keeps_every_frame_while_fewer_than_its_capacity():
    # context_frames=4: 3 frames written (or primed) are all kept, then the last 4 of 3 + 3.
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(**FAST, context_frames=4))
    a, b = latents(wm, T=3, seed=1), latents(wm, T=3, seed=2)
    mem.write(a)
    assert torch.equal(mem.buffer, a)
    mem.write(b)
    assert torch.equal(mem.buffer, torch.cat([a, b])[-4:])
    mem.reset()
    mem.prime(a)
    assert torch.equal(mem.buffer, a)


def test_remember_encodes_and_writes_and_is_a_noop_without_memory():
    wm = tiny_model()
    assert wm.remember(frames(3)) is None
    wm.reset_memory()  # no-op
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    f = frames(4, seed=5)
    logs = wm.remember(f, num_context=1)
    assert logs["new_frames"] == 3 and logs["frames"] == 4  # first write: its own context frame in front
    torch.testing.assert_close(mem.buffer, wm.vae.encode(f)[-2:])


def test_save_pretrained_with_memory_saves_the_base_weights(tmp_path):
    wm = tiny_model()
    mem = wm.attach_memory(TempLoRAConfig(**FAST))
    mem.write(latents(wm))
    with mem.disabled():
        base = imagine(wm)
    wm.save_pretrained(tmp_path / "m")
    wm2 = SlowFastWorldModel.from_pretrained(tmp_path / "m", device="cpu")
    assert torch.equal(imagine(wm2), base)


# ----------------------------------------------------------------------------- generate
def test_imagine_video_with_memory_matches_imagine_video_when_nothing_is_learned():
    from sfplan.world_model.imagine import imagine_video, imagine_video_with_memory

    wm = tiny_model(return_frames="all")
    ctx, acts = frames(1), np.random.default_rng(0).uniform(-1, 1, (5, 2)).astype(np.float32)
    ref = imagine_video(wm, ctx, acts)
    mem = wm.attach_memory(TempLoRAConfig(rank=4, steps_per_write=0))  # writes fill the buffer only
    out, info = imagine_video_with_memory(wm, ctx, acts)
    assert np.array_equal(out, ref) and info["writes"] == 2  # chunks of 2: 3 chunks, the last not written
    mem.config.steps_per_write = 2
    mem.config.lr = 1e-2
    wm.reset_memory()
    out2, info2 = imagine_video_with_memory(wm, ctx, acts)
    assert np.array_equal(out2[:2], ref[:2]) and not np.array_equal(out2, ref)  # chunk 1 before any write
    assert info2["write_s_total"] > 0 and len(info2["write_loss_first"]) == 2



def test_generate_memory_temp_lora_end_to_end(data, tmp_path, capsys):
    from sfplan.cli import main

    wm = tiny_model(image_size=32)
    wm.save_pretrained(tmp_path / "model")
    out = tmp_path / "gen"
    assert main(["generate", f"model={tmp_path / 'model'}", f"data={data}", "episode=1", "horizon=5",
                 "num_threads=1", f"out_dir={out}", "scale=1", "memory=temp_lora", "memory.rank=4"]) == 0
    assert "memory: Temp-LoRA rank 4, 2 writes" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["memory"]["kind"] == "temp_lora" and m["memory"]["writes"] == 2 and m["memory"]["config"]["rank"] == 4
    assert m["memory"]["write_s_per_chunk"] > 0 and len(m["per_step"]["model"]["psnr"]) == 5
    assert main(["generate", f"model={tmp_path / 'model'}", f"data={data}", "episode=1", "horizon=5",
                 "num_threads=1", f"out_dir={tmp_path / 'gen_real'}", "memory=temp_lora", "memory.write=real"]) == 0
    assert json.loads((tmp_path / "gen_real" / "metrics.json").read_text())["memory"]["write"] == "real"
    assert json.loads((tmp_path / "gen_real" / "metrics.json").read_text())["memory"]["writes"] == 2
    for write in ("real", "generated"):  # the masked loss gets each chunk's frame before it and its actions
        assert main(["generate", f"model={tmp_path / 'model'}", f"data={data}", "episode=1", "horizon=5",
                     "num_threads=1", f"out_dir={tmp_path / ('gen_m' + write)}", "memory=temp_lora",
                     f"memory.write={write}", "memory.loss=masked"]) == 0
        mm = json.loads((tmp_path / ("gen_m" + write) / "metrics.json").read_text())["memory"]
        assert mm["writes"] == 2 and mm["config"]["loss"] == "masked"
    # default: no memory
    assert main(["generate", f"model={tmp_path / 'model'}", f"data={data}", "episode=1", "horizon=3",
                 "num_threads=1", f"out_dir={tmp_path / 'gen0'}"]) == 0
    assert json.loads((tmp_path / "gen0" / "metrics.json").read_text())["memory"] is None


# ----------------------------------------------------------------------------- the MPC runner
class _ZeroPlanner:
    """A test double for the planner role: always plans zeros (the runner is under test)."""

    needs_world_model = True
    horizon = 4

    def plan(self, state, goal, warm_start=None):
        from sfplan.planners.base import PlanResult

        return PlanResult(actions=torch.zeros(1, self.horizon, 2), cost=torch.zeros(1))


@pytest.mark.parametrize("write,loss", [("real", "action_free"), ("generated", "action_free"), ("real", "masked")])
def test_runner_resets_and_writes_the_executed_frames(write, loss):
    from sfplan.envs import make_env
    from sfplan.eval.runner import run_episode

    wm = tiny_model(image_size=16)
    mem = wm.attach_memory(TempLoRAConfig(rank=4, steps_per_write=1, write=write, loss=loss))
    calls = []
    orig = wm.remember

    def spy(f, num_context=0, actions=None):
        assert actions is not None and actions.shape == (f.shape[0] - 1, 2)  # the executed actions
        calls.append((f.shape, num_context))
        return orig(f, num_context, actions)

    wm.remember = spy
    env = make_env("sfplan/Reacher-v0", image_size=16, goal="near")
    try:
        for seed in (0, 1):
            calls.clear()
            res = run_episode(env, _ZeroPlanner(), wm, seed=seed, budget=6, execute=3, record=False)
            # two chunks of 3 executed frames, each with the frame before, whatever `write` says (it
            # picks what an imagined rollout writes; an MPC episode has only the executed frames)
            assert calls == [((4, 16, 16, 3), 1)] * 2 and mem.writes == 2  # reset at the episode start
            assert len(res.memory_write_times) == 2 and res.summary()["memory_write_mean_s"] > 0
            assert res.steps == 6
    finally:
        env.close()


# ----------------------------------------------------------------------------- the slow-fast loop
COMMON = ["progress=false", "num_threads=1", "log_every=1", "val_every=0", "sample_every=0", "tensorboard=false",
          "warmup_steps=0", "lr=1e-3"]
SLOWFAST = ["stage=dynamics", "loop=slowfast", "model.world_model.chunk_size=2",
            "model.diffusion.block_out_channels=[16,32]", "model.diffusion.head_dim=8",
            "model.diffusion.cross_attention_dim=16", "model.diffusion.norm_num_groups=4",
            "model.diffusion.max_frames=8", "batch_size=3", "loop.episodes_per_step=2", "loop.max_chunks=4",
            "loop.temp_lora.rank=4", "loop.temp_lora.lr=1e-2"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """An untrained 32x32 VAE saved as a stage=vae model (the loop only needs its latents)."""
    from sfplan.world_model.vae import FrameAutoencoder

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("vae") / "model"
    FrameAutoencoder(VAEConfig(image_size=32, block_out_channels=(8, 8, 8), norm_num_groups=4)).save_pretrained(d)
    return d


def _cfg(data, vae, out, *extra):
    from sfplan.config import load_config

    return load_config("train", [*SLOWFAST, *COMMON, f"data.path={data}", f"vae={vae}", f"out_dir={out}", *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_slowfast_stage_inner_and_outer_loop(data, vae_dir, tmp_path):
    """The outer loss depends on the snapshots; its gradients reach the slow weights only."""
    from sfplan.training.slowfast import make_stage
    from sfplan.training.trainer import step_generator

    stage = make_stage(_cfg(data, vae_dir, tmp_path / "s"), tmp_path / "s")
    stage.setup(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the zero-initialised output layers, so the LoRA gets gradients and matters
        for p in stage.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    batch = stage.batch(step_generator(0, 0, 0))
    assert batch["pairs"].shape == (3, 2) and len(batch["episodes"]) == 2
    loss, logs = stage.loss(stage.model, batch, step_generator(0, 0, 0, stream=2))
    assert logs["inner_writes"] >= 1 and np.isfinite(logs["inner_loss"]) and 1 <= logs["outer_groups"] <= 3
    wm, _ = stage._twin(stage.model)
    twin = {id(p) for p in wm.diffusion.parameters()}
    assert all(id(p) in twin for p in stage.model.parameters())  # the twin runs on the model's own tensors
    assert len(twin) == len(list(stage.model.parameters())) + len(wm.memory._params)
    loss.backward()
    assert all(p.grad is not None for p in stage.model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in wm.memory._params)  # Θ_i frozen in the outer loss
    # the same batch with every snapshot replaced by the fresh LoRA (no memory): another loss
    zero = {n: p0.clone() for n, p0 in zip(wm.memory.parameter_names, wm.memory._init)}
    orig = wm.memory.lora_state
    wm.memory.lora_state = lambda device=None: {k: v.clone() for k, v in zero.items()}
    try:
        loss0, _ = stage.loss(stage.model, batch, step_generator(0, 0, 0, stream=2))
    finally:
        wm.memory.lora_state = orig
    i_max = int(batch["pairs"][:, 1].max())
    assert i_max > 0  # some pair has a non-empty memory...
    assert float(loss0.detach()) != float(loss.detach())  # ...and its snapshot changes the outer loss


def test_slowfast_loop_trains_and_resumes_bit_exact(data, vae_dir, tmp_path):
    from sfplan.training import run_train
    from sfplan.training.checkpoint import list_checkpoints
    from sfplan.world_model.learned import load_world_model

    args = ["steps=4", "checkpoint_every=2"]
    full = run_train(_cfg(data, vae_dir, tmp_path / "full", *args))
    assert full["step"] == 4 and full["last_train"]["inner_writes"] >= 1
    r = run_train(_cfg(data, vae_dir, tmp_path / "cut", *args, "stop_at_step=3"))
    assert r["stopped"] == "stop_at_step" and [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [2]
    resumed = run_train(_cfg(data, vae_dir, tmp_path / "cut", *args))
    assert resumed["resumed_from"].endswith("step-00000002") and resumed["steps_this_run"] == 2
    for f in ("model.safetensors", "ema.safetensors"):
        a = _weights(tmp_path / "full" / "checkpoints" / "step-00000004" / f)
        b = _weights(tmp_path / "cut" / "checkpoints" / "step-00000004" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{f} differs after resume"
        assert not any("lora" in k or "base_layer" in k for k in a)  # the slow weights only
    fa = tmp_path / "full" / "model" / "diffusion" / "diffusion_pytorch_model.safetensors"
    fb = tmp_path / "cut" / "model" / "diffusion" / "diffusion_pytorch_model.safetensors"
    assert fa.read_bytes() == fb.read_bytes()
    wm = load_world_model(str(tmp_path / "full" / "model"), device="cpu")  # a plain world model
    assert wm.memory is None and wm.chunk_size == 2


def test_eval_cli_with_memory(tmp_path, capsys):
    from sfplan.cli import main

    wm = tiny_model(image_size=32)
    wm.trained_env = {"id": "sfplan/Reacher-v0", "kwargs": {"image_size": 32}}
    wm.save_pretrained(tmp_path / "m")
    args = ["eval", "world_model=learned", f"world_model.path={tmp_path / 'm'}", "env.kwargs.image_size=32",
            "episodes=1", "budget=4", "execute=2", "planner.horizon=2", "planner.num_samples=4", "planner.iterations=1",
            "record=false", "progress=false", "device=cpu", f"out_dir={tmp_path / 'e'}", "memory=temp_lora",
            "memory.rank=4", "cost=multiscale"]  # the tiny model has no state probe
    assert main(args) == 0  # the memory config's own defaults
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["config"]["memory"]["write"] == "generated" and report["summary"]["episodes"] == 1
    e = report["episodes"][0]  # the memory was written after each executed chunk, not just configured
    assert e["decisions"] == 2 and e["memory_write_mean_s"] > 0
    assert main(["eval", "planner=random", "episodes=1", "budget=2", "memory=temp_lora",
                 "progress=false", "record=false"]) == 2
    assert "needs a planner that uses a world model" in capsys.readouterr().err


@pytest.mark.parametrize("loss", ["action_free", "masked"])
def test_primed_writes_of_new_frames_equal_writes_with_their_context(loss):
    """prime(context) + write(new, one action per frame) trains exactly as writing the
    context in front explicitly: what lets callers write chunks without branching on the loss."""
    z = latents(tiny_model(), T=6, seed=3)  # 2 context + 4 new frames
    acts = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))  # one per new frame
    states = []
    for primed in (True, False):
        wm = tiny_model()
        mem = wm.attach_memory(TempLoRAConfig(**FAST, loss=loss))
        if primed:
            mem.prime(z[:2])
            mem.write(z[2:], actions=acts)
        elif loss == "masked":
            mem.write(z[1:], actions=acts, num_context=1)  # the frame before the chunk, the chunk
        else:
            mem.write(z, num_context=2)
        states.append(mem.lora_state())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    if loss == "masked":  # new frames only, nothing seen before: the error names the fix
        mem = tiny_model().attach_memory(TempLoRAConfig(**FAST, loss=loss))
        with pytest.raises(ValueError, match="prime"):
            mem.write(z[2:], actions=acts)
