"""The benchmark harness: train, evaluate and measure any registered model on any dataset, in MLflow."""

from zoo.harness.config import TrainConfig
from zoo.harness.suites import Suite, load_suite
from zoo.harness.tracking import Tracker
from zoo.harness.training import NonFiniteLossError, RunResult, train

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "Suite",
    "Tracker",
    "TrainConfig",
    "load_suite",
    "run_suite",
    "train",
]


def run_suite(
    suite: Suite, *, tracker: Tracker, workdir: str = "runs", progress: bool = True
) -> list[tuple[str, object]]:
    """Run every config of ``suite`` under one parent MLflow run; a failing run is recorded and skipped.

    Returns ``(run name, RunResult or the exception)`` per run, in order.
    """
    import logging
    import time

    log = logging.getLogger(__name__)
    parent = tracker.start_run(suite.name, tags={"zoo.kind": "suite", "suite": suite.name})
    tracker.log_params(
        parent,
        {
            "suite": suite.name,
            "description": suite.description,
            "runs": len(suite.runs),
            "models": ",".join(sorted({c.model for c in suite.runs})),
            "datasets": ",".join(sorted({c.dataset for c in suite.runs})),
            "seeds": ",".join(str(s) for s in sorted({c.seed for c in suite.runs})),
            "data_root": str(suite.runs[0].data_root) if suite.runs else "",
        },
    )
    outcomes: list[tuple[str, object]] = []
    try:
        for k, cfg in enumerate(suite.runs, start=1):
            try:
                start = time.perf_counter()
                result = train(
                    cfg,
                    tracker=tracker,
                    workdir=workdir,
                    parent_run_id=parent,
                    tags={"suite": suite.name},
                    progress=progress,
                )
                outcomes.append((cfg.run_name, result))
                log.info(
                    "[%d/%d] %s: dice %.4f in %.0f s",
                    k,
                    len(suite.runs),
                    cfg.run_name,
                    result.metrics.get("dice", float("nan")),
                    time.perf_counter() - start,
                )
            except Exception as err:  # recorded as FAILED in MLflow by train(); the suite goes on
                log.error("%s failed: %s", cfg.run_name, err)
                outcomes.append((cfg.run_name, err))
    finally:
        failed = any(isinstance(o, Exception) for _, o in outcomes) or len(outcomes) < len(suite.runs)
        tracker.finish(parent, "FAILED" if failed else "FINISHED")
    return outcomes
