"""scripts/ship_model.py: a dynamics-only re-ship keeps the shipped VAE, IDM, probe and card sections;
--probe-run alone adds (or replaces) the state probe of the shipped model, --distill-run its one-step
student, which a dynamics re-ship drops."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ship_module(models: Path):
    spec = importlib.util.spec_from_file_location("ship_model", ROOT / "scripts" / "ship_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.MODELS = models
    return mod


SHIPPED_CARD = """# sfplan/T-v0: shipped world model

## Held-out quality (`benchmarks/world_model_quality.py`)

old quality

## Lineage (what the dynamics weights went through)

| run | steps |
| dyn1 | 100 |

## Stage 2: dynamics (masked latent video diffusion)

old dynamics card

## Data
old dynamics data

## Stage 1: frame VAE

vae card

## Data
vae data

## Inverse dynamics model (planner=video_plan)

idm card
"""


def _run(root: Path, vae: bytes, card: str = "# Model card\nnew dynamics card\n") -> Path:
    model = root / "model"
    (model / "vae").mkdir(parents=True)
    (model / "diffusion").mkdir()
    (model / "world_model.json").write_text("{}")
    (model / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(vae)
    (model / "diffusion" / "diffusion_pytorch_model.safetensors").write_bytes(b"new weights")
    (root / "model_card.md").write_text(card)
    return root


def _shipped(models: Path, vae: bytes) -> Path:
    dst = models / "T-v0"
    for sub in ("vae", "diffusion", "idm", "probe"):
        (dst / sub).mkdir(parents=True)
    (dst / "probe" / "weights").write_bytes(b"probe")
    (dst / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(vae)
    (dst / "diffusion" / "diffusion_pytorch_model.safetensors").write_bytes(b"old weights")
    (dst / "idm" / "weights").write_bytes(b"idm")
    (dst / "README.md").write_text(SHIPPED_CARD)
    return dst


def test_dynamics_only_reship_keeps_vae_idm_and_card_sections(tmp_path):
    models = tmp_path / "models"
    dst = _shipped(models, b"vae v1")
    ship = _ship_module(models)
    ship.main(["--task", "T-v0", "--dynamics-run", str(_run(tmp_path / "run", b"vae v1"))])
    assert (dst / "diffusion" / "diffusion_pytorch_model.safetensors").read_bytes() == b"new weights"
    assert (dst / "idm" / "weights").read_bytes() == b"idm"
    assert (dst / "probe" / "weights").read_bytes() == b"probe"
    card = (dst / "README.md").read_text()
    assert "new dynamics card" in card and "old dynamics card" not in card and "old quality" not in card
    for kept in ("| dyn1 | 100 |", "vae card\n\n## Data\nvae data", "idm card"):
        assert kept in card
    assert card.index("## Lineage") < card.index("## Stage 2") < card.index("## Stage 1") < card.index("idm card")
    assert not list(models.glob(".*"))  # no temporary folders left


def test_new_model_whose_run_holds_an_attached_probe_takes_the_probe_run(tmp_path):
    """A probe trained with attach_to=<dynamics run>/model already sits in that model's probe/:
    shipping it with --probe-run (a new task, so --vae-run) uses the run's probe, not a
    clash; the hidden temporary folder is gone and is never listed as a shipped model."""
    models = tmp_path / "models"
    ship = _ship_module(models)
    run = _run(tmp_path / "dyn", b"vae v1")
    (run / "model" / "probe").mkdir()
    (run / "model" / "probe" / "weights").write_bytes(b"attached")
    probe_run, vae_run = tmp_path / "probe", tmp_path / "vae"
    (probe_run / "model").mkdir(parents=True)
    (probe_run / "model" / "weights").write_bytes(b"probe run")
    (probe_run / "model_card.md").write_text("# card\nprobe card\n")
    vae_run.mkdir()
    (vae_run / "model_card.md").write_text("# card\nvae card\n")
    (models / ".T-v0.tmp" / "probe").mkdir(parents=True)  # left by a ship that stopped midway
    ship.main(["--task", "T-v0", "--dynamics-run", str(run), "--vae-run", str(vae_run),
               "--probe-run", str(probe_run)])
    dst = models / "T-v0"
    assert (dst / "probe" / "weights").read_bytes() == b"probe run"
    assert "probe card" in (dst / "README.md").read_text() and not list(models.glob(".*"))

    import sfplan.models as shipped

    (models / ".U-v0.tmp").mkdir()
    (models / ".U-v0.tmp" / "world_model.json").write_text("{}")
    root = shipped.ROOT
    try:
        shipped.ROOT = models
        assert list(shipped.shipped_models()) == ["sfplan/T-v0"]
    finally:
        shipped.ROOT = root


def test_reship_refuses_another_vae_or_no_shipped_model(tmp_path):
    models = tmp_path / "models"
    ship = _ship_module(models)
    with pytest.raises(SystemExit, match="--vae-run"):
        ship.main(["--task", "T-v0", "--dynamics-run", str(_run(tmp_path / "a", b"vae v1"))])
    dst = _shipped(models, b"vae v1")
    with pytest.raises(SystemExit, match="another VAE"):
        ship.main(["--task", "T-v0", "--dynamics-run", str(_run(tmp_path / "b", b"vae v2"))])
    assert (dst / "diffusion" / "diffusion_pytorch_model.safetensors").read_bytes() == b"old weights"


def test_probe_only_ship_adds_then_replaces_the_probe_and_its_card_section(tmp_path):
    import json

    pytest.importorskip("diffusers")
    from sfplan.training.latent_cache import vae_fingerprint
    from sfplan.world_model.vae import FrameAutoencoder, VAEConfig

    models = tmp_path / "models"
    dst = models / "T-v0"
    vae = FrameAutoencoder(VAEConfig(image_size=16, block_out_channels=(8, 8), norm_num_groups=4))
    vae.save_pretrained(dst / "vae")
    (dst / "world_model.json").write_text("{}")
    (dst / "README.md").write_text(SHIPPED_CARD)

    def probe_run(name: str, fp: str) -> Path:
        run = tmp_path / name
        (run / "model").mkdir(parents=True)
        (run / "model" / "weights").write_bytes(name.encode())
        (run / "model_card.md").write_text(f"# sfplan model card: probe\n\n{name} card\n\n## Data\n{name} data\n")
        (run / "training_summary.json").write_text(json.dumps({"stage": "probe", "data": {"vae_sha256": fp}}))
        return run

    ship = _ship_module(models)
    fp = vae_fingerprint(vae)
    ship.main(["--task", "T-v0", "--probe-run", str(probe_run("p1", fp))])
    assert (dst / "probe" / "weights").read_bytes() == b"p1"
    card = (dst / "README.md").read_text()
    assert "## State probe (cost=probe)" in card and "p1 card" in card and "idm card" in card and "vae data" in card
    ship.main(["--task", "T-v0", "--probe-run", str(probe_run("p2", fp))])
    card = (dst / "README.md").read_text()
    assert (dst / "probe" / "weights").read_bytes() == b"p2"
    assert "p2 card" in card and "p1" not in card and card.count("## State probe") == 1
    assert "idm card" in card and "old dynamics card" in card  # the rest of the card untouched
    with pytest.raises(SystemExit, match="another VAE"):
        ship.main(["--task", "T-v0", "--probe-run", str(probe_run("p3", "0" * 64))])
    assert (dst / "probe" / "weights").read_bytes() == b"p2"
    with pytest.raises(SystemExit, match="--dynamics-run.*--probe-run"):
        ship.main(["--task", "T-v0"])
    assert not [p for p in dst.glob(".*")]  # no temporary folders left


def test_distill_only_ship_adds_the_student_of_the_shipped_weights_and_a_reship_drops_it(tmp_path):
    import json

    from sfplan.training.checkpoint import sha256_file

    models = tmp_path / "models"
    dst = _shipped(models, b"vae v1")
    (dst / "world_model.json").write_text("{}")
    ship = _ship_module(models)

    def distill_run(name: str, teacher_sha: str) -> Path:
        run = tmp_path / name
        (run / "model" / "one_step").mkdir(parents=True)
        (run / "model" / "one_step" / "adapter_model.safetensors").write_bytes(name.encode())
        (run / "model_card.md").write_text(f"# sfplan model card: distill\n\n{name} card\n")
        (run / "training_summary.json").write_text(json.dumps(
            {"stage": "distill", "data": {"teacher_diffusion_sha256": teacher_sha}}))
        return run

    with pytest.raises(SystemExit, match="other diffusion weights"):
        ship.main(["--task", "T-v0", "--distill-run", str(distill_run("d0", "0" * 64))])
    assert not (dst / "one_step").exists()
    teacher = sha256_file(dst / "diffusion" / "diffusion_pytorch_model.safetensors")
    ship.main(["--task", "T-v0", "--distill-run", str(distill_run("d1", teacher))])
    assert (dst / "one_step" / "adapter_model.safetensors").read_bytes() == b"d1"
    card = (dst / "README.md").read_text()
    assert "## One-step student (num_steps=1)" in card and "d1 card" in card and "idm card" in card
    # new diffusion weights: the student of the old ones is not carried over, nor its card section
    ship.main(["--task", "T-v0", "--dynamics-run", str(_run(tmp_path / "run", b"vae v1"))])
    assert not (dst / "one_step").exists() and "d1 card" not in (dst / "README.md").read_text()
    assert (dst / "probe" / "weights").read_bytes() == b"probe"


def test_shipped_card_holds_no_absolute_path(tmp_path, monkeypatch):
    """The quality JSON's dataset and the stage cards' paths reach the committed card portable."""
    import json

    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    ship = _ship_module(models)
    elsewhere = "/scratch/some-machine/data/T-v0-heldout"
    card = f"# Model card\n- dataset: `{elsewhere}`\n- command: `sfplan train vae={tmp_path / 'vae-run' / 'model'}`\n"
    run = _run(tmp_path / "dyn", b"vae v1", card)
    vae_run = tmp_path / "vae-run"
    vae_run.mkdir()
    (vae_run / "model_card.md").write_text("# card\nvae card\n")
    q = tmp_path / "q.json"
    q.write_text(json.dumps({"data": elsewhere, "seeds": [1, 2], "device": "cpu", "threads": 1, "table": "t"}))
    ship.main(["--task", "T-v0", "--dynamics-run", str(run), "--vae-run", str(vae_run), "--quality", str(q)])
    text = (models / "T-v0" / "README.md").read_text()
    assert "/scratch/" not in text and str(tmp_path) not in text
    assert "`<...>/data/T-v0-heldout`" in text and "vae=vae-run/model" in text


def test_portable_paths():
    from sfplan.paths import portable, portable_path, scrub_paths

    cwd = Path.cwd()
    assert portable_path(cwd / "outputs" / "x") == "outputs/x" and portable_path("data/x") == "data/x"
    assert portable_path("/scratch/a/b") == "<...>/a/b" and portable_path("/mnt/b") == "<...>/b"
    assert scrub_paths("sfplan train data.path=/srv/u/d/e lr 1/2 see https://x.org/a") == \
        "sfplan train data.path=<...>/d/e lr 1/2 see https://x.org/a"
    assert portable({"a": ["/srv/x/y", 3], "b": None}) == {"a": ["<...>/x/y", 3], "b": None}


def test_fit_ship_copies_the_model_dir_and_tabulates_the_given_reports(tmp_path):
    """--fit ships a fit's model dir with its card, the closing eval's table replaced by the
    reports given (their success, protocol, search, seeds); a bad report or an unfinished fit
    is refused before anything is written."""
    import json

    models = tmp_path / "models"
    ship = _ship_module(models)
    fit = tmp_path / "fit"
    (fit / "model" / "probe").mkdir(parents=True)
    (fit / "model" / "world_model.json").write_text("{}")
    (fit / "model" / "probe" / "weights").write_bytes(b"probe")
    (fit / "model" / "README.md").write_text("# World model\n\nMade by `sfplan fit`.\n\n## Held-out quality\n\nq\n\n"
                                             "## Planning (CEM, evaluation seeds from 100000)\n\n| learned | 4/15 |\n")
    rep = tmp_path / "eval"
    rep.mkdir()
    summary = {"successes": 21, "episodes": 50, "success_rate_ci95": [0.29, 0.56], "success": "first",
               "plan_time_per_decision_s": 0.61, "success_rate": 0.42}
    (rep / "report.json").write_text(json.dumps({"summary": summary, "meta": {"seeds": [100000, 100049]},
                                                 "config": {"execute": 2, "planner": {"num_samples": 16,
                                                                                      "iterations": 2, "horizon": 6}}}))
    with pytest.raises(SystemExit, match="NAME=DIR"):
        ship.main(["--task", "T-v0", "--fit", str(fit), "--report", str(rep)])
    with pytest.raises(SystemExit, match="no finished fit"):
        ship.main(["--task", "T-v0", "--fit", str(tmp_path / "nope")])
    assert not models.exists() or not any(models.iterdir())
    ship.main(["--task", "T-v0", "--fit", str(fit), "--report", f"learned={rep}"])
    dst = models / "T-v0"
    card = (dst / "README.md").read_text()
    assert (dst / "probe" / "weights").read_bytes() == b"probe" and (dst / "world_model.json").is_file()
    assert "4/15" not in card and "| learned | 21/50 | 29%-56% |" in card and "16 x 2, horizon 6, executing 2" in card
    assert "100000-100049" in card and card.startswith("# World model") and "## Held-out quality" in card
