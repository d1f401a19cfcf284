"""Planners and costs (installed as ``sfplan.planners``).

Planners: ``PLANNERS[name](world_model=..., cost=..., action_low=..., action_high=..., **config)``.
``video_plan`` (the paper's planner) needs the learned world model with an inverse dynamics
model (``requires_learned_world_model``); the others search with any world model.
Costs: ``COSTS[name](**config)``, called as ``cost(imagination, goal) -> (B, N)``.
"""
from .base import Cost, Planner, PlanResult
from .cem import CEMConfig, CEMPlanner
from .common import shift_plan
from .costs import (
    COSTS,
    LatentL2Cost,
    LatentL2CostConfig,
    MultiScaleCost,
    MultiScaleCostConfig,
    PixelMSECost,
    PixelMSECostConfig,
    ProbeCost,
    ProbeCostConfig,
)
from .mppi import MPPIConfig, MPPIPlanner
from .random_planner import RandomPlanner, RandomPlannerConfig
from .random_shooting import RandomShootingConfig, RandomShootingPlanner
from .subgoals import SubgoalTracker, cost_distance
from .video_plan import VideoPlanConfig, VideoPlanPlanner

PLANNERS = {
    "cem": CEMPlanner,
    "mppi": MPPIPlanner,
    "random_shooting": RandomShootingPlanner,
    "random": RandomPlanner,
    "video_plan": VideoPlanPlanner,  # the paper's planner: needs the learned world model + an IDM
}


__all__ = [
    "COSTS",
    "PLANNERS",
    "CEMConfig",
    "CEMPlanner",
    "Cost",
    "LatentL2Cost",
    "LatentL2CostConfig",
    "MPPIConfig",
    "MPPIPlanner",
    "MultiScaleCost",
    "MultiScaleCostConfig",
    "SubgoalTracker",
    "cost_distance",
    "PixelMSECost",
    "PixelMSECostConfig",
    "PlanResult",
    "ProbeCost",
    "ProbeCostConfig",
    "Planner",
    "RandomPlanner",
    "RandomPlannerConfig",
    "RandomShootingConfig",
    "RandomShootingPlanner",
    "VideoPlanConfig",
    "VideoPlanPlanner",
    "shift_plan",
]
