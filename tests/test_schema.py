"""The run schema: names defined once, versioned records read and validated in one place."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from kaggleops import schema
from kaggleops.errors import DataError, KopsError, SchemaError
from kaggleops.schema import MANIFEST_VERSION, PLAN_VERSION, KernelPlan, Kind, Manifest, PlanModel, PlanReranker

PACKAGE = Path(schema.__file__).parent

OLD_PLAN = {  # a kops-kernel.json written before plans had a schema_version
    "kops_version": "0.1.0", "competition": "tweet-sentiment-extraction", "id_column": "textID",
    "target_column": "selected_text",
    "models": [{"run_id": "a" * 32, "dataset": "alice/f0-aaaaaaaa", "dataset_version": 2, "weight": 1.0}],
    "reranker": None, "runtime": {"dataset": "alice/kops-runtime", "version": 1, "content_sha256": "c" * 64,
                                  "wheel": "kaggleops-0.1.0-py3-none-any.whl"},
    "runtime_module": "kaggleops.tasks.tse.infer", "max_len": 128, "batch_size": 64,
    "post_processing": {"neutral_full_text": True},
}
OLD_MANIFEST = {
    "kops_version": "0.1.0", "run_id": "b" * 32, "experiment": "tse", "commit": None, "repo_url": None,
    "created": "2026-01-01T00:00:00+00:00", "files": {"config.json": {"sha256": "d" * 64, "bytes": 10}},
    "archives": {"tokenizer.zip": "tokenizer"},
}


def test_an_unversioned_plan_reads_as_version_1_and_round_trips() -> None:
    plan = KernelPlan.from_dict(OLD_PLAN)
    assert plan.schema_version == 1 and plan.models == [PlanModel("a" * 32, "alice/f0-aaaaaaaa", 2)]
    assert plan.source_runs == ["a" * 32] and plan.dataset_versions == ["alice/f0-aaaaaaaa/2"]
    again = KernelPlan.from_json(plan.to_json())
    assert again == plan and json.loads(plan.to_json())["schema_version"] == PLAN_VERSION


def test_plan_keeps_keys_it_does_not_know() -> None:
    plan = KernelPlan.from_dict({**OLD_PLAN, "tta": {"flip": True}})
    assert plan.extra["tta"] == {"flip": True} and plan.to_dict()["tta"] == {"flip": True}
    assert plan.extra["max_len"] == 128  # an old plan's task-specific keys are kept too
    assert plan.task_spec == "" and plan.columns == ["selected_text"]


def test_plan_with_a_reranker() -> None:
    rr = {"run_id": "r" * 32, "options": {"w": 0.5, "n": 3},
          "models": [{"run_id": "f" * 32, "dataset": "alice/rr-f0", "dataset_version": 1}]}
    plan = KernelPlan.from_dict({**OLD_PLAN, "reranker": rr})
    assert plan.reranker == PlanReranker("r" * 32, [PlanModel("f" * 32, "alice/rr-f0", 1)], {"w": 0.5, "n": 3})
    assert plan.all_models[-1].run_id == "f" * 32 and plan.to_dict()["reranker"] == rr


@pytest.mark.parametrize(("change", "message"), [
    ({"models": "x"}, "'models' is 'x', not a list"),
    ({"competition": None}, "'competition' is None, not a str"),
    ({"models": [{"run_id": "a", "dataset": "o/s"}]}, "has no 'dataset_version'"),
    ({"schema_version": PLAN_VERSION + 1}, f"schema_version {PLAN_VERSION + 1}; this kops reads up to"),
    ({"schema_version": "2"}, "is not a positive integer"),
])
def test_an_invalid_plan_is_one_schema_error(change: dict, message: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(message)):
        KernelPlan.from_dict({**OLD_PLAN, **change})


def test_a_plan_without_a_required_key_names_it() -> None:
    data = {k: v for k, v in OLD_PLAN.items() if k != "id_column"}
    with pytest.raises(SchemaError, match="has no 'id_column'"):
        KernelPlan.from_dict(data)


def test_manifest_reads_old_files_round_trips_and_validates(tmp_path: Path) -> None:
    path = tmp_path / schema.MANIFEST
    path.write_text(json.dumps(OLD_MANIFEST))
    manifest = Manifest.read(path)
    assert manifest.schema_version == 1 and manifest.files["config.json"].sha256 == "d" * 64
    assert manifest.archives == {"tokenizer.zip": "tokenizer"}
    manifest.write(path)
    assert Manifest.read(path) == manifest and json.loads(path.read_text())["schema_version"] == MANIFEST_VERSION
    path.write_text(json.dumps({**OLD_MANIFEST, "files": {"a": {"bytes": 1}}}))
    with pytest.raises(SchemaError, match="file 'a' has no sha256"):
        Manifest.read(path)
    path.write_text("{not json")
    with pytest.raises(SchemaError, match="cannot be read as JSON"):
        Manifest.read(path)


def test_one_error_tree_and_task_data_error_is_kops_data_error() -> None:
    from kaggleops.task import DataError as TaskDataError

    assert TaskDataError is DataError and issubclass(DataError, ValueError) and issubclass(SchemaError, KopsError)
    classes = []
    for path in PACKAGE.rglob("*.py"):
        if "emulator" in path.parts:  # the emulator's own errors are Kaggle's server side, not kops errors
            continue
        tree = ast.parse(path.read_text())
        classes += [f"{path.relative_to(PACKAGE)}:{n.name}" for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                    and any(getattr(b, "id", "").endswith(("Error", "Exception", "Failure")) for b in n.bases)]
    assert classes and all(c.startswith("errors.py:") for c in classes), classes


def test_kind_values_and_tag_names_are_written_once() -> None:
    """No module but schema.py spells a kops tag name or a kind value as a string literal."""
    tag = re.compile(r"""["'](kops\.[a-z_]+(\.[a-z_]+)*|mlflow\.[a-zA-Z.]+)["']""")
    kinds = re.compile(r"TAG_KIND[^\n]*[\"'](" + "|".join(sorted(Kind.ALL)) + r")[\"']")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "schema.py" or "emulator" in path.parts:
            continue
        text = path.read_text()
        found += [f"{path.name}: {m.group(0)}" for m in tag.finditer(text)
                  if m.group(1) not in ("kops.yaml", "mlflow.db")]  # file names, not tags
        found += [f"{path.name}: {m.group(0)}" for m in kinds.finditer(text)]
    assert found == []


def test_data_error_keeps_its_value_error_behaviour() -> None:
    with pytest.raises(ValueError, match="train.csv lacks"):
        raise DataError("train.csv lacks column text")


def test_run_ref_beside_dataset_and_kernel_refs() -> None:
    from kaggleops.refs import KAGGLE_WEB, DatasetRef, KernelRef, RunRef

    run = RunRef.parse("0123456789abcdef0123456789abcdef", "http://127.0.0.1:5000/")
    assert str(run) == run.run_id and run.short == "01234567"
    assert run.url("3") == ("http://127.0.0.1:5000/#/experiments/3/runs/0123456789abcdef0123456789abcdef"
                            "?workflowType=machine_learning")
    assert RunRef("0123456789abcdef0123456789abcdef", "sqlite:///mlflow.db").url() is None
    with pytest.raises(ValueError, match="Not an MLflow run id: .*Expected 32 hex characters"):
        RunRef.parse("x' or 1=1")
    assert DatasetRef.parse("alice/tse-f0/3").url() == f"{KAGGLE_WEB}/datasets/alice/tse-f0"
    assert str(KernelRef.parse("alice/tse-infer/versions/2")) == "alice/tse-infer/2"
    assert DatasetRef("a", "bb-cc") != KernelRef("a", "bb-cc")
