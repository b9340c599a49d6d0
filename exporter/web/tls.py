"""TLS for the metrics server: the SSL context a ``tls_server_config`` describes, and its cache.

Where Python's ``ssl`` module forces a difference from exporter-toolkit:

* ``RequestClientCert`` asks for no certificate (OpenSSL would verify any it asked for, and the
  exporter uses client certificates only for access control, which this mode does not give).
* ``RequireAnyClientCert`` / ``RequireClientCert`` (require a certificate without verifying it)
  cannot be expressed; :mod:`exporter.web.toolkit` rejects them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TLSFileError(Exception):
    """A certificate, key or CA file cannot be read or loaded; the message names it."""


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config`` with paths resolved against the web config file's directory."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    client_allowed_sans: tuple[str, ...] = ()


def build_ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """A server-side context with the certificate, key and client CA loaded.

    Raises:
        TLSFileError: a file does not load.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    context.maximum_version = tls.max_version
    try:
        # A password callback, so an encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise TLSFileError(
            f"cannot load cert_file {tls.cert_file} with key_file {tls.key_file}: {exc}"
        ) from exc
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSFileError(f"cannot load client_ca_file {tls.client_ca_file}: {exc}") from exc
    elif tls.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # Go verifies against the system roots too
    if tls.client_auth_type == "VerifyClientCertIfGiven":
        context.verify_mode = ssl.CERT_OPTIONAL
    elif tls.client_auth_type == "RequireAndVerifyClientCert":
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ContextCache:
    """The TLS context for the current ``tls_server_config``, rebuilt when it or its files change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[TLSServerConfig, bytes] | None = None
        self._context: ssl.SSLContext | None = None

    def get(self, tls: TLSServerConfig) -> ssl.SSLContext:
        """Raises :class:`TLSFileError` when a file cannot be read or loaded."""
        digest = hashlib.sha256()
        for file in (tls.cert_file, tls.key_file, tls.client_ca_file):
            if file is not None:
                try:
                    digest.update(file.read_bytes())
                except OSError as exc:
                    raise TLSFileError(f"cannot read {file}: {exc}") from exc
            digest.update(b"\0")
        key = (tls, digest.digest())
        with self._lock:
            if self._key != key or self._context is None:
                self._context = build_ssl_context(tls)
                self._key = key
            return self._context


def san_allowed(peer: Mapping[str, Any] | None, allowed: Iterable[str]) -> bool:
    """Whether the verified client certificate has one of ``client_allowed_sans``."""
    wanted = {_normalize_san(s) for s in allowed}
    for _kind, value in (peer or {}).get("subjectAltName", ()):
        if _normalize_san(str(value)) in wanted:
            return True
    return False


def _normalize_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value
