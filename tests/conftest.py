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


# Under pytest-xdist (``make test`` runs two workers), each test file runs whole on one worker, as
# with ``--dist loadfile`` (module-scoped stacks are set up once), and the end-to-end files that
# load the CPU most share one worker, one after the other: run side by side on a 2-core machine,
# their real-time expectations (readiness, freshness) would measure each other.
CPU_HEAVY = frozenset(
    {"tests/e2e/test_chaos.py", "tests/e2e/test_fleet.py", "tests/e2e/test_scrape_stress.py"}
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    class Scheduler(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "cpu-heavy" if path in CPU_HEAVY else path

    return Scheduler(config, log)
