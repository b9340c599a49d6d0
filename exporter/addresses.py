"""Listen addresses as Go exporters write them."""

from __future__ import annotations


def parse_listen_address(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every interface, as Go exporters read it).

    Raises:
        ValueError: not host:port.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {value!r}: want host:port")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":port" means every interface
