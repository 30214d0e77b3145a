"""Import circles, long modules and long functions of a package, by static analysis.

Reads every ``.py`` file with :mod:`ast` (nothing is imported) and prints:

* the import circles: groups of modules that import each other, directly or through
  others (strongly connected components of the import graph), counting every
  ``import`` and ``from ... import`` statement, those under ``if TYPE_CHECKING:`` and
  inside functions included. A submodule importing its own package's ``__init__`` is
  not counted (Python imports the package first anyway);
* the modules over ``--max-lines`` lines (700);
* the functions and methods over ``--max-function-lines`` lines (100), docstring
  included.

    python benchmarks/code_knots.py [sepconv_jax]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def edges(root: Path) -> tuple[dict[str, set[str]], dict[str, Path]]:
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(mod, is_pkg, node.level, node.module)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in files else base)
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                # A submodule importing its own package's __init__ is how Python
                # imports it anyway; only count edges to other modules.
                if t and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph, files


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def long_functions(files: dict[str, Path], limit: int) -> list[tuple[str, str, int]]:
    out = []
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((mod, node.name, n))
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default="sepconv_jax", help="package folder")
    parser.add_argument("--max-lines", type=int, default=700)
    parser.add_argument("--max-function-lines", type=int, default=100)
    args = parser.parse_args()
    root = Path(args.package).resolve()
    graph, files = edges(root)
    cyc = cycles(graph)
    print(f"import cycles (strongly connected groups): {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    long_mods = sorted(
        (len(p.read_text().splitlines()), m)
        for m, p in files.items()
        if len(p.read_text().splitlines()) > args.max_lines
    )
    print(f"modules over {args.max_lines} lines: {len(long_mods)}")
    for n, m in long_mods:
        print(f"  {m}: {n}")
    fns = long_functions(files, args.max_function_lines)
    print(f"functions over {args.max_function_lines} lines: {len(fns)}")
    for m, f, n in fns:
        print(f"  {m}.{f}: {n}")


if __name__ == "__main__":
    main()
