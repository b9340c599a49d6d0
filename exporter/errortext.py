"""The cause of a failure, read out of the error text NICo's Flow and the Temporal SDK wrap it in.

On a NICo server a failed stage's error is built outermost first like this (``rest-api/`` at
``release/v2.0``, the same on ``main``; Temporal Go SDK v1.39.0, ``rest-api/go.mod:80``)::

    stage 2 failed:                          flow/.../workflow/helpers.go:431 (task message only)
    component type NVSwitch failed:          flow/.../workflow/helpers.go:342-343
    child workflow execution error (type: GenericComponentStepWorkflow, workflowID: ...,
        runID: ..., initiatedEventID: 17, startedEventID: 18):     SDK internal/error.go:858-865
    main operation failed:                   flow/.../workflow/genericcomponentstep.go:68
        (or "pre-operation failed: " :58, "post-operation failed: " :80)
    action 0 (VerifyPowerStatus) failed:     flow/.../workflow/actions.go:58 (pre/post only)
    activity error (type: PowerControl, scheduledEventID: 5, startedEventID: 6,
        identity: 1@flow-...@):                                     SDK internal/error.go:811-817
    power control failed for <id>: <why>     the failing code's own words: the cause
    (type: wrapError, retryable: true)       SDK internal/error.go:603-612
    : activity error (...): power control failed for <id>: <why>   the same chain, rendered again

The last two lines come from how the SDK carries a child workflow's Go error to its parent: it
becomes an ``ApplicationError`` whose message is the whole ``err.Error()`` (SDK
internal/failure_converter.go:79-83, :178-183) and whose cause is the chain below it converted
again, so ``Error()`` prints the message, the ``(type: T, retryable: B)`` trailer, then the
chain once more. Flow creates no ``ApplicationError`` of its own, so everything after the first
trailer repeats what came before it. Flow then cuts the text to its first 512 bytes
(``report/report.go:306-315``; the task message also to its first line,
``message/message.go:35-56``), which usually lands in that repetition, sometimes in the cause,
and with a long cause or host name inside a layer; a cut inside a UTF-8 character reaches REST
as U+FFFD (Go's ``encoding/json`` replaces each stray byte).

Pure text in, text out: no I/O, no state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Flow keeps the first 512 bytes of an error (report.go:30 maxErrLen, message.go:12 maxLen).
FLOW_MAX_ERROR_BYTES = 512

# The SDK's parenthesised layers: all ids and event numbers, never the cause.
_SDK_LAYER = re.compile(r"(child workflow execution error|activity error) \(")
# ApplicationError's trailer; what follows it repeats the chain (see the module docstring).
_TRAILER = re.compile(r" ?\(type: [^,()]*, retryable: (?:true|false)\)")
# A trailer the 512-byte cut left unfinished at the very end: " (", " (typ", " (type: wrapEr", ...
_CUT_TRAILER = re.compile(r" \((?:t(?:y(?:p(?:e(?::(?: [^()]*)?)?)?)?)?)?$")
# Flow's own wrapping, each a prefix of what it wraps.
# (At the very end the space may be gone: the cut, then the task message's TrimSpace.)
_FLOW_LAYERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("stage", re.compile(r"stage (\d+) failed:(?: |$)")),
    ("component_type", re.compile(r"component type (\S+) failed:(?: |$)")),
    ("phase", re.compile(r"(main operation|pre-operation|post-operation) failed:(?: |$)")),
    ("action", re.compile(r"action \d+ \(([^()]*)\) failed:(?: |$)")),
)
# The same layers as tokens (text, or a pattern for a variable part), to recognise one the cut
# left unfinished at the end ("main operation fa", "component type NVSw", "activity error (").
_LAYER_TOKENS: tuple[tuple[str | re.Pattern[str], ...], ...] = (
    ("stage ", re.compile(r"\d+"), " failed: "),
    ("component type ", re.compile(r"\S+"), " failed: "),
    ("main operation failed: ",),
    ("pre-operation failed: ",),
    ("post-operation failed: ",),
    ("action ", re.compile(r"\d+"), " (", re.compile(r"[^()]+"), ") failed: "),
    ("child workflow execution error (",),
    ("activity error (",),
)
_LAYER_TYPE = re.compile(r"type: ([^,()]+),")
# Left by a cut: stray U+FFFD, lone surrogates (undecodable bytes), spaces and separators.
_CUT_TAIL = re.compile(r"[\s\ufffd\ud800-\udfff:;,]+$")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class ErrorText:
    """What an error text says once its wrapping is taken off.

    ``cause`` is the failing code's own words ("" when the 512-byte cut left none), ``truncated``
    when Flow's cut took its end; the other fields are what the wrapping said about where it
    failed, when it said it.
    """

    cause: str
    truncated: bool = False
    stage: int | None = None
    component_type: str | None = None
    workflow_type: str | None = None
    phase: str | None = None
    action: str | None = None
    activity_type: str | None = None

    @property
    def summary(self) -> str:
        """The cause; when the cut left none, the innermost place the wrapping names."""
        if self.cause:
            return self.cause + ("…" if self.truncated else "")
        where = next(
            (
                text
                for value, text in (
                    (self.activity_type, f"activity {self.activity_type}"),
                    (self.action, f"action {self.action}"),
                    (self.phase, str(self.phase)),
                    (self.workflow_type, f"child workflow {self.workflow_type}"),
                    (self.component_type, f"component type {self.component_type}"),
                    (self.stage, f"stage {self.stage}"),
                )
                if value
            ),
            None,
        )
        return f"{where} failed (cause cut off)" if where else ""


def parse_error(text: str) -> ErrorText:
    """Take Flow's and the SDK's wrapping off ``text``, in any order and nesting.

    A text with no wrapping comes back as its ``cause``, only trimmed.
    """
    head = text.strip()
    cut = len(text.encode("utf-8", "surrogatepass")) >= FLOW_MAX_ERROR_BYTES or head.endswith("\ufffd")
    trailer = _TRAILER.search(head)
    if trailer is not None:
        head = head[: trailer.start()]
    found: dict[str, str] = {}
    kept: list[str] = []
    pos = _strip_flow_layers(head, 0, found)
    while (layer := _SDK_LAYER.search(head, pos)) is not None:
        kept.append(head[pos : layer.start()])
        close = _closing_paren(head, layer.end() - 1)
        inside = head[layer.end() : close if close is not None else len(head)]
        if (kind := _LAYER_TYPE.match(inside)) is not None:
            key = "workflow_type" if layer.group(1).startswith("child") else "activity_type"
            found[key] = kind.group(1)
        if close is None:  # the cut landed inside the layer: nothing of the cause is left
            pos = len(head)
            break
        pos = close + 1
        if head.startswith(": ", pos):
            pos += 2
        pos = _strip_flow_layers(head, pos, found)
    rest = head[pos:]
    if _cut_inside_layer(rest):
        rest = ""
    cause, cut_trailer = _CUT_TRAILER.subn("", "".join(kept) + rest)
    return ErrorText(
        cause=_CUT_TAIL.sub("", cause),
        # A trailer begun after the cause means the cause itself was whole.
        truncated=cut and trailer is None and not cut_trailer,
        stage=int(found["stage"]) if "stage" in found else None,
        component_type=found.get("component_type"),
        workflow_type=found.get("workflow_type"),
        phase=found.get("phase"),
        action=found.get("action"),
        activity_type=found.get("activity_type"),
    )


def error_cause(text: str) -> str:
    """The cause of ``text`` (see :func:`parse_error`); never empty unless ``text`` is blank."""
    return parse_error(text).summary or _CUT_TAIL.sub("", text.strip())


def valid_utf8(text: str) -> str:
    """``text`` with lone surrogates (bytes that were not UTF-8) as U+FFFD, so it can be encoded."""
    return _SURROGATE.sub("\ufffd", text)


def one_line(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut), valid UTF-8."""
    flat = " ".join(valid_utf8(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _strip_flow_layers(text: str, pos: int, found: dict[str, str]) -> int:
    """Skip Flow's layers that start at ``pos`` (the innermost of a kind wins); the new position."""
    while True:
        for name, pattern in _FLOW_LAYERS:
            match = pattern.match(text, pos)
            if match is not None:
                found[name] = match.group(1)
                pos = match.end()
                break
        else:
            return pos


def _closing_paren(text: str, start: int) -> int | None:
    """The index of the parenthesis closing the one at ``start``; None if the text ends first."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    return None


def _cut_inside_layer(rest: str) -> bool:
    """Whether ``rest`` is the start of a layer the cut left unfinished ("main operation fa")."""
    if not rest:
        return False
    for tokens in _LAYER_TOKENS:
        pos = 0
        for token in tokens:
            if isinstance(token, str):
                if token.startswith(rest[pos:]):
                    return True
                if not rest.startswith(token, pos):
                    break
                pos += len(token)
            else:
                match = token.match(rest, pos)
                if match is None:
                    break
                if match.end() == len(rest):
                    return True
                pos = match.end()
    return False
