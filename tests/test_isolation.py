"""Sites kept apart: the fair slots, the per-site breakers, and the client that uses both.

Independent expectations: the promises of exporter/slots.py and exporter/breaker.py, checked on
hand-made timelines (a fake clock), and on the client against an httpx transport whose handler
hangs one site the way NICo does while that site's agent is silent.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from exporter.breaker import Breakers, State
from exporter.client import ClientHooks, NicoClient, RetryPolicy
from exporter.errors import DeadlineExceeded, SiteUnavailable
from exporter.ratelimit import Priority
from exporter.slots import SiteSlots
from tests.helpers import nico_error, page


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- slots -----------------------------------------------------------------------------------------


async def test_a_lone_site_gets_every_slot() -> None:
    slots = SiteSlots(4)
    for _ in range(4):
        await slots.acquire("a", Priority.ACTIVE_POLL, 0)
    assert slots.held("a") == 4
    with pytest.raises(TimeoutError):
        await slots.acquire("a", Priority.ACTIVE_POLL, 0.01)
    assert slots.waiting() == 0  # the waiter that gave up is gone


async def test_a_site_holding_every_slot_leaves_the_other_its_share_at_once() -> None:
    """Site a took every slot while alone; b asks: b is owed half, and gets the slots a frees
    before a's own waiter (earlier, more urgent) gets any."""
    slots = SiteSlots(4)
    for _ in range(4):
        await slots.acquire("a", Priority.ACTIVE_POLL, 0)
    a_waits = asyncio.create_task(slots.acquire("a", Priority.FINAL_FETCH))
    b_waits = [asyncio.create_task(slots.acquire("b", Priority.DISCOVERY)) for _ in range(2)]
    await asyncio.sleep(0)
    slots.release("a")
    slots.release("a")
    await asyncio.sleep(0)
    assert all(t.done() for t in b_waits) and not a_waits.done()
    assert (slots.held("a"), slots.held("b")) == (2, 2)
    slots.release("b")  # b was active a moment ago: its share stays reserved for it
    await asyncio.sleep(0)
    assert not a_waits.done()
    a_waits.cancel()


async def test_a_site_cannot_borrow_the_slots_another_active_site_is_owed() -> None:
    slots = SiteSlots(4)
    await slots.acquire("b", Priority.ACTIVE_POLL, 0)
    slots.release("b")  # b was active a moment ago: it is owed its share
    await slots.acquire("a", Priority.ACTIVE_POLL, 0)
    await slots.acquire("a", Priority.ACTIVE_POLL, 0)
    with pytest.raises(TimeoutError):
        await slots.acquire("a", Priority.ACTIVE_POLL, 0.01)
    await slots.acquire("b", Priority.ACTIVE_POLL, 0)
    await slots.acquire("b", Priority.ACTIVE_POLL, 0)
    assert (slots.held("a"), slots.held("b")) == (2, 2)


async def test_waiters_of_one_site_are_served_by_priority() -> None:
    slots = SiteSlots(1)
    await slots.acquire("a", Priority.ACTIVE_POLL, 0)
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await slots.acquire("a", priority)
        order.append(name)
        slots.release("a")

    tasks = [
        asyncio.create_task(wait("discovery", Priority.DISCOVERY)),
        asyncio.create_task(wait("poll", Priority.ACTIVE_POLL)),
        asyncio.create_task(wait("final", Priority.FINAL_FETCH)),
    ]
    await asyncio.sleep(0)
    slots.release("a")
    await asyncio.gather(*tasks)
    assert order == ["final", "poll", "discovery"]


async def test_a_site_whose_breaker_is_open_probes_in_one_slot_and_is_owed_none() -> None:
    open_sites = {"silent"}
    slots = SiteSlots(4, exempt=lambda site: site in open_sites)
    await slots.acquire("silent", Priority.ACTIVE_POLL, 0)  # its probe: any free slot
    with pytest.raises(TimeoutError):
        await slots.acquire("silent", Priority.ACTIVE_POLL, 0.01)  # one at a time
    for _ in range(3):  # the other site is owed every other slot: the open site counts for none
        await slots.acquire("ok", Priority.ACTIVE_POLL, 0)
    assert (slots.held("ok"), slots.held("silent")) == (3, 1)
    slots.release("silent")
    open_sites.clear()  # the probe answered: an ordinary site again, owed its share
    await slots.acquire("silent", Priority.ACTIVE_POLL, 0)


# -- breakers --------------------------------------------------------------------------------------


def test_a_breaker_opens_after_consecutive_failures_and_an_answer_resets_the_count() -> None:
    clock = Clock()
    b = Breakers(threshold=3, probe_interval=15, clock=clock)
    b.failed("s", "timeout")
    b.failed("s", "timeout")
    b.succeeded("s")
    b.failed("s", "timeout")
    b.failed("s", "timeout")
    assert b.admit("s") is State.CLOSED
    b.failed("s", "HTTP 500")
    assert b.is_open("s") and b.admit("s") is None and b.reason("s") == "HTTP 500"


def test_an_open_breaker_lets_one_probe_through_per_interval() -> None:
    clock = Clock()
    b = Breakers(threshold=1, probe_interval=15, clock=clock)
    b.failed("s", "timeout")
    clock.now += 14.9
    assert b.admit("s") is None and not b.probe_due("s")
    clock.now += 0.1
    assert b.probe_due("s")
    assert b.admit("s") is State.PROBING
    assert b.admit("s") is None  # one probe at a time
    b.failed("s", "timeout")  # the probe failed: the next one an interval later
    clock.now += 10
    assert b.admit("s") is None
    clock.now += 5
    assert b.admit("s") is State.PROBING
    b.succeeded("s")
    assert not b.is_open("s") and b.admit("s") is State.CLOSED


def test_a_probe_that_said_nothing_about_the_site_lets_the_next_call_probe() -> None:
    b = Breakers(threshold=1, probe_interval=15, clock=Clock())
    b.failed("s", "timeout")
    b.force_open("t", "offline")  # the first probe of an offline site goes out at once
    assert b.admit("t") is State.PROBING
    b.released("t")  # its own deadline ran out in the exporter's queue
    assert b.admit("t") is State.PROBING


def test_a_site_listed_offline_is_believed_only_without_a_recent_answer() -> None:
    clock = Clock()
    b = Breakers(threshold=3, probe_interval=15, clock=clock)
    b.succeeded("s")
    b.force_open("s", "status Error")
    assert not b.is_open("s")  # it answered a moment ago: NICo's flag lags
    clock.now += 31
    b.force_open("s", "status Error")
    assert b.is_open("s") and b.open_sites() == ("s",)


# -- the client ------------------------------------------------------------------------------------

SILENT, HEALTHY = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def _racks_handler(hang: dict[str, float], sent: list[tuple[float, str]]) -> httpx.AsyncBaseTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        site = request.url.params.get("siteId", "")
        sent.append((time.monotonic(), site))
        await asyncio.sleep(hang.get(site, 0.0))
        return page([], total=0)

    return httpx.MockTransport(handler)


def _client(transport: httpx.AsyncBaseTransport, **kw: object) -> NicoClient:
    options: dict[str, object] = {
        "max_requests_per_second": 0,
        "retry": RetryPolicy(max_attempts=2, base_delay_s=0.0, max_delay_s=0.0),
        "timeout_s": 5.0,
    }
    options.update(kw)
    return NicoClient("http://nico.test", "acme", transport=transport, **options)  # type: ignore[arg-type]


async def test_a_silent_sites_calls_do_not_delay_a_healthy_sites() -> None:
    """Eight calls hang on the silent site (every slot, were they one pool); the healthy site's
    calls still go out at once, in its share of the slots."""
    sent: list[tuple[float, str]] = []
    async with _client(_racks_handler({SILENT: 1.0}, sent), max_concurrency=4) as client:
        client.slots.known([SILENT, HEALTHY])  # the site list named both
        hung = [asyncio.create_task(client.list_racks(SILENT)) for _ in range(8)]
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await asyncio.gather(*(client.list_racks(HEALTHY) for _ in range(6)))
        took = time.monotonic() - began
        await asyncio.gather(*hung)
    assert took < 0.5, f"the healthy site waited {took:.2f} s behind the silent one"
    assert max(client.slots.held(s) for s in (SILENT, HEALTHY)) == 0


async def test_a_silent_site_opens_its_breaker_and_then_costs_one_probe_per_interval() -> None:
    sent: list[tuple[float, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        site = request.url.params.get("siteId", "")
        sent.append((time.monotonic(), site))
        if site == SILENT:
            return nico_error(
                500, "Failed to perform Rack GetRacks - timeout occurred executing workflow on Site: x"
            )
        return page([], total=0)

    failures: list[object] = []
    async with _client(httpx.MockTransport(handler), hooks=ClientHooks(on_failure=failures.append)) as client:
        client.page_retry_pauses = (0.0, 0.0, 0.0)
        # Discovery asks for a failed page again: the third logical call in a row opens the
        # breaker, and the walk stops there.
        with pytest.raises(SiteUnavailable):
            await client.list_racks(SILENT)
        assert client.breakers.is_open(SILENT)
        assert len(sent) == 3 * 2  # three calls of two attempts each
        before = len(sent)
        for _ in range(20):
            with pytest.raises(SiteUnavailable):
                await client.list_racks(SILENT)
        await client.list_racks(HEALTHY)
    assert len(sent) == before + 1  # only the healthy site's call went out
    assert [f.cause for f in failures[-21:-1]] == ["unavailable"] * 20  # type: ignore[attr-defined]


async def test_a_request_token_is_taken_only_when_a_slot_is_free() -> None:
    """While hung calls hold every slot, waiting callers must not take tokens: when the hung
    calls end, the next calls leave at the bucket's rate, not all at once."""
    sent: list[tuple[float, str]] = []
    hang = {SILENT: 0.6}
    async with _client(
        _racks_handler(hang, sent), max_concurrency=2, max_requests_per_second=10.0, burst=2
    ) as client:
        first = [asyncio.create_task(client.list_racks(SILENT)) for _ in range(2)]
        await asyncio.sleep(0.05)
        hang[SILENT] = 0.0
        rest = [asyncio.create_task(client.list_racks(SILENT)) for _ in range(10)]
        await asyncio.gather(*first, *rest)
    later = sorted(t for t, _ in sent[2:])
    # At most the bucket's burst (2) plus its rate (10/s) in any window: never 10 in a burst.
    for i, start in enumerate(later):
        in_window = sum(1 for t in later[i:] if t - start <= 0.25)
        assert in_window <= 2 + 3, f"{in_window} calls left within 0.25 s"


async def test_a_wait_for_a_slot_ends_at_the_callers_deadline_as_the_exporters_own_failure() -> None:
    sent: list[tuple[float, str]] = []
    failures: list[object] = []
    async with _client(
        _racks_handler({SILENT: 1.0}, sent), max_concurrency=1, hooks=ClientHooks(on_failure=failures.append)
    ) as client:
        hung = asyncio.create_task(client.list_racks(SILENT))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded) as info:
            await client.list_racks(SILENT, deadline=time.monotonic() + 0.2)
        await hung
    assert info.value.cause == "queue"
    assert [(f.side, f.cause) for f in failures] == [("exporter", "queue")]  # type: ignore[attr-defined]


async def test_an_optional_call_only_borrows_what_no_core_call_is_owed() -> None:
    """Task Runs and Operation Rules calls (an old agent hangs them 50 s) must not take the slot
    their own site's rack polls are owed: they borrow free slots only."""
    slots = SiteSlots(3)
    slots.known(["a", "b"])  # two sites, a share of one slot each, one slot to spare
    await slots.acquire("a", Priority.ACTIVE_POLL, 0, optional=True)  # a's rules call: the spare
    with pytest.raises(TimeoutError):  # the two left are a's and b's shares
        await slots.acquire("a", Priority.ACTIVE_POLL, 0.01, optional=True)
    await slots.acquire("a", Priority.ACTIVE_POLL, 0)  # a's rack poll gets its share at once
    await slots.acquire("b", Priority.ACTIVE_POLL, 0)  # and so does b's
    assert slots.in_use() == 3 and (slots.held("a"), slots.held("b")) == (1, 1)


async def test_a_lone_sites_optional_calls_leave_its_core_calls_one_slot() -> None:
    slots = SiteSlots(3)
    slots.known(["a"])  # the only site: its share is every slot
    await slots.acquire("a", Priority.ACTIVE_POLL, 0, optional=True)
    await slots.acquire("a", Priority.ACTIVE_POLL, 0, optional=True)
    with pytest.raises(TimeoutError):  # the last slot is kept for a's rack polls
        await slots.acquire("a", Priority.ACTIVE_POLL, 0.01, optional=True)
    await slots.acquire("a", Priority.ACTIVE_POLL, 0)
    assert slots.in_use() == 3 and slots.held("a") == 1
