"""Routing economics: a discrete-event simulation that drives the router's own policy code.

    bound.py      the least any policy can pay at a given p95 wait (a fluid bound: what a target can ask for)
    scenario.py   arrivals (a trace file, or the built-in game day), the Spaces, the paid path, the cap
    engine.py     the simulated clock: the router's DepthMonitor, BudgetGate and route() against the model
    policies.py   the fixed depth-50 rule and the router's policies, as compared and swept
    report.py     per-run figures, the table, the cost vs p95 wait plot, the verdict

``forgeline simulate`` (``services/cli/simulate.py``) is the command.
"""

from __future__ import annotations

from services.simulator.bound import least_paid
from services.simulator.engine import RunLog, simulate
from services.simulator.policies import NamedPolicy, compared, fixed_rule, router_policy, sweeps
from services.simulator.report import Floor, Summary, floor_under, plot, rows, run_policy, summarise, verdict
from services.simulator.scenario import Arrival, GameDay, Paid, Scenario, Spaces, TraceError, game_day, read_trace

__all__ = [
    "Arrival", "Floor", "GameDay", "NamedPolicy", "Paid", "RunLog", "Scenario", "Spaces", "Summary", "TraceError",
    "compared", "fixed_rule", "floor_under", "game_day", "least_paid", "plot", "read_trace", "router_policy", "rows",
    "run_policy", "simulate", "summarise", "sweeps", "verdict",
]
