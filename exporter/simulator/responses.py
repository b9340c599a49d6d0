"""Response helpers shared by the NICo API routes and the control API."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from exporter.simulator.wire import JSONObject, encode, error_body


def nico_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded the way Echo's ``c.JSON`` writes it."""
    return Response(encode(body), status_code=status, media_type="application/json", headers=headers)


def nico_error(status: int, message: str, data: Any = None, *, source: str = "nico") -> Response:
    """A ``NICoAPIError`` body with ``status``."""
    return nico_response(status, error_body(message, data, source=source))


async def read_json_object(request: Request) -> JSONObject | None:
    """The body as a JSON object (empty body: ``{}``); None when it is not one."""
    try:
        value = json.loads(await request.body() or b"{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
