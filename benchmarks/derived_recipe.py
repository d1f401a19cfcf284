"""What `sfplan fit`'s recipe derives on the shipped tasks, next to the knobs their shipped
models were given by hand (fg_weight, motion_weight).

    python benchmarks/derived_recipe.py      # -> benchmarks/results/fit/recipe_shipped_tasks.json

48 episodes x 50 steps of the collection policy (correlated random actions) per task, seeds 0-47,
at the env settings the shipped models were trained with.
"""
import json
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from sfplan.data import EpisodeDataset
from sfplan.data.collect import collect
from sfplan.training.fit import derive_recipe

ROOT = Path(__file__).resolve().parents[1]
TASKS = [("reacher", "sfplan/Reacher-v0", {"image_size": 64}),
         ("umaze", "sfplan/PointMazeUMaze-v0", {"image_size": 64, "frame_skip": 4}),
         ("pusher", "sfplan/Pusher-v0", {"image_size": 64})]

if __name__ == "__main__":
    recipe = OmegaConf.load(ROOT / "configs" / "fit.yaml").recipe
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, env_id, kwargs in TASKS:
            d = Path(tmp) / name
            collect(d, env_id, kwargs, episodes=48, steps=50, workers=1, progress=False)
            with EpisodeDataset(d) as ds:
                out[name] = derive_recipe(ds, recipe)
            print(name, {k: round(v, 3) for k, v in out[name]["stats"].items()}, "fg_weight",
                  round(out[name]["fg_weight"], 1), "motion_weight", round(out[name]["motion_weight"], 2))
    dest = ROOT / "benchmarks" / "results" / "fit" / "recipe_shipped_tasks.json"
    dest.write_text(json.dumps(out, indent=1))
