"""`kops sweep`: join or create an Optuna study over the task's settings; --status and --best [--apply]."""

from __future__ import annotations

from pathlib import Path

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, hint, load


@app.command()
def sweep(
    study: str = typer.Option(None, "--study", help="Study to join or create (default: kops.yaml `sweep.study`, "
                                                    "else <experiment>-sweep)."),
    trials: int = typer.Option(None, "--trials", min=1, help="Trials the study should finish (COMPLETE or PRUNED); "
                                                             "default: the study's own, else `sweep.n_trials`."),
    timeout: float = typer.Option(None, "--timeout", min=1, help="Stop starting trials after this many seconds."),
    status: str = typer.Option(None, "--status", metavar="NAME", help="Show study NAME: trials by state, best "
                                                                     "value and params, trials per worker."),
    best: str = typer.Option(None, "--best", metavar="NAME", help="Show the best trial of study NAME."),
    apply: bool = typer.Option(False, "--apply", help="With --best: write its params into kops.yaml `train:` "
                                                      "(prints the diff)."),
    data: Path = typer.Option(None, help="Folder with train.csv (as for kops train)."),
    sample: bool = typer.Option(False, "--sample", help="Train each trial on the bundled sample."),
    config: str = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Search the task's `train:` settings with Optuna (kops.yaml `sweep:`); every trial is a kops training run.

    Many machines may run it at once on one storage; a dead machine's trial resumes from its checkpoint.

    Example: kops sweep --study lr-search --trials 40   (then: kops sweep --best lr-search --apply)
    """
    if status and best:
        raise typer.BadParameter("use --status or --best, not both.")
    if apply and not best:
        raise typer.BadParameter("--apply goes with --best NAME.")
    if status:
        from kaggleops.stages.sweep_report import status as study_status

        res = study_status(load(config), status)
        return emit(res.as_dict(), as_json, res.summary())
    if best:
        return _best(best, apply, config, as_json)
    from kaggleops.stages.sweep import sweep as run_sweep

    result = run_sweep(load(config), study, trials, timeout, data_dir=data, sample=sample, progress=not as_json)
    emit(result.as_dict(), as_json, result.summary())


def _best(name: str, apply: bool, config: str | None, as_json: bool) -> None:
    from kaggleops.config import find_config
    from kaggleops.stages.sweep_report import best

    path = (Path(config) if config else find_config()) if apply else None
    res = best(load(config), name, path)
    if apply and res.diff and not as_json:
        hint(f"kops.yaml now holds the best params of study {name}:")
    text = res.diff if apply else ""
    if apply and not res.diff:
        text = f"{path} already holds the best params of study {name}"
    line = f"best {res.best['metric']} {res.best['value']:.6g}: trial {res.best['trial']}, run {res.best['run_id']}"
    emit(res.as_dict(), as_json, "\n".join(x for x in (line, text.rstrip("\n")) if x))
