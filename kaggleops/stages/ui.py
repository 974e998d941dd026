"""`kops ui`: the MLflow UI on 127.0.0.1, opened on the runs table sorted by ``lb_public``.

The server is started by :mod:`kaggleops.adapters.mlflow_server` (lean: one worker, no job execution). A tracking
store that already is a server (``http(s)://``) is not started again: kops only prints its URL.

The URL uses the MLflow 3.17 frontend's query parameters (hash router): ``workflowType=machine_learning``
(the "Machine learning" view rather than GenAI) and ``orderByKey=metrics.`lb_public```, ``orderByAsc=false``.
A URL cannot choose the table's columns (metric columns start hidden), so ``kops ui`` stores a shared view
(experiment tag ``mlflow.sharedViewState.kops-leaderboard``, plain JSON, which the frontend accepts) with the
LB/CV metric columns and the lb_public sort, and opens it with ``viewStateShareKey`` instead of the sort
parameters (URL facets would override the shared view).
"""

from __future__ import annotations

import json
from urllib.parse import quote

from kaggleops.adapters.mlflow_server import DEFAULT_HOST, START_TIMEOUT_S, UiServer, port_free, serve_mlflow
from kaggleops.adapters.tracking import Tracker, open_tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError, PortInUse
from kaggleops.schema import TAG_DATASET_VERSION, TAG_KERNEL_VERSION, TAG_SHARED_VIEW, TAG_SUBMISSION_STATUS

DEFAULT_PORT = 5000
SHARE_KEY = "kops-leaderboard"
SHARED_VIEW_TAG = TAG_SHARED_VIEW
VIEW_METRICS = ("lb_public", "lb_private")
# MLflow's own run columns: the data a run trained on, the LoggedModels it made or used (source and user are on the
# run page: more columns here would push the LB columns out of a laptop's view)
VIEW_ATTRIBUTES = ("Dataset", "Models")
VIEW_TAGS = (TAG_SUBMISSION_STATUS, TAG_KERNEL_VERSION, TAG_DATASET_VERSION)


def runs_url(base: str, experiment_id: str, sort_metric: str = "lb_public", share_key: str | None = None,
             ascending: bool = False) -> str:
    """The runs table of an experiment, sorted by a metric (best first), in the machine-learning view.

    Example:
        >>> runs_url("http://127.0.0.1:5000", "1")  # doctest: +ELLIPSIS
        'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&orderByKey=metrics.%60lb_public...'
    """
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if share_key:  # the shared view carries columns and sort; URL facets would override (and drop) it
        return f"{page}&viewStateShareKey={share_key}"
    return f"{page}&orderByKey={quote(f'metrics.`{sort_metric}`', safe='.')}&orderByAsc={str(ascending).lower()}"


def models_url(base: str, experiment_id: str) -> str:
    """The experiment's Models tab (MLflow 3 LoggedModels: every published weight set with its LB metrics).

    Example:
        >>> models_url("http://127.0.0.1:5000", "1")
        'http://127.0.0.1:5000/#/experiments/1/models?workflowType=machine_learning'

    The ``workflowType`` makes MLflow 3 show its model-training pages (it lists models only there; without it a new
    browser opens the GenAI pages, where LoggedModels are "Agent versions" without metric columns).
    """
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/models?workflowType=machine_learning"


def save_leaderboard_view(tracker: Tracker, sort_metric: str = "lb_public", metric: str | None = None,
                          higher_is_better: bool = True) -> str:
    """Store the runs-table view (data input, models, LB and the task metric's CV columns, sorted
    by ``sort_metric`` best first: ascending for a lower-is-better metric); return its share key. MLflow nests
    fold runs under their parent only in a table sorted by date, so this LB-sorted view lists them flat."""
    from kaggleops.stages.leaderboard import cv_metrics

    columns = [*VIEW_METRICS, *(cv_metrics(metric) if metric else ())]
    state = {"orderByKey": f"metrics.`{sort_metric}`", "orderByAsc": not higher_is_better, "searchFilter": "",
             "selectedColumns": ["attributes.`Run Name`", *(f"attributes.`{a}`" for a in VIEW_ATTRIBUTES),
                                 *(f"metrics.`{m}`" for m in columns),
                                 *(f"tags.`{t}`" for t in VIEW_TAGS)],
             "runsPinned": [], "runsHidden": [], "runsExpanded": {}}
    tracker.set_experiment_tag(SHARED_VIEW_TAG + SHARE_KEY, json.dumps(state))
    return SHARE_KEY


def _task_metric(cfg: KopsConfig) -> tuple[str | None, bool]:
    """(metric name, higher is better) of the configured task; (None, True) when it cannot be loaded."""
    try:
        from kaggleops.stages.train import get_task_for

        metric = get_task_for(cfg).metric
        return metric.name, bool(metric.higher_is_better)
    except KopsError:
        return None, True


def start_ui(cfg: KopsConfig, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
             timeout_s: float = START_TIMEOUT_S) -> UiServer:
    """Start the MLflow UI on the configured tracking store; return once it answers.

    Example:
        >>> server = start_ui(load_config()); print(server.url); server.wait()  # doctest: +SKIP
    """
    tracker = open_tracker(cfg)
    experiment_id = tracker.experiment_id
    metric, higher = _task_metric(cfg)
    share_key = save_leaderboard_view(tracker, metric=metric, higher_is_better=higher)
    if tracker.uri.startswith(("http://", "https://")):
        return UiServer(runs_url(tracker.uri, experiment_id, share_key=share_key), tracker.uri,
                        models_url=models_url(tracker.uri, experiment_id))
    if not port_free(host, port):
        raise PortInUse(f"Port {port} on {host} is in use.", "Pick another: kops ui --port 5001")
    server = serve_mlflow(tracker.uri, ["--default-artifact-root", cfg.resolved_artifact_location], cfg.root,
                          cfg.root / ".kops" / "mlflow-ui.log", port=port, host=host, timeout_s=timeout_s)
    server.url = runs_url(server.base, experiment_id, share_key=share_key)
    server.models_url = models_url(server.base, experiment_id)
    return server
