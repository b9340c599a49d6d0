"""Serving the simulator over a real socket with uvicorn (the demo and ``simulate`` commands)."""

from __future__ import annotations

import logging

import uvicorn

from exporter.simulator.asgi import SimulatedReset, create_app
from exporter.simulator.simulation import Simulation


class _HideSimulatedResets(logging.Filter):
    """Drop uvicorn's traceback for the connection we abort on purpose (fault ``reset``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedReset)


def quiet_simulated_resets() -> None:
    """Hide uvicorn's error log for the ``reset`` fault (call once when serving the app yourself)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSimulatedResets) for f in logger.filters):
        logger.addFilter(_HideSimulatedResets())


def simulator_server(sim: Simulation, host: str = "127.0.0.1", port: int = 8080) -> uvicorn.Server:
    """A uvicorn server for ``sim``, to ``serve()`` in a running event loop.

    uvicorn's own ``Date`` header is off: the simulator stamps responses with its simulated clock.
    """
    quiet_simulated_resets()
    config = uvicorn.Config(
        create_app(sim),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        date_header=False,
        # A silent site's calls are held for the Temporal timeout (50 s): a stop must not wait
        # for them to be answered.
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)
