"""Shared test plumbing."""

from __future__ import annotations

import os

import pytest

REQUIRE_E2E = os.environ.get("NICO_REQUIRE_E2E", "") not in ("", "0", "false")


def skip_or_fail(reason: str) -> None:
    """Skip a test whose prerequisite is missing; under ``NICO_REQUIRE_E2E=1`` (CI) fail instead."""
    if REQUIRE_E2E:
        pytest.fail(f"NICO_REQUIRE_E2E is set but {reason}", pytrace=False)
    pytest.skip(reason)
