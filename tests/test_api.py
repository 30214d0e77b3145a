"""The public face: ``__all__``, the README's API list and the console script agree."""

from __future__ import annotations

import pathlib
import re

import sepconv_jax
from sepconv_jax import cli

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


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
