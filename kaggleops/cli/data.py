"""`kops data` (competition files in) and `kops quota` (weekly accelerator hours)."""

from __future__ import annotations

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, load

CONFIG_OPT = typer.Option(None, "--config", "-c", help=CONFIG_HELP)
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")


@app.command()
def data(
    force: bool = typer.Option(False, "--force", help="Download again even when the cache is complete."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Fetch the competition's files (official client) into kops' cache, unzipped and checked; reused after."""
    from kaggleops.stages.data import fetch

    source = fetch(load(config), force=force)
    how = {"cache": "already cached", "download": "downloaded", "kaggle-input": "attached to this notebook",
           "config": "from data_dir", "sample": "the bundled sample"}.get(source.origin, source.origin)
    files = ", ".join(sorted(source.files))
    emit(source.as_dict(), as_json, f"{source.competition}: {how}: {source.folder}\nfiles: {files}")


@app.command()
def quota(config: str = CONFIG_OPT, as_json: bool = JSON_OPT) -> None:
    """Weekly GPU/TPU hours on Kaggle: used, reserved, allowed, and when they refresh."""
    from kaggleops.stages.accelerators import quota as get_quota
    from kaggleops.stages.accelerators import render_quota

    q = get_quota(load(config))
    emit(q, as_json, render_quota(q))
