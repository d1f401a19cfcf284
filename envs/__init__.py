"""Goal-image Gymnasium tasks (installed as ``sfplan.envs``)."""
