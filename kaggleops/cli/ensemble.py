"""`kops ensemble`: weights over tracked runs chosen on their out-of-fold predictions (stages/ensemble.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, load, one_of

METHODS = ("caruana", "rank", "hill")  # kaggleops.stages.ensemble.METHODS (not imported: `kops --help` stays light)


@app.command()
def ensemble(
    runs: list[str] = typer.Argument(None, help="Member runs: k-fold parent (or lone fold) run ids or prefixes."),
    filter_string: str = typer.Option(None, "--filter", help="Also the k-fold runs matching this MLflow filter, e.g. "
                                                             "\"params.alpha = '0.01'\"."),
    top: int = typer.Option(None, "--top", min=2, help="Only the N best k-fold runs by CV (of --filter's, or all)."),
    method: str = typer.Option("caruana", "--method", callback=one_of(*METHODS),
                               help="caruana: greedy forward selection with replacement; rank: the same on "
                                    "percentile ranks (scale-free; not kernel-ready); hill: hill climbing on the "
                                    "weights."),
    steps: int = typer.Option(40, "--steps", min=1, help="caruana: copies added at most."),
    init: int = typer.Option(1, "--init", min=1, help="caruana/rank: start from the N best members, one copy each "
                                                      "(helps a blend that changes only when several runs vote)."),
    nested: bool = typer.Option(True, "--nested/--no-nested", help="Estimate the blend by nested CV (weights "
                                                                  "chosen without each fold, scored on it)."),
    data: Path = typer.Option(None, help="Folder with the train.csv the members trained on (default: as kops "
                                         "train finds it)."),
    config: str = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Blend runs: weights chosen on their OOF predictions, an honest nested-CV figure, an ensemble MLflow run.

    Example: kops ensemble --top 3   then: kops push-kernel --run ENSEMBLE_RUN --submit
    """
    from kaggleops.stages.ensemble import ensemble as run_ensemble

    if not runs and not filter_string and not top:
        raise typer.BadParameter("name the members: RUN_ID …, --filter \"MLflow filter\" or --top N")
    result = run_ensemble(load(config), list(runs or []), filter_string, top, method, steps, data, nested, init)
    emit(result.as_dict(), as_json, result.summary())
