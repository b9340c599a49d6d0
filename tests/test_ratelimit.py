"""The shared token bucket: burst, refill rate, priority order, cancellation."""

from __future__ import annotations

import asyncio

from exporter.ratelimit import Priority, TokenBucket


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_rate() -> None:
    clock = StepClock()
    bucket = TokenBucket(10, 30, clock=clock)
    assert bucket.available() == 30
    clock.now = 100.0
    assert bucket.available() == 30  # never above the burst
    bucket._tokens = 0
    clock.now += 0.5
    assert abs(bucket.available() - 5.0) < 1e-9


async def test_burst_is_granted_without_waiting() -> None:
    bucket = TokenBucket(1, 5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(5):
        await bucket.acquire()
    assert loop.time() - start < 0.05


async def test_urgent_waiters_overtake_queued_ones() -> None:
    bucket = TokenBucket(100, 1)
    await bucket.acquire()  # empty the bucket
    order: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        await bucket.acquire(priority)
        order.append(name)

    discovery = [asyncio.create_task(take(f"discovery{i}", Priority.DISCOVERY)) for i in range(3)]
    await asyncio.sleep(0)
    final = asyncio.create_task(take("final", Priority.FINAL_FETCH))
    poll = asyncio.create_task(take("poll", Priority.ACTIVE_POLL))
    await asyncio.gather(*discovery, final, poll)
    assert order[:2] == ["final", "poll"]
    assert order[2:] == ["discovery0", "discovery1", "discovery2"]


async def test_cancelled_waiter_does_not_leak_a_token() -> None:
    bucket = TokenBucket(20, 1)
    await bucket.acquire()
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert bucket.waiting() == 0
    # The next caller still gets a token within one refill period.
    await asyncio.wait_for(bucket.acquire(), 0.5)


async def test_disabled_bucket_never_waits() -> None:
    bucket = TokenBucket(0, 1)
    for _ in range(1000):
        await bucket.acquire()
    assert not bucket.enabled
