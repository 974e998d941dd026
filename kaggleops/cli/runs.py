"""The loop's commands: train, publish, push-kernel, submit, scores."""

from __future__ import annotations

from pathlib import Path

import typer

from kaggleops.cli import app, emit, hint, load

CONFIG_OPT = typer.Option(None, "--config", "-c", help="Path to kops.yaml (default: ./kops.yaml).")
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")


@app.command()
def train(
    fold: list[int] = typer.Option(None, help="Fold(s) to train; default: `train.folds` in kops.yaml, else all."),
    data: Path = typer.Option(None, help="Folder with train.csv (default: `data_dir`, else the bundled sample)."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train the competition's model; one MLflow run per fold, with git/env provenance."""
    from kaggleops.training import train as run_train

    result = run_train(load(config), folds=fold or None, data_dir=data, progress=not as_json)
    lines = [f"fold {r.fold}: run {r.run_id}  val_jaccard {r.val_jaccard:.4f}" for r in result.runs]
    if result.parent_run_id:
        lines.append(f"k-fold parent run {result.parent_run_id}  cv_jaccard {result.cv_jaccard:.4f}")
    emit(result.as_dict(), as_json, "\n".join(lines))


@app.command()
def publish(
    run_id: str = typer.Argument(..., help="MLflow run id whose model to publish."),
    dataset: str = typer.Option(None, help="owner/slug of the dataset (default: owner/<run name>-<run id>)."),
    public: bool = typer.Option(None, "--public/--private", help="Visibility of a new dataset (default: kops.yaml)."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Publish a run's weights as a new Kaggle dataset version with a kops-manifest.json; tag the run."""
    from kaggleops.publish import publish as run_publish

    result = run_publish(load(config), run_id, dataset=dataset, public=public)
    emit(result.as_dict(), as_json, f"Published run {run_id} as {result.dataset} version {result.dataset_version}"
                                    f"\n{result.url}")


@app.command("push-kernel")
def push_kernel(
    run: list[str] = typer.Option(..., "--run", help="Run id(s) whose models the kernel uses."),
    wait: bool = typer.Option(False, help="Wait until the kernel run is COMPLETE (or fails)."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Generate the offline inference kernel (internet off, GPU on), push it, tag the runs."""
    from kaggleops.kernels import push_kernel as run_push

    result = run_push(load(config), run, wait=wait, on_status=lambda s: hint(f"kernel status: {s}"))
    emit(result.as_dict(), as_json, f"Pushed {result.kernel} version {result.kernel_version}"
                                    f"{f' ({result.status})' if result.status else ''}\n{result.url}")


@app.command()
def submit(
    kernel: str = typer.Option(None, help="owner/slug of the kernel (default: the one push-kernel makes)."),
    version: int = typer.Option(None, help="Kernel version (default: the latest pushed by kops)."),
    message: str = typer.Option("", "--message", "-m", help="Submission description (a kops key is added)."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Submit a kernel version to the code competition, recorded first as a submission run."""
    from kaggleops.submit import submit as run_submit

    result = run_submit(load(config), kernel=kernel, version=version, message=message)
    emit(result.as_dict(), as_json, f"Submitted {result.kernel} v{result.kernel_version}: submission "
                                    f"{result.submission_ref}, submission run {result.submission_run_id}")


@app.command()
def scores(
    wait: bool = typer.Option(False, help="Poll until no submission is PENDING."),
    timeout: float = typer.Option(1800, help="Seconds to wait at most with --wait."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Pull leaderboard scores and write lb_public / lb_private back onto the runs."""
    from kaggleops.submit import scores as run_scores

    rows = run_scores(load(config), wait=wait, timeout_s=timeout)
    lines = [f"{r.submission_ref}  {r.status:<8} public {r.lb_public}  private {r.lb_private}  "
             f"run {r.submission_run_id}{'  (updated)' if r.changed else ''}" for r in rows]
    emit([r.as_dict() for r in rows], as_json, "\n".join(lines) or "No kops submissions yet.")
