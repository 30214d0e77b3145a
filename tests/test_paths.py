"""Every dotted path the README and the docstrings name resolves the way users type it.

A path such as ``sepconv_jax.interop.timm.convert`` is resolved by attribute access
from ``import sepconv_jax`` alone (``sj.interop.timm.convert``), never by importing
the submodule first. Each module the paths name is resolved in a fork of one process
taken right after ``import sepconv_jax``, so that no path is reachable only because
another path's import happened to load its module.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sepconv_jax"
README = ROOT / "README.md"

#: Modules that ``import sepconv_jax`` must not load: the optional frameworks, the
#: model zoo, interop and the exporters load when first touched.
HEAVY = (
    "torch",
    "tensorflow",
    "keras",
    "timm",
    "onnx",
    "onnxruntime",
    "jax2onnx",
    "sepconv_jax.models",
    "sepconv_jax.interop",
    "sepconv_jax.export",
    "sepconv_jax.apps",
)

_NAME = r"[A-Za-z_]\w*"
# The README names subpackages relative to the package too: `interop.timm`, `apps.train`.
_SUBPACKAGES = ("apps", "cost", "export", "interop", "kernels", "models", "streaming")


def _docstrings() -> list[tuple[str, str]]:
    """``(file, text)`` of the README and of every docstring in the package (parsed, not run)."""
    found = [("README.md", README.read_text())]
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    found.append((str(path.relative_to(ROOT)), doc))
    return found


def paths_in(text: str, *, relative: bool = False) -> set[str]:
    """The ``sepconv_jax.…`` paths a text names, with aliases and ``from … import`` spelled out.

    With ``relative``, Markdown code spans that start with a subpackage
    (`` `interop.timm` ``) count too, as the README writes them.

    >>> sorted(paths_in("import sepconv_jax as sj; sj.interop.timm.convert(m)"))
    ['sepconv_jax.interop.timm.convert']
    >>> sorted(paths_in(">>> from sepconv_jax.models import blocks, MobileNetV1 as M"))
    ['sepconv_jax.models', 'sepconv_jax.models.MobileNetV1', 'sepconv_jax.models.blocks']
    >>> text = "`apps.train`, :mod:`~sepconv_jax.kernels.op`, not flax.nnx.Rngs nor ``models.md``"
    >>> sorted(paths_in(text, relative=True))
    ['sepconv_jax.apps.train', 'sepconv_jax.kernels.op']
    """
    heads = {"sepconv_jax"} | set(re.findall(rf"import sepconv_jax as ({_NAME})", text))
    found = set()
    for head, tail in re.findall(rf"(?<![\w.])({_NAME})((?:\.{_NAME})+)", text):
        if head in heads:
            found.add("sepconv_jax" + tail)
    for module, names in re.findall(
        rf"^\s*(?:>>>\s*)?from\s+(sepconv_jax(?:\.{_NAME})*)\s+import\s+([\w ,]+?)\s*$",
        text,
        flags=re.M,
    ):
        found.update(f"{module}.{name.split(' as ')[0].strip()}" for name in names.split(","))
    if relative:
        span = rf"(?<!`)`((?:{'|'.join(_SUBPACKAGES)})(?:\.{_NAME})+)[`(]"
        found.update(f"sepconv_jax.{path}" for path in re.findall(span, text))
    return found


def documented_paths() -> dict[str, str]:
    """Every documented path, with the first file that names it."""
    where: dict[str, str] = {}
    for file, text in _docstrings():
        for path in sorted(paths_in(text, relative=file == "README.md")):
            where.setdefault(path, file)
    return where


def module_of(path: str) -> str:
    """The longest prefix of ``path`` that is a module of the package, from its files."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        folder = ROOT.joinpath(*parts[:n])
        if folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file():
            return ".".join(parts[:n])
    raise ValueError(f"{path} is not in the package")


_PROBE = textwrap.dedent(
    """
    import json, os, sys, warnings

    import sepconv_jax

    heavy, groups = json.loads(sys.stdin.read())
    loaded = sorted(name for name in heavy if name in sys.modules)

    def resolve(path):
        obj = sepconv_jax
        for part in path.split(".")[1:]:
            obj = getattr(obj, part)
        return obj

    def check(paths):
        problems = {}
        for path in paths:
            try:
                resolve(path)
            except Exception as e:
                missing = getattr(e, "name", None)
                optional = isinstance(e, ModuleNotFoundError) and missing and not (
                    missing.startswith("sepconv_jax"))
                problems[path] = ("skip: " if optional else "") + f"{type(e).__name__}: {e}"
        return problems

    problems = {}
    warnings.simplefilter("ignore", DeprecationWarning)  # fork in a jax process
    for module, paths in groups.items():
        # A fork is a fresh copy of this process, right after `import sepconv_jax`.
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            with os.fdopen(write, "w") as out:
                out.write(json.dumps(check([module, *paths])))
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            problems.update(json.loads(answer.read() or '{"?": "the fork died"}'))
        os.waitpid(pid, 0)
    print(json.dumps({"loaded": loaded, "problems": problems}))
    """
)


def unreachable_paths(paths: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Runs the probe: ``(heavy modules loaded by the import, {path: why it failed})``."""
    groups: dict[str, list[str]] = {}
    for path in sorted(paths):
        groups.setdefault(module_of(path), []).append(path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        input=json.dumps([HEAVY, groups]),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["loaded"], out["problems"]


def test_the_collector_finds_the_documented_subpackages():
    paths = documented_paths()
    # A few that the README names, in each of its spellings.
    for path in ("sepconv_jax.interop.timm", "sepconv_jax.cost.profile", "sepconv_jax.apps.train"):
        assert path in paths, path
    assert len(paths) > 100


def test_every_documented_path_resolves_by_attribute_access():
    paths = documented_paths()
    loaded, problems = unreachable_paths(paths)
    assert loaded == [], f"`import sepconv_jax` loaded {loaded} up front"
    failed = {
        p: f"{why} (named in {paths.get(p, 'the paths below it')})"
        for p, why in problems.items()
        if not why.startswith("skip: ")
    }
    assert failed == {}, "\n".join(f"{p}: {why}" for p, why in sorted(failed.items()))


def test_the_probe_reports_an_unreachable_path():
    """The probe itself can fail: a misspelled path and a submodule nobody binds."""
    _, problems = unreachable_paths(
        {"sepconv_jax.cost.no_such_name": "", "sepconv_jax.interop.no_such_module": ""}
    )
    assert set(problems) == {"sepconv_jax.cost.no_such_name", "sepconv_jax.interop.no_such_module"}
    assert all("AttributeError" in why for why in problems.values()), problems
