import json

import numpy as np
import pytest

from sfplan.eval.report import summarise, wilson_interval, write_report
from sfplan.eval.runner import EpisodeResult


@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634),
                                       (45, 50, 0.7864, 0.9565)])
def test_wilson_interval_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-3) and b == pytest.approx(hi, abs=1e-3)


def _ep(seed, success, steps):
    f = np.zeros((8, 8, 3), np.uint8)
    return EpisodeResult(seed, success, steps, 0.1 * seed, 0.05, [0.2, 0.4], [f, f + 50], f + 100)


def test_write_report(tmp_path):
    res = [_ep(1, True, 10), _ep(2, False, 50), _ep(3, True, 20)]
    s = summarise(res)
    assert s["successes"] == 2 and s["success_rate"] == pytest.approx(2 / 3)
    assert s["steps_to_success_mean"] == 15 and s["plan_time_per_decision_s"] == pytest.approx(0.3)
    write_report(tmp_path, res, {"a": 1}, {"task": "t", "seeds": [1, 2, 3]}, max_gifs=2)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["summary"]["episodes"] == 3 and [e["success"] for e in rep["episodes"]] == [True, False, True]
    assert len(rep["gifs"]) == 2 and all((tmp_path / g).stat().st_size > 0 for g in rep["gifs"])
    assert "git_commit" in rep["meta"] and rep["config"] == {"a": 1}
    assert "66.7%" in (tmp_path / "report.md").read_text()
    assert "ep_000" in (tmp_path / "index.html").read_text()


def test_gif_shows_the_waypoint_being_planned_for(tmp_path):
    import imageio.v3 as iio

    from sfplan.eval.report import episode_gif

    f = np.zeros((8, 8, 3), np.uint8)
    wp = np.stack([np.full((8, 8, 3), 60, np.uint8), np.full((8, 8, 3), 120, np.uint8), f + 200])  # 2 + the goal
    res = EpisodeResult(1, True, 2, 0.0, 0.0, [0.1], [f, f + 10, f + 20], f + 200, waypoints=3, waypoints_passed=1,
                        waypoint_images=wp, frame_subgoals=[0, 0, 1])
    episode_gif(res, tmp_path / "e.gif", scale=1)
    video = iio.imread(tmp_path / "e.gif")  # (T, 8 + 4, 3 * 8 + 2 * 2, 3): real | waypoint | goal, bar below
    assert video.shape[1:3] == (12, 28)
    middle = video[:, :8, 10:18].astype(int).mean(axis=(1, 2, 3))
    assert abs(middle[0] - 60) < 8 and abs(middle[2] - 120) < 8  # the panel follows the subgoal
    plain = EpisodeResult(1, True, 2, 0.0, 0.0, [0.1], [f, f], f + 200)
    episode_gif(plain, tmp_path / "p.gif", scale=1)
    assert iio.imread(tmp_path / "p.gif").shape[1:3] == (12, 18)  # real | goal only


def test_summary_gives_every_protocol_with_steps_to_success():
    from sfplan.eval.runner import protocol_outcomes

    runs = [[False, True, False, False], [False, False, True, True, True], [False] * 5]
    res = []
    for seed, flags in enumerate(runs):
        out = protocol_outcomes(flags, hold_steps=3, ended=True)
        res.append(EpisodeResult(seed, out["hold"]["success"], len(flags) - 1, 0.1, 0.01 * seed, protocol="hold",
                                 hold_steps=3, outcomes=out))
    s = summarise(res)
    assert s["protocol"] == "hold" and s["successes"] == 1 and s["steps_to_success_mean"] == 2
    assert s["protocols"]["first"]["successes"] == 2 and s["protocols"]["first"]["steps_to_success_mean"] == 1.5
    assert s["min_distance_median"] == pytest.approx(0.01)
