"""Deterministic simulation of a tidesync deployment, for this project and for app authors.

``Simulation(seed=1, clients=5, schema_sql=MY_SCHEMA).run(operations=2000)``
runs the real server logic and N real clients in one process on virtual time,
over a network that cuts connections, with client and server crashes, and
returns a ``SimReport`` whose ``violations`` list every broken invariant.  The
same seed replays the same run: ``python -m tidesync.sim --seed N``.
See docs/reliability.md "Deterministic simulation".
"""

from __future__ import annotations

from tidesync.sim.invariants import Violation, check_invariants
from tidesync.sim.loop import SimulationDeadlock, VirtualTimeLoop
from tidesync.sim.network import NetworkConfig
from tidesync.sim.report import SimReport
from tidesync.sim.simulation import FaultConfig, Simulation

__all__ = [
    "FaultConfig",
    "NetworkConfig",
    "SimReport",
    "Simulation",
    "SimulationDeadlock",
    "Violation",
    "VirtualTimeLoop",
    "check_invariants",
]
