"""The paper's planner: plan a video toward the (sub)goal, read the actions off it with an
inverse dynamics model (SlowFast-VGen, "planning": subgoals -> one generated chunk per
subgoal, Temp-LoRA carried along -> IDM on frame pairs).

Per decision (``plan``), for each env of the batch:

1. pick the current subgoal: the goal may be one latent (B, C, h, w) or a sequence of
   waypoint latents (B, S, C, h, w), the last being the final goal; the planner moves on
   to the next waypoint once the current observation's latent distance (mean squared
   difference) to the current one falls below ``subgoal_threshold`` (kept across calls,
   reset when the goal tensor changes or on ``reset()``);
2. sample K = ``num_videos`` videos of H = ``horizon`` latent frames from the current
   context in ONE batched sampler call, action-free (the model's learned null condition),
   steered to end at the subgoal latent (``sample_chunk_to_goal``: reconstruction
   guidance by default, see below), with ``num_steps`` denoising steps (more than CEM's
   2: the goal needs steps to propagate into the frames before it);
3. turn each video's consecutive latents into H actions with the IDM (one batched
   forward), clipped to the action box;
4. keep the video whose frames best approach the subgoal by the runner's cost
   (``score="video"``, the paper), or, with ``score="rollout"`` (default: 60% vs 40% on Reacher), imagine each video's actions with
   the action-conditioned model (one ``imagine`` call) and score what the actions do.

The runner executes the first ``execute`` actions and re-plans. Temp-LoRA: the memory
the runner carries lives on the world model's diffusion model (a peft adapter), so the
videos are generated with it as it is; the planner never writes to it.

Goal steering (``guidance``): the IDM reads the actions off the frames between now and
the goal, so the goal must shape those frames, not only the last one. Two ways, both in
``sample_chunk_to_goal``:

- ``replace``: before every denoiser call the chunk's last frame is set to the goal noised
  to the current level: what the masked model saw in training (all target frames at one
  noise level; a clean goal frame with the context mask set would be out of
  distribution: clean context only ever came as a prefix). One forward per step.
- ``reconstruction`` (default): replacement plus Ho et al.'s (2022) reconstruction
  guidance: the predicted clean chunk moves along -w sqrt(alpha_bar_t)/2 grad_{x_t}
  ||x0_hat[last] - goal||^2, which pulls every frame toward a path that ends at the goal.
  A backward pass per step: about 2x the time of ``replace``.

Measured on a controlled task where the right frames are known (``benchmarks/
goal_guidance.py``: latent videos of a blob that changes velocity after the 2 context
frames, goal = its true 4th frame; 128 held-out videos, 6 DPM-Solver++ steps; blob-position
error in grid pixels of the 3 frames before the goal / of the last frame): no guidance
1.6 px before the goal; replacement 0.99 / 0.72; reconstruction w=2 0.39 / 0.14, w=3
0.31 / 0.20, w=4 0.27 / 0.25, w=8 0.26 / 0.42; sampling with the true actions 0.17 px.
Replacement alone leaves the frames before the goal far off; reconstruction with w = 3
brings them within 2x of the true-action samples and keeps the last frame at the goal
(larger w overshoots it). With 3 steps the guidance has too few steps to act (w=4:
last-frame MSE 15x that of 6 steps), hence ``num_steps=6``.

Pure search: no env, logger or file I/O inside ``plan``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfplan.errors import UserError
from sfplan.world_model.base import GoalVideoWorldModel, Imagination, MemoryWorldModel, WorldState

from .base import PlanResult
from .common import SeedCounter, as_bounds, make_config, resolve_planner_device
from .subgoals import SubgoalTracker

SCORES = ("video", "rollout")


@dataclass
class VideoPlanConfig:
    horizon: int | None = None  # frames per video = env steps planned; None: the world model's chunk_size
    num_videos: int = 8  # K videos sampled in one batch per decision
    sampler: str = "dpmsolver++"  # ddim | dpmsolver++
    num_steps: int = 6  # denoising steps per video (the world model's imagination uses 2 by default)
    guidance: str = "reconstruction"  # reconstruction | replace | none (goal steering, see the module docstring)
    guidance_weight: float = 3.0  # reconstruction guidance weight w (guidance=reconstruction)
    score: str = "rollout"  # rollout: cost of imagining the IDM's actions | video: cost of the generated frames (the paper)
    subgoal_threshold: float = 0.05  # latent MSE to the current waypoint below which the next one is planned for
    seed: int = 0


class VideoPlanPlanner:
    """``VideoPlanPlanner(world_model, cost, action_low, action_high, config=None, idm=None,
    *, horizon=None, num_videos=8, sampler="dpmsolver++", num_steps=6, guidance="reconstruction",
    guidance_weight=3.0, score="rollout", subgoal_threshold=0.05, seed=0)``.

    ``world_model`` must plan videos (``GoalVideoWorldModel``: the learned ``SlowFastWorldModel``)
    and an inverse dynamics model must read their actions: ``idm=``, else the world model's
    ``idm`` (``<model dir>/idm/``; ``sfplan eval planner.idm_path=`` loads another and passes
    it as ``idm``). ``plan(state, goal)`` -> PlanResult(actions (B, H, A), cost (B,), info).
    """

    config_cls = VideoPlanConfig
    needs_world_model = True
    requires_learned_world_model = True  # generic planner tests (analytic world models) skip it

    def __init__(self, world_model, cost, action_low, action_high, config: VideoPlanConfig | None = None, idm=None,
                 **overrides):
        from sfplan.world_model.sampler import GOAL_GUIDANCE, SAMPLERS

        self.config = c = make_config(VideoPlanConfig, config, overrides)
        if not isinstance(world_model, GoalVideoWorldModel):
            raise UserError(f"planner=video_plan generates latent video with the learned world model, got "
                            f"{type(world_model).__name__}: use world_model=learned world_model.path=<world model "
                            f"dir> (or a sampling planner such as planner=cem)")
        if cost is None:
            raise ValueError("VideoPlanPlanner needs a cost")
        self.world_model, self.cost = world_model, cost
        self.device = resolve_planner_device(world_model, action_low)
        self.action_low, self.action_high = as_bounds(action_low, action_high, self.device)  # (A,)
        self.action_dim = int(self.action_low.numel())
        idm = idm if idm is not None else getattr(world_model, "idm", None)  # an optional part of the model
        if idm is None:
            from sfplan.world_model.idm import IDM_HINT

            raise UserError(f"planner=video_plan needs an inverse dynamics model and the world model has none: "
                            f"{IDM_HINT} (it is then loaded from <world model dir>/idm/), or pass "
                            f"planner.idm_path=<idm run>/model")
        self.idm = idm.to(self.device).eval()
        C, h, w = world_model.latent_shape
        ic = self.idm.config
        if (ic.latent_channels, ic.latent_size, ic.latent_size) != (C, h, w):
            raise UserError(f"the IDM works on {ic.latent_channels}x{ic.latent_size}x{ic.latent_size} latents but the "
                            f"world model's VAE gives {C}x{h}x{w}: train the IDM on this world model's VAE "
                            f"(vae=<world model dir>)")
        if ic.action_dim != self.action_dim:
            raise UserError(f"the IDM predicts {ic.action_dim}-d actions but the env's are {self.action_dim}-d")
        if c.num_videos < 1 or c.num_steps < 1:
            raise ValueError("num_videos and num_steps must be >= 1")
        if c.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {c.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if c.guidance not in GOAL_GUIDANCE:
            raise ValueError(f"guidance must be one of {GOAL_GUIDANCE}, got {c.guidance!r}")
        if c.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {c.score!r}")
        H = self.horizon
        if H < 1 or world_model.context_frames + H > world_model.max_frames:
            raise ValueError(f"horizon={H} must be >= 1 and context_frames ({world_model.context_frames}) + horizon "
                             f"<= the model's max_frames={world_model.max_frames}")
        self._seeds = SeedCounter(int(c.seed), torch.device("cpu"))  # noise drawn on the CPU: same on any device
        self.subgoals = SubgoalTracker(threshold=float(c.subgoal_threshold))  # waypoint progress of the episode

    @property
    def horizon(self) -> int:
        return int(self.config.horizon) if self.config.horizon is not None else int(self.world_model.chunk_size)

    def reset(self, seed: int | None = None) -> None:
        """Restart the per-call seed counter and the waypoint progress."""
        self._seeds.reset(seed)
        self.subgoals.reset()

    def start_episode(self, seed: int) -> None:
        """Per-episode noise (``config.seed + seed``) and fresh waypoint progress."""
        self.reset(int(self.config.seed) + int(seed))

    # ------------------------------------------------------------------ subgoals
    def current_subgoal(self, features: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """features (B, C, h, w) now, goals (B, S, C, h, w) waypoints -> (B,) index of the
        waypoint to plan for (advancing past each one reached, in order)."""
        return self.subgoals.update(features, goals)

    # ------------------------------------------------------------------ plan
    @torch.no_grad()
    def propose(self, state: WorldState, goal: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1-3 of a decision: state from ``SlowFastWorldModel.encode`` (context (B, T',
        C, h, w)); goal (B or 1, C, h, w) or waypoints (B or 1, S, C, h, w) -> (actions
        (B, K, H, A) read off the K videos by the IDM and clipped to the box, videos (B, K,
        H, C, h, w), the subgoal latent planned for (B, C, h, w), subgoal index (B,))."""
        c, wm = self.config, self.world_model
        if state is None or state.context is None:
            raise ValueError("VideoPlanPlanner needs a WorldState from SlowFastWorldModel.encode")
        ctx = state.context[:, -wm.context_frames:].to(self.device, torch.float32)  # (B, T', C, h, w)
        B, Tc, C, h, w = ctx.shape
        goals = torch.as_tensor(goal).to(self.device, torch.float32)
        if goals.dim() == 4:
            goals = goals[:, None]  # (B|1, 1, C, h, w)
        if goals.dim() != 5 or goals.shape[2:] != (C, h, w) or goals.shape[0] not in (1, B):
            raise ValueError(f"goal must be (B, C, h, w) or waypoints (B, S, C, h, w) with (C, h, w) = {(C, h, w)}, "
                             f"got {tuple(goals.shape)}")
        goals = goals.expand(B, *goals.shape[1:])  # (B, S, C, h, w)
        now = state.features.to(self.device, torch.float32)  # (B, C, h, w)
        sub = self.current_subgoal(now, goals)  # (B,)
        target = goals[torch.arange(B, device=self.device), sub]  # (B, C, h, w)

        K, H = int(c.num_videos), self.horizon
        video = wm.imagine_to_goal(state, target, H, num_videos=K, num_steps=int(c.num_steps), sampler=c.sampler,
                                   guidance=c.guidance, guidance_weight=float(c.guidance_weight),
                                   generator=self._seeds.next()).to(self.device)  # (B, K, H, C, h, w)

        # actions: IDM on [context, video]; action t leads to video frame t
        seq = torch.cat([ctx[:, None].expand(B, K, Tc, C, h, w), video], dim=2)  # (B, K, T'+H, C, h, w)
        acts = self.idm.infer_sequence(seq)[:, :, Tc - 1:]  # (B, K, H, A)
        return torch.clamp(acts.float(), self.action_low, self.action_high), video, target, sub

    @torch.no_grad()
    def plan(self, state: WorldState, goal: torch.Tensor, warm_start: torch.Tensor | None = None) -> PlanResult:
        """state: from ``SlowFastWorldModel.encode`` (context (B, T', C, h, w)); goal: (B or 1,
        C, h, w) or waypoints (B or 1, S, C, h, w); warm_start: ignored (each decision plans a
        fresh video) -> PlanResult(actions (B, H, A), cost (B,), info)."""
        c, wm = self.config, self.world_model
        acts, video, target, sub = self.propose(state, goal)  # (B, K, H, A), (B, K, H, C, h, w), (B, C, h, w)
        B, K, H = acts.shape[:3]
        g = torch.as_tensor(goal)
        num_subgoals = int(g.shape[1]) if g.dim() == 5 else 1  # waypoints (B, S, C, h, w) or one goal

        if c.score == "rollout":
            imagined = wm.imagine(state, acts)
        else:
            imagined = Imagination(features=video, steps=torch.arange(1, H + 1))
        costs = self.cost(imagined, target)  # (B, K)
        if tuple(costs.shape) != (B, K):
            raise ValueError(f"cost returned shape {tuple(costs.shape)}, expected (B, K) = {(B, K)}")
        costs = torch.nan_to_num(costs.to(self.device, torch.float32), nan=float("inf"))
        best_cost, best = costs.min(dim=1)  # (B,)
        rows = torch.arange(B, device=self.device)
        last_gap = (video[rows, best, -1] - target).pow(2).flatten(1).mean(1)  # (B,) chosen video's end vs goal
        return PlanResult(
            actions=acts[rows, best],  # (B, H, A)
            cost=best_cost,
            info={
                "best_cost": float(best_cost.mean()),
                "mean_cost": float(costs[torch.isfinite(costs)].mean()) if bool(torch.isfinite(costs).any())
                else float("inf"),
                "subgoal": float(sub.float().mean()),
                "num_subgoals": num_subgoals,
                "last_frame_goal_mse": float(last_gap.mean()),
                "imagined_frames": B * K * H * (2 if c.score == "rollout" else 1),
                "memory": isinstance(wm, MemoryWorldModel) and wm.memory is not None,
            },
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
