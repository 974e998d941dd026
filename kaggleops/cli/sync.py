"""`kops sync push | pull | status`: runs from many machines in one bucket (offline-first mode)."""

from __future__ import annotations

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, load

sync_app = typer.Typer(help="Share runs through a bucket: push local runs, pull everyone else's.",
                       no_args_is_help=False)
app.add_typer(sync_app, name="sync")

CONFIG_OPT = typer.Option(None, "--config", "-c", help=CONFIG_HELP)
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")
BUCKET_OPT = typer.Option(None, "--bucket", help="gs://BUCKET/PREFIX or a folder (default: $KOPS_BUCKET, "
                                                 "else `storage.bucket` in kops.yaml).")


@sync_app.command("push")
def push(
    bucket: str = BUCKET_OPT,
    all_experiments: bool = typer.Option(False, "--all", help="Every experiment of the store, not just kops.yaml's."),
    full: bool = typer.Option(False, "--full", help="Re-read every run's metric history, not only runs whose "
                                                    "status, tags or latest metrics changed."),
    config: str = CONFIG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Upload what changed in each local run (new metric points, meta) under keys only that run owns."""
    from kaggleops.sync import push as run_push

    r = run_push(load(config), bucket=bucket, all_experiments=all_experiments, full=full)
    emit(r.as_dict(), as_json, f"Pushed {len(r.uploaded)} run(s) ({r.uploaded_bytes} bytes, "
                               f"{r.points_uploaded} metric points) to {r.bucket} "
                               f"as machine {r.machine}; {r.unchanged} unchanged, {r.imported_skipped} pulled "
                               "from elsewhere (not pushed).")


@sync_app.command("pull")
def pull(bucket: str = BUCKET_OPT, config: str = CONFIG_OPT, as_json: bool = JSON_OPT) -> None:
    """Import other machines' runs into the local store (idempotent; grown runs are updated, not duplicated)."""
    from rich.console import Console
    from rich.progress import Progress

    from kaggleops.sync import pull as run_pull

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("Importing runs", total=None)
        r = run_pull(load(config), bucket=bucket, progress=lambda done, total: bar.update(task, completed=done,
                                                                                          total=total))
    emit(r.as_dict(), as_json, f"Pulled from {r.bucket}: {len(r.created)} new run(s), {len(r.updated)} updated "
                               f"({r.points_added} metric points), {r.unchanged} unchanged, {r.own} own.")


@sync_app.command("status")
def status(bucket: str = BUCKET_OPT, config: str = CONFIG_OPT, as_json: bool = JSON_OPT) -> None:
    """List the run bundles in the bucket, by machine."""
    from kaggleops.sync import bundles

    rows = bundles(load(config), bucket=bucket)
    lines = [f"{r['machine']}  {r['run_id']}  {r['bytes']} bytes  ({r['chunks']} metric chunk(s))" for r in rows]
    emit(rows, as_json, "\n".join(lines) or "No run bundles in the bucket yet. Push some with: kops sync push")
