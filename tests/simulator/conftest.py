"""Fixtures of the simulator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.simulator.world import World, make_world


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async for world in make_world():
        yield world
