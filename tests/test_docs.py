"""The README's configuration reference is generated; it must match the real flags."""

from __future__ import annotations

from pathlib import Path

from forsaken.lab.docgen import render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current() -> None:
    text = README.read_text()
    assert render(text) == text, "README config reference is stale: run `make docs`"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:1500]
    assert "make demo" in head and "make test" in head


def _user_visible_files() -> list[Path]:
    """What users read: the README, docs/, and the source (its comments and help texts)."""
    root = README.parent
    files = [README, *sorted((root / "docs").glob("*.md"))]
    for top in ("forsaken", "cli", "lab", "client", "common", "server", "protos", "deploy"):
        files += [
            p
            for p in sorted((root / top).rglob("*"))
            if p.is_file()
            and p.suffix in {".py", ".proto", ".yml", ".md", ""}
            and "_pb2" not in p.name
        ]
    return files


def test_docs_cite_no_document_users_do_not_have() -> None:
    # The team's design notes are not shipped; the evaluation protocol is docs/evaluation.md.
    offenders = [
        f"{p.relative_to(README.parent)}:{n}"
        for p in _user_visible_files()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if "DESIGN" in line
    ]
    assert not offenders, offenders
    assert "docs/evaluation.md" in README.read_text()


def test_help_texts_cite_no_document_users_do_not_have() -> None:
    from forsaken.cli.main import build_parser
    from tests.test_cli import _parsers

    for name, parser in _parsers(build_parser()):
        assert "DESIGN" not in parser.format_help(), name
