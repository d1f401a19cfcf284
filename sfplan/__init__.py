"""sfplan: long-horizon visual planning with a learned video world model (SlowFast-VGen).

``sfplan.fit(env, out, minutes)`` and ``sfplan.evaluate(env, model)`` run ``sfplan fit`` and
``sfplan eval`` from Python (``sfplan.api``)."""
__version__ = "0.1.0"


def __getattr__(name: str):  # PEP 562: keep `import sfplan` light (no torch until used)
    if name in ("fit", "evaluate"):
        from sfplan import api

        return getattr(api, name)
    raise AttributeError(f"module 'sfplan' has no attribute {name!r}")
