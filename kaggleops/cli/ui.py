"""`kops ui`: the MLflow UI on the configured tracking store, opened on the leaderboard view."""

from __future__ import annotations

import sys

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, hint, load

CONFIG_OPT = typer.Option(None, "--config", "-c", help=CONFIG_HELP)


@app.command()
def ui(
    port: int = typer.Option(5000, min=1, max=65535, help="Port on 127.0.0.1."),
    config: str = CONFIG_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print url, base, log and pid as JSON (then serve)."),
) -> None:
    """Start the MLflow UI (one worker, no job execution); print the runs table's URL (sorted by lb_public) and the
    Models tab's (published weight sets with their LB scores)."""
    from kaggleops.stages.ui import start_ui
    from kaggleops.sync import pull_if_configured

    cfg = load(config)
    pulled = pull_if_configured(cfg)
    if pulled is not None:
        hint(f"Pulled from {pulled.bucket}: {len(pulled.created)} new, {len(pulled.updated)} updated run(s).")
    server = start_ui(cfg, port=port)
    emit({"url": server.url, "models_url": server.models_url, "base": server.base, "log": server.log or None,
          "pid": server.process.pid if server.process is not None else None}, as_json, server.url)
    if not as_json:
        hint(f"Published models with their LB scores (Models tab): {server.models_url}")
    sys.stdout.flush()  # the URL is there for a script to read while the server runs
    if server.process is None:
        hint("The tracking store is a server already: open the URL above.")
        return
    hint(f"MLflow UI on {server.base} (log: {server.log}); Ctrl-C stops it.")
    raise typer.Exit(server.wait())
