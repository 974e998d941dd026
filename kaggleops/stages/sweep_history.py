"""The report a study's MLflow run carries: ``sweep/history.png`` (optimisation history, matplotlib with Agg) and
``sweep/status.json`` (every trial)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kaggleops.adapters.studies import ATTR_RUN, ATTR_WORKER
from kaggleops.adapters.tracking import Tracker

HISTORY_PLOT = "history.png"
REPORT_FOLDER = "sweep"


def write_report(tracker: Tracker, run_id: str, study: Any, metric: str, target: int) -> None:
    """``sweep/history.png`` (each finished trial's value, the best so far, pruned trials marked) and
    ``sweep/status.json`` (every trial: number, state, value, params, run, worker) on the study run."""
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "run_id": t.user_attrs.get(ATTR_RUN), "worker": t.user_attrs.get(ATTR_WORKER),
               "intermediate": {str(k): v for k, v in t.intermediate_values.items()}}
              for t in study.get_trials(deepcopy=False)]
    tracker.log_json(run_id, {"study": study.study_name, "target": target, "metric": f"cv_{metric}",
                              "direction": study.direction.name.lower(), "trials": trials},
                     f"{REPORT_FOLDER}/status.json")
    with tempfile.TemporaryDirectory(prefix="kops-sweep-") as tmp:
        path = history_plot(trials, metric, study.direction.name.lower() == "maximize", Path(tmp) / HISTORY_PLOT)
        tracker.log_artifact(run_id, path, REPORT_FOLDER)


def history_plot(trials: list[dict[str, Any]], metric: str, maximize: bool, path: Path) -> Path:
    """The optimisation history as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["number"])
    pruned = [t for t in trials if t["state"] == "PRUNED" and t["intermediate"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.scatter([t["number"] for t in done], [t["value"] for t in done], label=f"cv_{metric}", zorder=3)
    best, line = None, []
    for t in done:
        best = t["value"] if best is None or (t["value"] > best) == maximize else best
        line.append(best)
    ax.step([t["number"] for t in done], line, where="post", color="C1", label="best so far")
    ax.scatter([t["number"] for t in pruned], [list(t["intermediate"].values())[-1] for t in pruned], marker="x",
               color="C3", label="pruned (last fold)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"cv_{metric}")
    ax.set_title("optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
