"""The README's Python examples run as written (from the repository root)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(
    code: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path))
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.strip(), "every README example prints its result"
    # A `print(...)  # text` line in the README promises that text in the output.
    for promised in re.findall(r"^print\(.*\)\s+#\s*(.+)$", code, re.M):
        assert promised.strip() in out
    assert "Traceback" not in out
    assert os.getcwd() == str(ROOT)
