"""Worker processes that do not outlive the process that started them."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_INTERVAL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a worker (a pool initializer): the worker exits when ``parent_pid``
    dies, even by ``kill -9``, instead of going on writing shards or burning CPU as an orphan.

    Linux: the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``). Then,
    everywhere, a daemon thread checks every 0.5 s that the parent is still ours (an orphan is
    re-parented), which also covers the race of a parent that died before the prctl."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="sfplan-parent-watch", daemon=True).start()


def init_worker(parent_pid: int, target: str, *args) -> None:
    """Pool initializer: ``die_with_parent`` before anything heavy is imported (this module
    is light, so a parent killed while its workers still import torch takes them along too),
    then ``target`` (``"module:function"``) with ``args``."""
    import importlib

    die_with_parent(parent_pid)
    module, name = target.split(":")
    getattr(importlib.import_module(module), name)(*args)
