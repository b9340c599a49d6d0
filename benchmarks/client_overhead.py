"""Client overhead: our ``NicoClient`` versus a bare httpx loop against the same simulator.

Both sides issue the same rack task-list request (a 30-task page with full reports, 100 per
page) over loopback to a simulator in another process, with the same concurrency. The bare loop
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


OPERATIONS = ("power_on", "power_off", "power_cycle", "firmware_update", "bring_up", "force_power_off")
TASKS = 30


async def _setup(url: str) -> tuple[str, str]:
    """Give one rack a history of 30 finished tasks of every kind, each with its full report.

    That page (about 40 KB) is what a reconciliation listing of a busy rack looks like.
    """
    async with httpx.AsyncClient(base_url=url) as http:
        truth = (await http.get("/_sim/truth")).json()
        site = next(s for s in truth["sites"] if s["flow"] and s["racks"])
        site_id, rack_id = site["id"], site["racks"][0]["id"]
        for n in range(TASKS):
            body = {"siteId": site_id, "rackId": rack_id, "operation": OPERATIONS[n % len(OPERATIONS)]}
            if n % 7 == 3:
                body.update(outcome="fail", failStage=2, error="BMC did not answer within 300s")
            resp = await http.post("/_sim/tasks", json={**body, "stageSeconds": 5})
            resp.raise_for_status()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = (await http.get("/_sim/truth")).json()["tasks"]
            if all(t["finished"] for t in tasks if t["rackId"] == rack_id):
                return site_id, rack_id
            await asyncio.sleep(0.2)
    raise RuntimeError("the simulated tasks did not finish within 60 s")


async def _bare(url: str, site_id: str, rack_id: str) -> float:
    params = {
        "siteId": site_id,
        "activeOnly": "false",
        "includeReport": "true",
        "pageNumber": "1",
        "pageSize": "100",
    }
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
                assert len(listing.items) == TASKS and all(t.report for t in listing.items)

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
        "--token", TOKEN, "--org", ORG, "--sites", "1", "--racks", "2", "--quiet-scenario", "--speed", "600"
    ) as url:
        figures = asyncio.run(_run(url))
    return {
        "client_rps": round(figures["ours"], 1),
        "bare_httpx_rps": round(figures["bare"], 1),
        "client_overhead_ratio": round(figures["bare"] / figures["ours"], 3),
        # Every task validated on every request (no parse cache): the worst case, e.g. a
        # reconciliation listing of tasks never seen before.
        "client_cold_parse_overhead_ratio": round(figures["bare"] / figures["cold"], 3),
    }
