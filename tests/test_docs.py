"""The generated reference pages are checked in exactly as the generator prints them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import events
from engine.cli import docs
from handlers import BUILTIN_NAMES

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("rel", sorted(docs.pages()))
def test_checked_in_page_matches_the_generator(rel: str) -> None:
    """Fails when code changed and the page was not regenerated
    (run ``python -m engine.cli.docs``)."""
    assert (ROOT / rel).read_text(encoding="utf-8") == docs.pages()[rel], (
        f"{rel} is out of date: run python -m engine.cli.docs"
    )


def test_handlers_page_covers_every_builtin_and_its_attributes() -> None:
    """Each built-in handler has a section; each declared attribute a row with its
    type and default."""
    page = docs.handlers_page()
    for name in BUILTIN_NAMES:
        assert f"`{name}`" in page
    assert "| `max_tool_rounds` | int | `3` |" in page
    assert "| `tools` | bool | `false` |" in page
    assert "| `timeout` | duration |" in page  # the engine's own node attributes too


def test_events_page_lists_every_event_with_its_fields() -> None:
    """Every event type in ``engine.events.Event`` has a section with a row per field."""
    page = docs.events_page()
    for cls in events.Event.__args__:
        assert f"## `{cls.__name__}`" in page
        fields = getattr(cls, "__dataclass_fields__", None) or cls.__struct_fields__
        for field in fields:
            assert f"| `{field}` |" in page


def test_check_mode_reports_stale_pages_and_write_mode_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--check`` exits 1 naming a missing or edited page; a plain run writes them."""
    assert docs.main(["--check"], root=str(tmp_path)) == 1
    assert "docs/handlers.md: out of date" in capsys.readouterr().err
    assert docs.main([], root=str(tmp_path)) == 0
    assert docs.main(["--check"], root=str(tmp_path)) == 0
    page = tmp_path / "docs" / "events.md"
    page.write_text(page.read_text() + "edited\n")
    assert docs.main(["--check"], root=str(tmp_path)) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("docs/events.md: out of date (run: python -m engine.cli.docs)")
    )
