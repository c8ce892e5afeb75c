"""The runtime's folders are its layers (docs/architecture.md): base < media < engine < commands.

Every module under nst_ort/ is parsed with `ast` (imports at the top AND inside functions, and module
names written as strings: the subcommand table, a child process's -c). A module may import its own
layer and the layers below; the imports between modules form no circle; an import inside a function
is on ALLOWED below with its reason (an optional extra, or a start-up cost that was measured).
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

ORDER = ("base", "media", "engine", "commands")
TOP = {"__init__", "__main__"}  # the package itself: the public API and `python -m nst_ort`, above every layer

# (importing module, imported module) -> why the import waits for the function that needs it.
# Modules are named from nst_ort ("engine.stylize"); others by their own name ("av", "tqdm").
RAY = "the [ray] extra, needed only by --workers / --ray-address"
RUN_PATH = "start-up: the engine's run path (and Pillow) is not loaded for --help, --version or a bad flag"
SUBCOMMAND = "subcommand table: a subcommand's modules load only when it is named"
ALLOWED = {
    # optional extras: a missing one is a one-line error naming the extra, where the feature is used
    **dict.fromkeys([("commands.distributed", "ray"), ("commands.distributed", "ray.exceptions")], RAY),
    # start-up (benchmarks/results/layout_startup.md)
    **dict.fromkeys([("commands.cli", m) for m in ("engine.stylize", "engine.checkpoint", "media.images",
                                                   "commands.report", "commands.distributed")], RUN_PATH),
    ("media.outputs", "PIL"): "start-up: outputs is loaded for --help; Pillow (~12 ms) only when it checks",
    ("base.extras", "importlib.metadata"): "start-up: ~15 ms, only when asked which onnxruntime is installed",
    ("commands.report", "tqdm"): "start-up: tqdm (~30 ms) only when a progress bar is drawn on a terminal",
    **dict.fromkeys([("commands.cli", m) for m in ("commands.check", "commands.video", "commands.web")], SUBCOMMAND),
    # order: what entry checks must run before numpy, onnxruntime or the CLI load
    ("commands.entry", "onnxruntime"): "the check itself: does onnxruntime import whole? (one line, exit 5)",
    ("commands.entry", "commands.cli"): "after the memory and onnxruntime checks: OpenBLAS (numpy) exits the "
                                        "process when its buffers do not fit, so numpy loads after them",
    ("commands.entry", "commands.web"): "`nst-ort web` runs no graph: onnxruntime is neither loaded nor needed",
    # platform
    ("base.errors", "resource"): "Unix only: on Windows the ImportError is caught and the line says less",
}


# "nst_ort.commands.check:main" (the subcommand table), "from nst_ort.x.y import z" / "import nst_ort.x.y" (-c code)
STRING_IMPORT = re.compile(r"^nst_ort\.([a-z_.]+?)(?::\w+)?$|(?:from|import) nst_ort\.([a-z_]+(?:\.[a-z_]+)*)")


@dataclass(frozen=True)
class Edge:
    importer: str  # "engine.stylize"
    imported: str  # "media.images", or a module outside nst_ort ("av")
    line: int
    in_function: bool


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__") or "__init__"


def _resolve(root: Path, importer: str, is_package: bool, level: int, module: str | None, name: str) -> str:
    """The nst_ort module an ImportFrom brings in: `from ..media import images` is media.images, a
    module; `from ..base.errors import UsageError` is base.errors."""
    parts = importer.split(".") if importer != "__init__" else []
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    target = [*base, *(module.split(".") if module else [])]
    candidate = [*target, name]
    if (root.joinpath(*candidate).with_suffix(".py")).is_file() or (root.joinpath(*candidate) / "__init__.py").is_file():
        return ".".join(candidate)
    return ".".join(target) or "__init__"


def edges(root: Path) -> list[Edge]:
    out = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(root, path)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))

        def visit(node, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        name = alias.name
                        if name == "nst_ort" or name.startswith("nst_ort."):
                            name = name.removeprefix("nst_ort").lstrip(".") or "__init__"
                        out.append(Edge(importer, name, child.lineno, fn))
                elif isinstance(child, ast.ImportFrom):
                    if child.level == 0:
                        mod = child.module or ""
                        if mod == "nst_ort" or mod.startswith("nst_ort."):
                            rel = mod.removeprefix("nst_ort").lstrip(".")
                            for alias in child.names:
                                out.append(Edge(importer, _resolve(root, "__init__", True, 1, rel or None, alias.name),
                                                child.lineno, fn))
                        elif mod != "__future__":
                            out.append(Edge(importer, mod, child.lineno, fn))
                    else:
                        for alias in child.names:
                            out.append(Edge(importer, _resolve(root, importer, is_package, child.level, child.module,
                                                               alias.name), child.lineno, fn))
                elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                    # a module named in a string is imported later (importlib, a child's -c): lazily.
                    # Prose naming a module (a docstring) is not an import.
                    for m in STRING_IMPORT.finditer(child.value):
                        name = m.group(1) or m.group(2)
                        if (root.joinpath(*name.split(".")).with_suffix(".py")).is_file():
                            out.append(Edge(importer, name, child.lineno, True))
                visit(child, fn)

        visit(tree, False)
    return out


def internal(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return name == "__init__" or path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(name: str) -> str | None:
    """The module's layer, "top" for the package itself, None for a module outside every layer."""
    first = name.split(".")[0]
    if "." not in name:
        return "top" if name in TOP or first in ORDER else None
    return first if first in ORDER else None


def rank(name: str) -> int:
    return len(ORDER) if layer(name) == "top" else ORDER.index(layer(name))


def problems(root: Path, allowed: dict[tuple[str, str], str]) -> list[str]:
    """Every rule the tree under `root` (a copy of nst_ort/) breaks, one line each."""
    found, graph = [], {}
    all_edges = edges(root)
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path)
        graph.setdefault(name, set())
        if layer(name) is None:
            found.append(f"{name}: in no layer (nst_ort/{'/'.join(ORDER)}/)")
    used = set()
    for e in all_edges:
        where = f"{e.importer}:{e.line}"
        if internal(root, e.imported) and e.imported != e.importer:
            graph[e.importer].add(e.imported)
            lo, hi = layer(e.imported), layer(e.importer)
            if lo is not None and hi is not None and rank(e.imported) > rank(e.importer):
                found.append(f"{where}: {hi} imports {e.imported}, a higher layer")
        if e.in_function and e.imported != e.importer:  # a module naming itself (its own -c, its prog)
            key = (e.importer, e.imported)
            if key in allowed:
                used.add(key)
            else:
                found.append(f"{where}: {e.imported} imported inside a function, not on the allow-list")
    found += [f"allow-list entry {k} matches no import inside a function" for k in allowed if k not in used]
    found += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_runtime_keeps_its_layers():
    found = problems(ROOT / "nst_ort", ALLOWED)
    assert not found, "\n".join(found)


def test_every_allowed_import_says_why():
    for key, reason in ALLOWED.items():
        assert len(reason) > 20, key


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_what_today_would_break(tmp_path):
    """The checks fail where they should: an upward import, a circle through a function-level import,
    an unlisted import inside a function, a flat module outside the layers, a stale allow-list entry."""
    root = _tree(tmp_path / "nst_ort", {
        "__init__.py": "",
        "base/__init__.py": "", "base/errors.py": "from ..engine.config import Config\n",
        "engine/__init__.py": "", "engine/config.py": "from ..base import errors\n",
        "engine/loop.py": "def f():\n    from . import stylize\n",
        "engine/stylize.py": "from .loop import f\n",
        "flat.py": "import os\n",
    })
    found = problems(root, {("engine.gone", "media.images"): "a reason long enough to pass"})
    text = "\n".join(found)
    assert "base.errors:1: base imports engine.config, a higher layer" in text
    assert "engine.loop:2: engine.stylize imported inside a function, not on the allow-list" in text
    assert "import circle: engine.loop -> engine.stylize" in text
    assert "import circle: base.errors -> engine.config" in text
    assert "flat: in no layer" in text
    assert "('engine.gone', 'media.images') matches no import" in text
    assert problems(_tree(tmp_path / "good", {"__init__.py": "", "base/__init__.py": "", "base/errors.py": ""}), {}) == []


def test_checker_fails_on_the_flat_folder(tmp_path):
    """The layout before issue 22 (one flat folder, a circle through cli, flags and distributed)."""
    root = _tree(tmp_path / "nst_ort", {
        "__init__.py": "", "cli.py": "from . import flags\n\ndef main():\n    from . import distributed\n",
        "flags.py": "def build():\n    from .distributed import add_arguments\n",
        "distributed.py": "from .errors import NstError\n\ndef batch():\n    from .cli import main\n",
        "errors.py": "",
    })
    found = problems(root, {})
    assert any(p.startswith("import circle: cli -> distributed -> flags") for p in found), found
    assert "cli: in no layer (nst_ort/base/media/engine/commands/)" in found


@pytest.mark.parametrize("name, expected", [("engine.stylize", "engine"), ("__init__", "top"), ("cli", None),
                                            ("media", "top")])
def test_layer_of_a_module(name, expected):
    assert layer(name) == expected
