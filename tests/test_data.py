"""Competition data in: `kops data` download → cache → reuse, rules, attached Kaggle inputs, the data record."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.config import load_config, render_template
from kaggleops.emulator import Emulator
from kaggleops.refs import KAGGLE_WEB
from kaggleops.stages.data import cache_dir
from kaggleops.tasks import get_task

from harness import kops

TSE = "tweet-sentiment-extraction"
USER, KEY = "alice", "alice-key"
FILES = ("train.csv", "test.csv", "sample_submission.csv")
FAST_YAML = f"""competition: {TSE}
owner: {USER}
train:
  folds: [0]
  epochs: 1
  batch_size: 64
  max_steps: 2
  checkpoint_every: null
  oof_top_k: 2
"""


def seed(emu: Emulator, folder: Path | None = None, accepted: tuple[str, ...] | None = None) -> None:
    sample = folder or get_task(TSE).sample_dir()
    emu.add_competition(TSE, {name: sample / name for name in FILES}, [{"textID": "x", "selected_text": "y"}],
                        "textID", "selected_text", lambda a, b: 1.0, rules_accepted_by=accepted)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "kops.yaml").write_text(render_template(owner=USER, folds=[0], epochs=1))
    monkeypatch.setenv("KOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KOPS_KAGGLE_INPUT", str(tmp_path / "no-kaggle-input"))
    return root


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator]) -> Emulator:
    return start_emulator(username=USER, key=KEY)


def downloads(emu: Emulator) -> int:
    lines = (emu.root / "requests.log").read_text().splitlines()
    return sum(1 for line in lines if "DownloadDataFiles" in json.loads(line)["path"])


def test_data_downloads_once_then_reuses_the_cache(project: Path, emulator: Emulator, tmp_path: Path) -> None:
    seed(emulator)
    first = kops("data", "--json", cwd=project)
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)
    cache = tmp_path / "cache" / "sites" / emulator.url.split("://")[1].replace(":", "_") / "competitions" / TSE
    assert cache_dir(TSE, emulator.url) == cache
    assert got["origin"] == "download" and got["folder"] == str(cache)
    assert sorted(p.name for p in cache.glob("*.csv")) == sorted(FILES)  # unzipped, no zip left
    assert not list(cache.glob("*.zip"))
    sample = get_task(TSE).sample_dir()
    assert (cache / "train.csv").read_bytes() == (sample / "train.csv").read_bytes()
    second = kops("data", cwd=project)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == f"{TSE}: already cached: {cache}"
    assert downloads(emulator) == 1
    (cache / "train.csv").write_text("textID,text,selected_text,sentiment\n")  # damaged: fetched again
    assert json.loads(kops("data", "--json", cwd=project).stdout)["origin"] == "download"
    assert downloads(emulator) == 2


def test_rules_not_accepted_is_one_line_with_the_rules_url_and_credential(project: Path,
                                                                           emulator: Emulator) -> None:
    seed(emulator, accepted=())
    out = kops("data", cwd=project)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"kops: error: Kaggle refused the files of {TSE} as user {USER} (from "
                          f"KAGGLE_USERNAME/KAGGLE_KEY): the competition's rules are not accepted. Accept them at "
                          f"{emulator.url}/competitions/{TSE}/rules and run: kops data\n")
    emulator.accept_rules(TSE, USER)
    assert kops("data", cwd=project).returncode == 0


def test_downloaded_files_are_checked_against_the_task_columns(project: Path, emulator: Emulator,
                                                              tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in FILES:
        shutil.copyfile(get_task(TSE).sample_dir() / name, wrong / name)
    (wrong / "train.csv").write_text("textID,text,sentiment\nab12,hello there,neutral\n")
    seed(emulator, wrong)
    out = kops("data", cwd=project)
    assert out.returncode == 1
    assert out.stderr.startswith("kops: error: ") and "train.csv: missing column(s) selected_text;" in out.stderr
    assert not cache_dir(TSE, emulator.url).exists()  # nothing half-written is reused


def test_no_data_and_no_credentials_names_kops_data(project: Path, tmp_path: Path) -> None:
    out = kops("train", cwd=project)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    cache = tmp_path / "cache" / "competitions" / TSE
    assert out.stderr.startswith(f"kops: error: No data for competition {TSE}: no data_dir, nothing attached under "
                                 f"{tmp_path / 'no-kaggle-input'}, nothing cached in {cache} "
                                 "and the download failed: No Kaggle credentials found")
    assert out.stderr.rstrip().endswith("Fetch it with: kops data (or train on the bundled sample: "
                                        "kops train --sample)")
    assert not (project / "mlflow.db").exists()


@pytest.mark.parametrize("layout", ["competitions/" + TSE, TSE])
def test_found_attached_in_a_kaggle_notebook_under_both_layouts(project: Path, tmp_path: Path, layout: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops.stages.data import resolve

    root = tmp_path / "kaggle" / "input"
    attached = root / layout
    attached.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(get_task(TSE).sample_dir() / name, attached / name)
    monkeypatch.setenv("KOPS_KAGGLE_INPUT", str(root))
    source = resolve(load_config(project / "kops.yaml"), get_task(TSE))  # no credentials: found, not fetched
    assert (source.folder, source.origin, source.name) == (attached, "kaggle-input", TSE)
    assert source.source_url() == f"{KAGGLE_WEB}/competitions/{TSE}/data"


def test_dataset_found_under_both_layouts(tmp_path: Path) -> None:
    from kaggleops.refs import DatasetRef
    from kaggleops.stages.data import attached_dataset_dir

    ref = DatasetRef("alice", "tse-weights")
    assert attached_dataset_dir(ref, tmp_path) is None
    (tmp_path / "tse-weights").mkdir()
    assert attached_dataset_dir(ref, tmp_path) == tmp_path / "tse-weights"
    (tmp_path / "datasets" / "alice" / "tse-weights").mkdir(parents=True)
    assert attached_dataset_dir(ref, tmp_path) == tmp_path / "datasets" / "alice" / "tse-weights"


def dataset_inputs(project: Path, run_id: str) -> list[Any]:
    from kaggleops.adapters.tracking import Tracker

    return [d.dataset for d in Tracker(load_config(project / "kops.yaml")).client.get_run(run_id).inputs.dataset_inputs]


@pytest.mark.slow
def test_train_in_a_simulated_notebook_records_the_competition_data(project: Path, tmp_path: Path) -> None:
    """`kops train` inside a (simulated) Kaggle notebook: the attached competition, recorded with its sha256s."""
    from kaggleops.stages.data import file_hashes

    attached = tmp_path / "kaggle" / "input" / "competitions" / TSE
    attached.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(get_task(TSE).sample_dir() / name, attached / name)
    (project / "kops.yaml").write_text(FAST_YAML)
    out = kops("train", "--json", cwd=project, env={"KOPS_KAGGLE_INPUT": str(tmp_path / "kaggle" / "input"),
                                                     "KAGGLE_KERNEL_RUN_TYPE": "Interactive"})
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["runs"][0]["run_id"]
    [dataset] = dataset_inputs(project, run_id)
    assert (dataset.name, dataset.source_type) == (TSE, "http")
    assert json.loads(dataset.source) == {"url": f"{KAGGLE_WEB}/competitions/{TSE}/data"}
    assert json.loads(dataset.profile) == {"origin": "kaggle-input", "files": file_hashes(attached)}

    sample = kops("train", "--sample", "--json", cwd=project)
    assert sample.returncode == 0, sample.stderr
    [recorded] = dataset_inputs(project, json.loads(sample.stdout)["runs"][0]["run_id"])
    assert recorded.name == "sample" and json.loads(recorded.profile)["origin"] == "sample"


def test_cache_is_kept_per_kaggle_site(project: Path, start_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """Two endpoints serving the same slug never share the cache ('already cached' from another site), and a run
    trained on the downloaded files records the site they came from, not kaggle.com."""
    first = start_emulator("one", username=USER, key=KEY)
    seed(first)
    assert json.loads(kops("data", "--json", cwd=project).stdout)["origin"] == "download"
    second = start_emulator("two", username=USER, key=KEY)  # the environment is aimed at it now
    seed(second)
    got = kops("data", "--json", cwd=project)
    assert got.returncode == 0, got.stderr
    assert (json.loads(got.stdout)["origin"], downloads(second)) == ("download", 1)
    assert json.loads(got.stdout)["folder"] == str(cache_dir(TSE, second.url)) != str(cache_dir(TSE, first.url))

    from kaggleops.stages.data import resolve

    source = resolve(load_config(project / "kops.yaml"), get_task(TSE), fetch=False)
    assert (source.origin, source.source_url()) == ("cache", f"{second.url}/competitions/{TSE}/data")
