"""Structured logging: logfmt escaping, redaction, level names, and constant event names."""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter import logs

EXPORTER = Path(__file__).resolve().parent.parent / "exporter"
SECRET = "s3cr3t-canary-4b1d"
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"}
# Keys the formatter writes itself, and LogRecord attributes (``extra=`` with one of those raises
# KeyError at the call, or silently replaces a field).
RESERVED = logs._STANDARD | {"ts", "level", "logger", "msg"}


@pytest.fixture(autouse=True)
def _own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_SECRETS", set())


def record(
    msg: str = "event", level: int = logging.INFO, extra: dict[str, Any] | None = None, exc: bool = False
) -> logging.LogRecord:
    exc_info = sys.exc_info() if exc else None
    logger = logging.getLogger("exporter.test")
    return logger.makeRecord(logger.name, level, __file__, 1, msg, (), exc_info, extra=extra)


def logfmt(rec: logging.LogRecord) -> str:
    return logs.LogfmtFormatter().format(rec)


def parse(line: str) -> dict[str, str]:
    """A strict logfmt reader for the escaping the formatter promises."""
    out: dict[str, str] = {}
    i = 0
    while i < len(line):
        eq = line.index("=", i)
        key, i = line[i:eq], eq + 1
        assert key and " " not in key and key not in out
        if line[i : i + 1] == '"':
            i += 1
            buf: list[str] = []
            while line[i] != '"':
                if line[i] == "\\":
                    buf.append({"n": "\n", "\\": "\\", '"': '"'}[line[i + 1]])
                    i += 2
                else:
                    buf.append(line[i])
                    i += 1
            i += 1
            value = "".join(buf)
        else:
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            value, i = line[i:end], end
            assert value and '"' not in value and "=" not in value
        out[key] = value
        if i < len(line):
            assert line[i] == " "
            i += 1
    return out


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('say "hi"', r'"say \"hi\""'),
        ("a\nb", r'"a\nb"'),
        ("back\\slash", r'"back\\slash"'),
        ("k=v", '"k=v"'),
        ("tab\there", '"tab\there"'),
        ("", '""'),
        (42, "42"),
        (1.5, "1.5"),
        (True, "True"),
        (None, "None"),
        ({"a": 1}, "\"{'a': 1}\""),
    ],
)
def test_logfmt_values(value: object, rendered: str) -> None:
    assert logs._logfmt_value(value) == rendered
    assert parse(logfmt(record(extra={"v": value})))["v"] == str(value)


def test_logfmt_line_round_trips() -> None:
    nasty = 'a "quoted" \\ back\nslash key=value'
    line = logfmt(record("rack poll failed", logging.WARNING, {"rack_id": "r 1", "error": nasty, "n": 3}))
    assert "\n" not in line
    fields = parse(line)
    assert list(fields)[:4] == ["ts", "level", "logger", "msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fields["ts"])
    assert fields["level"] == "warning" and fields["logger"] == "exporter.test"
    assert fields["msg"] == "rack poll failed"
    assert (fields["rack_id"], fields["error"], fields["n"]) == ("r 1", nasty, "3")


def test_private_and_standard_attributes_are_not_fields() -> None:
    fields = parse(logfmt(record(extra={"_internal": 1, "site_id": "s"})))
    assert set(fields) == {"ts", "level", "logger", "msg", "site_id"}


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warning"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "critical"),
    ],
)
def test_level_names(level: int, name: str) -> None:
    assert parse(logfmt(record(level=level)))["level"] == name
    assert json.loads(logs.JsonFormatter().format(record(level=level)))["level"] == name


def test_an_exception_is_one_error_field_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record("probe check failed", logging.ERROR, {"probe": "health"}, exc=True)
    line = logfmt(rec)
    assert "\n" not in line and "Traceback" not in line
    assert parse(line)["error"] == "ValueError: boom\nsecond line"


def test_json_lines() -> None:
    doc = json.loads(logs.JsonFormatter().format(record(extra={"count": 2, "when": Path("/x"), "ok": None})))
    assert doc["msg"] == "event" and doc["count"] == 2 and doc["when"] == "/x" and doc["ok"] is None


def test_a_registered_secret_never_reaches_a_line() -> None:
    logs.register_secret(SECRET)
    try:
        raise RuntimeError(f"401 for Bearer {SECRET}")
    except RuntimeError:
        failed = record("retrying", logging.WARNING, {"url": f"https://x/?t={SECRET}"}, exc=True)
    records = [
        failed,
        record(extra={"error": f"token {SECRET} rejected"}),
        record(extra={"headers": {"Authorization": f"Bearer {SECRET}"}}),
        record(extra={"detail": f'"{SECRET}"\n'}),
    ]
    for rec in records:
        for line in (logfmt(rec), logs.JsonFormatter().format(rec)):
            assert SECRET not in line and "<redacted>" in line
    assert "RuntimeError: 401 for Bearer <redacted>" in parse(logfmt(failed))["error"]


def test_short_or_missing_secrets_are_not_registered() -> None:
    logs.register_secret(None)
    logs.register_secret("")
    logs.register_secret("abc")
    assert logs.redact("abc info") == "abc info"


def test_setup_configures_the_root_logger() -> None:
    root, noisy = logging.getLogger(), [logging.getLogger(n) for n in ("httpx", "apscheduler")]
    handlers, levels = root.handlers[:], [lg.level for lg in (root, *noisy)]
    try:
        logs.setup("debug", "json")
        assert root.level == logging.DEBUG
        assert [type(h.formatter) for h in root.handlers] == [logs.JsonFormatter]
        assert logging.getLogger("httpx").level == logging.WARNING
        logs.setup("warn", "logfmt")
        assert root.level == logging.WARNING
        assert [type(h.formatter) for h in root.handlers] == [logs.LogfmtFormatter]
    finally:
        root.handlers[:] = handlers
        for lg, level in zip((root, *noisy), levels, strict=True):
            lg.setLevel(level)


# -- every log call in exporter/ names a constant event; the data goes in extra=


def _loggers(tree: ast.Module) -> set[str]:
    """Names bound to ``logging.getLogger(...)`` in a module."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "logging.getLogger"
        ):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _log_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(EXPORTER.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        loggers = _loggers(tree) | {"logging"}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in loggers
            ):
                calls.append((f"{path.relative_to(EXPORTER.parent)}:{node.lineno}", node))
    return calls


def _events(node: ast.expr) -> list[str] | None:
    """The constant event name(s) of a message: a literal, or a choice between literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _events(node.body), _events(node.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def test_log_messages_are_constant_event_names() -> None:
    calls = _log_calls()
    assert len(calls) > 40, "the scan found too few log calls to mean anything"
    bad = []
    for where, call in calls:
        events = _events(call.args[0]) if call.args else None
        if (
            events is None
            or len(call.args) != 1
            or any("%" in e or "\n" in e or not e.strip() for e in events)
            or any(not (e.split()[0].islower() or e.split()[0].isupper()) for e in events)
        ):
            bad.append(f"{where}: {ast.unparse(call)[:120]}")
    assert not bad, "log a constant lowercase event and put the data in extra=:\n" + "\n".join(bad)


def test_log_extra_keys_do_not_collide_with_record_attributes() -> None:
    bad = []
    for where, call in _log_calls():
        for kw in call.keywords:
            if kw.arg is None:
                bad.append(f"{where}: **{ast.unparse(kw.value)}")
            elif kw.arg == "extra":
                if not isinstance(kw.value, ast.Dict) or None in kw.value.keys:
                    bad.append(f"{where}: extra= must be a dict literal")
                    continue
                keys = [k.value for k in kw.value.keys if isinstance(k, ast.Constant)]
                if len(keys) != len(kw.value.keys):
                    bad.append(f"{where}: extra= keys must be string literals")
                bad += [f"{where}: extra key {k!r} is reserved" for k in keys if k in RESERVED]
    assert not bad, "\n".join(bad)
