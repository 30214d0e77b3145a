"""The public face: ``__all__``, the README's API list and the console script agree."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import sepconv_jax
from sepconv_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _readme_api_names() -> set[str]:
    """Names listed in the README between the API markers, one per ``- `name` `` bullet."""
    text = README.read_text()
    section = text.split("<!-- api-start -->")[1].split("<!-- api-end -->")[0]
    return set(re.findall(r"^- `sepconv_jax\.(\w+)", section, flags=re.M))


def test_all_matches_readme_api_list():
    assert set(sepconv_jax.__all__) == _readme_api_names()


def test_every_public_name_is_importable_and_documented():
    for name in sepconv_jax.__all__:
        obj = getattr(sepconv_jax, name)
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name


def test_cli_demo_is_wired(capsys):
    parser = cli._parser()
    args = parser.parse_args(["demo", "--quick"])
    assert args.command == "demo" and callable(args.func)


def test_readme_examples_run(capsys):
    """Every example under the README's "Example" heading runs as written, and each
    ``print(...)  # expected`` line prints what its comment says."""
    section = README.read_text().split("## Example")[1].split("\n## ")[0]
    blocks = [b.split("```")[0] for b in section.split("```python")[1:]]
    assert len(blocks) == 2
    for code in blocks:
        expected = [line.split("# ")[-1] for line in code.splitlines() if line.startswith("print(")]
        exec(compile(code, "README-example", "exec"), {})
        assert capsys.readouterr().out.splitlines() == expected


_IMPORT_PROBE = textwrap.dedent(
    """
    import json, sys
    import sepconv_jax
    first = sorted(sys.modules)
    listed = sorted(dir(sepconv_jax))
    touched = sepconv_jax.models.MobileNetV1.__module__
    print(json.dumps({"first": first, "dir": listed, "touched": touched,
                      "after": sorted(sys.modules)}))
    """
)


def test_import_loads_the_core_only():
    """``import sepconv_jax`` in a fresh process loads the core; the model zoo, interop
    and the applications load when first touched, and Keras and PyTorch never do."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    first = set(out["first"])
    for name in ("sepconv_jax.models", "sepconv_jax.interop", "sepconv_jax.apps", "keras", "torch"):
        assert name not in first, name
    core = ("ops", "linen", "nnx", "cost", "kernels.op", "kernels.dispatch")
    assert {f"sepconv_jax.{name}" for name in core} <= first
    # The lazy submodules are still listed, and load on first attribute access.
    assert set(sepconv_jax.__all__) <= set(out["dir"])
    assert out["touched"] == "sepconv_jax.models.mobilenet_v1"
    assert "sepconv_jax.models" in out["after"] and "sepconv_jax.apps" not in out["after"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        sepconv_jax.no_such_name  # noqa: B018
