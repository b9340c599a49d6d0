"""``check-config --online``: what the exporter will be able to see, in one command.

Logs in with the configured credentials, lists the org's sites, and for each says whether Flow is
on (only Flow sites have racks, trays and tasks), how many racks it has, and how its task lists
answer: paged as the OpenAPI spec says, or (NICo v2.0 and main) the first 20 rows with an exact total and
no paging parameters, with or without reports. A new user learns before the first run whether
credentials, role and network are right, and how much of each rack's history a list can show.

It ends within :data:`ONLINE_BOUND_S` whatever the server does (an API that accepts connections
and never answers, a site whose agent is silent: NICo holds those calls for 50 s): the site list
gets a share of that bound, the sites are asked side by side with a share each, and nothing is
retried past it. Every failure is named by its cause: connection refused, unknown host, TLS,
timeout, the credentials NICo refused (with its message), a missing role, a site without Flow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from exporter.client import NicoClient, RetryPolicy
from exporter.config import Config
from exporter.connect import nico_client
from exporter.errors import (
    AuthError,
    BadRequest,
    DeadlineExceeded,
    FlowDisabled,
    Forbidden,
    NicoError,
    SiteUnavailable,
    TransportError,
    Unauthorized,
)
from exporter.models import Site

# The whole check ends within this (seconds); the site list may take this share of it.
ONLINE_BOUND_S = 60.0
SITE_LIST_SHARE = 0.5


@dataclass(frozen=True)
class SiteReport:
    """What one site showed the probe."""

    site_id: str
    name: str
    flow: bool
    racks: int | None = None
    # The all-tasks total of the first rack, and how many rows one list gave of it.
    sample_total: int | None = None
    sample_rows: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class ProbeReport:
    sites: Sequence[SiteReport]
    task_list_paging: bool | None
    task_reports: bool

    @property
    def ok(self) -> bool:
        return any(s.flow and s.error is None for s in self.sites)


async def probe(
    client: NicoClient, *, site_ids: Sequence[str] = (), bound_s: float = ONLINE_BOUND_S
) -> ProbeReport:
    """Ask NICo what the exporter would: sites, racks, and one task list per Flow site; all of it
    within ``bound_s`` seconds.

    Raises the client's typed error when the login or the site list fails (nothing else works).
    """
    started = time.monotonic()
    listing = await client.list_sites(flow_enabled=False, deadline=started + bound_s * SITE_LIST_SHARE)
    deadline = started + bound_s
    wanted = [site for site in listing.items if not site_ids or site.id in site_ids]
    reports = await asyncio.gather(*(_site(client, site, deadline) for site in wanted))
    return ProbeReport(reports, client.profile.task_list_paging, client.profile.task_reports)


async def _site(client: NicoClient, site: Site, deadline: float) -> SiteReport:
    name = site.name or ""
    if not site.flow_enabled and site.capabilities:
        return SiteReport(site.id, name, flow=False)
    offline = "" if site.is_online is not False else f" (NICo lists it offline: status {site.status})"
    try:
        racks = (await client.list_racks(site.id, deadline=deadline)).items
        sample_total = sample_rows = None
        if racks:
            tasks = await client.list_rack_tasks(
                site.id,
                racks[0].id,
                active_only=False,
                include_report=False,
                first_page_only=True,
                deadline=deadline,
            )
            sample_total, sample_rows = tasks.total, len(tasks.items)
        return SiteReport(site.id, name, True, len(racks), sample_total, sample_rows)
    except FlowDisabled:
        return SiteReport(site.id, name, flow=False)
    except NicoError as exc:
        return SiteReport(site.id, name, True, error=cause(exc) + offline)


def cause(exc: NicoError) -> str:
    """A failure in words an operator acts on: what went wrong, and NICo's own message."""
    if isinstance(exc, TransportError):
        if exc.kind == "timeout":
            return f"no answer in time ({exc.message}): the server or the site's agent does not answer"
        return f"cannot reach the API: {exc.message.split(' failed: ', 1)[-1]}"
    if isinstance(exc, Unauthorized):
        return f"credentials refused (HTTP 401): {exc.detail or exc.message}"
    if isinstance(exc, AuthError):
        return f"no token: {exc.message}"
    if isinstance(exc, Forbidden):
        return (
            f"forbidden (HTTP 403): {exc.detail or exc.message}: the token needs the PROVIDER_ADMIN role "
            "in the org"
        )
    if isinstance(exc, FlowDisabled):
        return "the site has no NICo Flow (HTTP 412)"
    if isinstance(exc, BadRequest):
        return f"refused (HTTP 400): {exc.detail or exc.message}"
    if isinstance(exc, DeadlineExceeded | SiteUnavailable):
        return f"no answer within the check's {ONLINE_BOUND_S:.0f} s ({exc.message})"
    status = f"HTTP {exc.status}" if exc.status is not None else type(exc).__name__
    return f"{status}: {exc.detail or exc.message}"


def render(report: ProbeReport, out: TextIO) -> None:
    if report.task_list_paging is False:
        lists = "each task list is its first 20 rows, no paging (NICo v2.0 and later)"
    elif report.task_list_paging:
        lists = "task lists page (as the OpenAPI spec says)"
    else:
        lists = "task lists not probed (no Flow site with a rack)"
    reports = (
        "with stage and step reports" if report.task_reports else "without reports (no stage or step data)"
    )
    out.write(f"server: {lists}, {reports}\n")
    for site in report.sites:
        head = f"site {site.name or '-'} ({site.site_id}): "
        if not site.flow:
            out.write(head + "no NICo Flow: no racks or tasks to watch\n")
        elif site.error is not None:
            out.write(head + f"Flow on, but: {site.error}\n")
        else:
            line = head + f"Flow on, {site.racks} racks"
            if site.sample_total is not None:
                line += f"; a rack's task list shows {site.sample_rows} of its {site.sample_total} tasks"
            out.write(line + "\n")
    if not report.ok:
        out.write("nothing to watch: no Flow-enabled site answered\n")


async def check_online(config: Config, out: TextIO, *, bound_s: float = ONLINE_BOUND_S) -> int:
    """The online check; 0 when at least one Flow site answered, 1 otherwise. Ends within
    ``bound_s`` seconds (and a few more to close the connections)."""
    async with nico_client(config.api) as client:
        # One retry at most: the bound is the point.
        client.retry = RetryPolicy(max_attempts=2, base_delay_s=0.5, max_delay_s=1.0)
        client.page_retry_pauses = (1.0, 1.0, 1.0)
        try:
            report = await asyncio.wait_for(
                probe(client, site_ids=config.sites, bound_s=bound_s), bound_s + 5
            )
        except NicoError as exc:
            out.write(f"cannot list sites: {cause(exc)}\n")
            return 1
        except TimeoutError:
            out.write(f"cannot list sites: no answer within {bound_s:.0f} s\n")
            return 1
    render(report, out)
    return 0 if report.ok else 1
