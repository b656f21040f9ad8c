"""The three packages stack one way (issue 17): kick_models <- kick_tasks <- kick_analysis.

kick_models (compression, model classes, the data resolver) imports neither kick_tasks nor kick_analysis;
kick_tasks (what lm-eval's task YAMLs call, and the judge) imports nothing from kick_analysis. Checked
by parsing every import statement of the package files (module level and inside functions).
The old ``kick_tasks.<module>`` paths of the moved modules still work for one release, with a warning.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MOVED = {
    "kick_tasks.sweep": "kick_analysis.sweep",
    "kick_tasks.preflight": "kick_analysis.preflight",
    "kick_tasks.sweep_executors": "kick_analysis.sweep_executors",
    "kick_tasks.report": "kick_analysis.report",
    "kick_tasks.compare": "kick_analysis.compare",
    "kick_tasks.stats": "kick_analysis.stats",
    "kick_tasks.results_io": "kick_analysis.results_io",
    "kick_tasks.demo": "kick_analysis.demo",
    "kick_tasks.cli": "kick_analysis.cli",
    "kick_tasks.data": "kick_models.data",
}
SHIM_HELPER = "kick_tasks._moved"


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an ``import`` / ``from ... import`` in the file names (relative imports resolved)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def offending_imports(package: str, forbidden: tuple[str, ...], skip: tuple[str, ...] = (),
                      root: Path = ROOT) -> list[str]:
    files = sorted((root / package).rglob("*.py"))
    assert files, f"no files under {package}/"
    bad = []
    for path in files:
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        if name in skip:
            continue
        for module in sorted(imported_modules(path, root)):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(root).as_posix()} imports {module}")
    return bad


def test_kick_models_imports_neither_kick_tasks_nor_kick_analysis():
    assert offending_imports("kick_models", ("kick_tasks", "kick_analysis")) == []


def test_kick_tasks_imports_nothing_from_kick_analysis():
    # the one-release re-exports of the moved modules are the only exception (they point at the new home)
    shims = (*MOVED, SHIM_HELPER)
    assert offending_imports("kick_tasks", ("kick_analysis",), skip=shims) == []


def test_the_layering_check_sees_an_upward_import(tmp_path):
    """The parser catches module-level, function-level and relative imports (a check that can fail)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    f = pkg / "mod.py"
    f.write_text("import os\nfrom . import sibling\n\ndef g():\n    from kick_analysis.report import collect\n")
    assert imported_modules(f, tmp_path) >= {"os", "pkg.sibling", "kick_analysis.report", "kick_analysis.report.collect"}
    assert offending_imports("pkg", ("kick_analysis",), root=tmp_path) == [
        "pkg/mod.py imports kick_analysis.report", "pkg/mod.py imports kick_analysis.report.collect"]


def package_modules(root: Path = ROOT, packages: tuple[str, ...] = ("kick_models", "kick_tasks", "kick_analysis")
                    ) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (``pkg/__init__.py`` is ``pkg``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_cycles(modules: dict[str, Path], root: Path = ROOT) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (strongly connected components
    of the import graph; an import of a module's own parent package is not an edge)."""
    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {name: sorted({owner(m) for m in imported_modules(path, root)} - {"", name}
                          - {p for p in modules if name.startswith(p + ".")}) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_module_imports_itself_back_through_another():
    """No import circles (e.g. sweep <-> sweep_executors): what both need lives in a module below both."""
    assert import_cycles(package_modules()) == []


def test_the_cycle_check_sees_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "kick_tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from kick_tasks.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from kick_tasks import c\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("import kick_tasks\n")  # its own package: not a circle
    modules = package_modules(tmp_path, ("kick_tasks",))
    assert import_cycles(modules, tmp_path) == [["kick_tasks.a", "kick_tasks.b", "kick_tasks.c"]]


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_import_paths_warn_and_reach_the_new_module(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    package, _, name = old.rpartition(".")
    assert getattr(importlib.import_module(package), name) is module


def test_old_from_imports_of_public_functions_still_work():
    for old in ("kick_tasks.sweep", "kick_tasks.report", "kick_tasks.compare", "kick_tasks.data"):
        sys.modules.pop(old, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kick_tasks.compare import compare_runs
        from kick_tasks.data import resolve
        from kick_tasks.report import collect, make_plots
        from kick_tasks.sweep import main as sweep_main
    import kick_analysis.compare
    import kick_analysis.report
    import kick_analysis.sweep
    import kick_models.data

    assert compare_runs is kick_analysis.compare.compare_runs and resolve is kick_models.data.resolve
    assert collect is kick_analysis.report.collect and make_plots is kick_analysis.report.make_plots
    assert sweep_main is kick_analysis.sweep.main


def test_python_m_kick_tasks_cli_still_runs_the_kick_command():
    new = subprocess.run([sys.executable, "-m", "kick_analysis.cli", "--help"], capture_output=True, text=True,
                         check=True)
    old = subprocess.run([sys.executable, "-m", "kick_tasks.cli", "--help"], capture_output=True, text=True,
                         check=True)
    assert old.stdout == new.stdout and "usage: kick <command>" in old.stdout
    assert "DeprecationWarning" not in new.stderr
    assert "DeprecationWarning: kick_tasks.cli moved to kick_analysis.cli" in old.stderr
    bad = subprocess.run([sys.executable, "-m", "kick_tasks.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
