"""Kaggle Models as a publish target: the real client against the emulator's models API, and a kernel that
attaches the published instance version as a model source and finds the weights by manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config
from kaggleops.emulator import Emulator

from harness import USER, kops

MODEL = f"{USER}/tse-models/transformers/fold-0"


@pytest.fixture
def project_settings() -> dict[str, str]:
    return {"experiment": "tse-models"}


def logged_run(root: Path, seed: int) -> str:
    """A finished run whose model/ artifact holds weights (seeded bytes) and a tokenizer sub-folder."""
    tracker = Tracker(load_config(root / "kops.yaml"))
    model = root / f"model-{seed}"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.frombuffer(random.Random(seed).randbytes(50_000), dtype=np.uint8)},
              str(model / "model.safetensors"))  # loadable: publish load-checks weights before uploading
    (model / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    run_id = tracker.start_run("fold-0", {"lr": 1e-3})
    tracker.log_artifacts(run_id, model, "model")
    tracker.end_run(run_id)
    return run_id


def versions(emu: Emulator, ref: str) -> list[int]:
    owner, slug, framework, variation = ref.split("/")
    instance = emu.store.models[(owner, slug)].instances[(framework, variation)]
    return [v.number for v in instance.versions]


def test_publish_to_models_dedupes_identical_weights_and_tags_the_run(project: Path, emulator: Emulator) -> None:
    root, emu = project, emulator
    run_id = logged_run(root, 0)
    out = kops("publish", run_id, "--to", "model", "--model", MODEL, "--json", cwd=root)
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert (first["target"], first["model"], first["model_version"], first["uploaded"]) == ("model", MODEL, 1, True)
    assert first["url"] == f"{emu.url}/models/{MODEL}/1"
    files = {f.name for f in emu.store.models[(USER, "tse-models")].instances[("transformers", "fold-0")]
             .versions[0].files}
    assert files == {"config.json", "model.safetensors", "tokenizer.zip", "kops-manifest.json"}
    manifest = json.loads(emu.store.models[(USER, "tse-models")].instances[("transformers", "fold-0")]
                          .versions[0].files[[*sorted(files)].index("kops-manifest.json")].path.read_text())
    assert manifest["run_id"] == run_id and set(manifest["files"]) == {"config.json", "model.safetensors",
                                                                       "tokenizer/vocab.json"}

    again = kops("publish", run_id, "--to", "model", "--model", MODEL, cwd=root)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == (f"Weights of run {run_id} equal model {MODEL} version 1: nothing "
                                            "uploaded, no new version; run tagged with it")
    assert versions(emu, MODEL) == [1]
    tags = Tracker(load_config(root / "kops.yaml")).get_run(run_id).tags
    assert (tags["kops.model"], tags["kops.model.version"]) == (MODEL, "1")

    other = logged_run(root, 1)  # other weights into the same instance: a new version
    out = kops("publish", other, "--to", "model", "--model", MODEL, "--json", cwd=root)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model_version"] == 2 and versions(emu, MODEL) == [1, 2]


def test_default_model_target_and_a_bad_reference(project: Path) -> None:
    root = project
    run_id = logged_run(root, 3)
    out = kops("publish", run_id, "--to", "model", "--json", cwd=root)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"] == f"{USER}/tse-models/transformers/fold-0-{run_id[:8]}"
    bad = kops("publish", run_id, "--to", "model", "--model", "testuser/tse", cwd=root)
    assert bad.returncode == 1
    assert bad.stderr == ("kops: error: Not a model reference: 'testuser/tse'. Expected owner/model/framework/"
                          "variation (e.g. alice/tse-roberta/transformers/fold-0). Pass e.g. --model "
                          "alice/tse-roberta/transformers/fold-0.\n")


@pytest.mark.slow  # the emulator runs a kernel
@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_kernel_attaches_the_model_version_and_finds_it_by_manifest(project: Path, emulator: Emulator,
                                                                     layout: str) -> None:
    """A kernel with the instance version as a model source sees its files (current and legacy mount paths)."""
    root, emu = project, emulator
    emu.config.input_layout = layout
    run_id = logged_run(root, 4)
    assert kops("publish", run_id, "--to", "model", "--model", MODEL, cwd=root).returncode == 0
    folder = root / "k"
    folder.mkdir()
    (folder / "main.py").write_text(
        "import json, os, pathlib\n"
        "root = pathlib.Path(os.environ['KOPS_KAGGLE_INPUT'])\n"
        "found = [str(p.parent.relative_to(root)) for p in root.rglob('kops-manifest.json')]\n"
        "run = json.loads(next(root.rglob('kops-manifest.json')).read_text())['run_id']\n"
        "pathlib.Path('found.json').write_text(json.dumps({'found': found, 'run': run}))\n")
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{USER}/model-user", "title": "model user", "code_file": "main.py", "language": "python",
        "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_internet": False,
        "model_sources": [f"{MODEL}/1"]}))
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.refs import KernelRef

    kaggle = Kaggle(emu.url)
    version = kaggle.push_kernel(folder)
    assert kaggle.wait_kernel(KernelRef(USER, "model-user", version), timeout_s=60, poll_s=0.2) == "COMPLETE"
    out = json.loads((emu.root / "kernels" / USER / "model-user" / str(version) / "working" / "found.json")
                     .read_text())
    where = "models/testuser/tse-models" if layout == "current" else "tse-models"
    assert out == {"found": [f"{where}/transformers/fold-0/1"], "run": run_id}


def test_unknown_model_source_is_reported_invalid(project: Path, emulator: Emulator) -> None:
    root, emu = project, emulator
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.errors import KernelError

    folder = root / "k2"
    folder.mkdir()
    (folder / "main.py").write_text("print('hi')\n")
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{USER}/model-missing", "title": "model missing", "code_file": "main.py", "language": "python",
        "kernel_type": "script", "is_private": True, "enable_internet": False,
        "model_sources": [f"{USER}/nope/transformers/x/1"]}))
    with pytest.raises(KernelError, match="unknown model source"):
        Kaggle(emu.url).push_kernel(folder)


@pytest.mark.slow
def test_inference_kernel_uses_weights_published_to_kaggle_models(tmp_path: Path) -> None:
    """End to end with `publish.to: model`: train, push-kernel publishes the run to Kaggle Models, the emulator
    runs the generated inference kernel with the model source mounted, and a second push re-uses the version."""
    from kaggleops.adapters.session import Session
    from kaggleops.stages.demo import demo_workspace
    from kaggleops.stages.kernel import KernelOptions, push_kernel
    from kaggleops.stages.train import train

    workdir = tmp_path / "work"
    workdir.mkdir()
    with demo_workspace(workdir, tmp_path / "emu", epochs=1, folds=[0]) as ws:
        cfg = ws.cfg.model_copy(update={"publish": ws.cfg.publish.model_copy(update={"to": "model"})})
        cfg.train.max_steps = 2
        run_id = train(cfg, progress=False, sample=True).runs[0].run_id
        first = push_kernel(Session(cfg), [run_id], options=KernelOptions(wait=True))
        assert first.status == "COMPLETE" and first.published == [run_id]
        tags = Tracker(cfg).get_run(run_id).tags
        model = tags["kops.model"]
        assert model == f"{ws.cfg.kaggle_owner}/tse-demo/transformers/fold-0-{run_id[:8]}"
        assert tags["kops.model.version"] == "1" and "kops.dataset" not in tags
        meta = json.loads((first.folder / "kernel-metadata.json").read_text())
        assert meta["model_sources"] == [f"{model}/1"]
        assert meta["dataset_sources"] == [f"{ws.cfg.kaggle_owner}/kops-runtime"]
        working = tmp_path / "emu" / "kernels" / ws.cfg.kaggle_owner / "tse-demo-inference" / "1" / "working"
        plan = json.loads((working / "kops-kernel.json").read_text())
        assert plan["models"] == [{"run_id": run_id, "dataset": model, "dataset_version": 1, "weight": 1.0,
                                   "kind": "model"}]
        assert (working / "submission.csv").is_file()

        from kaggleops.stages.publish_model import publish_model

        again = publish_model(Session(cfg), run_id)  # identical weights: no new version
        assert (again.uploaded, again.model_version) == (False, 1)
        assert versions(ws.emulator, model) == [1]
