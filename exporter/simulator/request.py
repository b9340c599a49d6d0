"""One NICo API request as a handler sees it, and the checks the Go handlers apply to it.

NICo's handlers (``rest-api/api/pkg/api/handler/``) validate in a fixed order and answer the
first failure: a path UUID, unknown query keys (``common.ValidateKnownQueryParams``), Echo's
binder, required fields, then the site. The helpers here reproduce each check with the server's
exact message; the handlers call them in the Go order (docs/simulator.md cites file and line).
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from exporter.simulator.simulation import Simulation
from exporter.simulator.wire import JSONObject

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
_ORDER_BY = re.compile(r"^[A-Z0-9_]+_(ASC|DESC)$")

# Messages shared by several handlers.
PARSE_FAILED = "Failed to parse request data"
SITE_REQUIRED = "siteId query parameter is required"
PAGINATION_PARSE_FAILED = "Failed to parse request pagination data"
PAGINATION_INVALID = "Failed to validate pagination request data"


class ApiError(Exception):
    """A NICo error response: ``{"source":"nico","message":...,"data":...}`` with a status."""

    def __init__(self, status: int, message: str, data: Any = None, *, source: str = "nico") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data
        # The site handlers' role check builds its error without the API name: "source": "".
        self.source = source


@dataclass
class Result:
    """What a handler produced, before response faults are applied."""

    body: Any
    status: int = 200
    pagination: JSONObject | None = None
    # The body is a task or a list of tasks: ``unknown_status``/``report_v2`` faults apply.
    tasks: bool = False


@dataclass
class Ctx:
    """One API request as a handler sees it."""

    request: Request
    sim: Simulation
    resource: str  # "Task", "Rack", "Tray", "Site": names the workflow in timeout messages
    workflow: str  # "GetTasks", "CancelTask", ...
    body_cache: JSONObject | None = None

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    async def body(self, invalid: str = PARSE_FAILED) -> JSONObject:
        """The JSON request body; 400 ``invalid`` when it is not a JSON object."""
        if self.body_cache is None:
            raw = await self.request.body()
            try:
                value = json.loads(raw) if raw else {}
            except ValueError:
                raise ApiError(400, invalid) from None
            if not isinstance(value, dict):
                raise ApiError(400, invalid)
            self.body_cache = value
        return self.body_cache


Handler = Callable[[Ctx], Any]


def parse_uuid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def path_uuid(ctx: Ctx, message: str) -> str:
    """The ``{id}`` path parameter as a UUID, or 400 ``message``."""
    parsed = parse_uuid(ctx.path("id"))
    if parsed is None:
        raise ApiError(400, message)
    return parsed


def check_known_params(ctx: Ctx, allowed: Iterable[str]) -> None:
    """``ValidateKnownQueryParams``: any query key outside ``allowed`` (case-sensitive) is a 400.

    Go iterates a map, so which of several unknown keys is named varies; this names the first.
    """
    known = frozenset(allowed)
    for key in ctx.request.query_params:
        if key not in known:
            raise ApiError(400, f"Unknown query parameter specified in request: {key}")


def go_bool(raw: str | None) -> bool | None:
    """``strconv.ParseBool``; None for a value it rejects. Empty is false, as Echo binds it."""
    if raw is None or raw == "":
        return False
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def bind_bool(ctx: Ctx, name: str) -> bool:
    """A bool field bound by ``c.Bind``: a bad value fails the whole bind."""
    value = go_bool(ctx.query(name))
    if value is None:
        raise ApiError(400, PARSE_FAILED)
    return value


def require_site_param(ctx: Ctx) -> str:
    raw = ctx.query("siteId")
    if not raw:
        raise ApiError(400, SITE_REQUIRED)
    return raw


@dataclass(frozen=True)
class Page:
    number: int
    size: int
    order_by: str | None

    def apply(self, items: Sequence[Any]) -> tuple[list[Any], JSONObject]:
        """The page's slice and the ``X-Pagination`` object (keys in the server's order)."""
        offset = (self.number - 1) * self.size
        header = {
            "pageNumber": self.number,
            "pageSize": self.size,
            "total": len(items),
            "orderBy": self.order_by,
        }
        return list(items[offset : offset + self.size]), header


FIRST_PAGE = Page(1, DEFAULT_PAGE_SIZE, None)


def page_request(ctx: Ctx, allowed_order: frozenset[str] | None) -> Page:
    """``PageRequest`` bind and ``Validate(allowed)`` (``api/pkg/api/pagination/pagination.go``).

    Zero and empty values fall back to the defaults (ozzo's Min/Max skip zero); a non-integer
    fails the bind; ``data`` names the Go fields. ``allowed_order`` None allows no ``orderBy``.
    """
    number_raw, size_raw = ctx.query("pageNumber"), ctx.query("pageSize")
    try:
        number = int(number_raw) if number_raw else 0
        size = int(size_raw) if size_raw else 0
    except ValueError:
        raise ApiError(400, PAGINATION_PARSE_FAILED) from None
    errors: dict[str, str] = {}
    if number < 0:
        errors["PageNumber"] = "must be greater than 0"
    if size < 0:
        errors["PageSize"] = "must be greater than 0"
    elif size > MAX_PAGE_SIZE:
        errors["PageSize"] = f"must be less that or equal to: {MAX_PAGE_SIZE}"  # sic, the server's typo
    order_by = ctx.query("orderBy") or None
    if order_by is not None and not _ORDER_BY.match(order_by):
        errors["OrderByStr"] = "must be in the format of field_ASC or field_DESC"
    if errors:
        raise ApiError(400, PAGINATION_INVALID, errors)
    if order_by is not None and (allowed_order is None or order_by.rsplit("_", 1)[0] not in allowed_order):
        # A plain Go error (fmt.Errorf) as data serialises as an empty object.
        raise ApiError(400, PAGINATION_INVALID, {})
    return Page(number or 1, size or DEFAULT_PAGE_SIZE, order_by)


def sort_page(
    items: list[Any],
    order_by: str | None,
    keys: dict[str, Callable[[Any], Any]],
    *,
    shuffle: random.Random | None = None,
) -> list[Any]:
    """Order a list by ``orderBy`` (``FIELD_ASC|DESC``), ties in their current order.

    ``shuffle``: the rows have no defined order (a query without ``ORDER BY``): shuffled first,
    so without ``orderBy`` the order is new at every request and with it ties come in any order.
    """
    if shuffle is not None:
        items = list(items)
        shuffle.shuffle(items)
    if order_by is None:
        return items
    field_name, direction = order_by.rsplit("_", 1)
    return sorted(items, key=keys[field_name], reverse=direction == "DESC")
