"""The project's copy of the part of NICo's OpenAPI spec that the exporter and its simulator use.

``tests/data/nico-openapi-subset.yaml`` is derived from NICo's ``rest-api/openapi/spec.yaml``
(``info.version`` 2.0.0) by :func:`derive`: only the operations the exporter calls, only their
responses, only the schemas those reach, with descriptions and examples dropped. The contract
tests validate against it, so they run in a plain clone. Where it is tighter than the spec, it
says so in :data:`ADDITIONS`; ``tests/test_contract.py`` re-derives it from the full spec when one
is available and fails if the committed file drifted.

Regenerate it from a spec (``NICO_OPENAPI_SPEC``, or the path given)::

    python -m tests.openapi_subset [path/to/spec.yaml]
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUBSET_PATH = ROOT / "tests" / "data" / "nico-openapi-subset.yaml"

SPEC_ENV = "NICO_OPENAPI_SPEC"
# Where a checkout of the design sources keeps the full spec, beside the project (optional).
DEFAULT_SPEC = ROOT.parent / "shared" / "nico-openapi" / "spec.yaml"

PREFIX = "/v2/org/{org}/nico"

# Every operation the exporter, the `tasks` command and the demo call, by spec path template.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "/site": ("get",),
    "/site/{siteId}": ("get",),
    "/rack": ("get",),
    "/rack/{id}": ("get",),
    "/tray": ("get",),
    "/tray/{id}": ("get",),
    "/rack/{id}/task": ("get",),
    "/tray/{id}/task": ("get",),
    "/task/{id}": ("get",),
    "/task/{id}/cancel": ("post",),
    "/rack/{id}/power": ("patch",),
    "/tray/{id}/power": ("patch",),
    "/rack/{id}/firmware": ("patch",),
    "/tray/{id}/firmware": ("patch",),
    "/rack/{id}/bringup": ("post",),
}

# Properties dropped because the exporter never asks for them (opt-in query parameters it does
# not send); their schemas go with them.
DROPPED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "Site": ("machineStats", "gpuStats"),  # includeMachineStats / includeGpuStats
}

# Schema keywords that only annotate: dropped from the copy.
ANNOTATIONS = frozenset({"description", "examples", "example", "title", "readOnly"})

PAGINATION_SCHEMA = "XPagination"

# Where the subset is tighter than the spec, each from the Go code of release/v2.0:
ADDITIONS: dict[str, str] = {
    PAGINATION_SCHEMA: (
        "The X-Pagination header is JSON of pagination.PageResponse "
        "(rest-api/api/pkg/api/pagination/pagination.go:108-117): four keys, orderBy without "
        "omitempty. The spec only says the header is a string."
    ),
    "NICoAPIError.required": (
        "cutil.APIError (rest-api/common/pkg/util/api.go:35-40) has no omitempty: source, "
        "message and data are always present."
    ),
}


def spec_path() -> Path:
    """The full spec: ``$NICO_OPENAPI_SPEC``, else the design sources' copy beside the project."""
    configured = os.environ.get(SPEC_ENV, "")
    return Path(configured) if configured else DEFAULT_SPEC


def spec_configured() -> bool:
    """Whether someone asked for the full spec explicitly (then its absence is an error in CI)."""
    return bool(os.environ.get(SPEC_ENV, ""))


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return dict(yaml.load(fh, Loader=loader))  # noqa: S506 (a safe loader)


def load_subset() -> dict[str, Any]:
    return load_yaml(SUBSET_PATH)


def _strip(node: Any, *, in_properties: bool = False) -> Any:
    """``node`` without annotation keywords (property names called "description" stay)."""
    if isinstance(node, dict):
        return {
            k: _strip(v, in_properties=k == "properties" and not in_properties)
            for k, v in node.items()
            if in_properties or k not in ANNOTATIONS
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _pagination_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["pageNumber", "pageSize", "total", "orderBy"],
        "additionalProperties": False,
        "properties": {
            "pageNumber": {"type": "integer", "minimum": 1},
            "pageSize": {"type": "integer", "minimum": 1, "maximum": 100},
            "total": {"type": "integer", "minimum": 0},
            "orderBy": {"type": ["string", "null"], "pattern": "^[A-Z0-9_]+_(ASC|DESC)$"},
        },
    }


def _response(response: dict[str, Any]) -> dict[str, Any]:
    out = _strip(response)
    headers = out.get("headers", {})
    if "X-Pagination" in headers:
        headers["X-Pagination"] = {
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{PAGINATION_SCHEMA}"}}}
        }
    return dict(out)


def derive(spec: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``spec`` the exporter uses, with :data:`ADDITIONS` applied."""
    paths: dict[str, Any] = {}
    for template, methods in OPERATIONS.items():
        item = spec["paths"][PREFIX + template]
        paths[PREFIX + template] = {
            method: {
                "operationId": item[method]["operationId"],
                "responses": {
                    status: _response(response) for status, response in item[method]["responses"].items()
                },
            }
            for method in methods
        }
    components = spec["components"]
    schemas: dict[str, Any] = {}
    responses: dict[str, Any] = {}
    pending = list(_refs(paths))
    while pending:
        ref = pending.pop()
        kind, _, name = ref.removeprefix("#/components/").partition("/")
        if kind == "schemas" and name not in schemas and name != PAGINATION_SCHEMA:
            schema = copy.deepcopy(components["schemas"][name])
            for prop in DROPPED_PROPERTIES.get(name, ()):
                del schema["properties"][prop]
            schemas[name] = _strip(schema)
            pending.extend(_refs(schemas[name]))
        elif kind == "responses" and name not in responses:
            responses[name] = _response(components["responses"][name])
            pending.extend(_refs(responses[name]))
    error = schemas["NICoAPIError"]
    error["required"] = sorted(error["properties"])
    schemas[PAGINATION_SCHEMA] = _pagination_schema()
    info = spec["info"]
    return {
        "openapi": spec["openapi"],
        "info": {
            "title": "NICo REST API: the part nico-task-exporter uses",
            "version": f"{info['version']}-subset",
            "description": _description(info["version"]),
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "responses": dict(sorted(responses.items())),
        },
    }


def _description(version: str) -> str:
    lines = [
        f"Derived by tests/openapi_subset.py from NICo's rest-api/openapi/spec.yaml (info.version "
        f"{version}; NVIDIA/infra-controller main at d384d49, whose task, rack, tray and site "
        "paths and schemas are identical on release/v2.0 at 1094c1d4). Only the operations the "
        "exporter calls, their responses and the schemas they reach; annotations dropped; Site "
        "without machineStats and gpuStats. Tighter than the spec where the Go code is:",
        *(f"- {name}: {why}" for name, why in ADDITIONS.items()),
        "Where the code deviates from this (null task times, tray type spelling), "
        "tests/test_contract.py allows it by name.",
    ]
    return "\n".join(lines)


HEADER = """\
# NICo REST API, the part nico-task-exporter uses: a subset of NICo's OpenAPI spec 2.0.0.
# Generated by `python -m tests.openapi_subset SPEC` from rest-api/openapi/spec.yaml; do not edit
# by hand. The contract tests (tests/test_contract.py) validate the simulator against it; with the
# full spec available (NICO_OPENAPI_SPEC) they also check this file still equals its derivation.
"""


def render(subset: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(subset, sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else spec_path()
    if not source.exists():
        print(f"no spec at {source}: pass its path or set {SPEC_ENV}", file=sys.stderr)
        return 1
    SUBSET_PATH.parent.mkdir(parents=True, exist_ok=True)
    SUBSET_PATH.write_text(render(derive(load_yaml(source))), encoding="utf-8")
    print(f"wrote {SUBSET_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
