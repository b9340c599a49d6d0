"""Client overhead: our ``NicoClient`` versus a bare httpx loop against the same simulator.

Both sides issue the same rack task-list request (NICo v2.0's 20-row list of a rack with 30
finished tasks, full reports included) over loopback to a simulator in another process, with
the same concurrency. The bare loop
only decodes JSON; ours also rate-limits (disabled here: we measure overhead, not the budget),
authenticates, validates tasks into models (each task version once, as in steady-state polling)
and reports hooks. A third side validates every task of every page (no parse cache). Rounds
rotate who goes first so drift on a noisy machine hits all sides alike; medians are compared.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx

from benchmarks._common import simulator_process
from exporter.auth import StaticToken
from exporter.client import ClientHooks, NicoClient, RequestEvent

TOKEN = "bench-token"
ORG = "demo"
REQUESTS = 600
CONCURRENCY = 4
ROUNDS = 6


ROWS = 20  # a v2.0 task list: its first 20 rows


async def _setup(url: str) -> tuple[str, str]:
    """A rack with a history of 30 finished tasks of every kind (the simulator writes it), each
    with its full report: its list, about 30 KB, is what an active list of a busy rack is like."""
    async with httpx.AsyncClient(base_url=url) as http:
        truth = (await http.get("/_sim/truth")).json()
        site = next(s for s in truth["sites"] if s["flow"] and s["racks"])
        return site["id"], site["racks"][0]["id"]


async def _bare(url: str, site_id: str, rack_id: str) -> float:
    params = {"siteId": site_id, "activeOnly": "false", "includeReport": "true"}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    path = f"/v2/org/{ORG}/nico/rack/{rack_id}/task"
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=CONCURRENCY)) as http:

        async def worker(n: int) -> None:
            for _ in range(n):
                resp = await http.get(path, params=params, headers=headers)
                resp.raise_for_status()
                resp.json()

        start = time.perf_counter()
        await asyncio.gather(*(worker(REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))
        return REQUESTS / (time.perf_counter() - start)


async def _ours(url: str, site_id: str, rack_id: str, *, cold: bool = False) -> float:
    """Our client; ``cold`` disables the parse cache so every task of every page is validated."""
    events: list[RequestEvent] = []
    client = NicoClient(
        url,
        ORG,
        auth=StaticToken(TOKEN),
        max_requests_per_second=0,
        max_concurrency=CONCURRENCY,
        hooks=ClientHooks(on_request=events.append),
        task_cache_size=0 if cold else 50_000,
    )
    async with client:

        async def worker(n: int) -> None:
            for _ in range(n):
                listing = await client.list_rack_tasks(site_id, rack_id, active_only=False)
                assert len(listing.items) == ROWS and all(t.report for t in listing.items)

        await client.list_rack_tasks(site_id, rack_id, active_only=False)  # learns they do not page
        events.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker(REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
    assert len(events) == REQUESTS
    return REQUESTS / elapsed


async def _run(url: str) -> dict[str, Any]:
    site_id, rack_id = await _setup(url)
    await _bare(url, site_id, rack_id)  # warm up both sides and the server
    runs: dict[str, list[float]] = {"bare": [], "ours": [], "cold": []}
    for n in range(ROUNDS):
        order = ["bare", "ours", "cold"]
        for name in order[n % 3 :] + order[: n % 3]:  # rotate who goes first
            if name == "bare":
                runs[name].append(await _bare(url, site_id, rack_id))
            else:
                runs[name].append(await _ours(url, site_id, rack_id, cold=name == "cold"))
    return {name: statistics.median(values) for name, values in runs.items()}


def run() -> dict[str, float]:
    with simulator_process(
        "--token", TOKEN, "--org", ORG, "--sites", "1", "--racks", "2", "--arrivals-per-rack-per-hour", "0",
        "--stuck-tasks", "0", "--history-hours", "0", "--history-tasks-per-rack", "30:30", "--failure-rate", "0.15",
    ) as url:  # fmt: skip
        figures = asyncio.run(_run(url))
    return {
        "client_rps": round(figures["ours"], 1),
        "bare_httpx_rps": round(figures["bare"], 1),
        "client_overhead_ratio": round(figures["bare"] / figures["ours"], 3),
        # Every task validated on every request (no parse cache): the worst case, e.g. a
        # reconciliation listing of tasks never seen before.
        "client_cold_parse_overhead_ratio": round(figures["bare"] / figures["cold"], 3),
    }
