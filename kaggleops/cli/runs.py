"""The loop's commands: train, publish, push-kernel (submit and scores: cli/submissions.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, hint, known_machine_shape, load, one_of, session
from kaggleops.errors import ConfigError
from kaggleops.schema import SESSION_LIMIT_S

CONFIG_OPT = typer.Option(None, "--config", "-c", help=CONFIG_HELP)
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")


@app.command()
def train(
    fold: list[int] = typer.Option(None, help="Fold(s) to train; default: `train.folds` in kops.yaml, else all."),
    data: Path = typer.Option(None, help="Folder with train.csv (default: `data_dir`, the attached Kaggle input, "
                                         "else the `kops data` cache, downloaded when absent)."),
    sample: bool = typer.Option(False, "--sample", help="Train on the bundled synthetic sample (kops demo does)."),
    stage: str = typer.Option("base", callback=one_of("base", "rerank"),
                              help="base: the task's model; rerank: its second stage (needs --from)."),
    from_runs: list[str] = typer.Option(None, "--from", help="--stage rerank: base k-fold parent or fold run id(s)."),
    resume: bool = typer.Option(False, help="Continue the latest unfinished run of each fold (same settings and "
                                            "data) from its last checkpoint, in the same MLflow run (also with "
                                            "--on kaggle: the kernel resumes it)."),
    git: str = typer.Option(None, "--git", help="Train exactly this commit: URL[@REV], cloned into a temp folder."),
    on: str = typer.Option(None, "--on", help="`kaggle`: push a training kernel that trains this folder's HEAD."),
    machine_shape: str = typer.Option(None, callback=known_machine_shape,
                                      help="--on kaggle: accelerator as Kaggle names it (NvidiaTeslaT4, "
                                                 "NvidiaL4, TpuV5E8)."),
    allow_retired: bool = typer.Option(False, "--allow-retired", help="--on kaggle: push a retired accelerator."),
    docker_image: str = typer.Option(None, "--docker-image", help="--on kaggle: image pinning, original | latest."),
    wait: bool = typer.Option(False, help="--on kaggle: follow the kernel (status, elapsed time) and print the run "
                                          "ids it produced; a failed session's runs are marked FAILED."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes (one per GPU; gloo on CPU): "
                                                        "re-runs this command under torchrun. `batch_size` stays "
                                                        "the global batch."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train the competition's model; one MLflow run per fold, with git/env provenance, resumable."""
    import sys

    from kaggleops import distributed
    from kaggleops.stages.train import train as run_train

    if nproc > 1 and distributed.world_size() == 1:
        raise typer.Exit(distributed.launch(nproc, sys.argv[1:]))

    if stage != "base":
        from kaggleops.stages.rerank import train_stage

        res = train_stage(load(config), stage, from_runs or [], progress=not as_json)
        return emit(res.as_dict(), as_json, res.summary())
    if on:
        return _train_on(on, config, fold, machine_shape, wait, resume, allow_retired, docker_image, as_json)
    if git:
        from kaggleops.stages.gitsource import GitSpec, train_from_git, try_load

        result = train_from_git(try_load(config), GitSpec.parse(git), folds=fold or None, progress=not as_json,
                                data_dir=data, resume=resume, sample=sample)
    else:
        result = run_train(load(config), folds=fold or None, data_dir=data, progress=not as_json, resume=resume,
                           sample=sample)
    if not distributed.is_main():
        return None  # torchrun shows every rank's stdout: rank 0 alone prints the result
    emit(result.as_dict(), as_json, result.summary())


def _train_on(on: str, config: str | None, fold: list[int] | None, machine_shape: str | None, wait: bool,
              resume: bool, allow_retired: bool, docker_image: str | None, as_json: bool) -> None:
    """`kops train --on kaggle [--resume] [--wait]`: push the training kernel; with --wait follow it (status and
    elapsed time on stderr; a failed session's log tail too)."""
    from kaggleops.errors import KernelRunFailed
    from kaggleops.stages.remote_train import train_on_kaggle

    if on != "kaggle":
        raise typer.BadParameter(f"--on {on}: only `kaggle` is supported (Colab: kernels/train_colab.ipynb).")
    try:
        remote = train_on_kaggle(load(config), folds=fold or None, machine_shape=machine_shape, wait=wait,
                                 allow_retired=allow_retired, docker_image=docker_image, notify=hint, resume=resume)
    except KernelRunFailed as e:
        hint("\n".join(["--- kernel log (last lines) ---", *e.log_tail, "---"]))
        raise
    emit(remote.as_dict(), as_json, remote.summary())


@app.command()
def publish(
    run_id: str = typer.Argument(..., help="MLflow run id whose model to publish."),
    dataset: str = typer.Option(None, help="owner/slug of the dataset (default: owner/<run name>-<run id>)."),
    to: str = typer.Option(None, "--to", help="dataset | model (Kaggle Models); default: kops.yaml `publish.to`."),
    model: str = typer.Option(None, "--model", help="--to model: owner/model/framework/variation (default: "
                                                    "owner/<experiment>/transformers/<run name>-<run id>)."),
    public: bool = typer.Option(None, "--public/--private", help="Visibility of a new dataset (default: kops.yaml)."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Publish a run's weights as a new Kaggle dataset version with a kops-manifest.json; tag the run.

    A k-fold parent publishes each of its folds as its own dataset (what push-kernel attaches).
    With `--to model` (or `publish.to: model` in kops.yaml) the target is a Kaggle Model instead."""
    if (to or load(config).publish.to) != "dataset":
        return _publish_model(config, run_id, to, model, public, as_json)
    from kaggleops.stages.publish import PublishedFolds, publish_run_or_folds

    result = publish_run_or_folds(session(config), run_id, dataset=dataset, public=public, progress=not as_json)
    if isinstance(result, PublishedFolds):
        lines = [f"k-fold parent {result.parent_run_id}: {len(result.folds)} fold(s)"]
        lines += [_published_line(r) for r in result.folds]
        return emit(result.as_dict(), as_json, "\n".join(lines))
    emit(result.as_dict(), as_json, f"{_published_line(result)}\n{result.url}")


def _published_line(result: Any) -> str:
    if result.uploaded:
        return f"Published run {result.run_id} as {result.dataset} version {result.dataset_version}"
    return (f"Weights of run {result.run_id} equal {result.dataset} version {result.dataset_version}: nothing "
            "uploaded, no new version; run tagged with it")


def _publish_model(config: str | None, run_id: str, to: str | None, model: str | None, public: bool | None,
                   as_json: bool) -> None:
    """`kops publish --to model`: the Kaggle Models target (stages/publish_model.py)."""
    from kaggleops.stages.publish_model import publish_model

    if to not in (None, "model"):
        raise typer.BadParameter(f"--to {to}: use dataset or model.")
    res = publish_model(session(config), run_id, model=model, public=public, progress=not as_json)
    what = f"{res.model} version {res.model_version}"
    line = (f"Published run {run_id} as model {what}" if res.uploaded else
            f"Weights of run {run_id} equal model {what}: nothing uploaded, no new version; run tagged with it")
    emit(res.as_dict(), as_json, f"{line}\n{res.url}")


@app.command("push-kernel")
def push_kernel(
    run: list[str] = typer.Option(..., "--run", help="Run id(s) whose models the kernel ensembles; a k-fold "
                                                     "parent run expands to its folds, an ensemble run (alone) to "
                                                     "its members' folds, weighted."),
    reranker: str = typer.Option(None, "--reranker", help="Reranker run (`kops train --stage rerank`) whose fold "
                                                          "models rescore the ensemble's predictions."),
    machine_shape: str = typer.Option(None, callback=known_machine_shape,
                                      help="Accelerator as Kaggle names it: NvidiaTeslaT4 (T4 x2), NvidiaL4, "
                                                 "TpuV5E8 (default: kops.yaml `kernel.machine_shape`)."),
    allow_retired: bool = typer.Option(False, "--allow-retired", help="Push a retired accelerator (P100, TPU v3-8) "
                                                                      "anyway; Kaggle runs its substitute."),
    docker_image: str = typer.Option(None, "--docker-image", help="Docker image pinning: original | latest."),
    public: bool = typer.Option(None, "--public/--private", help="Kernel visibility (default: kops.yaml)."),
    publish_missing: bool = typer.Option(True, "--publish/--no-publish",
                                         help="Publish runs that have no dataset yet (--no-publish: refuse)."),
    push: bool = typer.Option(True, "--push/--no-push",
                              help="--no-push: write the kernel folder (kernel.py, kernel-metadata.json, "
                                   "kops-kernel.json) for `kops kernel run-local` and stop; the model and runtime "
                                   "datasets are still published, so the plan names exact versions."),
    wait: bool = typer.Option(False, help="Wait until the kernel run is COMPLETE; on ERROR show its log's tail."),
    submit: bool = typer.Option(False, help="Submit the finished version to the competition (implies --wait)."),
    message: str = typer.Option("", "--message", "-m", help="Submission description with --submit."),
    time_limit: float = typer.Option(SESSION_LIMIT_S, "--time-limit", help="Seconds a session may take: an "
                                     "ensemble run whose kernel time, estimated from its members' timed kernels, "
                                     "exceeds it is refused before anything is published (default 3 h)."),
    ignore_time_limit: bool = typer.Option(False, "--ignore-time-limit", help="Push an ensemble over --time-limit."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Generate the offline inference kernel (internet off, GPU on), push it, tag the runs (--no-push: render only).

    An ensemble run (`kops ensemble`) expands to its members' folds with the chosen weights; scores come back onto
    it, its members and their folds.

    Example: kops push-kernel --run 3f2a1b4c --submit
    """
    from kaggleops.stages.kernel import KernelOptions, KernelRunFailed, describe, status_printer
    from kaggleops.stages.kernel import push_kernel as run_push
    from kaggleops.stages.submit import submit as run_submit

    if not push and (wait or submit):
        raise ConfigError("--no-push renders the kernel without pushing it: there is nothing to --wait for or to "
                          "--submit.", "Drop --no-push, or drop --wait/--submit.")
    command = session(config)
    options = KernelOptions(machine_shape=machine_shape, private=None if public is None else not public,
                            publish=publish_missing, push=push, wait=wait or submit, allow_retired=allow_retired,
                            docker_image=docker_image, time_limit_s=time_limit,
                            ignore_time_limit=ignore_time_limit)
    try:
        result = run_push(command, run, on_status=status_printer(hint), options=options, reranker=reranker,
                          notify=hint)
    except KernelRunFailed as e:
        hint("\n".join(["--- kernel log (last lines) ---", *e.log_tail, "---"]))
        raise
    if submit:  # the plan push-kernel rendered is the one the version runs: no download of its output
        result.submission = run_submit(command, result.kernel, result.kernel_version, message,
                                       plan=result.plan).as_dict()
    emit(result.as_dict(), as_json, describe(result))
