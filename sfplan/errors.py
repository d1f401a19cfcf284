"""Errors a user can fix; the CLI prints them without a traceback."""


class UserError(ValueError):
    """Bad input (config, task id, env, checkpoint, dataset); the message names the fix."""


def whole_number(key: str, value, low: int, what: str) -> int:
    """``value`` of setting ``key`` as an int >= ``low``; else a UserError saying what it means
    (so ``episodes=abc`` fails at once with the fix, not deep inside a run)."""
    try:
        n = int(value)
        ok = not isinstance(value, bool) and float(value) == n
    except (TypeError, ValueError):
        ok = False
    if not ok or n < low:
        raise UserError(f"{key}={value!r}: {what}, a whole number >= {low} (e.g. {key}={max(low, 1) * 10})")
    return n


def positive_number(key: str, value, what: str) -> float:
    """``value`` of setting ``key`` as a finite float > 0; else a UserError."""
    import math

    try:
        x = float(value)
        ok = not isinstance(value, bool) and math.isfinite(x) and x > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{key}={value!r}: {what}, a number > 0")
    return x
