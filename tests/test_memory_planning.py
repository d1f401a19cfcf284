"""benchmarks/memory_planning.py end to end on a tiny untrained ForkMaze model: every cell runs
on the same seeds, the memory cells write (the leg and each chunk) and the control is told
another episode's leg, and summary.json carries the fields the benchmark promises; and
benchmarks/arm_recall.py, the same question without planning."""
from __future__ import annotations

import json

import pytest

from conftest import run_benchmark, tiny_point_mass_model


@pytest.fixture(scope="module")
def fork_model_dir(tmp_path_factory):
    return tiny_point_mass_model(tmp_path_factory.mktemp("wm") / "fork",
                                 {"id": "sfplan/ForkMaze-v0", "kwargs": {"image_size": 16}})


def _bench(args, cwd):
    return run_benchmark("memory_planning.py", args, cwd)


def test_memory_planning_end_to_end(fork_model_dir, tmp_path):
    out = tmp_path / "bench"
    r = _bench(["--model", str(fork_model_dir), "--episodes", "2", "--cells", "random", "no_memory", "memory",
                "other_memory", "--memory", "rank=4", "steps_per_write=1", "--budget", "6", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["episodes"] == 2 and s["seeds"] == [100000, 100001]
    for key in ("success_memory", "success_no_memory", "success_other_episode_memory", "success_random"):
        assert 0.0 <= s[key] <= 1.0
    assert 0.0 < s["write_time_fraction"] < float("inf")
    for cell in ("memory", "other_memory"):
        rep = json.loads((out / cell / "report.json").read_text())
        assert all(e["memory_writes"] == e["decisions"] + 1 for e in rep["episodes"])  # the leg, then each chunk
    rep = json.loads((out / "no_memory" / "report.json").read_text())
    assert all(e["memory_writes"] == 0 for e in rep["episodes"])
    assert {c: len(v) for c, v in s["per_seed"].items()} == {c: 2 for c in ("random", "no_memory", "memory", "other_memory")}
    assert (out / "episode.gif").is_file() and "| learned + Temp-LoRA |" in (out / "README.md").read_text()


def test_memory_planning_refuses_training_seeds(tmp_path):
    r = _bench(["--model", str(tmp_path), "--seed", "5", "--out", str(tmp_path / "x")], tmp_path)
    assert r.returncode == 2 and "100000" in r.stderr


def test_memory_planning_checks_the_model_before_any_cell(tmp_path):
    """A dir without a world model, or a model of another env, ends in exit 2 naming the fix,
    before the (slow) oracle cell runs: nothing is written."""
    out = tmp_path / "x"
    r = _bench(["--model", str(tmp_path), "--out", str(out)], tmp_path)
    assert r.returncode == 2 and "world_model.json" in r.stderr and "sfplan fit env=fork_maze" in r.stderr
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "world_model.json").write_text('{"env": {"id": "sfplan/Reacher-v0", "kwargs": {}}}')
    r = _bench(["--model", str(tmp_path / "m"), "--out", str(out)], tmp_path)
    assert r.returncode == 2 and "sfplan/Reacher-v0" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_arm_recall_scores_every_arm_with_and_without_the_leg(fork_model_dir, tmp_path):
    """arm_recall: per episode the choice is the arm of least cost and the rank counts the arms
    cheaper than the goal's; memory rows write the leg (time > 0) and carry the other-leg control;
    the memory-free row writes nothing."""
    out = tmp_path / "arms"
    r = run_benchmark("arm_recall.py", ["--model", str(fork_model_dir), "--episodes", "2", "--seed", "90000",
                                        "--setting", "none", "--setting", "w:rank=4,steps_per_write=1",
                                        "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["rows"]) == ["none", "w", "w (other episode's leg)"]
    none, mem = res["rows"]["none"], res["rows"]["w"]
    for row in res["rows"].values():
        for ep in row["per_episode"]:
            c = ep["costs"]
            assert len(c) == 4 and ep["choice"] == c.index(min(c)) and ep["rank"] == sum(x < c[ep["arm"]] for x in c)
    assert none["write_s"] == 0.0 and mem["write_s"] > 0.0
    assert 0.0 <= res["back_colour_truth"] <= 1.0 and all(0.0 <= r["back_colour"] <= 1.0 for r in res["rows"].values())
    assert [e["arm"] for e in none["per_episode"]] == [e["arm"] for e in mem["per_episode"]]
    assert mem["per_episode"][0]["costs"] != none["per_episode"][0]["costs"]  # the write changed the imagination
    assert (out / "first_episode.png").is_file() and "| w |" in (out / "README.md").read_text()


def test_arm_recall_refuses_a_bad_model_or_setting_before_loading(fork_model_dir, tmp_path):
    """A dir without a world model, or a Temp-LoRA setting that does not exist, ends in exit 2
    naming the fix, with no traceback and nothing written."""
    out = tmp_path / "x"
    r = run_benchmark("arm_recall.py", ["--model", str(tmp_path), "--out", str(out)], tmp_path)
    assert r.returncode == 2 and "world_model.json" in r.stderr and "Traceback" not in r.stderr
    r = run_benchmark("arm_recall.py", ["--model", str(fork_model_dir), "--setting", "w:rnak=4", "--out", str(out)],
                      tmp_path)
    assert r.returncode == 2 and "rnak" in r.stderr and "TempLoRAConfig" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
