"""``check-config --online``: what the exporter will be able to see, in one command.

Logs in with the configured credentials, lists the org's sites, and for each says whether Flow is
on (only Flow sites have racks, trays and tasks), how many racks it has, and how its task lists
answer: paged as the OpenAPI spec says, or (NICo v2.0 and main) the first 20 rows with an exact total and
no paging parameters, with or without reports. A new user learns before the first run whether
credentials, role and network are right, and how much of each rack's history a list can show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from exporter.client import NicoClient
from exporter.config import Config
from exporter.connect import nico_client
from exporter.errors import FlowDisabled, NicoError


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


async def probe(client: NicoClient, *, site_ids: Sequence[str] = ()) -> ProbeReport:
    """Ask NICo what the exporter would: sites, racks, and one task list per Flow site.

    Raises the client's typed error when the login or the site list fails (nothing else works).
    """
    listing = await client.list_sites(flow_enabled=False)
    reports: list[SiteReport] = []
    for site in listing.items:
        if site_ids and site.id not in site_ids:
            continue
        name = site.name or ""
        if not site.flow_enabled and site.capabilities:
            reports.append(SiteReport(site.id, name, flow=False))
            continue
        try:
            racks = (await client.list_racks(site.id)).items
            sample_total = sample_rows = None
            if racks:
                tasks = await client.list_rack_tasks(
                    site.id, racks[0].id, active_only=False, include_report=False, first_page_only=True
                )
                sample_total, sample_rows = tasks.total, len(tasks.items)
            reports.append(SiteReport(site.id, name, True, len(racks), sample_total, sample_rows))
        except FlowDisabled:
            reports.append(SiteReport(site.id, name, flow=False))
        except NicoError as exc:
            reports.append(SiteReport(site.id, name, True, error=str(exc)))
    return ProbeReport(reports, client.profile.task_list_paging, client.profile.task_reports)


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


async def check_online(config: Config, out: TextIO) -> int:
    """The online check; 0 when at least one Flow site answered, 1 otherwise."""
    async with nico_client(config.api) as client:
        try:
            report = await probe(client, site_ids=config.sites)
        except NicoError as exc:
            out.write(f"cannot list sites: {exc}\n")
            return 1
    render(report, out)
    return 0 if report.ok else 1
