"""The user documentation: README.md and docs/*.md stay short, linked and in step with the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

README_MAX_LINES = 200
# A table row whose first cell is one variable in backticks: | `NAME` | default | meaning |
_VARIABLE_ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|", re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# What a commit hash looks like in prose: 7 to 40 hex digits, with at least one digit and one letter.
_HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")


def documented_variables() -> dict[str, str]:
    """The variables of docs/configuration.md's tables, with their default cell."""
    return {name: default.strip() for name, default in _VARIABLE_ROW.findall(CONFIGURATION.read_text())}


def shown(default: object) -> str:
    """A field's default as the table writes it."""
    if default is None:
        return "unset"
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def relative_links(page: Path) -> list[str]:
    """The targets of the page's Markdown links that point into the repository (code blocks left out)."""
    text = _FENCE.sub("", page.read_text())
    return [target for target in _LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


def test_the_configuration_reference_lists_every_setting() -> None:
    # Given the Settings fields and the variables of docs/configuration.md's tables
    fields = {name.upper() for name in Settings.model_fields}
    documented = documented_variables()
    # Then every field is there, and nothing else is
    assert not fields - documented.keys(), f"missing from docs/configuration.md: {sorted(fields - documented.keys())}"
    assert not documented.keys() - fields, f"not settings: {sorted(documented.keys() - fields)}"


def test_the_configuration_reference_shows_each_default() -> None:
    # Given each documented default written as one value in backticks, or "unset"
    documented = documented_variables()
    for name, field in Settings.model_fields.items():
        cell = documented[name.upper()]
        single = re.fullmatch(r"`([^`]*)`", cell)
        # Then it is the field's default (a cell in other words, such as "1 MiB (...)", is left to the reader)
        if single:
            assert single.group(1) == shown(field.default), f"{name.upper()}: documented {cell}, default {field.default!r}"
        elif cell == "unset":
            assert field.default is None, f"{name.upper()}: documented unset, default {field.default!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    # Given a documentation page, When its relative links are followed (anchors ignored)
    for target in relative_links(page):
        path = (page.parent / target.split("#", 1)[0]).resolve()
        # Then each names a file or folder of the repository
        assert path.is_relative_to(ROOT), f"{page.name}: {target} points outside the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"


def test_the_readme_is_at_most_a_couple_of_screens() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_commit_hash_in_the_documentation(page: Path) -> None:
    # History (commit hashes, what was tried) stays in commit messages.
    found = _HASH.findall(page.read_text())
    assert not found, f"{page.name}: {found}"
