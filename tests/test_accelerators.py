"""Accelerators as Kaggle names them (checked against the installed client), docker image pinning, `kops quota`."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kaggleops.adapters.kaggle_machines import check_accelerator, known_accelerators
from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config
from kaggleops.emulator import Emulator
from kaggleops.errors import ConfigError

from harness import USER, kops


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator]) -> Emulator:
    return start_emulator(kernel_timeout_s=60)


@pytest.fixture
def project_settings() -> dict[str, str]:
    return {"experiment": "acc"}


def test_the_installed_client_names_current_and_retired_shapes() -> None:
    known = known_accelerators()
    assert not known["nvidiateslat4"].retired and not known["tpuv5e8"].retired
    p100 = known["nvidiateslap100"]
    assert (p100.name, p100.retired, p100.substitute) == ("NvidiaTeslaP100", True, "NvidiaTeslaT4")
    assert (known["tpuv38"].name, known["tpuv38"].substitute) == ("TpuV38", "TpuV5E8")
    assert check_accelerator("nvidiatesLAT4")[0].name == "NvidiaTeslaT4"  # Kaggle's spelling, whatever the case
    with pytest.raises(ConfigError, match=r"^Unknown accelerator 'NvidiaA100'; the installed kaggle client knows: "
                                          r".*NvidiaTeslaT4.*TpuV5E8"):
        check_accelerator("NvidiaA100")


def test_a_retired_accelerator_is_refused_naming_the_substitute(project: Path, emulator: Emulator) -> None:
    root, emu = project, emulator
    out = kops("push-kernel", "--run", "0123456789abcdef", "--machine-shape", "NvidiaTeslaP100", cwd=root)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("kops: error: Accelerator NvidiaTeslaP100 is retired: Kaggle runs NvidiaTeslaT4 instead. "
                          "Pass --machine-shape NvidiaTeslaT4 (or --allow-retired to push it anyway).\n")
    tpu = kops("train", "--on", "kaggle", "--machine-shape", "TpuV38", cwd=root)
    assert tpu.returncode == 1
    assert tpu.stderr == ("kops: error: Accelerator TpuV38 is retired: Kaggle runs TpuV5E8 instead. Pass "
                          "--machine-shape TpuV5E8 (or --allow-retired to push it anyway).\n")
    bad = kops("push-kernel", "--run", "0123456789abcdef", "--docker-image", "newest", cwd=root)
    assert bad.returncode == 1 and bad.stderr == (
        "kops: error: Docker image pinning 'newest' is not one of original, latest. Pass --docker-image original "
        "(the image the notebook was created with) or latest.\n")
    assert emu.state_summary()["kernels"] == {}  # nothing pushed


def test_retired_with_allow_retired_warns(project: Path) -> None:
    from kaggleops.stages.accelerators import resolve_accelerator

    root = project
    warnings: list[str] = []
    shape = resolve_accelerator(load_config(root / "kops.yaml"), "NvidiaTeslaP100", True, warnings.append)
    assert shape.name == "NvidiaTeslaP100"
    assert warnings == ["kops: warning: Accelerator NvidiaTeslaP100 is retired: Kaggle runs NvidiaTeslaT4 instead."]


def next_saturday() -> str:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    days = (5 - now.weekday()) % 7 or 7
    return (datetime(now.year, now.month, now.day) + timedelta(days=days)).isoformat(timespec="seconds") + "Z"


def test_quota_output(project: Path, emulator: Emulator) -> None:
    root, emu = project, emulator
    out = kops("quota", cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("GPU: 0.00 h used, 0.00 h reserved, 30.00 h allowed (30.00 h left this week)\n"
                          "TPU: 0.00 h used, 0.00 h reserved, 20.00 h allowed (20.00 h left this week)\n"
                          f"refreshes: {next_saturday()}\n")
    emu.config.gpu_quota_hours = 12.5
    got = json.loads(kops("quota", "--json", cwd=root).stdout)
    assert got["gpu"] == {"used_h": 0.0, "reserved_h": 0.0, "allowed_h": 12.5, "remaining_h": 12.5}


def logged_run(root: Path) -> str:
    tracker = Tracker(load_config(root / "kops.yaml"))
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.frombuffer(random.Random(0).randbytes(10_000), dtype=np.uint8)},
              str(model / "model.safetensors"))  # loadable: publish load-checks weights before uploading
    run_id = tracker.start_run("fold-0", {"lr": 1e-3})
    tracker.log_artifacts(run_id, model, "model")
    tracker.end_run(run_id)
    return run_id


@pytest.mark.slow
def test_push_kernel_records_shape_and_image_and_shows_quota_before_a_gpu_session(project: Path,
                                                                                  emulator: Emulator) -> None:
    """--wait on a GPU shows the weekly quota first; the run is tagged with the shape and image pinning; the quota
    counts the session (the emulator charges an hour per second here)."""
    from kaggleops.emulator.seeding import seed_competition
    from kaggleops.tasks import get_task

    root, emu = project, emulator
    seed_competition(emu, get_task("tweet-sentiment-extraction"))
    emu.config.quota_time_scale = 3600.0
    run_id = logged_run(root)
    out = kops("push-kernel", "--run", run_id, "--machine-shape", "nvidiateslat4", "--docker-image", "latest",
               "--wait", cwd=root)
    # the fake weights make the kernel fail; what matters here is what happened before and around the push
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    quota = (f"GPU quota: 0.00 h used, 0.00 h reserved of 30.00 h this week (30.00 h left; refreshes "
             f"{next_saturday()})")
    assert quota in lines, out.stderr
    pushing = next(i for i, line in enumerate(lines) if line.startswith("pushing kernel "))
    assert lines.index(quota) < pushing  # shown before the GPU session starts
    meta = json.loads((root / ".kops" / "kernels" / "acc-inference" / "kernel-metadata.json").read_text())
    assert (meta["machine_shape"], meta["docker_image_pinning_type"]) == ("NvidiaTeslaT4", "latest")
    tracker = Tracker(load_config(root / "kops.yaml"))
    assert "kops.kernel.machine_shape" not in tracker.get_run(run_id).tags  # a version that failed: untagged
    kernel = emu.store.kernel(USER, "acc-inference").versions[-1]
    assert (kernel.setting("machineShape"), kernel.setting("dockerImagePinningType")) == ("NvidiaTeslaT4", "latest")
    used = json.loads(kops("quota", "--json", cwd=root).stdout)["gpu"]["used_h"]
    assert used > 0
    pushed = kops("push-kernel", "--run", run_id, "--machine-shape", "nvidiateslat4", "--docker-image", "latest",
                  cwd=root)  # without --wait the pushed version is tagged at once
    assert pushed.returncode == 0, pushed.stderr
    tags = tracker.get_run(run_id).tags
    assert (tags["kops.kernel.machine_shape"], tags["kops.kernel.docker_image"]) == ("NvidiaTeslaT4", "latest")


@pytest.mark.slow
def test_a_cpu_kernel_sends_and_records_no_accelerator(project: Path, emulator: Emulator) -> None:
    """`kernel: {enable_gpu: false}` and no --machine-shape: no machineShape in the metadata, none sent to Kaggle,
    the run tagged `cpu`, no GPU quota shown."""
    from kaggleops.emulator.seeding import seed_competition
    from kaggleops.tasks import get_task

    seed_competition(emulator, get_task("tweet-sentiment-extraction"))
    with (project / "kops.yaml").open("a") as f:
        f.write("kernel:\n  enable_gpu: false\n")
    run_id = logged_run(project)
    out = kops("push-kernel", "--run", run_id, cwd=project)
    assert out.returncode == 0, out.stderr
    meta = json.loads((project / ".kops" / "kernels" / "acc-inference" / "kernel-metadata.json").read_text())
    assert meta["enable_gpu"] is False and "machine_shape" not in meta
    assert emulator.store.kernel(USER, "acc-inference").versions[-1].setting("machineShape") in (None, "")
    assert Tracker(load_config(project / "kops.yaml")).get_run(run_id).tags["kops.kernel.machine_shape"] == "cpu"
