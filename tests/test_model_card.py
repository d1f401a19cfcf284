"""A training run's card and summary name no machine paths: they get shared and committed."""
from __future__ import annotations

import json
from types import SimpleNamespace

from omegaconf import OmegaConf


def test_model_card_and_summary_hold_no_absolute_path(tmp_path, monkeypatch):
    from sfplan.training.model_card import write_model_card

    monkeypatch.chdir(tmp_path)
    data = "/scratch/other-machine/data/Reacher-v0"
    out = tmp_path / "outputs" / "train" / "Reacher-v0-dynamics"
    out.mkdir(parents=True)
    cfg = OmegaConf.create({"stage": "dynamics", "data": {"path": data, "val_fraction": 0.1},
                            "vae": str(tmp_path / "outputs" / "vae" / "model"), "out_dir": str(out),
                            "ema_decay": 0.999, "batch_size": 4, "lr": 1e-4, "lr_schedule": "constant",
                            "warmup_steps": 0, "grad_clip": 1.0, "weight_decay": 0.0, "seed": 0})
    result = {"stage": "dynamics", "step": 2, "steps_this_run": 2, "nan_skipped_total": 0, "train_time_s": 1.0,
              "resumed_from": str(out / "checkpoints" / "step-00000001"), "checkpoint_sha256": "ab"}
    described = {"dataset": data, "env_id": "Reacher-v0", "image_size": 64, "action_dim": 2, "episodes": 4,
                 "train_episodes": 3, "val_episodes": 1, "steps": 40, "frames": 44, "vae": cfg.vae,
                 "latent_cache": str(tmp_path / "cache" / "latents-x.npz"), "latent_shape": [4, 8, 8],
                 "clip_frames": 4, "train_clips": 10}
    acc = SimpleNamespace(num_processes=1, mixed_precision="no", device="cpu")
    card = write_model_card(out, cfg, result, described, "cpu", f"sfplan train data.path={data} vae={cfg.vae}",
                            acc).read_text()
    summary = (out / "training_summary.json").read_text()
    for text in (card, summary):
        assert "/scratch/" not in text and str(tmp_path) not in text
    assert "outputs/vae/model" in card and "<...>/data/Reacher-v0" in card
    s = json.loads(summary)
    assert s["resumed_from"] == "outputs/train/Reacher-v0-dynamics/checkpoints/step-00000001"
    assert s["data"]["dataset"] == "<...>/data/Reacher-v0"
