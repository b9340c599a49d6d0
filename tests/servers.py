"""Real servers for tests: the simulator package's harness (an ASGI app on 127.0.0.1, a free port)."""

from __future__ import annotations

from exporter.simulator.harness import serve_in_thread as serve_app

__all__ = ["serve_app"]
