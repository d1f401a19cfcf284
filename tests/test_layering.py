"""Imports flow one way: the library layers (envs, planners, world model, memory, data) never
import the commands built on them (training, eval, the CLI), and no two modules import each
other, at module level or inside a function. Read from the source with ``ast``: nothing is
imported, so the test is fast and sees lazy imports too."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# installed package -> folder in the repo (setup.py's package_dir)
PACKAGES = {"sfplan": "sfplan", "sfplan.envs": "envs", "sfplan.planners": "planners", "sfplan.configs": "configs"}
LIBRARY = ("sfplan.envs", "sfplan.planners", "sfplan.world_model", "sfplan.memory", "sfplan.data")
COMMANDS = ("sfplan.training", "sfplan.eval", "sfplan.cli", "sfplan.generate", "sfplan.api")


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if folder == "sfplan" and parts[0] in ("models",) and len(parts) > 1:
                continue
            is_pkg = parts[-1] == "__init__"
            mods[".".join([pkg, *parts[:-1]] if is_pkg else [pkg, *parts])] = (f, is_pkg)
    return mods


def _imports(name: str, path: Path, is_pkg: bool, mods: dict, module_level: bool) -> set[str]:
    """The sfplan modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``),
    but not its own parent packages: Python imports those first anyway."""
    found: set[str] = set()

    def visit(nodes, top: bool):
        for n in nodes:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not module_level:
                    visit(n.body, False)
                continue
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n.test):
                continue
            if isinstance(n, ast.Import):
                found.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                mod = n.module
                if n.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    mod = ".".join(base[: len(base) - n.level + 1] + ([n.module] if n.module else []))
                found.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in n.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(n, field, None)
                if isinstance(sub, list):
                    visit(sub, top)

    visit(ast.parse(path.read_text()).body, True)
    return {m for m in found if m in mods and m != name and not name.startswith(m + ".")}


def _graph(module_level: bool) -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, *mods[m], mods, module_level) for m in mods}


def test_library_layers_never_import_the_commands():
    graph = _graph(module_level=False)
    bad = sorted(f"{a} imports {b}" for a, deps in graph.items() if a.startswith(LIBRARY)
                 for b in deps if b.startswith(COMMANDS))
    assert not bad, "\n".join(bad)


def test_no_two_modules_import_each_other():
    graph = _graph(module_level=False)
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, ())})
    assert not pairs, pairs


def test_no_import_cycle_at_module_level():
    graph = _graph(module_level=True)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def dfs(m: str, path: list[str]):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                dfs(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_the_packages():
    graph = _graph(module_level=True)
    assert "sfplan.planners.costs" in graph["sfplan.planners"]
    assert "sfplan.data.policies" in graph["sfplan.data.collect"]


# calls and imports that reach the file system: planners and costs get what they need handed in
FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "from_pretrained", "save_pretrained",
              "load", "save", "load_file", "save_file"}
FILE_MODULES = ("pathlib", "safetensors", "pickle", "shutil", "os", "io")


def test_planners_touch_no_files():
    """Planners are pure search (DESIGN.md, the Planner role): weights they use (a state probe,
    an inverse dynamics model) are loaded on the world-model side and handed in."""
    bad = []
    for f in sorted((ROOT / "planners").rglob("*.py")):
        for n in ast.walk(ast.parse(f.read_text())):
            where = f"{f.relative_to(ROOT)}:{getattr(n, 'lineno', '?')}"
            if isinstance(n, ast.Call):
                fn = n.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                if name in FILE_CALLS or name.startswith("load_"):
                    bad.append(f"{where} calls {name}")
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                names = [a.name for a in n.names]
                if any(m.split(".")[0] in FILE_MODULES for m in mods) or any(x.startswith("load_") for x in names):
                    bad.append(f"{where} imports {', '.join(mods)}: {', '.join(names)}")
    assert not bad, "\n".join(bad)
