"""Leaderboard tables and plots built from MLflow runs only."""

from zoo.report.leaderboard import (
    ExperimentError,
    Leaderboard,
    aggregate,
    build,
    compare,
    load_runs,
    pareto_front,
)
from zoo.report.render import write_comparison, write_report

__all__ = [
    "ExperimentError",
    "Leaderboard",
    "aggregate",
    "build",
    "compare",
    "load_runs",
    "pareto_front",
    "write_comparison",
    "write_report",
]
