"""The shape of the code: the import contracts in pyproject.toml hold, no import circle exists (imports inside
functions count: they run), and no module grows past what a newcomer reads in one sitting."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import REPO

PACKAGES = ("harness", "quantizers", "adapters")
MAX_LINES = 350  # the "~350 lines": a module read in one sitting
LONGER_ALLOWED: dict[str, str] = {}  # module path -> why it may be longer (none today)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the packages under `root`, with root's pyproject.toml contracts (a fresh process, so
    the packages found are root's, not the installed ones)."""
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """The contracts can fail: a copy of the code where the data layer reaches up into the sweep, inside a
    function (where an import circle usually hides), is reported with the offending line."""
    for name in (*PACKAGES, "pyproject.toml"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    tokens = tmp_path / "harness" / "data" / "tokens.py"
    tokens.write_text(tokens.read_text() + "\n\ndef _upward():\n    from harness.sweep.cell import run_cell\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1
    assert "is layered by the data's way BROKEN" in done.stdout
    assert "harness.data.tokens -> harness.sweep.cell" in done.stdout


def strongly_connected(graph) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one module: each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return circles


def test_no_import_circle_anywhere():
    graph = grimp.build_graph(*PACKAGES)  # grimp counts imports inside functions too
    assert strongly_connected(graph) == []
    graph.add_import(importer="quantizers.base", imported="harness.sweep.cell")  # the check itself can fail
    assert strongly_connected(graph)


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_short(package):
    long = {str(p.relative_to(REPO)): n for p in (REPO / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(REPO)) not in LONGER_ALLOWED}
    assert long == {}
