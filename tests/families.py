"""Which ``nico_*`` names a generated file reads that ``exporter.metrics`` does not define."""

from __future__ import annotations

import re

from exporter.metrics import FAMILY

# A metric name: not part of a recording rule's name (``nico:task:info``,
# ``site_id_operation:nico_tasks_finished:increase1h``) nor of a longer word.
_NAME = re.compile(r"(?<![\w:])nico_[a-z0-9_]+(?![\w:])")
_SUFFIXES = ("_bucket", "_sum", "_count")


def unknown_families(text: str) -> set[str]:
    """The ``nico_*`` metric names in ``text`` (PromQL, or a template's query) that are no family."""
    known = set(FAMILY)
    names = set(_NAME.findall(text))
    return {
        name
        for name in names
        if name not in known and not any(name.removesuffix(s) in known for s in _SUFFIXES if name.endswith(s))
    }
