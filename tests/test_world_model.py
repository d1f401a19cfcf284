"""The learned world model at toy size: VAE, masked video diffusion, sampler, SlowFastWorldModel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from sfplan.errors import UserError  # noqa: E402
from sfplan.world_model.base import GoalVideoWorldModel, Imagination, MemoryWorldModel, WorldModel, WorldState  # noqa: E402
from sfplan.world_model.learned import SlowFastWorldModel, SlowFastWorldModelConfig, load_world_model  # noqa: E402
from sfplan.world_model.sampler import make_sampler, make_train_scheduler, place_actions, sample_chunk  # noqa: E402
from sfplan.world_model.vae import FrameAutoencoder, VAEConfig  # noqa: E402
from sfplan.world_model.video_diffusion import VideoDiffusionConfig  # noqa: E402

# 16x16 frames -> 8x8x4 latents; diffusion levels at 4x4 and 2x2 (patch 2)
TINY_VAE = dict(image_size=16, block_out_channels=(8, 8), norm_num_groups=4)
TINY_DIFF = dict(action_dim=2, max_frames=8, block_out_channels=(16, 32), head_dim=8, cross_attention_dim=16,
                 norm_num_groups=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _random_tiny_model():
    """A toy-size denoiser off its zero init (seed 0) and its training schedule."""
    torch.manual_seed(0)
    model = VideoDiffusionConfig(**TINY_DIFF).build()
    _randomize(model)
    return model, make_train_scheduler(model.config.prediction_type)


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Move zero-initialised output layers off zero, so actions and inputs matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def tiny_model(randomize: bool = True, **cfg) -> SlowFastWorldModel:
    cfg = {"context_frames": 2, "chunk_size": 2, **cfg}
    wm = SlowFastWorldModel.build(VAEConfig(**TINY_VAE), VideoDiffusionConfig(**TINY_DIFF),
                                  config=SlowFastWorldModelConfig(**cfg), device="cpu", seed=0)
    if randomize:
        _randomize(wm.diffusion)
    return wm


def tiny_frames(B=2, T=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (B, T, 16, 16, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- VAE
def test_vae_shapes_loss_and_scale_roundtrip(tmp_path):
    torch.manual_seed(0)
    vae = FrameAutoencoder(VAEConfig(**TINY_VAE))
    frames = tiny_frames()
    z = vae.encode(frames)
    assert z.shape == (2, 3, 4, 8, 8) and vae.latent_shape == (4, 8, 8)
    assert vae.decode(z).shape == (2, 3, 16, 16, 3) and vae.decode(z).dtype == torch.uint8
    loss, logs = vae.loss(frames.reshape(-1, 16, 16, 3))
    assert loss.requires_grad and {"loss", "recon", "kl", "psnr"} <= set(logs)
    unit = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # sfplan.data clip format
    torch.testing.assert_close(vae.encode(unit), z, rtol=1e-5, atol=1e-5)
    stats = vae.fit_latent_scale(frames)
    zs = vae.encode(frames)
    assert abs(float(zs.mean())) < 1e-4 and abs(float(zs.std()) - 1) < 1e-3
    vae.save_pretrained(tmp_path / "vae")
    vae2 = FrameAutoencoder.from_pretrained(tmp_path / "vae")
    assert vae2.scaling_factor == pytest.approx(stats["scaling_factor"])
    assert torch.equal(vae2.encode(frames), zs)


def test_object_balance_gives_each_region_of_a_frame_the_same_weight():
    from sfplan.world_model.vae import object_balance

    m = torch.zeros(3, 1, 16, 16)
    m[0, 0, 1:3, 1:3] = 1  # a 4-pixel object ...
    m[0, 0, 5:15, 5:15] = 1  # ... beside a 100-pixel one
    m[1, 0, 2:12, 3] = 1  # one thin region (a snake across rows needs several pooling rounds)
    m[1, 0, 11, 3:14] = 1
    w = object_balance(m)
    assert w[0, 0, 1:3, 1:3].sum() == pytest.approx(float(w[0, 0, 5:15, 5:15].sum()))  # equal shares
    assert float(w[0, 0, 1, 1]) == pytest.approx(25 * float(w[0, 0, 6, 6]))
    for b in range(2):  # mean 1 over each frame's masked pixels; 0 off the mask
        assert float(w[b][m[b] > 0].mean()) == pytest.approx(1.0)
        assert float(w[b][m[b] == 0].abs().max()) == 0.0
    assert torch.allclose(w[1][m[1] > 0], torch.ones(1))  # one region: the pixel weighting
    assert float(w[2].abs().max()) == 0.0  # an empty mask
    # in the VAE loss: a lost small object costs more under "object" than under "pixel"
    torch.manual_seed(0)
    x = torch.full((4, 16, 16, 3), 100, dtype=torch.uint8)
    for i in range(4):
        x[i, 9:15, 2 + 3 * i: 5 + 3 * i] = 250  # a large object that moves ...
        x[i, 1, 1 + 2 * i] = 250  # ... and a 1-pixel one
    losses = {}
    for bal in ("pixel", "object"):
        torch.manual_seed(0)
        vae = FrameAutoencoder(VAEConfig(**{**TINY_VAE, "fg_weight": 10.0, "fg_balance": bal}))
        torch.manual_seed(1)
        losses[bal] = float(vae.loss(x)[1]["recon"])
    assert losses["object"] != pytest.approx(losses["pixel"])
    with pytest.raises(UserError, match="fg_balance"):
        VAEConfig(fg_balance="area")


# ----------------------------------------------------------------------------- diffusion
def test_masked_loss_takes_no_term_from_context():
    model, sched = _random_tiny_model()
    latents, actions = torch.randn(4, 5, 4, 8, 8), torch.randn(4, 5, 2)
    num_context = torch.tensor([1, 2, 1, 2])  # f_p per element, incl. f_p = 1

    def loss_with(forward):
        model.forward = forward
        try:
            gen = torch.Generator().manual_seed(3)  # same t, noise and dropout draws for every call
            return model.masked_loss(latents, actions, sched, num_context, generator=gen)[0]
        finally:
            del model.forward  # back to the class method

    clean = loss_with(type(model).forward.__get__(model))
    seen = {}

    def perturbed(sample, timestep, context_mask, tokens):
        out = type(model).forward(model, sample, timestep, context_mask, tokens)
        seen["mask"] = context_mask.clone()
        noise = torch.randn_like(out) * 1e3
        return torch.where(context_mask[:, :, None, None, None], out + noise, out)  # only context positions

    assert torch.equal(loss_with(perturbed), clean)
    assert seen["mask"].sum(1).tolist() == num_context.tolist()  # context = first f_p frames

    def perturb_targets(sample, timestep, context_mask, tokens):
        out = type(model).forward(model, sample, timestep, context_mask, tokens)
        return torch.where(context_mask[:, :, None, None, None], out, out + 1.0)

    assert not torch.equal(loss_with(perturb_targets), clean)  # the check above can fail


def test_masked_loss_keeps_context_clean_and_action_free_loss():
    torch.manual_seed(0)
    model = VideoDiffusionConfig(**TINY_DIFF).build()
    sched = make_train_scheduler(model.config.prediction_type)
    latents = torch.randn(3, 4, 4, 8, 8)
    seen = {}
    orig = model.forward

    def spy(sample, timestep, context_mask, tokens):
        seen["sample"], seen["tokens"] = sample, tokens
        return orig(sample, timestep, context_mask, tokens)

    model.forward = spy
    model.masked_loss(latents, torch.randn(3, 4, 2), sched, num_context=2, p_uncond=0.0)
    assert torch.equal(seen["sample"][:, :2], latents[:, :2]) and not torch.equal(seen["sample"][:, 2:], latents[:, 2:])
    loss, logs = model.action_free_loss(latents, sched, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen["tokens"], model.null_condition(3, 4)) and loss.ndim == 0 and "loss" in logs
    with pytest.raises(ValueError):
        model.masked_loss(latents, torch.randn(3, 4, 2), sched, num_context=4)  # no target left
    # Gymnasium order: the clip's last action is unused, so (B, T-1, A) clips give the same loss
    acts = torch.randn(3, 4, 2)
    l_full = model.masked_loss(latents, acts, sched, generator=torch.Generator().manual_seed(5))[0]
    l_short = model.masked_loss(latents, acts[:, :-1], sched, generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(l_full, l_short)


def test_motion_weighted_loss_weighs_only_moving_positions():
    from sfplan.world_model.video_diffusion import motion_mask

    # a blob moving one position per frame over a static background
    latents = torch.zeros(1, 4, 4, 8, 8)
    for t in range(4):
        latents[0, t, :, 2, 1 + t] = 1.0
    m = motion_mask(latents, 0.01)
    assert m.shape == (1, 4, 1, 8, 8)
    assert m[0, 2, 0, 2, 3] == 1 and m[0, 2, 0, 7, 7] == 0  # the blob moves; the far corner does not
    assert torch.equal(motion_mask(torch.zeros(1, 4, 4, 8, 8), 0.01), torch.zeros(1, 4, 1, 8, 8))

    model, sched = _random_tiny_model()
    acts = torch.randn(1, 4, 2)

    def loss(lat, w):
        return model.masked_loss(lat, acts, sched, num_context=1, generator=torch.Generator().manual_seed(3),
                                 motion_weight=w)[0]

    static = torch.randn(1, 1, 4, 8, 8).expand(1, 4, 4, 8, 8).contiguous()
    assert torch.allclose(loss(static, 10.0), loss(static, 0.0))  # nothing moves: plain MSE
    moving = latents + 0.1 * static
    assert not torch.allclose(loss(moving, 10.0), loss(moving, 0.0))


def test_pixel_motion_mask_marks_the_object_not_the_background():
    from sfplan.world_model.video_diffusion import pixel_motion_mask

    # a 4x4 white square moving 4 px a frame across a grey 32x32 frame
    frames = np.full((4, 32, 32, 3), 100, np.uint8)
    for t in range(4):
        frames[t, 8:12, 4 + 4 * t: 8 + 4 * t] = 255
    m = pixel_motion_mask(torch.from_numpy(frames), 4)  # latent positions of 4x4 pixels
    assert m.shape == (4, 1, 8, 8) and m.dtype == torch.bool
    assert m[1, 0, 2, 2] and m[0, 0, 2, 1]  # where it is at t = 1; where it leaves from at t = 0
    assert not m[1, 0, 7, 7]  # a far corner never moves
    assert 0.1 < m.float().mean() < 0.4  # the square and one position around it, not the frame
    assert not pixel_motion_mask(torch.from_numpy(np.repeat(frames[:1], 4, 0)), 4).any()  # still frames


def test_a_given_motion_mask_replaces_the_latents_own():
    model, sched = _random_tiny_model()
    lat, acts = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 4, 2)

    def loss(moving):
        return model.masked_loss(lat, acts, sched, num_context=1, generator=torch.Generator().manual_seed(3),
                                 motion_weight=10.0, moving=moving)

    corner = torch.zeros(1, 4, 1, 8, 8, dtype=torch.bool)
    corner[..., :2, :2] = True
    l_corner, logs = loss(corner)
    assert logs["motion_fraction"] == pytest.approx(4 / 64)
    assert not torch.allclose(l_corner, loss(None)[0])  # random latents "move" everywhere on their own
    assert torch.allclose(loss(torch.zeros_like(corner))[0], model.masked_loss(
        lat, acts, sched, num_context=1, generator=torch.Generator().manual_seed(3))[0])  # no motion: plain MSE


def test_context_skip_starts_from_the_last_context_frame_held_still(tmp_path):
    """A fresh context_skip model (zero-init output) imagines, in one call from pure noise,
    every target frame as the clip's last context frame; without the skip, a blank (0). The
    schedule survives save / load; clips without context are left alone."""
    from sfplan.world_model.one_step import one_step_x0

    sched = make_train_scheduler("v_prediction")
    ctx, acts, noise = torch.randn(2, 2, 4, 8, 8), torch.randn(2, 3, 2), torch.randn(2, 3, 4, 8, 8)

    def fresh(skip):
        m = VideoDiffusionConfig(**TINY_DIFF, context_skip=skip).build()
        m.set_noise_schedule(sched.alphas_cumprod)
        return m

    with torch.no_grad():
        x0 = one_step_x0(fresh(True), ctx, acts, noise, sched)
        torch.testing.assert_close(x0, ctx[:, -1:].expand_as(x0), atol=2e-3, rtol=0)
        assert one_step_x0(fresh(False), ctx, acts, noise, sched).abs().max() < 2e-3
        m = fresh(True)
        _randomize(m)
        m.save_pretrained(tmp_path / "m")
        back = type(m).from_pretrained(tmp_path / "m")
        torch.testing.assert_close(back.skip_sigmas, m.skip_sigmas)
        assert back.skip_sigmas[0] < 0.1 and back.skip_sigmas[-1] > 0.99
        x = torch.randn(2, 4, 4, 8, 8)
        none = torch.zeros(2, 4, dtype=torch.bool)  # no context: the skip has no frame to hold
        tok = m.null_condition(2, 4)
        plain = VideoDiffusionConfig(**TINY_DIFF).build()
        plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "skip_sigmas"})
        torch.testing.assert_close(m(x, torch.full((2,), 500), none, tok), plain(x, torch.full((2,), 500), none, tok))
        # Temp-LoRA's action-free loss keeps a skip model's first frame clean, to predict the rest from
        lat, n1 = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 4, 4, 8, 8)
        n2 = n1.clone()
        n2[:, 0] += 1.0
        for model, first_frame_matters in ((m, False), (plain, True)):
            la, lb = (model.action_free_loss(lat, sched, torch.full((2,), 700), n)[0] for n in (n1, n2))
            assert (not torch.allclose(la, lb)) == first_frame_matters
    with pytest.raises(ValueError, match="context_skip works with prediction_type='v_prediction'"):
        VideoDiffusionConfig(**TINY_DIFF, context_skip=True, prediction_type="epsilon").build()


def test_tiny_overfit_lowers_masked_loss():
    torch.manual_seed(0)
    model = VideoDiffusionConfig(**{**TINY_DIFF, "p_uncond": 0.0}).build()
    sched = make_train_scheduler(model.config.prediction_type)
    g = torch.Generator().manual_seed(0)
    latents, actions = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 4, 2, generator=g)

    def eval_loss():
        with torch.no_grad():
            return float(np.mean([
                model.masked_loss(latents, actions, sched, generator=torch.Generator().manual_seed(s))[0].item()
                for s in range(8)
            ]))

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(60):
        loss, _ = model.masked_loss(latents, actions, sched, generator=torch.Generator().manual_seed(100 + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)  # measured: 1.07 -> 0.60


# ----------------------------------------------------------------------------- sampler
# mean, |x|.mean, x[0,0,0,0,0]; recomputed when action_history and token_norm changed the action encoder
GOLDEN_DPM = [-0.11029454320669174, 0.6604180335998535, -0.539632260799408]


@pytest.mark.parametrize("kind", ["ddim", "dpmsolver++"])
def test_sampler_seeded_and_shapes(kind):
    torch.manual_seed(0)
    model = VideoDiffusionConfig(**TINY_DIFF).build()
    _randomize(model)
    sampler = make_sampler(kind, make_train_scheduler(model.config.prediction_type))
    g1 = torch.Generator().manual_seed(1)
    ctx, acts = torch.randn(3, 2, 4, 8, 8, generator=g1), torch.randn(3, 3, 2, generator=g1)
    a = sample_chunk(model, ctx, acts, 2, sampler, generator=torch.Generator().manual_seed(7))
    b = sample_chunk(model, ctx, acts, 2, sampler, generator=torch.Generator().manual_seed(7))
    assert a.shape == (3, 3, 4, 8, 8) and torch.equal(a, b)
    noise = torch.randn(3, 3, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sample_chunk(model, ctx, acts, 2, sampler, noise=noise), a)  # noise= is the same draw
    assert not torch.equal(sample_chunk(model, ctx, acts, 2, sampler, generator=torch.Generator().manual_seed(8)), a)
    g = sample_chunk(model, ctx, acts, 2, sampler, generator=torch.Generator().manual_seed(7), guidance_scale=2.0)
    assert g.shape == a.shape and not torch.equal(g, a)
    if kind == "dpmsolver++":  # golden values, computed once on the CPU (fp32)
        got = [a.mean().item(), a.abs().mean().item(), a[0, 0, 0, 0, 0].item()]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(GOLDEN_DPM), rtol=1e-4, atol=1e-5)


def test_place_actions_gymnasium_order():
    acts = torch.arange(1, 4).float().view(1, 3, 1)  # a_0, a_1, a_2 after "now"
    full = place_actions(acts, num_context=2)  # clip: ctx0, ctx1(now), tgt0, tgt1, tgt2
    assert full.view(-1).tolist() == [0, 1, 2, 3, 0]


# ----------------------------------------------------------------------------- world model
def test_learned_world_model_protocol_and_shapes():
    wm = tiny_model(return_frames="chunk_ends")
    assert all(isinstance(wm, p) for p in (WorldModel, MemoryWorldModel, GoalVideoWorldModel)) and wm.max_frames == 8
    assert wm.context_frames == 2 and wm.chunk_size == 2
    goal = wm.encode(tiny_frames(1, 1)[:, None, 0])  # a single goal frame (1, 1, H, W, 3)
    assert goal.features.shape == (1, 4, 8, 8)
    state = wm.encode(tiny_frames(2, 3))
    assert isinstance(state, WorldState) and state.context.shape == (2, 2, 4, 8, 8)  # last context_frames kept
    im = wm.imagine(state, torch.randn(2, 3, 5, 2))
    assert isinstance(im, Imagination) and im.features.shape == (2, 3, 3, 4, 8, 8) and im.steps.tolist() == [2, 4, 5]
    assert torch.isfinite(im.features).all() and wm.imagined_frames == 2 * 3 * 5
    assert wm.decode(im.features).shape == (2, 3, 3, 16, 16, 3)
    wm.config.return_frames = "all"
    assert wm.imagine(state, torch.randn(2, 3, 5, 2)).features.shape == (2, 3, 5, 4, 8, 8)
    wm.config.return_frames = "last"
    assert wm.imagine(state, torch.randn(2, 3, 5, 2)).steps.tolist() == [5]


def test_common_random_numbers():
    wm = tiny_model(return_frames="all")
    state = wm.encode(tiny_frames(2, 2))
    a = torch.randn(2, 1, 4, 2)
    cand = torch.cat([a, a, torch.randn(2, 1, 4, 2), a], dim=1)  # candidates 0, 1, 3 identical
    f = wm.imagine(state, cand).features  # (B, N, K, C, h, w)
    assert torch.equal(f[:, 0], f[:, 1]) and torch.equal(f[:, 0], f[:, 3])
    assert not torch.equal(f[:, 0], f[:, 2])  # actions matter
    assert not torch.equal(f[0, 0], f[1, 0])  # envs get their own noise
    assert torch.equal(wm.imagine(state, cand).features, f)  # deterministic across calls (noise_seed)


def test_save_load_roundtrip_bit_exact(tmp_path):
    wm = tiny_model()
    wm.diffusion.set_action_normalizer([-2.0, -1.0], [2.0, 1.0])
    wm.vae.fit_latent_scale(tiny_frames(4, 2))
    sha = wm.save_pretrained(tmp_path / "wm")
    wm2 = SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu")
    assert wm2.checkpoint_sha256 == sha and len(sha) == 64
    for m1, m2 in ((wm.vae, wm2.vae), (wm.diffusion, wm2.diffusion)):
        s1, s2 = m1.state_dict(), m2.state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    frames, acts = tiny_frames(2, 2), torch.randn(2, 3, 4, 2)
    f1 = wm.imagine(wm.encode(frames), acts).features
    f2 = wm2.imagine(wm2.encode(frames), acts).features
    assert torch.equal(f1, f2)
    assert not list((tmp_path / "wm").rglob("*.bin")) and not list((tmp_path / "wm").rglob("*.pt"))  # no pickles
    wm3 = load_world_model(str(tmp_path / "wm"), device="cpu", num_steps=3)
    assert wm3.config.num_steps == 3 and wm3.checkpoint_sha256 == sha


def test_runtime_settings_are_not_saved_with_the_model(tmp_path):
    """return_frames, autocast and cast_weights say how a process imagines: a checkpoint
    neither records them nor (an older one that does) imposes them on the loader."""
    import json

    from sfplan.world_model.learned import RUNTIME_SETTINGS

    tiny_model(return_frames="last", autocast="bfloat16", cast_weights=True).save_pretrained(tmp_path / "wm")
    meta = json.loads((tmp_path / "wm" / "world_model.json").read_text())
    assert not set(RUNTIME_SETTINGS) & set(meta) and meta["chunk_size"] == 2
    meta.update(return_frames="last", autocast="bfloat16", cast_weights=True)  # as older checkpoints saved them
    (tmp_path / "wm" / "world_model.json").write_text(json.dumps(meta))
    defaults = SlowFastWorldModelConfig()
    wm = SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu")
    assert all(getattr(wm.config, k) == getattr(defaults, k) for k in RUNTIME_SETTINGS)
    assert SlowFastWorldModel.from_pretrained(tmp_path / "wm", device="cpu", autocast="auto").config.autocast == "auto"


def test_missing_or_corrupt_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="no world model at .*sfplan train.*oracle"):
        SlowFastWorldModel.from_pretrained(tmp_path / "nowhere")
    wm = tiny_model(randomize=False)
    wm.save_pretrained(tmp_path / "wm")
    weights = tmp_path / "wm" / "diffusion" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="unreadable.*sfplan train"):
        SlowFastWorldModel.from_pretrained(tmp_path / "wm")
    with pytest.raises(UserError, match="unknown world model setting"):
        wm.save_pretrained(tmp_path / "wm2")
        SlowFastWorldModel.from_pretrained(tmp_path / "wm2", bogus=1)


def test_unet3d_backbone_and_autocast_run():
    """The paper's backbone (diffusers UNet3DConditionModel) behind the same interface."""
    torch.manual_seed(0)
    model = VideoDiffusionConfig(action_dim=2, max_frames=8, backbone="unet3d", patch_size=1,
                                 block_out_channels=(8, 16), attention_levels=(False, True), head_dim=8,
                                 cross_attention_dim=16, norm_num_groups=4).build()
    assert "to_out.0" in model.lora_target_modules
    sched = make_train_scheduler(model.config.prediction_type)
    loss, _ = model.masked_loss(torch.randn(2, 4, 4, 8, 8), torch.randn(2, 4, 2), sched)
    loss.backward()
    out = sample_chunk(model, torch.randn(2, 2, 4, 8, 8), torch.randn(2, 2, 2), 2, make_sampler("ddim", sched))
    assert out.shape == (2, 2, 4, 8, 8) and torch.isfinite(out).all()
    wm = tiny_model(autocast="bfloat16")
    f = wm.imagine(wm.encode(tiny_frames(1, 2)), torch.randn(1, 2, 2, 2)).features
    assert f.dtype == torch.float32 and torch.isfinite(f).all()


def test_action_history_tokens_are_causal_and_see_the_past():
    """With action_history a target token depends on every earlier action of the chunk
    (running sums), never on later ones, and context tokens on none."""
    torch.manual_seed(0)
    m = VideoDiffusionConfig(action_dim=2, block_out_channels=(16, 32), cross_attention_dim=32, head_dim=16,
                             norm_num_groups=4).build()
    _randomize(m)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[:, :2] = True
    a = torch.randn(1, 7, 2)
    b = a.clone()
    b[0, 3] += 1.0  # the action leading into frame 4
    ta, tb = m.encode_actions(a, mask), m.encode_actions(b, mask)
    changed = (ta - tb).abs().amax(-1)[0] > 1e-6  # (8,)
    assert changed.tolist() == [False] * 4 + [True] * 4


def test_warm_start_widens_the_action_encoder_without_changing_outputs(tmp_path):
    """init_from an action_history=False model: the widened input layer gets zero new
    columns, so the warm-started model predicts exactly what the old one did."""
    from sfplan.training.stages import warm_start

    kw = dict(action_dim=2, block_out_channels=(16, 32), cross_attention_dim=32, head_dim=16, norm_num_groups=4)
    torch.manual_seed(0)
    old = VideoDiffusionConfig(action_history=False, **kw).build()
    _randomize(old)
    old.save_pretrained(str(tmp_path / "diffusion"), safe_serialization=True)
    new = VideoDiffusionConfig(action_history=True, **kw).build()
    report = warm_start(new, tmp_path, verbose=False)
    assert report["fresh"] == ["action_mlp.0.weight"]
    x = torch.randn(2, 4, 4, 8, 8)
    mask = torch.tensor([[True, False, False, False]] * 2)
    acts = torch.randn(2, 3, 2)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        y_old = old(x, t, mask, old.condition(acts, mask))
        y_new = new(x, t, mask, new.condition(acts, mask))
    torch.testing.assert_close(y_new, y_old)
    with pytest.raises(UserError, match="init_from"):
        warm_start(new, tmp_path / "nowhere", verbose=False)


def test_autocast_auto_follows_the_hardware(monkeypatch):
    from sfplan.world_model import learned

    cpu = torch.device("cpu")
    monkeypatch.setattr(learned, "cpu_has_native_bf16", lambda: True)
    assert learned.resolve_autocast("auto", cpu) == "bfloat16"
    monkeypatch.setattr(learned, "cpu_has_native_bf16", lambda: False)
    assert learned.resolve_autocast("auto", cpu) is None  # emulated bf16 is slower than fp32
    assert learned.resolve_autocast("none", cpu) is None and learned.resolve_autocast("bfloat16", cpu) == "bfloat16"
    # imagine under "auto" computes exactly what the resolved setting computes
    state_frames, acts = tiny_frames(B=1, T=2), torch.rand(1, 2, 2, 2) * 2 - 1

    def imagined(setting):
        wm = tiny_model(autocast=setting)
        return wm.imagine(wm.encode(state_frames), acts[..., : wm.diffusion.config.action_dim]).features

    assert torch.equal(imagined("auto"), imagined(None))  # no native bf16 (patched): fp32
    monkeypatch.setattr(learned, "cpu_has_native_bf16", lambda: True)
    bf16 = imagined("bfloat16")
    assert torch.equal(imagined("auto"), bf16) and not torch.equal(bf16, imagined(None))
    with pytest.raises(ValueError, match="autocast"):
        tiny_model(autocast="fp8")


def test_cast_weights_imagines_with_a_low_precision_copy_kept_in_sync():
    """cast_weights: imagine runs a bf16 copy of the denoiser (fp32 master untouched), close to
    plain autocast, re-made after the master's weights change; off with memory or autocast off."""
    frames, acts = tiny_frames(B=1, T=2), torch.rand(1, 3, 2, 2) * 2 - 1
    base = tiny_model(autocast="bfloat16")
    ref = base.imagine(base.encode(frames), acts).features
    wm = tiny_model(autocast="bfloat16", cast_weights=True)
    f = wm.imagine(wm.encode(frames), acts).features
    copy_ = wm._imagine_denoiser()
    assert copy_ is not wm.diffusion and next(copy_.parameters()).dtype == torch.bfloat16
    assert next(wm.diffusion.parameters()).dtype == torch.float32
    assert f.dtype == torch.float32 and not torch.equal(f, ref)  # bf16 norms: not bit-equal ...
    assert (f - ref).abs().max() < 0.1 * ref.abs().max()  # ... but close
    assert wm._imagine_denoiser() is copy_  # reused while the weights are unchanged
    with torch.no_grad():
        next(wm.diffusion.parameters()).mul_(0.0)  # an in-place change of the master
    assert wm._imagine_denoiser() is not copy_
    assert not torch.equal(wm.imagine(wm.encode(frames), acts).features, f)
    assert tiny_model(autocast=None, cast_weights=True)._imagine_denoiser().__class__ is type(wm.diffusion)
    off = tiny_model(autocast=None, cast_weights=True)
    assert off._imagine_denoiser() is off.diffusion  # fp32: nothing to cast to
