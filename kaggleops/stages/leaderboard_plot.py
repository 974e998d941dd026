"""`kops leaderboard --plot FILE`: CV against LB for every scored submission, as a PNG or a self-contained HTML page.

What the picture holds (see :mod:`kaggleops.stages.leaderboard_pick` for the points):

- one filled marker per submission at (CV, public score); where the private score is known, a hollow marker at
  (CV, private) joined to it by a thin line; blends are diamonds;
- the **line of equal ranks**: the i-th best CV paired with the i-th best public score. Were the public board to
  rank the submissions as CV does, every point would lie on it; a point off it is ranked differently by the two;
- the **public noise band** (:mod:`kaggleops.stages.leaderboard_noise`) around the best-CV submission's public score,
  and the submissions inside it marked *within noise* (orange);
- a faint ``LB = CV`` diagonal: the distance to it is the CV/LB offset.

The HTML page is matplotlib's SVG inline with a ``<title>`` tooltip on every marker (no script, no CDN: it opens
offline) and the table of points below it. The picture is also logged on the competition's leaderboard run (one
``kops.kind=leaderboard`` run per experiment, reused; MLflow experiments hold no artifacts of their own), so the
MLflow UI shows the latest picture beside the runs.
"""

from __future__ import annotations

import html
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from kaggleops.adapters.tracking import open_tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, KopsError
from kaggleops.schema import ARTIFACT_LEADERBOARD, TAG_COMPETITION, TAG_KIND, Kind
from kaggleops.stages.leaderboard_pick import BoardView, Point

FORMATS = (".png", ".html")
COLOURS = {"best": "#2ca02c", "noise": "#ff7f0e", "other": "#1f77b4"}
BAND_COLOUR, RANK_COLOUR = "#ffbf80", "#555555"
PLOT_RUN = "leaderboard"
LABEL_CLOSE = (0.12, 0.08)  # points closer than these shares of the x and y ranges share one label
CAPTION_WIDTH = 140  # characters per line of the caption under the axes
POINT_ID = "kops-point-{}"  # the SVG group of a point's markers, where its tooltip goes


def check_plot_path(path: Path) -> None:
    """ConfigError naming the extension when ``path`` is neither .png nor .html."""
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"Cannot plot to {path.name}: {path.suffix or 'no extension'} is neither .png nor .html.",
                          "Name the file plot.png (an image) or plot.html (an interactive page).")


def equal_ranks(points: list[Point]) -> tuple[list[float], list[float]]:
    """The line of equal ranks: the CVs and the public scores, each sorted, paired rank by rank.

    Example:
        >>> from types import SimpleNamespace as S
        >>> pts = [S(cv=0.8, row=S(lb_public=0.70)), S(cv=0.9, row=S(lb_public=0.60)), S(cv=0.7, row=S(lb_public=0.65))]
        >>> equal_ranks(pts)
        ([0.7, 0.8, 0.9], [0.6, 0.65, 0.7])
    """
    return sorted(p.cv for p in points), sorted(p.row.lb_public for p in points)


def _colour(view: BoardView, p: Point) -> str:
    return COLOURS["best"] if p is view.best else COLOURS["noise"] if p.within_noise else COLOURS["other"]


def _draw_points(ax: Any, view: BoardView) -> None:
    for i, p in enumerate(view.points):
        colour, marker = _colour(view, p), "D" if p.blend else "o"
        size = 160 if p is view.best else 70
        if p.row.lb_private is not None:
            ax.plot([p.cv, p.cv], [p.row.lb_public, p.row.lb_private], color=colour, lw=0.8, alpha=0.6,
                    gid=POINT_ID.format(i) + "-link")
            ax.scatter([p.cv], [p.row.lb_private], s=size, marker=marker, facecolors="white", edgecolors=colour,
                       linewidths=1.5, zorder=3, gid=POINT_ID.format(i) + "-private")
        ax.scatter([p.cv], [p.row.lb_public], s=size, marker="*" if p is view.best else marker, color=colour,
                   edgecolors="black", linewidths=0.5, zorder=5 if p is view.best else 4, gid=POINT_ID.format(i))


def label_groups(points: list[Point], close: tuple[float, float] = LABEL_CLOSE) -> list[tuple[Point, str]]:
    """One label per cluster of points closer than ``close`` of the x and y ranges: ``#3, #5``.

    Example:
        >>> from types import SimpleNamespace as S
        >>> pts = [S(cv=1.0, row=S(lb_public=1.0, submission_ref=1)), S(cv=1.001, row=S(lb_public=1.0,
        ...        submission_ref=2)), S(cv=2.0, row=S(lb_public=2.0, submission_ref=3))]
        >>> [text for _, text in label_groups(pts)]
        ['#1, #2', '#3']
    """
    xs, ys = [p.cv for p in points], [p.row.lb_public for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[list[Point]] = []
    for p in sorted(points, key=lambda q: (q.cv, q.row.lb_public)):
        near = next((g for g in groups if abs(g[0].cv - p.cv) < close[0] * dx
                     and abs(g[0].row.lb_public - p.row.lb_public) < close[1] * dy), None)
        near.append(p) if near is not None else groups.append([p])
    return [(max(g, key=lambda q: q.row.lb_public), ", ".join(map(_short, g))) for g in groups]


def _short(p: Point) -> str:
    return f"#{p.row.submission_ref}" if p.row.submission_ref else p.row.submission_run_id[:6]


def _draw_labels(ax: Any, view: BoardView) -> None:
    for p, text in label_groups(view.points):
        ax.annotate(text, (p.cv, p.row.lb_public), xytext=(7, 5), textcoords="offset points", fontsize=8)


def _draw_guides(ax: Any, view: BoardView) -> None:
    xs, ys = equal_ranks(view.points)
    if len(xs) > 1:
        ax.plot(xs, ys, ls="--", color=RANK_COLOUR, lw=1, label="equal ranks (i-th best CV ↔ i-th best public)")
    lo = min(xs + ys + [p.row.lb_private for p in view.points if p.row.lb_private is not None])
    hi = max(xs + ys + [p.row.lb_private for p in view.points if p.row.lb_private is not None])
    ax.plot([lo, hi], [lo, hi], color="#bbbbbb", lw=0.8, label="LB = CV")
    h, best = view.noise.half_width, view.best
    if h is not None and best is not None and best.row.lb_public is not None:
        ax.axhspan(best.row.lb_public - h, best.row.lb_public + h, color=BAND_COLOUR, alpha=0.3,
                   label=f"public noise around the best CV (±{h:.4g})")


def _legend_markers(ax: Any, view: BoardView) -> None:
    ax.scatter([], [], marker="*", s=160, color=COLOURS["best"], edgecolors="black", linewidths=0.5,
               label="best CV (public score)")
    if any(p.within_noise for p in view.points):
        ax.scatter([], [], color=COLOURS["noise"], label="public within noise of the best CV's")
    if any(p is not view.best and not p.within_noise for p in view.points):
        ax.scatter([], [], color=COLOURS["other"], label="public" + (" outside that noise"
                                                                     if view.noise.half_width is not None else ""))
    if any(p.row.lb_private is not None for p in view.points):
        ax.scatter([], [], facecolors="white", edgecolors="#777777", label="private (hollow)")
    if any(p.blend for p in view.points):
        ax.scatter([], [], marker="D", color="#777777", label="blend (x: nested CV)")


def figure(view: BoardView) -> Any:
    """The matplotlib figure of ``view``: a bare Figure drawn by Agg (no pyplot, no display, no global backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=110)
    ax = fig.subplots()
    _draw_guides(ax, view)
    _draw_points(ax, view)
    _draw_labels(ax, view)
    _legend_markers(ax, view)
    way = "higher" if view.higher_is_better else "lower"
    metric = view.metric or "score"
    ax.set_xlabel(f"CV {metric}" + (" (blends: nested CV)" if any(p.blend for p in view.points) else ""))
    ax.set_ylabel(f"leaderboard {metric} (filled: public, hollow: private)")
    ax.set_title(f"{view.competition}: CV vs LB, {len(view.points)} submissions ({way} is better)", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    caption = textwrap.fill(view.noise.caption(), CAPTION_WIDTH)
    fig.text(0.01, 0.01, caption, fontsize=7, color="#444444", va="bottom")
    fig.tight_layout(rect=(0, 0.025 * (caption.count("\n") + 1) + 0.01, 1, 1))
    return fig


def _svg_with_tooltips(fig: Any, view: BoardView) -> str:
    import io

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text (searchable, smaller)
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    for i, p in enumerate(view.points):
        title = f"<title>{html.escape(p.describe())}</title>"
        for part in ("", "-private", "-link"):
            group = f'<g id="{POINT_ID.format(i)}{part}">'
            svg = svg.replace(group, group + title)
    return svg


def _table(view: BoardView) -> str:
    head = ("<tr><th>submission</th><th>CV</th><th>public</th><th>private</th><th>runs</th><th>kernel / file</th>"
            "<th></th></tr>")
    rows = []
    for p in view.ranked():
        private = "-" if p.row.lb_private is None else f"{p.row.lb_private:.5f}"
        mark = "best CV" if p is view.best else "within noise" if p.within_noise else ""
        rows.append(f"<tr><td>{html.escape(p.name)}</td><td>{p.cv:.5f}</td><td>{p.row.lb_public:.5f}</td>"
                    f"<td>{private}</td><td>{html.escape(p.source)}</td><td>{html.escape(p.row.kernel)}</td>"
                    f"<td>{mark}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} svg{{max-width:100%;height:auto}}
g[id^="kops-point-"]:hover{{opacity:.6;cursor:help}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head>
<body>{svg}<p>Hover a marker for its submission. Best CV first:</p>{table}</body></html>
"""


def write_plot(view: BoardView, path: Path) -> Path:
    """Write ``view`` to ``path`` (.png or .html); returns the path."""
    check_plot_path(path)
    fig = figure(view)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        fig.savefig(path)
    else:
        title = html.escape(f"{view.competition}: CV vs LB")
        path.write_text(PAGE.format(title=title, svg=_svg_with_tooltips(fig, view), table=_table(view)),
                        encoding="utf-8")
    return path


def log_plot(cfg: KopsConfig, view: BoardView, path: Path) -> str:
    """Log the picture and its points on the competition's leaderboard run (made on first use); its run id."""
    tracker = open_tracker(cfg)
    found = runs_tagged(tracker, {TAG_KIND: Kind.LEADERBOARD, TAG_COMPETITION: cfg.competition})
    run_id = found[0].id if found else tracker.record_run(
        PLOT_RUN, {TAG_KIND: Kind.LEADERBOARD, TAG_COMPETITION: cfg.competition})
    tracker.log_artifact(run_id, path, ARTIFACT_LEADERBOARD)
    tracker.log_json(run_id, {"noise": view.noise.as_dict(), "points": [
        {"submission_run_id": p.row.submission_run_id, "submission_ref": p.row.submission_ref, "cv": p.cv,
         "cv_kind": p.cv_kind, "lb_public": p.row.lb_public, "lb_private": p.row.lb_private,
         "within_noise": p.within_noise, "best_cv": p is view.best} for p in view.points]},
        f"{ARTIFACT_LEADERBOARD}/points.json")
    return run_id


def plot_leaderboard(cfg: KopsConfig, view: BoardView, path: Path) -> str:
    """Write the picture to ``path`` and log it (see :func:`log_plot`); the leaderboard run's id.

    Example:
        >>> plot_leaderboard(load_config(), board_view(load_config()), Path("cv_vs_lb.html"))  # doctest: +SKIP
    """
    if not view.points:
        raise KopsError("No scored submission to plot: the plot needs a public score and a CV.",
                        "Pull the scores with: kops scores --wait")
    write_plot(view, path)
    with tempfile.TemporaryDirectory(prefix="kops-plot-") as tmp:
        return log_plot(cfg, view, path if path.name.startswith("cv_vs_lb") else _copy(path, Path(tmp)))


def _copy(path: Path, folder: Path) -> Path:
    target = folder / f"cv_vs_lb{path.suffix.lower()}"
    target.write_bytes(path.read_bytes())
    return target
