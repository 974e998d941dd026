"""Submissions and their scores: submit, scores, leaderboard."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, hint, load, one_of, session

CONFIG_OPT = typer.Option(None, "--config", "-c", help=CONFIG_HELP)
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
    check: bool = typer.Option(True, "--check/--no-check", help="--file: check it against the competition's "
                               "sample_submission.csv before uploading (columns, ids, rows, NaN cells, numbers)."),
    again: bool = typer.Option(False, "--again", help="Submit a kernel version or file (same sha256) that was "
                               "already submitted and taken by Kaggle."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the score; a failed submission (e.g. an evaluation "
                              "API's GRPC_DEADLINE_EXCEEDED) exits 1 naming its error type."),
    timeout: float = typer.Option(3600, help="Seconds to wait at most with --wait."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Submit a kernel version (code competition) or --file (file competition), recorded first as a submission run.

    Refuses when no submissions are left today (naming the reset time), a --file Kaggle would refuse (naming the
    first problem), and a second submission of what was already submitted (unless --again).

    Example: kops submit --file submission.csv --run 3f2a9c1d
    """
    from kaggleops.stages.scores import await_result
    from kaggleops.stages.submit import submit as run_submit

    command = session(config)
    result = run_submit(command, kernel=kernel, version=version, message=message, file=file, runs=run or [],
                        check=check, again=again)
    if wait:  # a failed submission raises one line here, after its run is marked FAILED
        await_result(command, result, timeout)
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
    from kaggleops.stages.scores import scores as run_scores

    command = session(config)
    rows = run_scores(command, wait=wait, timeout_s=timeout, adopt=adopt)
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

        metric, higher = metric_direction(command.cfg, [])
        if metric:
            hint(f"Scores are the competition's {metric} ({'higher' if higher else 'lower'} is better).")
    if not as_json and any(r.origin == "unrecorded" for r in rows):
        hint("Submissions made outside kops are listed but not recorded; record them with: kops scores --all")


WIDE_OUTPUT = 220  # a pipe or file without $COLUMNS gets every column, unshortened
GAP = "  "
FLEX_MIN = 12  # a shortened column keeps at least this many characters, else it is left out
# (header, right-aligned, shortened to fit?) in display order; PRIORITY: which columns a narrow terminal keeps
LB_COLUMNS = {"ref": True, "date": False, "status": False, "LB public": True, "LB private": True, "CV": True,
              "models": False, "datasets": False, "kernel / file": False, "commit": False}
LB_FLEX = ("status", "models", "datasets", "kernel / file")
LB_PRIORITY = ("ref", "LB public", "LB private", "CV", "status", "models", "date", "kernel / file", "commit",
               "datasets")


def _cells(r: Any) -> dict[str, str]:
    return {"ref": str(r.submission_ref or "-"), "date": r.date[:16].replace("T", " "),
            "status": r.status + (f": {r.error}" if r.error else ""), "LB public": _score(r.lb_public),
            "LB private": _score(r.lb_private), "CV": _score(r.cv),
            "models": ", ".join(run[:8] for run in r.source_runs) or ", ".join(r.models) or "-",  # ids to type next
            "datasets": ", ".join(r.datasets) or "-", "kernel / file": r.kernel or "-",
            "commit": " ".join(c[:8] for c in r.commits) or "-"}


VERSIONED = ("datasets", "kernel / file")  # cells ending in a version number: shortened in the middle


def _fit(text: str, width: int, right: bool, keep_version: bool = False) -> str:
    if len(text) > width:
        tail = re.search(r"/\d+$", text) if keep_version else None
        keep = tail.group(0) if tail and len(tail.group(0)) < width - 2 else ""
        text = text[:width - 1 - len(keep)] + "…" + keep
    return text.rjust(width) if right else text.ljust(width)


def render_leaderboard(rows: list[Any], width: int) -> str:
    """The leaderboard as a plain table at most ``width`` columns wide: columns are kept in LB_PRIORITY order
    while they fit (a shortened one keeps FLEX_MIN characters, else it is left out), never squeezed to nothing."""
    cells = [_cells(r) for r in rows]
    natural = {c: max(len(c), *(len(row[c]) for row in cells)) for c in LB_COLUMNS}
    chosen: dict[str, int] = {}
    for c in LB_PRIORITY:
        need = min(natural[c], max(FLEX_MIN, len(c))) if c in LB_FLEX else natural[c]
        if sum(chosen.values()) + len(GAP) * len(chosen) + need <= width:
            chosen[c] = need
    spare = width - sum(chosen.values()) - len(GAP) * (len(chosen) - 1)
    growing = [c for c in LB_PRIORITY if c in chosen and c in LB_FLEX]
    while spare > 0 and (growing := [c for c in growing if chosen[c] < natural[c]]):
        for c in growing[:spare]:  # the spare width shared evenly, one character at a time
            chosen[c] += 1
            spare -= 1
    shown = [c for c in LB_COLUMNS if c in chosen]
    lines = [GAP.join(_fit(c, chosen[c], LB_COLUMNS[c]) for c in shown).rstrip()]
    lines.append(GAP.join("-" * chosen[c] for c in shown))
    lines += [GAP.join(_fit(row[c], chosen[c], LB_COLUMNS[c], c in VERSIONED) for c in shown).rstrip()
              for row in cells]
    left_out = [c for c in LB_COLUMNS if c not in chosen]
    if left_out:
        lines.append(_fit(f"(not shown at {width} columns: {', '.join(left_out)}; see --json)", width, False).rstrip())
    return "\n".join(lines)


def _plot_file(value: Path | None) -> Path | None:
    """--plot's callback: a file that is neither .png nor .html is a usage error (exit 2)."""
    if value is not None and value.suffix.lower() not in (".png", ".html"):
        raise typer.BadParameter(f"{value.name} is neither .png nor .html.")
    return value


@app.command()
def leaderboard(
    sort: str = typer.Option("lb_public", callback=one_of("lb_public", "lb_private", "cv", "date", "ref"),
                             help="Sort by lb_public, lb_private, cv, date or ref (best/newest first)."),
    plot: Path = typer.Option(None, "--plot", callback=_plot_file, help="Draw CV against public/private LB with "
                              "the line of equal ranks and the public noise band into FILE (.png, or .html with a "
                              "tooltip per point); also logged on the competition's leaderboard run."),
    pick: int = typer.Option(None, "--pick", min=1, help="Propose N final submissions (best CV, best nested-CV "
                             "blend, ...), one line of reason each."),
    public_fraction: float = typer.Option(None, help="Share of the test rows the public LB scores (the "
                                          "competition's leaderboard page says; default 0.5, flagged as assumed)."),
    public_rows: int = typer.Option(None, help="Public test rows, instead of --public-fraction × the test rows."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Your submissions beside their runs: CV, LB public/private, models, datasets, kernel version, commit.

    Example: kops leaderboard --plot cv_vs_lb.html --pick 2 --public-fraction 0.3
    """
    if plot is not None or pick is not None:
        _board_view(load(config), plot, pick, public_fraction, public_rows, as_json)
        return
    from kaggleops.stages.leaderboard import leaderboard as read_leaderboard

    rows = read_leaderboard(load(config), sort=sort)
    if as_json:
        emit([r.as_dict() for r in rows], True, "")
        return
    if not rows:
        typer.echo("No submissions recorded yet. Submit with: kops submit")
        return
    import shutil

    typer.echo(render_leaderboard(rows, shutil.get_terminal_size((WIDE_OUTPUT, 24)).columns))


def _board_view(cfg: Any, plot: Path | None, pick: int | None, public_fraction: float | None,
                public_rows: int | None, as_json: bool) -> None:
    """--plot / --pick: the picture, the picks, the noise band, in one view of the scored submissions."""
    from kaggleops.stages.leaderboard_noise import check_size
    from kaggleops.stages.leaderboard_pick import board_view
    from kaggleops.stages.leaderboard_pick import pick as pick_finals
    from kaggleops.stages.leaderboard_plot import plot_leaderboard

    check_size(public_rows, public_fraction)
    view = board_view(cfg, public_rows=public_rows, public_fraction=public_fraction)
    out: dict[str, Any] = {"noise": view.noise.as_dict(), "best_cv": view.best.row.submission_run_id
                           if view.best else None,
                           "within_noise": [p.row.submission_run_id for p in view.points if p.within_noise]}
    lines = []
    if plot is not None:
        out["plot"], out["run_id"] = str(plot), plot_leaderboard(cfg, view, plot)
        marked = sum(p.within_noise for p in view.points)
        within = "" if view.noise.half_width is None else (f", {marked} with a public score within noise of the "
                                                          "best CV's")
        lines.append(f"Wrote {plot}: {len(view.points)} submissions{within}; logged on leaderboard run "
                     f"{out['run_id']}")
        lines.append(view.noise.caption())
    if pick is not None:
        picks = pick_finals(view, pick)
        out["picks"] = [{"submission_run_id": p.point.row.submission_run_id,
                         "submission_ref": p.point.row.submission_ref, "why": p.why} for p in picks]
        lines += [f"{i}. {p.line()}" for i, p in enumerate(picks, 1)] or [
            "No scored submission to pick from. Pull the scores with: kops scores --wait"]
        if 0 < len(picks) < pick:
            lines.append(f"(only {len(picks)} distinct submission(s) worth a final slot)")
    emit(out, as_json, "\n".join(lines))
