"""The one YAML loader for every file the exporter reads: safe, and strict about duplicate keys.

PyYAML keeps the last of two equal keys in a mapping, so a setting written twice (one of them
perhaps a leftover) silently wins or loses; :class:`StrictLoader` makes that an error at the
second key. YAML merge keys (``<<:``) are not duplicates: a key after a merge refines it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key_node.value)
    return loader.construct_mapping(node)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def loads(text: str) -> Any:
    """The document in ``text``; raises ``yaml.YAMLError`` (a duplicate key is one)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def describe_error(exc: yaml.YAMLError, source: str) -> str:
    """``<source>, line L, column C: invalid YAML: <problem>``, never quoting the text itself.

    PyYAML's own message quotes the offending line, which may hold a credential.
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "syntax error"
        if exc.problem and exc.context and exc.context_mark is not None:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return f"{where}: invalid YAML: {problem}"
    return f"{source}: invalid YAML ({type(exc).__name__})"


class FileError(ValueError):
    """A YAML file that cannot be read as a mapping; the message names the file and why."""


def read_mapping(path: Path, what: str, keys: str, *, missing_ok: bool = False) -> dict[str, Any]:
    """The mapping in the YAML file at ``path`` (``what`` names the file in errors, ``keys`` hints
    at its top-level keys); an empty file is ``{}``, and so is a missing one when ``missing_ok``.
    Raises :class:`FileError`, never quoting the file's text (it may hold a credential)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise FileError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise FileError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise FileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        data = loads(text)
    except yaml.YAMLError as exc:
        raise FileError(describe_error(exc, str(path))) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else "scalar"
        raise FileError(f"{path}: the top level must be a mapping ({keys}), not a {kind}")
    return data
