"""The layers hold: no import cycle, no import that runs back up (read with ``ast``, nothing run).

Entry points: ``towers`` < ``tuning``, ``serving`` (which do not import each other) < ``ray_jobs``
(the pipeline may run tuning and serving) < ``bench``. Inside ``towers`` the sub-packages are
layers in the order of :data:`TOWERS_LAYERS`; a module may import its own layer and the ones
below it. No module imports a ``__main__``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("towers", "tuning", "serving", "ray_jobs", "bench")
PACKAGE_RANK = {"towers": 0, "tuning": 1, "serving": 1, "ray_jobs": 2, "bench": 3}
# Bottom up. ``metrics`` (pure top-k and metric functions) sits below ``training`` because early
# stopping ranks with it; ``launch`` (config → CLI, starting Ray) is for entry points only.
TOWERS_LAYERS = (
    "progress",
    "storage",
    "data",
    "metrics",
    "model",
    "training",
    "recommenders",
    "evaluation",
    "index",
    "artifacts",
    "launch",
)


def project_modules(root: Path) -> dict[str, Path]:
    """``{"towers.data.splits": path, "towers.data": path/__init__.py, ...}``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (``a.b.C`` → ``a.b``), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: {project modules it imports}}``, lazy (function-level) imports included."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    edges[module].add(target)
    return edges


def layer(module: str) -> tuple[int, int]:
    """``(package rank, towers layer)``; a ``towers`` top-level module is its own layer."""
    parts = module.split(".")
    if parts[0] != "towers":
        return PACKAGE_RANK[parts[0]], 0
    if len(parts) == 1:
        return 0, -1  # towers/__init__.py: imports nothing
    return 0, TOWERS_LAYERS.index(parts[1])


def back_edges(edges: dict[str, set[str]]) -> list[str]:
    """Every import that runs up a layer, across entry points, or into a ``__main__``."""
    bad = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if target.endswith("__main__"):
                bad.append(f"{source} -> {target} (imports a __main__)")
            elif layer(target) > layer(source):
                bad.append(f"{source} -> {target} (imports a higher layer)")
            elif target.split(".")[0] != source.split(".")[0] and layer(target) == layer(source):
                bad.append(f"{source} -> {target} (an entry point imports another)")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def problems(root: Path) -> list[str]:
    modules = project_modules(root)
    edges = import_edges(modules)
    unknown = sorted(
        m for m in modules if m.startswith("towers.") and m.split(".")[1] not in TOWERS_LAYERS
    )
    return (
        [f"cycle: {' <-> '.join(c)}" for c in cycles(edges)]
        + [f"edge: {e}" for e in back_edges(edges)]
        + [f"unlayered: {m} (add its sub-package to TOWERS_LAYERS)" for m in unknown]
    )


def test_the_project_has_no_cycle_and_no_back_edge():
    found = problems(ROOT)
    assert not found, "\n".join(found)


def test_towers_is_in_layers():
    subpackages = {p.parent.name for p in (ROOT / "towers").glob("*/__init__.py")}
    modules = {p.stem for p in (ROOT / "towers").glob("*.py")} - {"__init__"}
    assert subpackages == set(TOWERS_LAYERS) - modules  # one-module layers: artifacts, progress


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # two modules of one layer that import each other
            {
                "towers/index/base.py": "import towers.index.exact\n",
                "towers/index/exact.py": "from towers.index.base import ItemIndex\n",
            },
            "cycle: towers.index.base <-> towers.index.exact",
        ),
        (  # the data layer reaching up into the model layer
            {"towers/data/prepared.py": "def f():\n    from towers.model.config import C\n"},
            "edge: towers.data.prepared -> towers.model.config (imports a higher layer)",
        ),
        (  # serving reaching into a job
            {"serving/server.py": "from ray_jobs.cli import parse\n"},
            "edge: serving.server -> ray_jobs.cli (imports a higher layer)",
        ),
        (
            {"ray_jobs/demo.py": "from serving.__main__ import main\n"},
            "edge: ray_jobs.demo -> serving.__main__ (imports a __main__)",
        ),
        (
            {"tuning/tune.py": "import serving.app\n"},
            "edge: tuning.tune -> serving.app (an entry point imports another)",
        ),
    ],
)
def test_the_check_fails_on_what_it_forbids(tmp_path, files, expected):
    base = {
        f"{p}/__init__.py": "" for p in ("towers", "serving", "tuning", "ray_jobs", "bench")
    } | {f"towers/{layer}/__init__.py": "" for layer in TOWERS_LAYERS if layer != "artifacts"}
    base |= {
        "towers/model/config.py": "",
        "ray_jobs/cli.py": "",
        "serving/__main__.py": "",
        "serving/app.py": "",
    }
    _write(tmp_path, base | files)
    assert expected in problems(tmp_path)


def test_no_module_over_400_lines():
    """Files a reader takes in at one sitting (the house style asks for about 100-350)."""
    sizes = {path: len(path.read_text().splitlines()) for path in project_modules(ROOT).values()}
    large = [f"{p.relative_to(ROOT)}: {n} lines" for p, n in sorted(sizes.items()) if n > 400]
    assert not large, large
