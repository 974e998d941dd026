"""The offline inference kernel: push through the real client to the emulator (which runs it), the runtime
wheel dataset, --wait failures, --no-publish, and `kops kernel run-local` with the network blocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggleops.kernel.runtime import check_submission
from kaggleops.tasks import get_task

from harness import kops, read_csv, shared_cache

pytestmark = pytest.mark.slow
LOOP_ENV_KEYS = ("KOPS_KAGGLE_ENDPOINT", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Emulator + a work folder with a 2-fold k-fold parent run (1 epoch each), as `kops demo` sets up."""
    from kaggleops.stages.demo import demo_workspace
    from kaggleops.stages.train import train

    workdir = tmp_path_factory.mktemp("kernels") / "work"
    workdir.mkdir()
    with demo_workspace(workdir, workdir.parent / "emu", epochs=1, folds=[0, 1]) as ws:
        trained = train(ws.cfg, progress=False, sample=True)  # as `kops demo` trains in its workspace
        env = {k: os.environ[k] for k in LOOP_ENV_KEYS}
        yield {"cfg": ws.cfg, "workdir": workdir, "emulator": ws.emulator, "env": env, "trained": trained}


@pytest.fixture
def env(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Re-apply the loop's environment after conftest's per-test isolation."""
    for key, value in loop["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(loop["workdir"])
    return loop


@pytest.fixture(scope="module")
def pushed(loop: dict[str, Any]) -> dict[str, Any]:
    """One push of the k-fold parent (→ 2 fold models), waited for."""
    from kaggleops.adapters.session import Session
    from kaggleops.stages.kernel import KernelOptions, push_kernel

    saved = dict(os.environ)
    os.environ.update(loop["env"])
    try:
        statuses: list[str] = []
        result = push_kernel(Session(loop["cfg"]), [loop["trained"].parent_run_id], on_status=statuses.append,
                             options=KernelOptions(wait=True, machine_shape="NvidiaL4"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"result": result, "statuses": statuses}


def kernel_working(loop: dict[str, Any], version: int) -> Path:
    return loop["workdir"].parent / "emu" / "kernels" / "kopsdemo" / "tse-demo-inference" / str(version) / "working"


def test_kfold_parent_pushes_a_two_model_ensemble_that_writes_a_valid_submission(
        env: dict[str, Any], pushed: dict[str, Any]) -> None:
    result = pushed["result"]
    folds = [r.run_id for r in env["trained"].runs]
    assert result.status == "COMPLETE" and result.run_ids == folds
    assert set(result.published) == set(folds)
    working = kernel_working(env, result.kernel_version)
    sample = get_task("tweet-sentiment-extraction").sample_dir() / "sample_submission.csv"
    ids = [r["textID"] for r in read_csv(sample)]
    assert check_submission(working / "submission.csv", "textID", "selected_text", ids) == []
    first = (working / "submission.csv").read_text(encoding="utf-8").splitlines()[1]
    assert first.startswith('"') and first.endswith('"')  # every cell quoted
    plan = json.loads((working / "kops-kernel.json").read_text())
    assert [m["run_id"] for m in plan["models"]] == folds and plan["reranker"] is None
    assert plan["runtime"]["dataset"] == "kopsdemo/kops-runtime"
    timing = json.loads((working / "kops-timing.json").read_text())
    assert {f"forward + char probabilities m{i}:{f[:8]}" for i, f in enumerate(folds)} <= set(timing)
    meta = json.loads((result.folder / "kernel-metadata.json").read_text())
    assert meta["machine_shape"] == "NvidiaL4" and meta["enable_internet"] is False
    assert "kopsdemo/kops-runtime" in meta["dataset_sources"]


def test_runs_and_parent_are_tagged_with_the_kernel_version(env: dict[str, Any], pushed: dict[str, Any]) -> None:
    from kaggleops.adapters.tracking import Tracker

    tracker = Tracker(env["cfg"])
    for run_id in [env["trained"].parent_run_id, *pushed["result"].run_ids]:
        tags = tracker.get_run(run_id).tags
        assert tags["kops.kernel"] == "kopsdemo/tse-demo-inference"
        assert tags["kops.kernel.version"] == str(pushed["result"].kernel_version)


def test_kernel_imports_the_installed_runtime_wheel(env: dict[str, Any], pushed: dict[str, Any]) -> None:
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.refs import KernelRef

    result = pushed["result"]
    log = Kaggle(env["env"]["KOPS_KAGGLE_ENDPOINT"]).kernel_log(KernelRef("kopsdemo", "tse-demo-inference",
                                                                          result.kernel_version))
    installed = [ln for ln in log if ln.startswith("kops: runtime ")]
    assert installed and "installed at" in installed[0]
    assert any(ln.startswith("kops: timing forward + char probabilities m1:") for ln in log)
    assert "RUNNING" in pushed["statuses"] or "QUEUED" in pushed["statuses"]


def test_runtime_dataset_is_reused_when_unchanged(env: dict[str, Any], pushed: dict[str, Any]) -> None:
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.kernel.wheel import ensure_runtime_dataset

    again = ensure_runtime_dataset(env["cfg"], Kaggle(env["env"]["KOPS_KAGGLE_ENDPOINT"]))
    assert again.created is False and again.version == pushed["result"].runtime["version"]


def test_runtime_wheel_is_deterministic_and_versioned_by_content(tmp_path: Path) -> None:
    import kaggleops
    from kaggleops.kernel.wheel import build_wheel

    root = tmp_path / "pkg"
    shutil.copytree(Path(kaggleops.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    a, b = build_wheel(tmp_path / "a", root), build_wheel(tmp_path / "b", root)
    assert a.wheel_sha256 == b.wheel_sha256 and a.content_sha256 == b.content_sha256
    (root / "kernel" / "runtime.py").write_text((root / "kernel" / "runtime.py").read_text() + "\n# changed\n")
    assert build_wheel(tmp_path / "c", root).content_sha256 != a.content_sha256
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "-q", "--target",
                    str(target), str(a.path)], check=True)
    assert (target / "kaggleops" / "tasks" / "tse" / "infer.py").is_file()


def test_no_publish_refuses_with_the_command_to_run(env: dict[str, Any], pushed: dict[str, Any]) -> None:
    from kaggleops.adapters.session import Session
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.errors import KopsError
    from kaggleops.stages.kernel import KernelOptions, push_kernel

    run_id = pushed["result"].run_ids[0]
    tracker = Tracker(env["cfg"])
    tags = tracker.get_run(run_id).tags
    tracker.client.delete_tag(run_id, "kops.dataset")
    try:
        with pytest.raises(KopsError) as err:
            push_kernel(Session(env["cfg"]), [run_id], options=KernelOptions(publish=False))
    finally:
        tracker.set_tags(run_id, {"kops.dataset": tags["kops.dataset"]})
    assert str(err.value) == (f"Run {run_id} has no published dataset (and --no-publish was given). "
                              f"Publish it with: kops publish {run_id}")


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's KOPS_CACHE_DIR, where run-local's Kaggle image environment is built once."""
    return shared_cache(tmp_path_factory)


@pytest.fixture
def in_image(image_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KOPS_CACHE_DIR", str(image_cache))
    return image_cache


def test_run_local_runs_the_kernel_offline_and_reports_timings(env: dict[str, Any], pushed: dict[str, Any],
                                                               in_image: Path) -> None:
    """The TSE kernel (torch + transformers inference) in the Kaggle image environment, not kops' interpreter."""
    from kaggleops.kernel.local import render_report, run_local

    report = run_local(env["cfg"], pushed["result"].folder, full_rows=3534)
    assert report.ok, render_report(report)
    assert report.image.startswith("Kaggle image ") and report.python.startswith(str(in_image))
    assert report.rows == 200 and report.estimate_s is not None
    assert any(k.startswith("forward + char probabilities m1:") for k in report.timings)
    assert "submission.csv" in report.outputs


def test_run_local_blocks_the_network(env: dict[str, Any], pushed: dict[str, Any], tmp_path: Path,
                                      in_image: Path) -> None:
    """auto = a network namespace where one can be made (root here) + the socket guard, which names the host."""
    from kaggleops.kernel.local import run_local

    folder = tmp_path / "kernel"
    shutil.copytree(pushed["result"].folder, folder, ignore=shutil.ignore_patterns(".run-local"))
    source = (folder / "kernel.py").read_text()
    fetch = 'import urllib.request\nurllib.request.urlopen("http://1.1.1.1", timeout=5)\n\n\nif __name__ == "__main__":'
    (folder / "kernel.py").write_text(source.replace('if __name__ == "__main__":', fetch))
    report = run_local(env["cfg"], folder, timeout_s=120)
    assert not report.ok and report.exit_code != 0
    assert report.problems[0].startswith("internet needed: kops run-local: network blocked: the kernel tried to "
                                         "reach 1.1.1.1")


def test_run_local_names_a_kernel_folder_it_cannot_use(env: dict[str, Any], tmp_path: Path) -> None:
    out = kops("kernel", "run-local", str(tmp_path), cwd=env["workdir"])
    assert out.returncode == 1
    assert out.stderr.strip() == (f"kops: error: No kernel.py in {tmp_path}: not a kernel folder rendered by kops. "
                                  "Render one with: kops push-kernel --run RUN_ID --no-push "
                                  "(it writes .kops/kernels/<slug>/).")


# ---- render (--no-push) → run-local on the downloaded dataset versions ---------------------------------------

RENDER_SLUG = "tse-render-only"
DOWNLOAD_RPC = "datasets.DatasetApiService/DownloadDataset"


def downloads_since(emulator_root: Path, mark: int) -> list[tuple[str, int | None]]:
    """(owner/slug, version) of each whole-dataset download the emulator answered after line ``mark``."""
    lines = (emulator_root / "requests.log").read_text().splitlines()[mark:]
    out = []
    for entry in map(json.loads, lines):
        if entry.get("rpc") == DOWNLOAD_RPC and entry.get("status") == 302 and not entry["body"].get("fileName"):
            body = entry["body"]
            out.append((f"{body['ownerSlug']}/{body['datasetSlug']}", body.get("datasetVersionNumber")))
    return out


def log_mark(emulator_root: Path) -> int:
    return len((emulator_root / "requests.log").read_text().splitlines())


@pytest.fixture(scope="module")
def rendered(loop: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> dict[str, Any]:
    """A never-pushed kernel: `kops push-kernel --no-push` (under its own kernel slug) for a run whose model keeps
    its tokenizer in a `tokenizer/` sub-folder, which `kops publish` uploads as tokenizer.zip."""
    import yaml

    from kaggleops.adapters.tracking import Tracker

    tmp = tmp_path_factory.mktemp("subdir-run")
    env = {**os.environ, **loop["env"]}
    saved = dict(os.environ)
    os.environ.update(loop["env"])
    try:
        tracker = Tracker(loop["cfg"])
        src = tracker.download(loop["trained"].runs[0].run_id, "model", tmp / "download")
        model = tmp / "model"
        (model / "tokenizer").mkdir(parents=True)
        for path in sorted(src.iterdir()):
            weights = path.name == "config.json" or path.suffix in (".safetensors", ".bin")
            shutil.copyfile(path, model / path.name if weights else model / "tokenizer" / path.name)
        run_id = tracker.start_run("fold-0-subdir", {"epochs": 1})
        tracker.log_artifacts(run_id, model, "model")
        tracker.end_run(run_id)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    workdir = loop["workdir"]
    settings = yaml.safe_load((workdir / "kops.yaml").read_text())
    settings.setdefault("kernel", {})["slug"] = RENDER_SLUG
    (workdir / "kops-render.yaml").write_text(yaml.safe_dump(settings))
    out = kops("push-kernel", "--run", run_id, "--no-push", "--config", "kops-render.yaml", "--json", cwd=workdir,
               env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    loop["image_cache"] = image_cache
    return {"result": json.loads(out.stdout), "run_id": run_id, "model": model, "env": env}


def run_local_cli(loop: dict[str, Any], env: dict[str, str], folder: str, *extra: str) -> Any:
    env = {**env, "KOPS_CACHE_DIR": str(loop["image_cache"])}
    return kops("kernel", "run-local", folder, "--config", "kops-render.yaml", *extra, cwd=loop["workdir"], env=env)


def test_one_push_kernel_opens_one_tracker_and_one_kaggle_client(
        loop: dict[str, Any], rendered: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The command's session is built once and handed to every stage it runs (expand, publish, render): one
    tracking-store connection and one authenticated Kaggle client per `kops push-kernel` (before: one tracker per
    stage, and a new one on every poll of `--submit`'s wait)."""
    from kaggleops.adapters import kaggle_http, tracking
    from kaggleops.cli import main

    built = {"trackers": 0, "kaggle clients": 0}

    def counting(cls: type, key: str) -> None:
        real = cls.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            built[key] += 1
            real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", init)

    counting(tracking.Tracker, "trackers")
    counting(kaggle_http.KaggleTransport, "kaggle clients")
    for key, value in loop["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(loop["workdir"])
    monkeypatch.setattr(sys, "argv", ["kops", "push-kernel", "--run", rendered["run_id"], "--no-push", "--json",
                                      "--config", "kops-render.yaml"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert json.loads(capsys.readouterr().out)["run_ids"] == [rendered["run_id"]]
    assert built == {"trackers": 1, "kaggle clients": 1}


def test_no_push_renders_the_kernel_folder_and_publishes_but_pushes_nothing(
        loop: dict[str, Any], rendered: dict[str, Any]) -> None:
    result, run_id = rendered["result"], rendered["run_id"]
    folder = Path(result["folder"])
    assert folder == loop["workdir"] / ".kops" / "kernels" / RENDER_SLUG
    assert result["kernel_version"] is None and result["status"] is None and result["published"] == [run_id]
    assert {p.name for p in folder.iterdir()} == {"kernel.py", "kernel-metadata.json", "kops-kernel.json"}
    plan = json.loads((folder / "kops-kernel.json").read_text())
    dataset = plan["models"][0]["dataset"]
    assert plan["models"] == [{"run_id": run_id, "dataset": dataset, "dataset_version": 1, "weight": 1.0}]
    summary = loop["emulator"].state_summary()
    assert f"kopsdemo/{RENDER_SLUG}" not in summary["kernels"]  # never pushed
    assert [v["files"] for v in summary["datasets"][dataset]["versions"]] == [
        ["config.json", "kops-manifest.json", "model.safetensors", "tokenizer.zip"]]
    from kaggleops.adapters.tracking import Tracker

    tags = Tracker(loop["cfg"]).get_run(run_id).tags
    assert tags["kops.dataset"] == dataset and "kops.kernel" not in tags
    again = kops("push-kernel", "--run", run_id, "--no-push", "--config", "kops-render.yaml", cwd=loop["workdir"],
                 env=rendered["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.splitlines()[:2] == [
        f"Rendered kopsdemo/{RENDER_SLUG} into {folder} (NOT pushed: no kernel version, no run tagged)",
        f"next: kops kernel run-local {folder}   then: kops push-kernel with the same --run options"]
    assert f"kopsdemo/{RENDER_SLUG}" not in loop["emulator"].state_summary()["kernels"]
    out = kops("push-kernel", "--run", run_id, "--no-push", "--wait", "--config", "kops-render.yaml",
               cwd=loop["workdir"], env=rendered["env"])
    assert out.returncode == 1
    assert out.stderr.strip() == ("kops: error: --no-push renders the kernel without pushing it: there is nothing to "
                                  "--wait for or to --submit. Drop --no-push, or drop --wait/--submit.")


def test_run_local_downloads_the_planned_versions_and_runs_the_kernels_own_unpacking(
        loop: dict[str, Any], rendered: dict[str, Any], tmp_path: Path) -> None:
    from kaggleops.kernel.runtime import main

    folder = rendered["result"]["folder"]
    plan = json.loads((Path(folder) / "kops-kernel.json").read_text())
    emu_root = loop["workdir"].parent / "emu"
    planned = {(plan["models"][0]["dataset"], 1), (plan["runtime"]["dataset"], plan["runtime"]["version"])}
    shutil.rmtree(loop["workdir"] / ".kops" / "cache", ignore_errors=True)  # earlier run-locals cached the runtime
    mark = log_mark(emu_root)
    out = run_local_cli(loop, rendered["env"], folder, "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["ok"] and report["rows"] == 200
    assert report["read_only"] == ("bind mount + permissions" if report["isolation"] == "namespace+guard"
                                   else "permissions")
    assert set(downloads_since(emu_root, mark)) == planned  # exactly the plan's versions, through the client
    dataset = plan["models"][0]["dataset"]
    assert f"dataset {dataset}/1 → input/datasets/{dataset} (downloaded)" in report["inputs"]
    assert report["image"].startswith("Kaggle image ") and report["input_layout"] == "current"
    staged = Path(folder) / ".run-local" / "input" / "datasets" / dataset
    assert (staged / "tokenizer.zip").is_file() and not (staged / "tokenizer").exists()  # unpacked by the kernel
    assert "restore datasets" in report["timings"]
    # The submission equals the runtime's on the MLflow artifact as logged (tokenizer/ a plain folder).
    inp = tmp_path / "input"
    shutil.copytree(Path(folder) / ".run-local" / "input" / "competitions" / plan["competition"],
                    inp / plan["competition"])
    shutil.copytree(rendered["model"], inp / "raw")
    (inp / "raw" / "kops-manifest.json").write_text(json.dumps({"run_id": rendered["run_id"]}))
    (tmp_path / "working").mkdir()
    main(plan, inp, tmp_path / "working")
    assert (Path(folder) / ".run-local" / "working" / "submission.csv").read_bytes() == \
        (tmp_path / "working" / "submission.csv").read_bytes()
    again = run_local_cli(loop, rendered["env"], folder, "--json")  # versions are immutable: served from the cache
    assert again.returncode == 0 and len(downloads_since(emu_root, mark)) == len(planned)  # no new download
    assert f"dataset {dataset}/1 → input/datasets/{dataset} (cached)" in json.loads(again.stdout)["inputs"]


def test_run_local_fails_with_the_kernels_own_error_on_a_corrupt_published_file(
        loop: dict[str, Any], rendered: dict[str, Any]) -> None:
    import zipfile

    folder = rendered["result"]["folder"]
    dataset = json.loads((Path(folder) / "kops-kernel.json").read_text())["models"][0]["dataset"]
    owner, slug = dataset.split("/")
    emu_root = loop["workdir"].parent / "emu"
    stored = emu_root / "datasets" / owner / slug / "1" / "tokenizer.zip"
    original = stored.read_bytes()

    def forget_downloads() -> None:
        shutil.rmtree(emu_root / "zips" / "datasets" / owner / slug, ignore_errors=True)  # the emulator's zip
        shutil.rmtree(loop["workdir"] / ".kops" / "cache", ignore_errors=True)

    with zipfile.ZipFile(stored) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["tokenizer_config.json"] = members["tokenizer_config.json"].replace(b"}", b', "x": 1}', 1)
    stored.unlink()  # it may be a hard link to the uploaded blob
    with zipfile.ZipFile(stored, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    forget_downloads()
    try:
        out = run_local_cli(loop, rendered["env"], folder)
    finally:
        stored.unlink()
        stored.write_bytes(original)
        forget_downloads()
    assert out.returncode == 1
    error = out.stderr.strip().splitlines()[-1]
    staged = Path(folder).resolve() / ".run-local" / "input" / "datasets" / owner / slug
    assert error.startswith(f"kops: error: run-local: the kernel in {folder} would fail on Kaggle: tokenizer.zip of "
                            f"{staged} holds tokenizer_config.json with another sha256 than kops-manifest.json lists")
    assert error.endswith(f"the dataset is corrupt Fix it, then run: kops kernel run-local {folder}")
    assert f"  input: dataset {dataset}/1 → input/datasets/{dataset} (downloaded)" in out.stdout


@pytest.mark.slow
def test_push_with_submit_waits_submits_and_records_the_submission(env: dict[str, Any],
                                                                   pushed: dict[str, Any]) -> None:
    """`kops push-kernel --run PARENT --submit`: a new version, waited for, submitted, and its submission run names
    the fold runs."""
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.schema import TAG_SOURCE_RUNS

    parent = env["trained"].parent_run_id
    out = kops("push-kernel", "--run", parent, "--submit", "--json", cwd=env["workdir"])
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["kernel_version"] == pushed["result"].kernel_version + 1 and result["status"] == "COMPLETE"
    run = Tracker(env["cfg"]).get_run(result["submission"]["submission_run_id"])
    assert sorted(run.tags[TAG_SOURCE_RUNS].split(",")) == sorted(r.run_id for r in env["trained"].runs)
    assert run.tags["kops.kernel.version"] == str(result["kernel_version"])


def test_wait_shows_failure_and_log_tail_for_a_missing_dataset(env: dict[str, Any], pushed: dict[str, Any]) -> None:
    """Fold 1's tag points at fold 0's dataset: the kernel finds no weights for fold 1 and says so.

    Last in the file: it re-renders .kops/kernels/<slug>/ with the broken plan.
    """
    from kaggleops.adapters.tracking import Tracker

    f0, f1 = pushed["result"].run_ids
    tracker = Tracker(env["cfg"])
    tags = tracker.get_run(f1).tags
    good_versions = [tracker.get_run(r).tags["kops.kernel.version"] for r in (f0, f1)]
    tracker.set_tags(f1, {"kops.dataset": tracker.get_run(f0).tags["kops.dataset"]})
    try:
        # --no-publish: use the tags as they are (publishing would put fold 1's weights into that dataset)
        out = kops("push-kernel", "--run", f0, "--run", f1, "--wait", "--no-publish", cwd=env["workdir"])
    finally:
        tracker.set_tags(f1, {"kops.dataset": tags["kops.dataset"]})
    assert out.returncode == 1
    assert "kernel status: " in out.stderr
    assert "--- kernel log (last lines) ---" in out.stderr
    assert f"missing input: no attached dataset carries the weights of run {f1}" in out.stderr
    assert "kops: error: Kernel kopsdemo/tse-demo-inference/" in out.stderr and "ended with ERROR" in out.stderr
    # the version that failed is not tagged on the runs: they still point at the version their scores came from
    assert [tracker.get_run(r).tags["kops.kernel.version"] for r in (f0, f1)] == good_versions


def test_corrupt_weights_are_refused_and_fixed_ones_become_the_version_the_next_push_uses(
        env: dict[str, Any], pushed: dict[str, Any], tmp_path: Path) -> None:
    """A run's weights replaced after publishing: corrupt → push-kernel refuses before any upload; fixed (other
    bytes, same tensors) → push-kernel publishes them as version 2 of the run's dataset and the kernel uses it."""
    from safetensors.torch import load_file, save_file

    from kaggleops.adapters.session import Session
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.errors import DataError
    from kaggleops.stages.kernel import KernelOptions, push_kernel

    tracker = Tracker(env["cfg"])
    run_id = pushed["result"].run_ids[0]
    before = tracker.get_run(run_id).tags
    model = tracker.download(run_id, "model", tmp_path / "dl")
    good = load_file(str(model / "model.safetensors"))
    fix = tmp_path / "fix"
    fix.mkdir()
    (fix / "model.safetensors").write_bytes(b"not a safetensors file" * 50)
    tracker.log_artifact(run_id, fix / "model.safetensors", "model")
    with pytest.raises(DataError, match=rf"^Run {run_id}: model/model.safetensors does not load \("):
        push_kernel(Session(env["cfg"]), [run_id], options=KernelOptions())
    assert tracker.get_run(run_id).tags["kops.dataset.version"] == before["kops.dataset.version"] == "1"

    save_file(good, str(fix / "model.safetensors"), metadata={"format": "pt", "fixed": "yes"})
    tracker.log_artifact(run_id, fix / "model.safetensors", "model")
    result = push_kernel(Session(env["cfg"]), [run_id], options=KernelOptions())
    assert result.published == [run_id]
    assert tracker.get_run(run_id).tags["kops.dataset.version"] == "2"
    plan = json.loads((result.folder / "kops-kernel.json").read_text())
    assert [(m["run_id"], m["dataset"], m["dataset_version"]) for m in plan["models"]] == [
        (run_id, before["kops.dataset"], 2)]
