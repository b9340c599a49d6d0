"""Loading the exporter's configuration: the YAML file, the environment, errors that name the key.

``load_config`` layers five sources, the later winning key by key, and validates the result into
a frozen :class:`~exporter.config.Config`:

1. nicocli's config file (``~/.nico/config.yaml``; only for the commands that ask for it:
   ``tasks`` and ``check-config``), read by :mod:`exporter.nicocli`;
2. the exporter's YAML file (``--config.file``);
3. nicocli's ``NICO_*`` variables (``NICO_BASE_URL``, ``NICO_TOKEN``, ``NICO_TOKEN_URL``, ...);
4. ``NICO_EXPORTER_<SECTION>__<KEY>``, any key, ``__`` separating levels
   (``NICO_EXPORTER_POLLING__ACTIVE_INTERVAL=30s``); lists and mappings are written as JSON
   (``NICO_EXPORTER_SITES='["<uuid>", "<uuid>"]'``);
5. the command line's :class:`Override` settings (``--shard``, ``--web.listen-address``, ...).

So the environment beats the files, and the exporter's own names beat nicocli's. Credentials are
one source in the end: nicocli's file lends its ``auth`` section unless the exporter's own layers
name a source or nicocli's variables name another kind, and ``NICO_CLIENT_ID`` /
``NICO_CLIENT_SECRET`` go to the client they belong to (:func:`exporter.nicocli.env_settings`;
docs/credentials.md has the whole table).

Every problem becomes one :class:`~exporter.config.ConfigError` whose message names the offending
key by its dotted path (``polling.active_interval: invalid duration 'fast' ...``) and, for a value
from the environment, a flag or nicocli's file, where it came from. Empty values are ignored, as
are ``NICO_EXPORTER_*`` names whose first part is not a top-level key: Kubernetes injects
``<SERVICE>_PORT``-style variables for a Service named ``nico-exporter``, and those must not stop
the exporter.
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

from pydantic import BaseModel, ValidationError

from exporter import nicocli, yamlfile
from exporter.config import SOURCE_KEYS, Config, ConfigError

Setting = nicocli.Setting

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
    path: str | Path | None,
    env: Mapping[str, str] | None = None,
    overrides: Iterable[Override] = (),
    *,
    nicocli_file: str | Path | None = None,
    nicocli_required: bool = False,
) -> Config:
    """Read ``path`` (YAML; ``None``: none) over ``nicocli_file`` (nicocli's config; ``None``: not
    read), apply ``env``, then ``overrides``, and validate.

    ``env`` defaults to ``os.environ``. A missing ``nicocli_file`` is empty unless
    ``nicocli_required``. Registers the secrets with the log redaction filter. Raises
    :class:`ConfigError`, never ``ValidationError`` or ``yaml.YAMLError``.
    """
    env = os.environ if env is None else env
    data = _read_yaml(Path(path)) if path is not None else {}
    generic = _generic_env(env)
    flags: list[Setting] = [(tuple(o.key.split(".")), o.source, o.value) for o in overrides]
    connection: list[Setting] = []
    lent: list[Setting] = []
    lent_kind: str | None = None
    if nicocli_file is not None:
        where = Path(nicocli_file)
        read = nicocli.read_file(where, required=nicocli_required)
        connection, lent, lent_kind = nicocli.file_settings(read, where, env)

    # nicocli's file lends its credentials unless the exporter's own layers name a source, or
    # nicocli's variables name another kind than the file's (NICO_TOKEN beats its OIDC, as in
    # nicocli). An OIDC token URL anywhere makes NICO_CLIENT_ID / NICO_CLIENT_SECRET its client.
    exporter_layers = [*_settings_of(data), *_leaves(generic), *_leaves(flags)]
    variables = [
        s for s in nicocli.env_settings(env, oidc=False, other_source=True) if s[1] in nicocli.ENV_KEYS
    ]
    exporter_named = {_source_key(path) for path, _, value in exporter_layers if value is not None} - {None}
    env_named = {_source_key(path) for path, _, _ in variables} - {None}
    if exporter_named or (env_named and env_named != {lent_kind}):
        lent, lent_kind = [], None
    oidc = any(path[:2] == ("api", "oidc") for path, _, _ in [*exporter_layers, *variables, *lent])
    from_env = nicocli.env_settings(
        env, oidc=oidc, other_source=bool(exporter_named or env_named or lent_kind)
    )

    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    _apply(tree, sources, [*connection, *lent])
    tree = _deep_merge(tree, data)
    for leaf, _, _ in _settings_of(data):
        _forget(sources, leaf)
    _apply(tree, sources, from_env)
    _apply(tree, sources, generic)
    _apply(tree, sources, flags)
    try:
        config = Config.model_validate(tree, context={"sources": sources})
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, sources)) from None
    config.register_secrets()
    return config


def _source_key(path: tuple[str, ...]) -> str | None:
    """The credential source a setting at ``path`` (a leaf) names, if it names one rather than
    completing one (:data:`~exporter.config.SOURCE_KEYS`)."""
    dotted = ".".join(path)
    return next((key for key in SOURCE_KEYS if dotted == key or dotted.startswith(key + ".")), None)


def _leaves(settings: Iterable[Setting]) -> list[Setting]:
    """Settings whose value is a mapping (``NICO_EXPORTER_API='{...}'``) as one per leaf."""
    out: list[Setting] = []
    for path, source, value in settings:
        out += (
            [(path + leaf[0], source, leaf[2]) for leaf in _settings_of(value)]
            if isinstance(value, dict) and value
            else [(path, source, value)]
        )
    return out


def _settings_of(tree: Any, prefix: tuple[str, ...] = ()) -> list[Setting]:
    """The leaves of a YAML tree as settings (the file's values carry no source)."""
    if not isinstance(tree, dict) or not tree:
        return [(prefix, "", tree)] if prefix else []
    out: list[Setting] = []
    for key, value in tree.items():
        out += _settings_of(value, (*prefix, str(key)))
    return out


def _forget(sources: dict[str, str], path: tuple[str, ...]) -> None:
    """A layer set ``path``: whatever a lower layer set there or beneath is no longer its source."""
    dotted = ".".join(path)
    for key in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
        del sources[key]


def _apply(tree: dict[str, Any], sources: dict[str, str], settings: Iterable[Setting]) -> None:
    """Set each ``(path, source, value)`` in ``tree`` (a mapping value merges into a mapping)."""
    for path, source, value in settings:
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = _deep_merge(node[path[-1]], value) if path[-1] in node else value
        _forget(sources, path)
        if source:
            sources[".".join(path)] = source


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yamlfile.read_mapping(path, "config file", "api:, sites:, ...")
    except yamlfile.FileError as exc:
        raise ConfigError(str(exc)) from None


def _generic_env(env: Mapping[str, str]) -> list[Setting]:
    """The ``NICO_EXPORTER_*`` settings, outer paths first (so ``NICO_EXPORTER_API__URL`` refines
    a whole ``NICO_EXPORTER_API='{...}'``)."""
    generic: list[Setting] = []
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
    return sorted(generic, key=lambda item: (len(item[0]), item[0]))


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
