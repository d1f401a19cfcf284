"""The docs cannot drift from the results, and no committed file carries a machine's paths."""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".json", ".md", ".yaml", ".yml", ".py", ".txt", ".cfg", ".toml", ".html", ".sh"}
# an absolute path on the machines the project ran on: under work, tmp or home at the root
# (a relative path such as OUT/work/data is fine: it is the fit output folder)
ABSOLUTE = re.compile(r"(?<![\w./<-])/(?:work|tmp|home)/")


def _tables():
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_result_tables_match_the_committed_json():
    assert _tables().stale() == [], "run: python benchmarks/tables.py"


def test_tables_check_flags_a_drifted_table(tmp_path, monkeypatch):
    tables = _tables()
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    readme.write_text(text.replace("| Reacher | near | ", "| Reacher | near | 49/50 ", 1))
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    blocks = tables.tables()
    real = next(b for p, b in blocks.items() if p.name == "README.md")
    assert tables.render(readme.read_text(), real) != readme.read_text()
    assert tables.render(text, real) == text


def _committed_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out.decode().split("\0") if f and Path(f).suffix in TEXT]


def test_no_absolute_machine_paths_in_committed_files():
    bad = []
    for f in _committed_files():
        if not f.is_file():
            continue
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if ABSOLUTE.search(line):
                bad.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not bad, "absolute machine paths (use relative paths or <data>-style placeholders):\n" + "\n".join(bad[:30])
