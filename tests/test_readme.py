"""The README's Python examples run as written, from a directory that is not the checkout
(so they use the package, never a path relative to the repository), and every extra the
project declares is named in the README next to what needs it."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
EXTRAS = sorted(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_from_any_directory(
    code: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths such as "graphs/turn.dot" find nothing here
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.strip(), "every README example prints its result"
    # A `print(...)  # text` line in the README promises that text in the output.
    for promised in re.findall(r"^print\(.*\)\s+#\s*(.+)$", code, re.M):
        assert promised.strip() in out
    assert "Traceback" not in out
    assert os.getcwd() == str(elsewhere) and os.listdir(elsewhere) == []


def test_no_python_example_names_a_path_in_the_checkout() -> None:
    for code in BLOCKS:
        assert not re.search(r"""["'](graphs|examples|bench)/""", code), code


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_extra_is_named_with_its_install_command_and_use(extra: str) -> None:
    """Named as `NAME` in the table of extras, with the pip command that installs it."""
    assert re.search(rf"^\| `{re.escape(extra)}` \| \S", README, re.M), extra
    assert f'.[{extra}]"' in README, extra


def test_the_readme_names_no_extra_the_project_lacks() -> None:
    named = set(re.findall(r'\.\[([a-z0-9_-]+)\]"', README))
    assert named <= set(EXTRAS), named - set(EXTRAS)
