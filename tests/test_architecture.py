"""The import graph follows ARCHITECTURE.md: layers, no cycles, no private names across stages.

The checker reads ``src/segflow`` with :mod:`ast` (nothing is imported), so it also sees imports
made inside functions. Each module belongs to a *unit*: a stage package (``data``, ``infer``...)
or a top-level module (``api``, ``quickstart``). The ground floor (``errors``, ``config``,
``registry``, ``classes``, ``tracking`` and the private ``_*.py`` helpers) is open to every unit
and imports no stage. :data:`ALLOWED` lists, per unit, the units it may import;
:data:`MODULE_EXCEPTIONS` the few single modules a unit may use beyond that, each with the reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

#: Modules every unit may import; they import only each other.
GROUND = frozenset({"errors", "config", "registry", "classes", "tracking", "__init__"})

#: Per unit, the units it may import (besides itself and the ground floor).
ALLOWED: dict[str, frozenset[str]] = {
    "data": frozenset(),
    "models": frozenset({"data"}),
    "report": frozenset({"data"}),
    "infer": frozenset({"data", "models"}),
    "export": frozenset({"data", "models", "infer"}),
    "evaluate": frozenset({"data", "models", "infer", "report"}),
    "train": frozenset({"data", "models", "infer", "evaluate", "report", "export"}),
    # The server runs a bundle: infer and models (and the pixel codecs below), nothing else.
    "serve": frozenset({"infer", "models"}),
    # Label review scores with a model's probabilities (infer), out-of-fold maps (train's
    # format) and evaluate's labelled-image reader and class check; its gallery is a report.
    "review": frozenset({"data", "models", "infer", "evaluate", "report", "train"}),
    "api": frozenset(
        {"data", "models", "infer", "evaluate", "report", "export", "train", "serve", "review"}
    ),
    "quickstart": frozenset({"api", "data", "train"}),
    "cli": frozenset(
        {"api", "quickstart", "data", "models", "infer", "evaluate", "report", "export", "train"}
        | {"serve", "review"}
    ),
    "segflow": frozenset({"api", "data", "models", "infer", "serve", "train"}),
}

#: (unit, module) pairs allowed beyond :data:`ALLOWED`, each for a stated reason.
MODULE_EXCEPTIONS: dict[tuple[str, str], str] = {
    # An uploaded image decodes exactly as a file given to `segflow predict` (one decoder), and
    # the overlay/JPEG a page shows is the one `predict --overlay` writes: the pixel codecs are
    # data's, pure functions over arrays, and the server uses them rather than copy them.
    ("serve", "segflow.data.image_io"): "one image decoder for predict and serve",
    ("serve", "segflow.data.visual"): "one overlay/JPEG encoder for predict and serve",
}

#: Wrong-way imports that exist today, each removed from this list when fixed (target: empty).
KNOWN: set[tuple[str, str]] = set()

#: Module cycles that exist today (each as a sorted pair), removed when fixed (target: empty).
KNOWN_CYCLES: set[tuple[str, str]] = {
    # inside one stage, a lazy import of Decision/PlanContext: harmless, not yet split out
    ("segflow.train.plan_contrast", "segflow.train.plan_rules"),
    # read_bundle_meta(ensemble) returns the ensemble's effective metadata (a lazy import of
    # ensemble_meta) and an ensemble reads its members' metadata: one reader for both kinds of
    # bundle folder; splitting it needs a bundle-folder layer below both (not done yet).
    ("segflow.models.bundle", "segflow.models.ensemble"),
}


@dataclass(frozen=True)
class Import:
    """One ``import`` of a segflow module: who, what, which names, where."""

    source: str
    target: str
    names: tuple[str, ...]
    line: int


def module_name(path: Path, root: Path) -> str:
    """``segflow.data.qa`` for ``root/segflow/data/qa.py`` (packages by their folder)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every segflow import in ``path`` (top level, in functions and under TYPE_CHECKING)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            if target.split(".")[0] == "segflow":
                yield Import(name, target, names, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "segflow":
                    yield Import(name, alias.name, (), node.lineno)


def all_imports(root: Path) -> list[Import]:
    """The segflow imports of every module under ``root/segflow``."""
    found: list[Import] = []
    for path in sorted((root / "segflow").rglob("*.py")):
        found.extend(imports_of(path, root))
    return found


def unit(module: str) -> str:
    """The stage package or top-level module a module belongs to (``segflow`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "segflow"


def is_ground(module: str) -> bool:
    """Whether ``module`` is on the ground floor (open to all, importing no stage)."""
    name = unit(module)
    return name in GROUND or name.startswith("_")


def _resolved(imp: Import, modules: set[str]) -> list[str]:
    """The modules an import reaches: ``from pkg import mod`` reaches ``pkg.mod``, not ``pkg``."""
    subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in modules]
    return subs if subs and len(subs) == len(imp.names) else [imp.target, *subs]


def module_names(root: Path) -> set[str]:
    """Every module under ``root/segflow``."""
    return {module_name(p, root) for p in (root / "segflow").rglob("*.py")}


def wrong_way(root: Path) -> set[tuple[str, str]]:
    """(source, target) pairs that break the layers or reach a private name of another unit."""
    imports, modules = all_imports(root), module_names(root)
    bad: set[tuple[str, str]] = set()
    for imp in imports:
        src = unit(imp.source)
        for target in _resolved(imp, modules):
            dst = unit(target)
            if dst == src or target == "segflow":
                continue
            if is_ground(imp.source) or src == "segflow":
                allowed = is_ground(target) or (src == "segflow" and dst in ALLOWED["segflow"])
            else:
                allowed = is_ground(target) or dst in ALLOWED.get(src, frozenset())
                allowed = allowed or any(
                    target == m or target.startswith(m + ".")
                    for (u, m) in MODULE_EXCEPTIONS
                    if u == src
                )
            private = not is_ground(target) and (
                any(p.startswith("_") for p in target.split(".")[2:])
                or any(n.startswith("_") for n in imp.names)
            )
            if not allowed or private:
                bad.add((imp.source, target))
    return bad


def cycles(root: Path) -> set[tuple[str, str]]:
    """Pairs of modules that reach each other through imports (sorted pairs)."""
    imports, modules = all_imports(root), module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        for target in _resolved(imp, modules):
            if target in modules and target != imp.source:
                graph[imp.source].add(target)
    reach: dict[str, set[str]] = {}
    for start in modules:
        seen: set[str] = set()
        stack = [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        reach[start] = seen
    found: set[tuple[str, str]] = set()
    for a in modules:
        for b in graph[a]:
            if a in reach[b] and not _package_init(a, b):
                found.add((min(a, b), max(a, b)))
    return found


def _package_init(a: str, b: str) -> bool:
    """A package's ``__init__`` re-exporting its own module is not a cycle worth naming."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_units_are_all_named() -> None:
    units = {unit(m) for m in module_names(SRC)}
    unnamed = {u for u in units if u not in ALLOWED and not is_ground("segflow." + u)}
    assert not unnamed, f"add these to ALLOWED (with their layer): {sorted(unnamed)}"


def test_imports_point_down_the_layers() -> None:
    bad = wrong_way(SRC)
    assert bad - KNOWN == set(), "imports against ARCHITECTURE.md's layers"
    assert KNOWN - bad == set(), "fixed: remove these from KNOWN"


def test_no_import_cycles() -> None:
    found = cycles(SRC)
    assert found - KNOWN_CYCLES == set(), "new import cycles"
    assert KNOWN_CYCLES - found == set(), "fixed: remove these from KNOWN_CYCLES"


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "segflow" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_checker_flags_a_wrong_way_import(tmp_path: Path) -> None:
    root = _fake_tree(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "data/__init__.py": "",
            "data/dataset.py": "",
            "data/image_io.py": "",
            "data/qa.py": "def f():\n    from segflow.serve.app import create_app\n",
            "serve/__init__.py": "",
            "serve/app.py": "from segflow.infer.predictor import Predictor\n",
            "serve/render.py": "from segflow.data import image_io\nfrom ..data import dataset\n",
            "infer/__init__.py": "",
            "infer/predictor.py": "from segflow.errors import DataError\nfrom . import tiling\n",
            "infer/tiling.py": "",
            "train/__init__.py": "",
            "train/callbacks.py": "from segflow.report._html import new_figure\n",
            "export/__init__.py": "",
            "export/onnx.py": "from segflow.infer.backends import _session\n",
        },
    )
    assert wrong_way(root) == {
        ("segflow.data.qa", "segflow.serve.app"),  # a stage importing one above it
        ("segflow.serve.render", "segflow.data.dataset"),  # serve beyond infer/models/codecs
        ("segflow.train.callbacks", "segflow.report._html"),  # a private module of another stage
        ("segflow.export.onnx", "segflow.infer.backends"),  # a private name of another stage
    }


def test_checker_flags_a_cycle(tmp_path: Path) -> None:
    root = _fake_tree(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "from segflow.models.bundle import load\n",
            "models/bundle.py": "from segflow.models.factory import create\n",
            "models/factory.py": "def f():\n    from segflow.models import bundle\n",
        },
    )
    assert cycles(root) == {("segflow.models.bundle", "segflow.models.factory")}


#: Body lines (after the signature and docstring) above which a function needs a ``# Long:``
#: comment right above its ``def`` (or decorators) saying why it is not split.
MAX_BODY_LINES = 80


def long_functions(root: Path) -> dict[str, int]:
    """``module:function`` -> body lines, for functions over the limit without a ``# Long:``."""
    found: dict[str, int] = {}
    for path in sorted((root / "segflow").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if not body or body[-1].end_lineno is None:
                continue
            length = body[-1].end_lineno - body[0].lineno + 1
            if length > MAX_BODY_LINES and not _says_why(lines, node):
                found[f"{module_name(path, root)}:{node.name}"] = length
    return found


def _says_why(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the comment block right above the ``def`` (or decorators) has a ``# Long:``."""
    row = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 2
    while row >= 0 and lines[row].strip().startswith("#"):
        if lines[row].strip().startswith("# Long:"):
            return True
        row -= 1
    return False


def test_long_functions_say_why() -> None:
    assert long_functions(SRC) == {}, "split these, or say why above the def ('# Long: ...')"


def test_length_checker_flags_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_BODY_LINES + 1))
    root = _fake_tree(
        tmp_path,
        {
            "a.py": f'def long():\n    """Doc."""\n{body}',
            "b.py": f"# Long: a table of steps,\n# one per line\ndef fine():\n{body}",
            "d.py": f"# a comment that says nothing\ndef unexplained():\n{body}",
            "c.py": "def short():\n    return 1\n",
        },
    )
    assert long_functions(root) == {
        "segflow.a:long": MAX_BODY_LINES + 1,
        "segflow.d:unexplained": MAX_BODY_LINES + 1,
    }
