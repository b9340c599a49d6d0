"""The repository stands alone: its docs link to files it has, and nothing needs sources beside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_config import PRODUCT_EXAMPLE

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".json", ".txt", ".cfg"}
# The optional checks against the full upstream specs look for them beside the project.
OPTIONAL_CHECKS = {"tests/openapi_subset.py", "tests/test_dashboards.py", "tests/test_repository.py"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _files(*suffixes: str) -> list[Path]:
    wanted = set(suffixes) or TEXT_SUFFIXES
    return sorted(
        path
        for path in ROOT.rglob("*")
        if path.is_file()
        and not SKIPPED_DIRS & set(path.relative_to(ROOT).parts)
        and (path.suffix in wanted or path.name in ("Makefile", "Dockerfile"))
    )


def test_nothing_outside_the_optional_checks_refers_to_sources_beside_the_project() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in _files()
        if str(path.relative_to(ROOT)) not in OPTIONAL_CHECKS
        and re.search(r"\.\./shared\b|[\"']shared[\"'] /", path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []


def test_the_design_doc_holds_the_configuration_example_the_config_tests_load() -> None:
    assert PRODUCT_EXAMPLE in (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", [str(p.relative_to(ROOT)) for p in _files(".md")])
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    missing = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#", 1)[0]).exists():
            missing.append(target)
    assert missing == []
