"""The tracking adapter is the one door to MLflow: every client call goes through its error translator.

A failing store must reach the user as one kops error naming the store, never as "kops: internal error" with
MLflow's exception — in `kops sync` (listings, histories, bulk import), in downloads, in prefix lookups too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from kaggleops.config import load_config

PACKAGE = Path(__file__).resolve().parents[1] / "kaggleops"
TRACKING = PACKAGE / "adapters" / "tracking.py"


def untranslated_calls(source: str) -> list[str]:
    """``self.client.<method>`` uses that are neither an argument of ``self._call(...)`` nor inside a
    ``with translate(...)`` block: MLflow calls whose failures would escape as MLflow's own exceptions."""
    tree = ast.parse(source)
    covered: set[int] = set()
    for node in ast.walk(tree):
        is_call = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_call")
        is_with = isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") == "translate"
            for item in node.items)
        if is_call or is_with:
            covered.update(id(inner) for inner in ast.walk(node))
    return [f"line {node.lineno}: self.client.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "client" and getattr(node.value.value, "id", "") == "self"
            and id(node) not in covered]


def test_every_mlflow_client_call_in_the_adapter_is_translated() -> None:
    assert untranslated_calls(TRACKING.read_text()) == []


def test_the_check_finds_a_bare_call() -> None:
    bad = ("class T:\n    def f(self, r):\n        with translate('x', self.uri):\n"
           "            self.client.get_run(r)\n        return self.client.get_metric_history(r, 'loss')\n")
    assert untranslated_calls(bad) == ["line 5: self.client.get_metric_history"]


def test_only_the_adapter_builds_an_mlflow_client() -> None:
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "MlflowClient" in p.read_text())
    assert users == ["adapters/tracking.py"]


class _FailingClient:
    """An MLflow client whose every call fails the way a broken store does."""

    def __getattr__(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise MlflowException(f"INTERNAL_ERROR: the database is gone ({name})")
        return fail


@pytest.mark.parametrize("call", [
    lambda t, tmp: t.experiment_ids(all_experiments=True),
    lambda t, tmp: t.all_runs(["0"]),
    lambda t, tmp: t.metric_history("0" * 32, "loss"),
    lambda t, tmp: t.list_artifacts("0" * 32),
    lambda t, tmp: t.download("0" * 32, "model", tmp),
    lambda t, tmp: t.create_imported_run("0", "fold-0", 0, {}),
    lambda t, tmp: t.log_bulk("0" * 32, [("loss", 0, 0, 1.0)]),
    lambda t, tmp: t.set_status("0" * 32, "FINISHED", 0),
    lambda t, tmp: t.experiment_name("0"),
    lambda t, tmp: t.resolve("abcdef12"),
], ids=["experiments", "runs", "history", "artifacts", "download", "import", "bulk", "status", "experiment",
        "prefix"])
def test_a_failing_store_is_one_kops_error_naming_it(tmp_path: Path, call: Any) -> None:
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.errors import KopsError

    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\n")
    tracker = Tracker(load_config(tmp_path / "kops.yaml"))
    tracker.client = _FailingClient()
    with pytest.raises(KopsError) as raised:
        call(tracker, tmp_path / "dst")
    message = str(raised.value)
    assert "the database is gone" in message and tracker.uri in message and "\n" not in message


def test_above_the_adapters_runs_are_kops_records_not_mlflow_entities() -> None:
    """Stages, sync, the kernel side and the CLI read :class:`RunRecord` (``run.tags``, ``run.id``), never MLflow's
    ``Run`` (``run.info.run_id``, ``run.data.tags``) and never import MLflow."""
    import re

    entity = re.compile(r"\.info\.(run_id|status|run_name|start_time|end_time|experiment_id|artifact_uri)\b"
                        r"|\.data\.(tags|params|metrics)\b|_metric_objs|^\s*(from|import) mlflow\b", re.M)
    found = [f"{p.relative_to(PACKAGE)}: {m.group(0).strip()}" for p in sorted(PACKAGE.rglob("*.py"))
             if "adapters" not in p.parts for m in entity.finditer(p.read_text())]
    assert found == []


def test_a_password_in_the_store_url_never_reaches_an_error_message() -> None:
    from mlflow.exceptions import MlflowException

    from kaggleops.adapters.mlflow_store import translate
    from kaggleops.errors import KopsError

    store = "postgresql://mlflow:pg-s3cret@127.0.0.1:5432/mlflow"
    with pytest.raises(KopsError) as raised:
        with translate("Tagging experiment team", store):
            raise MlflowException(f"INTERNAL_ERROR: (psycopg.OperationalError) connection to {store} failed")
    assert "pg-s3cret" not in str(raised.value) and "postgresql://mlflow:***@127.0.0.1:5432/mlflow" in str(raised.value)


def test_workers_tagging_one_experiment_at_once_do_not_fail(tmp_path: Path) -> None:
    """Many workers start at once on an experiment another tool made: all but one lose the store's race to tag it
    as model development (PostgreSQL: UniqueViolation); the tag is there either way, so none of them fails."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from kaggleops.adapters.tracking import Tracker

    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\nexperiment: team\n")
    cfg = load_config(tmp_path / "kops.yaml")
    MlflowClient(cfg.resolved_tracking_uri).create_experiment("team")  # made elsewhere: no experimentKind tag
    tracker = Tracker(cfg)

    def lost(*args: Any, **kwargs: Any) -> None:
        raise MlflowException('BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique '
                              'constraint "experiment_tag_pk"')

    tracker.client.set_experiment_tag = lost  # type: ignore[method-assign]
    assert tracker.experiment_id == MlflowClient(cfg.resolved_tracking_uri).get_experiment_by_name("team").experiment_id
