"""A simulated NICo REST server: the fake the demo, the tests and the benchmarks run against.

It models what the exporter depends on, faithfully to the real server (docs/api-notes.md):
sites, GB200 NVL72 racks and trays, Flow tasks with their stage/step reports and lifecycle
(REST submissions refused on conflict, Waiting from leak detection and schedules, Running
stage by stage, fail-fast, queue expiry by the promoter's sweep, cancel), the REST surface with its exact error bodies, first-20-row task lists in storage (heap) order with exact totals,
bearer auth and the Keycloak login, the optional rate limiter, plus fault injection and a
ground-truth control API under ``/_sim``.

Imports nothing from the exporter except :mod:`exporter.models`.

Typical use::

    sim = Simulation(SimulatorConfig(scenario=ScenarioConfig.quiet()), clock=ManualClock())
    app = create_app(sim)  # ASGI: httpx.ASGITransport(app=app) or uvicorn
"""

from __future__ import annotations

from exporter.simulator.asgi import create_app
from exporter.simulator.clock import AcceleratedClock, Clock, ManualClock
from exporter.simulator.faults import FaultConfig
from exporter.simulator.fleet import SiteFaults
from exporter.simulator.operations import Operation
from exporter.simulator.scenario import ScenarioConfig
from exporter.simulator.server import quiet_simulated_resets, simulator_server
from exporter.simulator.simulation import (
    Simulation,
    SimulatorConfig,
    TaskTruth,
)
from exporter.simulator.world import CancelRefused, Outcome, Rejected, SimulationError

__all__ = [
    "AcceleratedClock",
    "CancelRefused",
    "Clock",
    "FaultConfig",
    "ManualClock",
    "Operation",
    "Outcome",
    "Rejected",
    "ScenarioConfig",
    "Simulation",
    "SimulationError",
    "SimulatorConfig",
    "SiteFaults",
    "TaskTruth",
    "create_app",
    "quiet_simulated_resets",
    "simulator_server",
]
