"""A bearer token printed by a command: nicocli's ``auth.token_command`` (``NICO_TOKEN_COMMAND``).

nicocli runs the command with ``sh -c`` and takes its standard output, trimmed, as the token
(``rest-api/cli/pkg/client.go:397-410``); no output is an error (``cli/pkg/auth.go:217-227``). The
exporter runs it the same way, but a long-running process needs more: the command runs with a
time limit (its whole process group is killed when it overruns), again before the token's JWT
``exp`` when it has one, and again after NICo answers 401. A failure names the exit status and the
last line of the command's standard error, never its standard output (where the token would be),
and never the command line (which may carry a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

from exporter import logs
from exporter.auth import RenewedToken
from exporter.errors import AuthError

ENDPOINT = "token_command"


class TokenCommand(RenewedToken):
    """Runs ``command`` with ``sh -c`` for a token; one run at a time, however many callers wait.

    Args:
        command: the shell command line (``api.token_command``).
        timeout: seconds the command may take before its process group is killed.
        clock: monotonic seconds (when to run again); wall: Unix seconds (a JWT's ``exp``).
    """

    def __init__(
        self,
        command: str,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not command.strip():
            raise AuthError("api.token_command is empty")
        super().__init__(clock, wall)
        self._command = command
        self._timeout = timeout

    def __repr__(self) -> str:
        # The command line stays out too: it may carry a password.
        return "TokenCommand(<command>)"

    async def _fetch(self) -> tuple[str, object]:
        # An opaque token is kept until NICo refuses it; a JWT is renewed before its exp.
        return await self._run(), None

    async def _run(self) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                self._command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group, so a command that overruns is ended with its children.
                start_new_session=True,
            )
        except OSError as exc:
            raise AuthError(
                f"api.token_command cannot be started: {exc.strerror or type(exc).__name__}",
                endpoint=ENDPOINT,
            ) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError:
            _kill_group(proc)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            raise AuthError(
                f"api.token_command timed out after {self._timeout:g}s (its process group was killed)",
                endpoint=ENDPOINT,
            ) from None
        stdout = out.decode("utf-8", errors="replace")
        if proc.returncode != 0:
            code = proc.returncode or 0
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise AuthError(f"api.token_command failed ({how}): {_last_line(err, stdout)}", endpoint=ENDPOINT)
        token = stdout.strip()
        if not token:
            raise AuthError("api.token_command printed no token", endpoint=ENDPOINT)
        if any(c.isspace() or not c.isprintable() for c in token):
            raise AuthError(
                "api.token_command printed more than the token (want one line, one word, no 'Bearer ')",
                endpoint=ENDPOINT,
            )
        return token


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _last_line(stderr: bytes, stdout: str) -> str:
    """The last non-empty line of the command's standard error, at most 200 characters, with
    anything it also printed on standard output (a token, perhaps) and any registered secret cut."""
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
    text = lines[-1] if lines else "(nothing on standard error)"
    for word in stdout.split():
        if len(word) >= 4:
            text = text.replace(word, "<redacted>")
    return logs.redact(text)[:200]
