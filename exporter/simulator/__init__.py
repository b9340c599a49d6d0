"""A simulated NICo REST server: the fake the demo, the tests and the benchmarks run against.

It models what the exporter depends on, faithfully to the real server (nico-api-notes.md):
sites, GB200 NVL72 racks and trays, Flow tasks with their stage/step reports and lifecycle
(Pending, Waiting behind a conflicting task, Running stage by stage, fail-fast, queue expiry,
cancel), the REST surface with its exact error bodies, pagination in undefined (heap) order,
bearer auth and the Keycloak login, the optional rate limiter, plus fault injection and a
ground-truth control API under ``/_sim``.

Imports nothing from the exporter except :mod:`exporter.models`.

Typical use::

    sim = Simulation(SimulatorConfig(scenario=ScenarioConfig.quiet()), clock=ManualClock())
    app = create_app(sim)  # ASGI: httpx.ASGITransport(app=app) or uvicorn
"""

from __future__ import annotations

from exporter.simulator.app import create_app
from exporter.simulator.clock import AcceleratedClock, Clock, ManualClock
from exporter.simulator.faults import FaultConfig
from exporter.simulator.operations import Operation
from exporter.simulator.scenario import ScenarioConfig
from exporter.simulator.server import quiet_simulated_resets, simulator_server
from exporter.simulator.simulation import (
    Simulation,
    SimulatorConfig,
    TaskTruth,
)
from exporter.simulator.world import CancelRefused, Outcome, SimulationError

__all__ = [
    "AcceleratedClock",
    "CancelRefused",
    "Clock",
    "FaultConfig",
    "ManualClock",
    "Operation",
    "Outcome",
    "ScenarioConfig",
    "Simulation",
    "SimulationError",
    "SimulatorConfig",
    "TaskTruth",
    "create_app",
    "quiet_simulated_resets",
    "simulator_server",
]
