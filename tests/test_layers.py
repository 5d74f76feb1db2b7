"""The package graph of ``ddpm`` has layers and no cycles (drawn in docs/architecture.md).

A unit is a top-level module (``ddpm/schedules.py``) or a sub-package (``ddpm/samplers/``); a
command's console script (``ddpm/<command>/cli.py``) is a unit of its own, in the top layer. Every
``import`` of a ddpm module counts, at module level or inside a function. A unit may import units of
its own layer or below; units of the command layer may not import each other except for the edges in
:data:`ALLOWED`, each with its reason; and the graph between units has no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ddpm"

# Lowest first.
LAYERS: dict[str, set[str]] = {
    "core": {
        "ddpm",
        "errors",
        "paths",
        "config",
        "conditioning",
        "memorisation",
        "checkpoint",
        "export_format",
        "runlock",
        "runtime",
        "schedules",
        "diffusion",
        "score",
        "models",
        "data",
        "ema",
        "quality",
        "gifs",
        "tables",
        "benchmarking",
    },
    "samplers": {"samplers"},
    "inference": {"generate", "pretrained", "inference"},
    "commands": {"train", "sample", "evaluate", "visualize", "regimes", "export"},
    # tools: the scripts' machinery (the benchmark, the fault drill, the studies), which drives the commands
    "console": {
        "cli",
        "commands",
        "dashboard",
        "tools",
        *(f"{c}.cli" for c in ("train", "sample", "evaluate", "visualize", "regimes", "export")),
    },
}
PACKAGES = {".".join(p.relative_to(REPO).parent.parts) for p in PKG.rglob("__init__.py")}
PEERS_APART = "commands"  # the layer whose units must not import each other
# Imports between commands that are allowed, with the reason.
ALLOWED: dict[tuple[str, str], str] = {
    ("train", "evaluate"): "train.eval_every: train/callbacks.py scores sample grids with ddpm.evaluate.sample_quality while training",
    ("train", "regimes"): "train.regimes_every: train/callbacks.py measures f_mem and the ε-gaps with ddpm.regimes.monitor while training",
}
# Modules of a unit that must not use the edges ALLOWED gives it: the training loop reaches evaluate and
# regimes only through the callbacks it is handed.
LOOP_APART: dict[str, set[str]] = {"ddpm.train.trainer": {"evaluate", "regimes"}}


# Wrong-way edges still open, with what closes them: left out of the check, and each must still exist
# (when it is gone, drop it from here).
OPEN: dict[tuple[str, str], str] = {}


def unit_of(module: str) -> str:
    """The unit of a dotted ddpm module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "ddpm"
    if len(parts) >= 3 and parts[2] in ("cli", "__main__") and parts[1] in LAYERS["commands"]:
        return f"{parts[1]}.cli"  # ``python -m ddpm.train`` is the console script too
    return parts[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str) -> set[str]:
    """Every ddpm module a parsed module imports, anywhere in it (relative imports resolved)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the module's package (a package's __init__ is its own)
                parts = module.split(".")
                package = parts[: len(parts) - node.level + (module in PACKAGES)]
                base = ".".join([*package, base] if base else package)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # ``from ddpm import x`` may name a module
    return {m for m in out if m == "ddpm" or m.startswith("ddpm.")}


def graph(sources: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """unit -> {imported unit: the module that imports it}, from ``sources`` (module -> code; default: ddpm/)."""
    if sources is None:
        sources = {module_name(p): p.read_text() for p in PKG.rglob("*.py")}
    known = {module_name(p) for p in PKG.rglob("*.py")} | set(sources)
    edges: dict[str, dict[str, str]] = defaultdict(dict)
    for module, code in sources.items():
        src = unit_of(module)
        for name in imported(ast.parse(code), module):
            while name not in known and "." in name:  # ``from ddpm.x import function``: the module is ddpm.x
                name = name.rsplit(".", 1)[0]
            dst = unit_of(name)
            if dst != src:
                edges[src].setdefault(dst, module)
    return edges


def layer_of(unit: str) -> int:
    for i, units in enumerate(LAYERS.values()):
        if unit in units:
            return i
    raise KeyError(f"unit {unit!r} is in no layer: add it to LAYERS in tests/test_layers.py (and to docs/architecture.md)")


def violations(edges: dict[str, dict[str, str]]) -> list[str]:
    """Upward imports, imports between commands that ALLOWED does not list, and cycles (the edges in
    OPEN left out)."""
    edges = {src: {dst: where for dst, where in dsts.items() if (src, dst) not in OPEN} for src, dsts in edges.items()}
    out = []
    peers = LAYERS[PEERS_APART]
    for src, dsts in sorted(edges.items()):
        for dst, where in sorted(dsts.items()):
            if layer_of(dst) > layer_of(src):
                out.append(f"upward: {where} imports {dst} ({list(LAYERS)[layer_of(dst)]} layer)")
            elif src in peers and dst in peers and (src, dst) not in ALLOWED:
                out.append(f"between commands: {where} imports {dst}")
    out += [f"cycle among {', '.join(c)}" for c in cycles(edges)]
    return out


def cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """The sets of units that import each other round a cycle (strongly connected, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(edges) | {w for d in edges.values() for w in d}):
        if v not in index:
            visit(v)
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in PKG.rglob("*.py")}
    assert units - {"conf"} <= set().union(*LAYERS.values()), sorted(units - set().union(*LAYERS.values()))


def test_no_upward_import_and_no_cycle():
    assert violations(graph()) == []


def test_the_training_loop_imports_no_other_command():
    for module, units in LOOP_APART.items():
        path = PKG.joinpath(*module.split(".")[1:]).with_suffix(".py")
        found = {unit_of(m) for m in imported(ast.parse(path.read_text()), module)} & units
        assert not found, f"{module} imports {sorted(found)}: hand it a callback (ddpm/train/callbacks.py) instead"


def test_open_edges_still_exist():
    edges = graph()
    assert [e for e in OPEN if e[1] not in edges.get(e[0], {})] == [], "closed: drop it from OPEN"


@pytest.mark.parametrize(
    "module, code, expected",
    [
        ("ddpm.schedules", "def f():\n    from ddpm.samplers import build_sampler\n", "upward: ddpm.schedules imports samplers"),
        ("ddpm.samplers.scratch", "import ddpm.pretrained\n", "upward: ddpm.samplers.scratch imports pretrained"),
        (
            "ddpm.samplers.gaussian_score",
            "from ddpm.regimes.linear import eps_distances\n",
            "upward: ddpm.samplers.gaussian_score imports regimes",
        ),
        (
            "ddpm.sample.scratch",
            "from ddpm.evaluate.fidelity import fidelity_metrics\n",
            "between commands: ddpm.sample.scratch imports evaluate",
        ),
        ("ddpm.generate", "from ddpm import cli\n", "upward: ddpm.generate imports cli"),
        ("ddpm.diffusion", "from .models import unet\n", "cycle among diffusion, models"),
    ],
)
def test_the_check_catches_a_scratch_import(module, code, expected):
    """A scratch module (or a scratch line added to a real one) that imports the wrong way fails the check."""
    sources = {module_name(p): p.read_text() for p in PKG.rglob("*.py")}
    sources[module] = sources.get(module, "") + "\n" + code
    if module == "ddpm.diffusion":  # a cycle needs both directions: models importing diffusion too
        sources["ddpm.models.unet"] += "\nfrom ddpm.diffusion import GaussianDiffusion\n"
    found = violations(graph(sources))
    assert any(v.startswith(expected) for v in found), found
