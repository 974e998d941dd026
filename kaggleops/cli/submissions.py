"""Submissions and their scores: submit, scores, leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from kaggleops.cli import app, emit, hint, load

CONFIG_OPT = typer.Option(None, "--config", "-c", help="Path to kops.yaml (default: ./kops.yaml).")
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


@app.command()
def submit(
    kernel: str = typer.Option(None, help="owner/slug of the kernel (default: the one push-kernel makes)."),
    version: int = typer.Option(None, help="Kernel version (default: the latest pushed by kops)."),
    file: Path = typer.Option(None, "--file", "-f", help="File competition: the CSV to upload instead of a kernel."),
    run: list[str] = typer.Option(None, "--run", help="With --file: run id(s) the CSV was made from."),
    message: str = typer.Option("", "--message", "-m", help="Submission description (a kops key is added)."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Submit a kernel version (code competition) or --file (file competition), recorded first as a submission run.

    Refuses when no submissions are left today, naming the reset time.
    """
    from kaggleops.stages.submit import submit as run_submit

    result = run_submit(load(config), kernel=kernel, version=version, message=message, file=file, runs=run or [])
    what = result.file or f"{result.kernel} v{result.kernel_version}"
    left = "" if result.remaining_today is None else f" ({result.remaining_today} left today)"
    emit(result.as_dict(), as_json, f"Submitted {what}: submission {result.submission_ref}{left}, "
                                    f"submission run {result.submission_run_id}\nScores: kops scores --wait")


@app.command()
def scores(
    wait: bool = typer.Option(False, help="Poll until no submission is PENDING."),
    adopt: bool = typer.Option(False, "--all", help="Also record submissions made outside kops as submission runs "
                                                    "(linked to their runs when the description names a kernel "
                                                    "version, e.g. owner/slug/3)."),
    timeout: float = typer.Option(1800, help="Seconds to wait at most with --wait."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Pull leaderboard scores; write status and lb_public / lb_private onto submission and source runs."""
    from kaggleops.stages.submit import scores as run_scores

    cfg = load(config)
    rows = run_scores(cfg, wait=wait, timeout_s=timeout, adopt=adopt)
    lines = []
    for r in rows:
        where = f"run {r.submission_run_id}" if r.submission_run_id else f"not recorded ({r.kernel or 'outside kops'})"
        note = "  (updated)" if r.changed else ""
        error = f"  {r.error}" if r.error else ""
        lines.append(f"{r.submission_ref or '-'}  {r.status:<10} public {_score(r.lb_public)}  "
                     f"private {_score(r.lb_private)}  {where}{note}{error}")
    emit([r.as_dict() for r in rows], as_json, "\n".join(lines) or "No submissions yet.")
    if not as_json and rows:
        from kaggleops.stages.leaderboard import metric_direction

        metric, higher = metric_direction(cfg, [])
        if metric:
            hint(f"Scores are the competition's {metric} ({'higher' if higher else 'lower'} is better).")
    if not as_json and any(r.origin == "unrecorded" for r in rows):
        hint("Submissions made outside kops are listed but not recorded; record them with: kops scores --all")


WIDE_OUTPUT = 220


def _table(rows: list[Any]) -> Any:
    from rich.table import Table

    table = Table(title="kops leaderboard", show_lines=False)
    numbers = ("ref", "LB public", "LB private", "CV")
    for name in (*numbers[:1], "date", "status", *numbers[1:], "models", "datasets", "kernel / file", "commit"):
        table.add_column(name, justify="right" if name in numbers else "left",
                         no_wrap=name in (*numbers, "date", "status", "commit"))
    for r in rows:
        status = r.status + (f": {r.error[:60]}" if r.error else "")
        table.add_row(str(r.submission_ref or "-"), r.date[:16].replace("T", " "), status, _score(r.lb_public),
                      _score(r.lb_private), _score(r.cv), "\n".join(r.models) or "-", "\n".join(r.datasets) or "-",
                      r.kernel or "-", " ".join(r.commits) or "-")
    return table


@app.command()
def leaderboard(
    sort: str = typer.Option("lb_public", help="Sort by lb_public, lb_private, cv, date or ref (best/newest first)."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Your submissions beside their runs: CV, LB public/private, models, datasets, kernel version, commit."""
    from kaggleops.stages.leaderboard import leaderboard as read_leaderboard

    rows = read_leaderboard(load(config), sort=sort)
    if as_json:
        emit([r.as_dict() for r in rows], True, "")
        return
    if not rows:
        typer.echo("No submissions recorded yet. Submit with: kops submit")
        return
    import sys

    from rich.console import Console

    # a pipe or file gets the whole table, not one squeezed into rich's 80-column default
    Console(width=None if sys.stdout.isatty() else WIDE_OUTPUT).print(_table(rows))
