"""Errors a user can fix; the CLI prints them without a traceback."""


class UserError(ValueError):
    """Bad input (config, task id, env, checkpoint, dataset); the message names the fix."""
