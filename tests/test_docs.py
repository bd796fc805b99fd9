"""The README's configuration reference is generated; it must match the real flags."""

from __future__ import annotations

from pathlib import Path

from forsaken.docgen import render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current() -> None:
    text = README.read_text()
    assert render(text) == text, "README config reference is stale: run `make docs`"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:1500]
    assert "make demo" in head and "make test" in head
