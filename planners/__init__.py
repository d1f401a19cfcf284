"""Planners and costs (installed as ``sfplan.planners``)."""
