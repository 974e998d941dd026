"""kops' record of a run: what every layer above the tracking adapter reads instead of MLflow's ``Run`` entity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kaggleops.schema import TAG_PARENT

if TYPE_CHECKING:
    from mlflow.entities import Run


@dataclass(frozen=True)
class RunRecord:
    """A run as kops reads it: what the stages, sync and the CLI use instead of MLflow's ``Run`` entity.

    ``latest``: each metric's latest point ``(step, timestamp, value)`` as the store keeps it beside the run (what
    `kops sync` copies); ``metrics``: the same values by key.
    """

    id: str
    name: str
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    latest: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    @property
    def parent(self) -> str | None:
        """The parent run's id (``mlflow.parentRunId``), or None."""
        return self.tags.get(TAG_PARENT)

    @classmethod
    def of(cls, run: Run) -> RunRecord:
        """The record of one MLflow ``Run`` (the only place kops reads MLflow's entity)."""
        info, data = run.info, run.data
        return cls(id=info.run_id, name=info.run_name or "", experiment_id=str(info.experiment_id),
                   status=info.status, start_time=info.start_time, end_time=info.end_time,
                   artifact_uri=info.artifact_uri or "", tags=dict(data.tags), params=dict(data.params),
                   metrics=dict(data.metrics),
                   latest={m.key: (m.step, m.timestamp, m.value) for m in data._metric_objs})
