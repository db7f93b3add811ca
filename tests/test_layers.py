"""The package's import graph flows one way: cli on top, data and models at the bottom, no cycles.

Every import is counted, including those inside functions, so a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mnistlab

PACKAGE = Path(mnistlab.__file__).parent

# Bottom to top; a module may import from its own layer or any layer below it.
LAYERS: list[set[str]] = [
    {"errors", "tables", "stats"},
    {"data", "models", "presets", "plots"},
    {"files"},
    {"training"},
    {"inference"},
    {"experiments"},
    {"lab", "serve", "grading"},
    {"bench"},
    {"cli"},
    {"__init__", "__main__"},
]
LAYER = {group: i for i, groups in enumerate(LAYERS) for group in groups}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def group_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    """The mnistlab modules `path` imports (`from mnistlab import __version__` is the package's metadata)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mnistlab.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "mnistlab":
                found |= {f"mnistlab.{a.name}" for a in node.names if a.name != "__version__"}
            elif node.module.startswith("mnistlab."):
                found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m != name} for name, path in modules.items()}


def test_every_group_has_a_layer():
    groups = {group_of(m) for m in graph()}
    assert groups <= set(LAYER), f"add these to LAYERS: {sorted(groups - set(LAYER))}"


def test_no_upward_imports():
    upward = [
        f"{src} -> {dst}"
        for src, targets in graph().items()
        for dst in targets
        if LAYER[group_of(dst)] > LAYER[group_of(src)]
    ]
    assert upward == []


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            nxt = nxt if nxt in edges else nxt.rsplit(".", 1)[0]  # `from pkg.mod import name`
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt in edges and state.get(nxt) is None:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node, [node])
    assert cycles == []


def test_the_layer_test_sees_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from mnistlab.cli import main\n")
    assert imports(bad) == {"mnistlab.cli"}


IMPORT_EVERYTHING = """
import ctypes, importlib, json, pkgutil, torch
calls = []
real_cdll = ctypes.CDLL
class SpyCDLL(real_cdll):  # records every mallopt/malloc_trim call made through ctypes
    def __getattr__(self, name):
        if name in ("mallopt", "malloc_trim"):
            calls.append(name)
        return super().__getattr__(name)
ctypes.CDLL = SpyCDLL
torch.set_num_threads(2)
x = torch.full((4_000_000,), 1e-39)  # denormal floats: flushed to zero only in flush-to-zero mode
state = lambda: [int(((x * 1.0) != 0).sum()), torch.get_num_threads(), torch.is_grad_enabled(),
                 str(torch.get_default_dtype())]
before = state()
import mnistlab
for m in pkgutil.walk_packages(mnistlab.__path__, "mnistlab."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
print(json.dumps({"before": before, "after": state(), "allocator_calls": calls}))
"""


def test_importing_mnistlab_changes_nothing_in_the_process():
    """No floating-point mode, allocator setting, thread count or autograd state is changed by an import."""
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["before"][0] == 4_000_000
    assert seen["after"] == seen["before"] and seen["allocator_calls"] == []


def test_contributing_lists_every_module():
    """CONTRIBUTING's layer table names every module of the package, so a newcomer finds each one there."""
    text = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()
    start = text.index("| layer | where | what |")
    table = text[start:text.index("\n\n", start)]
    missing = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.stem not in ("__init__", "__main__") and f"`{p.stem}`" not in table
               and f"`{p.name}`" not in table]
    assert not missing, missing
