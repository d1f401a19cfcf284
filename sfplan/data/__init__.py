"""Episode datasets for training the world model: collection, format, loaders.

- ``collect(out, env_id, env_kwargs, episodes=, steps=, policy=, workers=)``: roll out an
  exploration policy (``sfplan.data.policies``) in parallel workers and write HDF5 shards
  (``sfplan collect``; format, measurements and figures in ``sfplan.data.collect``).
- ``EpisodeDataset(path, image_size=None)``: all shards of a dataset; ``len``,
  ``ds[i] -> Episode``, ``ds.split(val_fraction)`` (held out by seed),
  ``ds.clips(frames=T) -> ClipDataset`` (a torch ``Dataset`` of fixed-length clips).
- ``import_minari(dataset_id, out)``: convert a Minari dataset with image observations.

Collection seeds stay below ``EVAL_SEED_START`` (100000); evaluation seeds start there.
torch is imported only when ``ClipDataset`` is first used.
"""
from sfplan.data.collect import collect, import_minari, run_collect
from sfplan.data.dataset import (
    EVAL_SEED_START,
    DatasetError,
    Episode,
    EpisodeDataset,
    ShardWriter,
    load_dataset,
)
from sfplan.data.policies import POLICIES, make_policy


def __getattr__(name: str):  # ClipDataset pulls in torch: only on first use
    if name == "ClipDataset":
        from sfplan.data.dataset import _clip_dataset_class

        return _clip_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["collect", "run_collect", "import_minari", "EpisodeDataset", "Episode", "ClipDataset", "ShardWriter",
           "load_dataset", "DatasetError", "EVAL_SEED_START", "POLICIES", "make_policy"]
