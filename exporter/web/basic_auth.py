"""HTTP basic auth against the web config's ``basic_auth_users`` (bcrypt), as exporter-toolkit does it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping

import bcrypt

_AUTH_CACHE_SIZE = 100


class BasicAuth:
    """bcrypt basic auth with exporter-toolkit's cache and user-enumeration defence."""

    def __init__(self) -> None:
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        # One bcrypt at a time, as exporter-toolkit: wrong guesses cost one core at most.
        self._bcrypt_lock = threading.Lock()
        self._dummy_hashes: dict[int, bytes] = {}

    def prepare(self, users: Mapping[str, str]) -> None:
        """Make the dummy hashes now, so the first unknown user is not slower than later ones."""
        for hashed in users.values():
            self._dummy_hash(_bcrypt_cost(hashed))

    def check(self, users: Mapping[str, str], authorization: str | None) -> bool:
        credentials = _parse_basic_auth(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        if hashed is None:
            # Spend a bcrypt check anyway, at the configured cost, so timing does not reveal who exists.
            with self._bcrypt_lock:
                target = self._dummy_hash(max(_bcrypt_cost(h) for h in users.values()))
                _checkpw(password, target)
            return False
        key = hashlib.sha256(
            b"\0".join((user.encode("utf-8", "surrogateescape"), hashed.encode(), password))
        ).digest()
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
        with self._bcrypt_lock:
            ok = _checkpw(password, hashed.encode())
        if ok:
            with self._cache_lock:
                self._cache[key] = None
                while len(self._cache) > _AUTH_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok

    def _dummy_hash(self, cost: int) -> bytes:
        if cost not in self._dummy_hashes:
            self._dummy_hashes[cost] = bcrypt.hashpw(b"fakepassword", bcrypt.gensalt(rounds=cost))
        return self._dummy_hashes[cost]


def _bcrypt_cost(hashed: str) -> int:
    return int(hashed.split("$")[2])


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes, or a malformed hash
        return False


def _parse_basic_auth(header: str | None) -> tuple[str, bytes] | None:
    """``Authorization: Basic base64(user:password)`` as Go's ``Request.BasicAuth`` reads it."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "surrogateescape"), password
