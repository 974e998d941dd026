"""`kops demo`: the whole loop, offline, in a fresh work folder.

Starts the loopback Kaggle emulator seeded with the built-in task's bundled competition sample, then runs the
same library functions the commands run: train → publish → push-kernel (the emulator executes the kernel) →
submit → scores.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggleops.config import CONFIG_FILE, ENV_KAGGLE_ENDPOINT, ENV_TRACKING_URI, GITIGNORED, render_template
from kaggleops.emulator.seeding import competition_folder, seed_competition
from kaggleops.errors import KopsError
from kaggleops.task import hook
from kaggleops.tasks import DEFAULT_COMPETITION

COMPETITION = DEFAULT_COMPETITION
DEMO_USER, DEMO_KEY = "kopsdemo", "kops-demo-key"
STAGES = ("emulator", "train", "publish", "push-kernel", "submit", "scores")


@contextlib.contextmanager
def demo_environment(workdir: Path, endpoint: str) -> Iterator[None]:
    """Aim kops at the emulator with throw-away credentials; restore the caller's environment afterwards."""
    saved = dict(os.environ)
    os.environ.update({
        ENV_KAGGLE_ENDPOINT: endpoint, "KAGGLE_USERNAME": DEMO_USER, "KAGGLE_KEY": DEMO_KEY,
        "KAGGLE_CONFIG_DIR": str(workdir / ".kaggle"),
    })
    for var in ("KAGGLE_API_TOKEN", ENV_TRACKING_URI):
        os.environ.pop(var, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:  # contextlib.chdir is 3.11+; Colab/Kaggle images vary
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def demo_experiment(competition: str) -> str:
    """The demo's experiment: the slug's initials + ``-demo`` (kernel ``<experiment>-inference``)."""
    return "".join(word[0] for word in competition.split("-") if word) + "-demo"


def init_workdir(workdir: Path, epochs: int | None, folds: list[int], competition: str = COMPETITION) -> None:
    """A git repository holding a kops.yaml, so runs carry real provenance (``epochs`` None: the task's default)."""
    (workdir / CONFIG_FILE).write_text(render_template(competition=competition, owner=DEMO_USER,
                                                       experiment=demo_experiment(competition), folds=folds,
                                                       epochs=epochs))
    (workdir / ".gitignore").write_text("\n".join([*GITIGNORED, ".emulator/", ".kaggle/"]) + "\n")
    git = ["git", "-c", "user.name=kops demo", "-c", "user.email=demo@kops.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "kops demo"]):
        subprocess.run([*git, *args], cwd=workdir, check=True, capture_output=True)


def new_workdir(workdir: Path | None) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="kops-demo-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise KopsError(f"Work folder {workdir} is not empty.", "Pass a new or empty folder with --workdir.")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir.resolve()


@dataclass
class Workspace:
    """A demo work folder aimed at a running, seeded emulator (see :func:`demo_workspace`)."""

    cfg: Any
    emulator: Any
    url: str
    test_rows: int


@contextlib.contextmanager
def demo_workspace(workdir: Path, emulator_root: Path, epochs: int | None = 6,
                   folds: list[int] | None = None, competition: str = COMPETITION) -> Iterator[Workspace]:
    """An existing, empty ``workdir`` made a git repo with a kops.yaml, aimed at a loopback emulator seeded with the
    bundled competition; environment and current folder are restored and the emulator stopped afterwards.
    `kops demo` and the end-to-end tests start from here."""
    from kaggleops.config import load_config
    from kaggleops.emulator import Emulator
    from kaggleops.stages.train import get_task_for

    emulator = Emulator(emulator_root, username=DEMO_USER, key=DEMO_KEY, score_delay_polls=1)
    url = emulator.start()
    try:
        init_workdir(workdir, epochs, folds or [0], competition)
        with demo_environment(workdir, url), _chdir(workdir):
            cfg = load_config(workdir / CONFIG_FILE)
            task = get_task_for(cfg)
            sample = hook(task, "sample_dir")()
            yield Workspace(cfg, emulator, url, seed_competition(emulator, task, competition, sample))
    finally:
        emulator.stop()


def run_demo(workdir: Path | None = None, epochs: int | None = None, folds: list[int] | None = None,
             echo: Callable[[str, str], None] = lambda stage, line: None,
             competition: str = COMPETITION) -> dict[str, Any]:
    """Run the whole loop offline on a bundled competition; returns the summary (ids and scores).

    ``epochs`` None: the task's default. ``echo(stage, line)`` reports progress.
    """
    from kaggleops.adapters.session import Session
    from kaggleops.stages.kernel import describe_submission, push_kernel
    from kaggleops.stages.publish import publish
    from kaggleops.stages.scores import scores
    from kaggleops.stages.submit import submit
    from kaggleops.stages.train import train

    competition_folder(competition)  # an unknown competition fails here, before any folder is made
    workdir = new_workdir(workdir)
    summary: dict[str, Any] = {"workdir": str(workdir)}
    started = time.perf_counter()
    with demo_workspace(workdir, workdir / ".emulator", epochs, folds, competition) as ws:
        cfg, url = ws.cfg, ws.url
        command = Session(cfg)
        summary.update(emulator=url, competition=competition, tracking_uri=cfg.resolved_tracking_uri)
        echo("emulator", f"{url}, competition {competition} ({ws.test_rows} hidden test rows)")
        trained = train(cfg, progress=False, sample=True)
        summary.update({"run_id": trained.runs[0].run_id, f"cv_{trained.metric}": trained.cv})
        echo("train", f"run {trained.runs[0].run_id}, validation {trained.metric} {trained.cv:.4f}")
        pub = publish(command, trained.runs[0].run_id)
        summary.update(dataset=pub.dataset, dataset_version=pub.dataset_version)
        echo("publish", f"dataset {pub.dataset} version {pub.dataset_version}")
        kern = push_kernel(command, [trained.runs[0].run_id], wait=True)
        summary.update(kernel=kern.kernel, kernel_version=kern.kernel_version,
                       submission_kind=kern.submission_kind.get("kind"))
        echo("push-kernel", describe_submission(competition, kern.submission_kind))
        echo("push-kernel", f"kernel {kern.kernel} version {kern.kernel_version}: {kern.status}")
        sub = submit(command, kern.kernel, kern.kernel_version, "kops demo")
        summary.update(submission_ref=sub.submission_ref, submission_run_id=sub.submission_run_id)
        echo("submit", f"submission {sub.submission_ref} (submission run {sub.submission_run_id})")
        row = next(r for r in scores(command, wait=True, poll_s=0.5, timeout_s=120)
                   if r.submission_ref == sub.submission_ref)
        summary.update(lb_public=row.lb_public, lb_private=row.lb_private, status=row.status)
        echo("scores", f"public {row.lb_public} / private {row.lb_private} written to runs "
                       f"{', '.join([sub.submission_run_id, *row.source_runs])}")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary
