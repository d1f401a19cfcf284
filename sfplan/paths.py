"""Paths as metadata records them: cards, summaries and result JSON get committed and shared,
so they name a path relative to the current directory (where the command ran) and never a
machine's absolute path."""
from __future__ import annotations

import os
import re
from pathlib import Path

# an absolute path inside free text: a "/" that starts a token (not "a/b", "x://", "<...>/")
_ABSOLUTE = re.compile(r"(?<![\w.:/<>~-])/[\w.@+%-]+(?:/[\w.@+%-]*)*")
_ROOTS = {"work", "tmp", "home", "root", "mnt", "scratch", "Users", "private", "var"}


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when it lies under it; an absolute path
    elsewhere becomes ``<...>/parent/name`` (its last two components, none of them a
    filesystem root such as ``tmp``); a relative path is kept as given."""
    text = os.path.expanduser(str(path))
    p = Path(text)
    if not p.is_absolute():
        return text
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) or "."
    except (ValueError, OSError):
        pass
    tail = [c for c in p.parts[1:][-2:] if c not in _ROOTS]
    return "<...>/" + "/".join(tail) if tail else "<...>"


def scrub_paths(text: str) -> str:
    """Every absolute path inside ``text`` (a command line, a YAML dump) made portable."""
    return _ABSOLUTE.sub(lambda m: portable_path(m.group(0)), text)


def portable(obj):
    """``obj`` (nested dicts/lists of JSON values) with every string's absolute paths made portable."""
    if isinstance(obj, str):
        return scrub_paths(obj)
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj
