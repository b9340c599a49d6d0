"""Loading the exporter's configuration: the YAML file, the environment, errors that name the key.

``load_config`` reads the file named by ``--config.file``, merges environment overrides over it
(the environment wins), then the command line's :class:`Override` settings (``--shard``,
``--web.listen-address``, ...: the flag wins), and validates the result into a frozen
:class:`~exporter.config.Config`. Every problem becomes one :class:`~exporter.config.ConfigError`
whose message names the offending key by its dotted path (``polling.active_interval: invalid
duration 'fast' ...``) and, for a value from the environment or a flag, the variable or flag
that set it.

Environment overrides:

* ``NICO_TOKEN`` supplies ``api.token``; ``NICO_CLIENT_SECRET`` supplies ``api.client_secret``.
* ``NICO_EXPORTER_<SECTION>__<KEY>`` sets any key, ``__`` separating levels
  (``NICO_EXPORTER_POLLING__ACTIVE_INTERVAL=30s``); lists and mappings are written as JSON
  (``NICO_EXPORTER_SITES='["<uuid>", "<uuid>"]'``). These win over ``NICO_TOKEN`` too.
* Empty values are ignored, as are ``NICO_EXPORTER_*`` names whose first part is not a
  top-level key: Kubernetes injects ``<SERVICE>_PORT``-style variables for a Service named
  ``nico-exporter``, and those must not stop the exporter.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from exporter import yamlfile
from exporter.config import CLIENT_SECRET_ENV, TOKEN_ENV, Config, ConfigError

ENV_PREFIX = "NICO_EXPORTER_"
ENV_DELIMITER = "__"


@dataclass(frozen=True)
class Override:
    """A setting from the command line: ``key`` (dotted, ``sharding.shard``) set to ``value``.

    Applied over the file and the environment; an error in it names ``source`` (the flag).
    """

    key: str
    value: Any
    source: str


def load_config(
    path: str | Path | None, env: Mapping[str, str] | None = None, overrides: Iterable[Override] = ()
) -> Config:
    """Read ``path`` (YAML; ``None``: none), apply ``env``, then ``overrides``, and validate.

    ``env`` defaults to ``os.environ``. Registers the secrets with the log redaction filter.
    Raises :class:`ConfigError`, never ``ValidationError`` or ``yaml.YAMLError``.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    from_env, sources = _env_overrides(os.environ if env is None else env)
    merged = _deep_merge(data, from_env)
    for override in overrides:
        tree: Any = override.value
        for part in reversed(override.key.split(".")):
            tree = {part: tree}
        merged = _deep_merge(merged, tree)
        sources[override.key] = override.source
    try:
        config = Config.model_validate(merged, context={"sources": sources})
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, sources)) from None
    config.register_secrets()
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yamlfile.loads(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yamlfile.describe_error(exc, str(path))) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping (api:, sites:, ...), not a {_yaml_kind(data)}"
        )
    return data


def _yaml_kind(value: object) -> str:
    return "list" if isinstance(value, list) else "scalar"


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The nested overrides the environment sets, and which variable set each dotted path."""
    settings: list[tuple[tuple[str, ...], str, Any]] = [
        (("api", "token"), TOKEN_ENV, env.get(TOKEN_ENV, "")),
        (("api", "client_secret"), CLIENT_SECRET_ENV, env.get(CLIENT_SECRET_ENV, "")),
    ]
    settings = [item for item in settings if item[2]]
    generic: list[tuple[tuple[str, ...], str, Any]] = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or value == "":
            continue
        path = tuple(part.lower() for part in name.removeprefix(ENV_PREFIX).split(ENV_DELIMITER))
        if path[0] not in Config.model_fields:
            continue  # not ours: e.g. Kubernetes' NICO_EXPORTER_SERVICE_HOST
        if not all(path):
            raise ConfigError(f"{name}: empty key between '{ENV_DELIMITER}' delimiters")
        parsed: Any = value
        if _wants_json(path):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{name}: not valid JSON ({exc.msg}); lists and mappings are JSON, "
                    """e.g. '["<site uuid>"]'"""
                ) from None
        generic.append((path, name, parsed))
    # Outer paths first so NICO_EXPORTER_API__URL refines a whole NICO_EXPORTER_API='{...}'.
    settings.extend(sorted(generic, key=lambda item: (len(item[0]), item[0])))
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path, name, value in settings:
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = _deep_merge(node[path[-1]], value) if path[-1] in node else value
        sources[".".join(path)] = name
    return tree, sources


def _wants_json(path: tuple[str, ...]) -> bool:
    """Whether the key at ``path`` holds a list, mapping or section (so its env value is JSON)."""
    kind: Any = Config
    for part in path:
        if inspect.isclass(kind) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(part)
            if field is None:
                return False
            kind = field.annotation
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        else:
            return False
    return (inspect.isclass(kind) and issubclass(kind, BaseModel)) or get_origin(kind) in (list, dict)


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return override


def _describe_errors(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """One ``dotted.path: problem`` per error, joined by ``; ``; input values are never quoted."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [part for part in error["loc"] if part != "[key]"]
        ctx = error.get("ctx") or {}
        if error["type"] == "config" and "field" in ctx:
            loc.append(ctx["field"])
        path = _dotted(loc)
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(loc)
        elif error["type"] == "missing":
            message = "required"
        else:
            message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        source = _source(loc, sources)
        lines.append(f"{path or '(top level)'}: {message}{f' (from {source})' if source else ''}")
    return "; ".join(lines)


def _dotted(loc: list[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _source(loc: list[int | str], sources: Mapping[str, str]) -> str | None:
    """The variable or flag that set the key at ``loc`` or a section holding it."""
    keys = [part for part in loc if isinstance(part, str)]
    for end in range(len(keys), 0, -1):
        source = sources.get(".".join(keys[:end]))
        if source is not None:
            return source
    return None


def _suggestion(loc: list[int | str]) -> str:
    """`` (did you mean 'token'?)`` for a misspelt key, when the intended one is obvious."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    kind: Any = Config
    for part in loc[:-1]:
        if not (inspect.isclass(kind) and issubclass(kind, BaseModel)) or not isinstance(part, str):
            return ""
        field = kind.model_fields.get(part)
        if field is None:
            return ""
        kind = field.annotation
    if not (inspect.isclass(kind) and issubclass(kind, BaseModel)):
        return ""
    key, fields = loc[-1], list(kind.model_fields)
    close = difflib.get_close_matches(key, fields, n=1) or [f for f in fields if f.startswith(key)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""
