"""Planners and costs on an analytic world model (a 2-D point-mass integrator).

Features of an imagined frame are the position after each step, shaped like an image:
(B, N, K=H, C=1, h=1, w=D). The optimum of a final-frame cost is known (cost 0 when the
goal is reachable), so convergence is checked against it.
"""
from __future__ import annotations


import pytest
import torch

from sfplan.planners import (
    COSTS,
    PLANNERS,
    CEMPlanner,
    LatentL2Cost,
    MPPIPlanner,
    MultiScaleCost,
    PixelMSECost,
    Planner,
    PlanResult,
    RandomPlanner,
    RandomShootingPlanner,
    shift_plan,
)
from sfplan.planners.common import colored_noise
from sfplan.world_model.base import Imagination, WorldState

D = 2
DT = 0.1
LOW = torch.tensor([-1.0, -0.5])
HIGH = torch.tensor([1.0, 2.0])


class PointMass:
    """x_{t+1} = x_t + DT * a_t. Records every candidate batch passed to imagine."""

    def __init__(self):
        self.device = torch.device("cpu")
        self.calls: list[torch.Tensor] = []

    def encode(self, x: torch.Tensor) -> WorldState:
        return WorldState(features=x.reshape(-1, 1, 1, D).float())  # (B, C=1, h=1, w=D)

    def imagine(self, state: WorldState, actions: torch.Tensor) -> Imagination:
        B, N, H, A = actions.shape
        self.calls.append(actions.clone())
        x0 = state.features[:, None, None]  # (B, 1, 1, 1, 1, D)
        path = DT * torch.cumsum(actions, dim=2)  # (B, N, H, A)
        feats = x0 + path[:, :, :, None, None, :]  # (B, N, K=H, 1, 1, D)
        return Imagination(features=feats, steps=torch.arange(1, H + 1))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return features


def goal_of(point) -> torch.Tensor:
    return torch.as_tensor(point, dtype=torch.float32).reshape(-1, 1, 1, D)  # (B, 1, 1, D)


def make(planner_cls, wm=None, cost=None, **kw):
    wm = wm or PointMass()
    return planner_cls(world_model=wm, cost=cost or PixelMSECost(reduce="last"), action_low=LOW,
                       action_high=HIGH, **kw), wm


def true_cost(x0, actions, goal):
    """Final-position MSE of a plan (B, H, A) from x0 (B, D) to goal (B, D)."""
    return ((x0 + DT * actions.sum(1) - goal) ** 2).mean(-1)


X0 = torch.tensor([[0.0, 0.0]])
GOAL = torch.tensor([[0.6, 1.2]])  # reachable: needs mean actions (0.6, 1.2) over H=10


# ---------------------------------------------------------------- convergence

@pytest.mark.parametrize("cls,kw,tol", [
    (CEMPlanner, dict(num_samples=64, iterations=5, num_elites=8), 1e-3),
    (MPPIPlanner, dict(num_samples=64, iterations=5, temperature=0.05), 5e-3),
])
def test_converges_near_optimum(cls, kw, tol):
    planner, wm = make(cls, horizon=10, seed=1, **kw)
    rs, _ = make(RandomShootingPlanner, horizon=10, num_samples=64, seed=1)
    state, goal = wm.encode(X0), goal_of(GOAL)
    res = planner.plan(state, goal)
    rs_res = rs.plan(state, goal)
    assert isinstance(res, PlanResult)
    assert res.actions.shape == (1, 10, 2) and res.cost.shape == (1,)
    # Reported cost is the plan's real cost under the model.
    assert torch.allclose(res.cost, true_cost(X0, res.actions, GOAL), atol=1e-6)
    # Random shooting with the same budget per iteration stays at 1e-2..1e-1 (20 seeds).
    assert res.cost.item() < tol
    assert res.cost.item() < 0.1 * rs_res.cost.item()
    assert res.info["best_cost"] <= res.info["first_iteration_cost"]
    assert res.info["iterations"] == kw["iterations"]
    assert res.info["imagined_frames"] == 64 * 10 * kw["iterations"]


@pytest.mark.parametrize("name", ["cem", "mppi", "random_shooting"])
def test_bounds_and_one_imagine_per_iteration(name):
    planner, wm = make(PLANNERS[name], horizon=6, num_samples=32, seed=0)
    # A far goal pushes the mean against the bounds; a warm start outside them is clipped.
    warm = torch.full((2, 6, 2), 5.0)
    res = planner.plan(wm.encode(torch.zeros(2, D)), goal_of([[9.0, -9.0], [-9.0, 9.0]]), warm_start=warm)
    assert len(wm.calls) == planner.iterations
    for cand in wm.calls:
        assert cand.shape == (2, 32, 6, 2)
        assert torch.all(cand >= LOW) and torch.all(cand <= HIGH)
    assert torch.all(res.actions >= LOW) and torch.all(res.actions <= HIGH)


def test_batch_with_two_goals_gives_two_plans():
    planner, wm = make(CEMPlanner, horizon=10, num_samples=64, iterations=6, seed=0)
    goals = torch.tensor([[0.5, 1.0], [-0.4, 0.2]])
    res = planner.plan(wm.encode(torch.zeros(2, D)), goal_of(goals))
    assert res.actions.shape == (2, 10, 2) and res.cost.shape == (2,)
    final = DT * res.actions.sum(1)  # (B, D)
    assert torch.allclose(final, goals, atol=0.1)
    assert torch.all(res.cost < 5e-3)


def test_goal_batch_one_broadcasts():
    planner, wm = make(MPPIPlanner, horizon=5, num_samples=16, iterations=2)
    res = planner.plan(wm.encode(torch.zeros(3, D)), goal_of([[0.2, 0.2]]))
    assert res.actions.shape == (3, 5, 2)


# ---------------------------------------------------------------- reproducibility

# video_plan needs the learned world model + an IDM: tests/test_video_plan.py
SEARCH_PLANNERS = [n for n, c in PLANNERS.items() if not getattr(c, "requires_learned_world_model", False)]


@pytest.mark.parametrize("name", SEARCH_PLANNERS)
def test_seeded_reproducibility(name):
    def run(seed):
        p, wm = make(PLANNERS[name], horizon=5, seed=seed)
        state, goal = wm.encode(X0), goal_of(GOAL)
        return p, p.plan(state, goal).actions, p.plan(state, goal).actions

    p, a1, a2 = run(3)
    assert isinstance(p, Planner) and p.horizon == 5
    _, b1, b2 = run(3)
    _, c1, _ = run(4)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same seed -> same plans, call by call
    assert not torch.equal(a1, c1)  # another seed -> another plan
    assert not torch.equal(a1, a2)  # successive calls draw fresh noise
    p.reset()
    assert torch.equal(p.plan(WorldState(features=X0.reshape(1, 1, 1, D)), goal_of(GOAL)).actions, a1)


# ---------------------------------------------------------------- warm start

def test_shift_plan_semantics():
    a = torch.arange(12.0).reshape(1, 4, 3)  # (B, H, A)
    s = shift_plan(a, 1)
    assert torch.equal(s[0, :3], a[0, 1:]) and torch.equal(s[0, 3], a[0, 3])  # repeat last
    s = shift_plan(a, 2, fill="mid", action_low=[-1, -1, 0], action_high=[1, 3, 2])
    assert torch.equal(s[0, :2], a[0, 2:]) and torch.equal(s[0, 2:], torch.tensor([[0.0, 1.0, 1.0]] * 2))
    assert torch.equal(shift_plan(a, 0), a) and shift_plan(a, 0) is not a
    assert torch.equal(shift_plan(a, 9), a[:, -1:].expand(1, 4, 3))
    with pytest.raises(ValueError):
        shift_plan(a, 1, fill="mid")


@pytest.mark.parametrize("name", ["cem", "mppi", "random_shooting"])
def test_warm_start_is_a_candidate_and_never_lost(name):
    # An optimal warm start: a single iteration can only keep or match it.
    opt = torch.tensor([0.6, 1.2]).expand(1, 10, 2).clone()
    planner, wm = make(PLANNERS[name], horizon=10, num_samples=16, iterations=1, seed=0) if name != "random_shooting" \
        else make(PLANNERS[name], horizon=10, num_samples=16, seed=0)
    res = planner.plan(wm.encode(X0), goal_of(GOAL), warm_start=opt)
    assert torch.equal(wm.calls[0][:, 0], opt)  # candidate 0 of the first imagine call
    assert res.cost.item() == pytest.approx(0.0, abs=1e-10)


def test_warm_start_speeds_up_cem():
    planner, wm = make(CEMPlanner, horizon=10, num_samples=32, iterations=1, seed=0)
    cold = planner.plan(wm.encode(X0), goal_of(GOAL))
    good = torch.tensor([0.55, 1.1]).expand(1, 10, 2)
    warm = planner.plan(wm.encode(X0), goal_of(GOAL), warm_start=shift_plan(good, 3))
    assert warm.cost.item() < cold.cost.item()


# ---------------------------------------------------------------- random policy

def test_random_planner_needs_no_world_model():
    assert RandomPlanner.needs_world_model is False
    p = RandomPlanner(world_model=None, cost=None, action_low=LOW.numpy(), action_high=HIGH.numpy(), horizon=7, seed=0)
    res = p.plan(None, None)
    assert res.actions.shape == (1, 7, 2)
    assert torch.all(res.actions >= LOW) and torch.all(res.actions <= HIGH)
    assert res.info["imagined_frames"] == 0
    assert p.plan(None, None, warm_start=torch.zeros(3, 7, 2)).actions.shape == (3, 7, 2)


def test_config_kwargs_and_errors():
    p, _ = make(CEMPlanner, horizon=3, num_samples=8, num_elites=99, iterations=1)
    assert p.horizon == 3 and p.config.num_samples == 8
    res = p.plan(PointMass().encode(X0), goal_of(GOAL))  # num_elites is clamped to N: no error, a full plan
    assert res.actions.shape == (1, 3, 2) and torch.isfinite(res.cost).all()
    with pytest.raises(TypeError, match="unknown"):
        make(CEMPlanner, horizonn=3)
    with pytest.raises(ValueError):
        CEMPlanner(PointMass(), PixelMSECost(), [1.0, 1.0], [0.0, 2.0])
    with pytest.raises(ValueError, match="warm_start"):
        make(CEMPlanner, horizon=3)[0].plan(PointMass().encode(X0), goal_of(GOAL), warm_start=torch.zeros(1, 4, 2))


# ---------------------------------------------------------------- costs

def blob(shift: int, size: int = 64, side: int = 4) -> torch.Tensor:
    img = torch.zeros(1, size, size)  # (C, h, w)
    img[:, 28:28 + side, 10 + shift:10 + shift + side] = 1.0
    return img


@pytest.mark.parametrize("name", list(COSTS))
def test_cost_zero_for_identical_and_shapes(name):
    if name == "probe":  # a learned cost: give it an (untrained) state probe on these 3x8x8 features
        from sfplan.world_model.probe import StateProbe

        cost = COSTS[name](probe=StateProbe(latent_channels=3, latent_size=8, width=8, hidden_dim=16).eval())
    else:
        cost = COSTS[name]()
    g = torch.rand(2, 3, 8, 8)
    feats = g[:, None, None].expand(2, 5, 4, 3, 8, 8).clone()  # (B, N, K, C, h, w)
    feats[:, 1:, -1] += 0.5
    c = cost(Imagination(feats, torch.arange(1, 5)), g)
    assert c.shape == (2, 5)
    assert torch.all(c[:, 0] == 0) and torch.all(c[:, 1:] > 0)


def test_multiscale_distinguishes_far_shifts_where_mse_saturates():
    goal = blob(0)[None]  # (B=1, C, h, w)
    shifts = list(range(0, 31))
    feats = torch.stack([blob(s) for s in shifts])[None, :, None]  # (1, N=31, K=1, 1, 64, 64)
    im = Imagination(feats, torch.tensor([1]))
    mse = PixelMSECost()(im, goal)[0]
    ms = MultiScaleCost()(im, goal)[0]  # defaults: levels=4, sigma=2, weights 4**l
    assert mse[0] == 0 and ms[0] == 0
    assert mse[8] == mse[20]  # both non-overlapping (4 px square): pixel MSE saturated
    assert ms[2] < ms[8] < ms[20] and ms[20] > 1.2 * ms[8]  # multiscale: a usable margin
    assert torch.all(ms.diff() > 0)  # strictly monotone in the displacement, 0..30 px


def test_reduce_modes():
    g = torch.zeros(1, 1, 1, 1)
    d = torch.tensor([1.0, 2.0, 3.0]).sqrt()  # per-frame MSE = 1, 2, 3
    feats = d.reshape(1, 1, 3, 1, 1, 1)
    im = Imagination(feats, torch.arange(1, 4))
    assert PixelMSECost(reduce="last")(im, g).item() == pytest.approx(3.0)
    assert PixelMSECost(reduce="mean")(im, g).item() == pytest.approx(2.0)
    assert LatentL2Cost(squared=False)(im, g).item() == pytest.approx(3.0**0.5)
    with pytest.raises(ValueError):
        PixelMSECost(reduce="max")


def test_terminal_weight_lets_the_endpoint_decide():
    # Two candidates, per-frame MSE over 3 frames: A nears the goal fast but stops short
    # (a look-alike basin); B is slower but ends on the goal. A running cost picks A; a
    # terminal weight of 0.7 picks B: (1 - w) * mean + w * last.
    g = torch.zeros(1, 1, 1, 1)
    per_frame = torch.tensor([[1.0, 0.5, 0.5], [3.0, 2.0, 0.0]])  # (N=2, K=3)
    im = Imagination(per_frame.sqrt().reshape(1, 2, 3, 1, 1, 1), torch.arange(1, 4))
    mean = PixelMSECost(reduce="mean")(im, g)[0]
    mixed = PixelMSECost(reduce="mean", terminal_weight=0.7)(im, g)[0]
    assert mean.argmin() == 0 and mixed.argmin() == 1
    assert mixed.tolist() == pytest.approx([0.3 * 2 / 3 + 0.7 * 0.5, 0.3 * 5 / 3])
    assert torch.equal(PixelMSECost(reduce="mean", terminal_weight=1.0)(im, g), PixelMSECost(reduce="last")(im, g))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="terminal_weight"):
            PixelMSECost(reduce="mean", terminal_weight=bad)


def test_cost_is_vectorised_over_candidates():
    # Each candidate's cost equals what it gets when scored alone.
    cost = MultiScaleCost(levels=3, reduce="mean")
    g = torch.rand(2, 2, 16, 16)
    feats = torch.rand(2, 6, 3, 2, 16, 16)
    full = cost(Imagination(feats, torch.tensor([2, 4, 6])), g)
    single = torch.stack([cost(Imagination(feats[:, n:n + 1], torch.tensor([2, 4, 6])), g)[:, 0] for n in range(6)], 1)
    assert torch.allclose(full, single, atol=1e-6)


def test_closed_loop_mpc_with_shifted_warm_start():
    # The runner's loop on the point mass: plan, execute 5 steps, shift, re-plan. The goal
    # is beyond one horizon's reach, so only re-planning gets there.
    planner, wm = make(CEMPlanner, horizon=10, num_samples=32, iterations=3, seed=0)
    x, goal, warm = torch.zeros(1, D), torch.tensor([[1.5, 2.5]]), None
    for _ in range(6):
        res = planner.plan(wm.encode(x), goal_of(goal), warm_start=warm)
        x = x + DT * res.actions[:, :5].sum(1)
        warm = shift_plan(res.actions, 5)
    assert torch.allclose(x, goal, atol=0.05)


# ---------------------------------------------------------------- CEM, episodes, subgoals

def test_cem_cold_num_samples_widens_only_the_first_plan():
    # No warm start: the wider draw, every iteration; a warm-started re-plan: num_samples.
    planner, wm = make(CEMPlanner, horizon=5, num_samples=16, cold_num_samples=48, iterations=2, seed=0)
    state, goal = wm.encode(X0), goal_of(GOAL)
    first = planner.plan(state, goal)
    assert [c.shape[1] for c in wm.calls] == [48, 48] and first.info["num_samples"] == 48
    wm.calls.clear()
    again = planner.plan(state, goal, warm_start=shift_plan(first.actions, 2))
    assert [c.shape[1] for c in wm.calls] == [16, 16] and again.info["num_samples"] == 16
    with pytest.raises(ValueError, match="cold_num_samples"):
        make(CEMPlanner, cold_num_samples=-1)


def test_cem_keep_elites_carries_the_previous_elites_shifted_into_the_next_plan():
    planner, wm = make(CEMPlanner, horizon=6, num_samples=16, iterations=2, num_elites=4, keep_elites=3, seed=0)
    state, goal = wm.encode(X0), goal_of(GOAL)
    first = planner.plan(state, goal)
    elites = planner._last[1]  # (B, E, H, A): the last iteration's, best first
    assert first.info["carried_elites"] == 0 and elites.shape == (1, 4, 6, 2)
    wm.calls.clear()
    warm = shift_plan(first.actions, 2, fill="mid", action_low=LOW, action_high=HIGH)
    planner.advance(2)  # the runner ran 2 steps of it
    again = planner.plan(state, goal, warm_start=warm)
    cand = wm.calls[0][0]  # (N, H, A) of the first iteration
    want = torch.cat([elites[0, :3, 2:], warm[0, None, 4:].expand(3, 2, 2)], dim=1)  # shifted as the plan, same padding
    assert again.info["carried_elites"] == 3 and torch.equal(cand[-3:], want)
    assert torch.equal(cand[0], warm[0])  # candidate 0 is still the warm start
    assert not any(torch.equal(cand[i], want[0]) for i in range(1, 13))  # the rest are fresh draws
    # executed steps not reported: nothing carried
    assert planner.plan(state, goal, warm_start=shift_plan(again.actions, 2)).info["carried_elites"] == 0
    # a warm start that is not this planner's shifted plan carries nothing, nor does a new episode
    wm.calls.clear()
    assert planner.plan(state, goal, warm_start=torch.zeros(1, 6, 2)).info["carried_elites"] == 0
    last = planner.plan(state, goal)
    planner.advance(2)
    planner.start_episode(1)
    assert planner.plan(state, goal, warm_start=shift_plan(last.actions, 2)).info["carried_elites"] == 0
    # more kept than candidates: as many as fit beside the mean, and the count says so
    few, wm2 = make(CEMPlanner, horizon=6, num_samples=3, iterations=1, num_elites=3, keep_elites=3, seed=0)
    prev = few.plan(state, goal)
    few.advance(1)
    assert few.plan(state, goal, warm_start=shift_plan(prev.actions, 1)).info["carried_elites"] == 2
    with pytest.raises(ValueError, match="keep_elites"):
        make(CEMPlanner, keep_elites=-1)


@pytest.mark.parametrize("H", [8, 7])
def test_colored_noise_has_unit_variance_and_its_colour(H):
    g = torch.Generator().manual_seed(0)
    lag1 = {}
    for beta in (0.0, 2.0):
        x = colored_noise((20000, H, 2), beta, g, "cpu")  # (N, H, A)
        assert x.shape == (20000, H, 2)
        assert torch.allclose(x.var(0), torch.ones(H, 2), atol=0.06)  # every step: std 1
        lag1[beta] = float((x[:, 1:] * x[:, :-1]).mean())
    assert abs(lag1[0.0]) < 0.03 and lag1[2.0] > 0.4  # white vs smooth along the horizon


def test_cem_noise_beta_draws_smooth_candidates_around_the_mean():
    def roughness(calls):  # mean squared step-to-step change of the first iteration's deviations
        d = calls[0][0, 1:] - calls[0][0, 1:].mean(0)  # (N-1, H, A), candidate 0 is the mean
        return float(((d[:, 1:] - d[:, :-1]) ** 2).mean() / (d**2).mean())
    state, goal = PointMass().encode(X0), goal_of(GOAL)
    rough = {}
    for beta in (0.0, 2.0):
        planner, wm = make(CEMPlanner, horizon=8, num_samples=256, iterations=1, init_std=0.05, noise_beta=beta)
        planner.plan(state, goal)
        rough[beta] = roughness(wm.calls)
    assert rough[2.0] < 0.6 * rough[0.0]
    with pytest.raises(ValueError, match="noise_beta"):
        make(CEMPlanner, noise_beta=-1.0)


def test_cem_returns_the_best_candidate_it_imagined_with_its_cost():
    best, wm = make(CEMPlanner, horizon=10, num_samples=32, iterations=3, num_elites=8, alpha=0.1, seed=0)
    b = best.plan(wm.encode(X0), goal_of(GOAL))
    assert torch.allclose(b.cost, true_cost(X0, b.actions, GOAL))
    assert any(torch.equal(b.actions[0], c[0, i]) for c in wm.calls for i in range(c.shape[1]))


@pytest.mark.parametrize("name", SEARCH_PLANNERS)
def test_start_episode_makes_an_episode_independent_of_its_position(name):
    state, goal = PointMass().encode(X0), goal_of(GOAL)
    alone, _ = make(PLANNERS[name], horizon=5, seed=7)
    alone.start_episode(100003)
    ref = alone.plan(state, goal).actions
    later, _ = make(PLANNERS[name], horizon=5, seed=7)
    for s in (100000, 100001, 100002):  # earlier episodes draw noise first
        later.start_episode(s)
        later.plan(state, goal)
    later.start_episode(100003)
    assert torch.equal(later.plan(state, goal).actions, ref)
    later.start_episode(100004)
    assert not torch.equal(later.plan(state, goal).actions, ref)


def test_subgoal_tracker_ratio_rule():
    from sfplan.planners import SubgoalTracker

    start = torch.zeros(1, 1, 1, 2)
    wp = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]).reshape(1, 3, 1, 1, 2)  # (B, S, C, h, w)
    tr = SubgoalTracker(ratio=0.25)
    assert tr.update(start, wp).tolist() == [0]
    # Waypoint 0 is 1 apart from the start: MSE 0.5 -> reached below 0.125 (distance 0.5).
    assert tr.update(torch.tensor([0.4, 0.0]).reshape(1, 1, 1, 2), wp).tolist() == [0]
    assert tr.update(torch.tensor([0.6, 0.0]).reshape(1, 1, 1, 2), wp).tolist() == [1]
    # Progress is kept even when the observation drifts back.
    assert tr.update(start, wp).tolist() == [1]
    # Overshooting past two waypoints at once; the goal (last) is never passed.
    assert tr.update(torch.tensor([3.0, 0.0]).reshape(1, 1, 1, 2), wp).tolist() == [2]
    assert torch.equal(tr.current(torch.tensor([3.0, 0.0]).reshape(1, 1, 1, 2), wp), wp[:, 2])
    # New waypoints restart the progress; the absolute rule works on its own too.
    assert tr.update(start, wp + 1.0).tolist() == [0]
    assert SubgoalTracker(threshold=2.0).update(start, wp).tolist() == [1]
    with pytest.raises(ValueError):
        SubgoalTracker()


@pytest.mark.parametrize("side", [64, 5])
def test_multiscale_blur_matches_a_replicate_padded_convolution(side):
    import torch.nn.functional as F

    cost = MultiScaleCost(sigma=2.0)
    x = torch.randn(6, side, side + 3)
    k = cost._kernel
    r = k.numel() // 2
    ref = x[:, None]
    ref = F.conv2d(F.pad(ref, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    ref = F.conv2d(F.pad(ref, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))[:, 0]
    assert torch.allclose(cost._blur(x), ref, atol=1e-5)
