"""The house's floors, checked over the source (issue 15, item 4): no import cycle among pushauth's and the
workers' modules, no core module (runtime, domain, infrastructure, leaves) importing a front (`pushauth.web`,
`pushauth.cli`, `pushauth.radius`, `pushauth.oidc`) or the workers, and EVALSHA sent from one place only
(`pushauth/store/scripts.py`).

The import graph is read with `ast`, not by importing: every `import` and `from ... import`, at module level
or inside a function (a late import is still a dependency), except those under `if TYPE_CHECKING:` (never
run). Importing `a.b.c` imports the packages `a` and `a.b` too (their `__init__` runs first), so those are
edges as well; `from a.b import c` imports the module `a.b.c` when there is one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("pushauth", "workers")
# The fronts (ARCHITECTURE.md's top floor): HTTP, the CLI, the worker processes, RADIUS, and the OpenID
# Provider (its protocol in pushauth/oidc/, its routes in pushauth/web/). What may import them: each other,
# and the entry point.
FRONTS = ("pushauth.web", "pushauth.cli", "workers", "pushauth.radius", "pushauth.oidc")
OUTER = (*FRONTS, "pushauth.__main__")
# The one part of a front a core module may import: its settings, which pushauth/config.py gathers beside
# every package's (so `[radius]` is checked when the config is loaded, wherever it is run), and the
# package above them (its __init__ runs first). Checked to import nothing above the infrastructure below.
FRONT_SETTINGS = ("pushauth.radius.settings", "pushauth.oidc.settings")
# The domain packages (floor 2), for the check above.
DOMAIN = ("challenges", "devices", "accounts", "detection", "alerts", "push", "ratelimit", "codes", "audit",
          "operators")


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, but not the body of an `if TYPE_CHECKING:` (its `else:` runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def _with_packages(name: str) -> set[str]:
    """`name` and every package above it."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _imported(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """The modules of this project that `module` imports (packages above them included, but not the
    packages `module` is in: Python has begun importing those before `module`, and a submodule import
    finds them in `sys.modules`; naming one, `from pushauth.store import KeySpace`, is an edge)."""
    named: set[str] = set()
    for node in _walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & MODULES.keys()
            named.update(submodules)
            if len(submodules) < len(node.names):  # a name defined in `source` itself
                named.add(source)
    enclosing = _with_packages(module) - {module}
    out: set[str] = set()
    for name in named:
        out.update(n for n in _with_packages(name) - enclosing if n in MODULES)
        if name in MODULES:
            out.add(name)
    out.discard(module)
    return out


GRAPH = {module: _imported(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
         for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, c) for c in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first, inside the component)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {component}")  # pragma: no cover


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_is_read() -> None:
    """What the reader counts as an import, on a made-up module of pushauth.store."""
    source = """
from typing import TYPE_CHECKING
import pushauth.crypto.secrets
from pushauth.store import keyspace
from pushauth.challenges import ADD_DEVICE
from . import connection

if TYPE_CHECKING:
    from pushauth.web.app import create_app
else:
    from pushauth import clock


def late() -> None:
    from pushauth.alerts.store import AlertStore
"""
    assert _imported("pushauth.store.example", source) == {
        "pushauth.crypto", "pushauth.crypto.secrets",  # a module and the packages above it (but `pushauth`,
        # which holds pushauth.store.example itself)
        "pushauth.store.keyspace",  # a submodule named by `from`; its own package is not an edge
        "pushauth.challenges",  # a name from a package's __init__
        "pushauth.store.connection",  # relative
        "pushauth.clock",  # the `else:` of TYPE_CHECKING runs
        "pushauth.alerts", "pushauth.alerts.store"}  # inside a function
    assert "pushauth.store.keyspace" in GRAPH["pushauth.store"]
    assert len(GRAPH) > 80


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e2", "e"]]


def test_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def _excused(target: str) -> bool:
    """A front's settings module, or the front package itself reached only on the way to them."""
    return target in FRONT_SETTINGS or target in {s.rsplit(".", 1)[0] for s in FRONT_SETTINGS}


def test_no_core_module_imports_a_front_or_a_worker() -> None:
    upward = sorted((module, target) for module, targets in GRAPH.items() if not _under(module, OUTER)
                    for target in targets if _under(target, FRONTS) and not _excused(target))
    assert not upward, "core modules importing a front (web, cli, workers, radius, oidc):\n" + "\n".join(
        f"  {module} imports {target}" for module, target in upward)


def test_the_front_settings_core_modules_import_stay_at_the_bottom() -> None:
    """What `_excused` lets a core module reach: the fronts' package __init__s run nothing, and their settings
    import no front, no runtime and no domain service (pushauth.directory and the leaves only)."""
    for package in {s.rsplit(".", 1)[0] for s in FRONT_SETTINGS}:
        assert GRAPH[package] == set(), f"{package}/__init__.py imports {sorted(GRAPH[package])}"
    for module in FRONT_SETTINGS:
        above = sorted(t for t in GRAPH[module] if _under(t, (*OUTER, "pushauth.runtime")) or (
            t.count(".") >= 1 and t.split(".")[1] in DOMAIN))
        assert not above, f"{module} imports {above}"
    # The excuse covers what config.py imports today, and nothing a core module imports is left unexplained.
    assert {t for t in GRAPH["pushauth.config"] if _under(t, FRONTS)} == {
        *FRONT_SETTINGS, *(s.rsplit(".", 1)[0] for s in FRONT_SETTINGS)}


def _evalsha(node: ast.AST) -> str | None:
    """The EVALSHA a node names: redis-py's `evalsha`/`evalsha_ro`, or the command as a string."""
    if isinstance(node, ast.Attribute):
        word = node.attr
    elif isinstance(node, ast.Name):
        word = node.id
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        word = node.value.strip()
    else:
        return None
    return word if word.lower() in ("evalsha", "evalsha_ro") else None


def test_only_the_script_runner_sends_evalsha() -> None:
    """Every script runs through `pushauth.store.scripts.Script` (EVALSHA, then EVAL on NOSCRIPT); nothing
    else sends EVALSHA (or calls redis-py's `evalsha`/`evalsha_ro`). Comments and docstrings may name it."""
    allowed = REPO / "pushauth" / "store" / "scripts.py"
    found = []
    for path in MODULES.values():
        if path == allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (name := _evalsha(node)) is not None:
                found.append(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}: {name}")
    assert not found, "EVALSHA outside pushauth/store/scripts.py:\n" + "\n".join(found)
    assert any(_evalsha(node) for node in ast.walk(ast.parse(allowed.read_text(encoding="utf-8"))))



# A backticked token ARCHITECTURE.md names as a file or folder of this repository: no spaces, no
# placeholders (`<package>/lua/`), no HTTP path (`/v1/...`), not a bare extension (`.lua`), and either a
# `/` or a file extension.
_DOC_PATH = re.compile(r"(\w[\w.-]*|\.[\w.-]+(?=/))(/[\w.*-]*)*")
_EXTENSIONS = (".py", ".lua", ".md", ".toml", ".txt", ".json", ".cfg")


def _doc_paths(text: str) -> list[str]:
    return [token for token in re.findall(r"`([^`\n]+)`", text)
            if _DOC_PATH.fullmatch(token) and ("/" in token or token.endswith(_EXTENSIONS))]


def _exists(token: str) -> bool:
    """From the repository's root or from pushauth/ (the page's tables say `web/app.py`); a bare file
    name, anywhere in the source; a glob, when it matches something."""
    bases = (REPO, REPO / "pushauth")
    if "*" in token:
        return any(any(base.glob(token)) for base in bases)
    if "/" not in token:
        return any(any(root.rglob(token)) for root in bases) or (REPO / token).exists()
    return any((base / token).exists() for base in bases)


def test_every_path_architecture_names_exists() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    paths = _doc_paths(text)
    assert len(paths) > 100
    assert {"pushauth/radius/", "runtime/jobs.py", "errors.py", ".ci/run"} <= set(paths)
    assert _doc_paths("`web/app.py`, `<package>/lua/`, `/v1/challenges`, `ROLES`, `python -m x`, `a.py`, "
                      "`.lua`, `.ci/run`, `pushauth/*/lua/*.lua`") == [
        "web/app.py", "a.py", ".ci/run", "pushauth/*/lua/*.lua"]
    missing = sorted({p for p in paths if not _exists(p)})
    assert not missing, "ARCHITECTURE.md names paths that do not exist:\n" + "\n".join(
        f"  {p}" for p in missing)


def test_architecture_names_every_package_and_module_of_pushauth() -> None:
    """Each package under pushauth/ and each top-level module is on the page, so a new one is placed on a
    floor when it is added."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(_doc_paths(text))
    expected = {f"pushauth/{p.name}/" for p in (REPO / "pushauth").iterdir()
                if (p / "__init__.py").exists()}
    expected |= {p.name for p in (REPO / "pushauth").glob("*.py") if p.name != "__init__.py"}
    missing = sorted(e for e in expected if e not in named and f"pushauth/{e}" not in named)
    assert not missing, "not on ARCHITECTURE.md's floors: " + ", ".join(missing)
