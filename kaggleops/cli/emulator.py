"""`kops emulator start`: the loopback Kaggle API stand-in, for dry runs against the real client."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

from kaggleops.cli import app, emit, hint
from kaggleops.errors import ConfigError
from kaggleops.interrupts import sleep_until_interrupted
from kaggleops.tasks import DEFAULT_COMPETITION

COMPETITION = DEFAULT_COMPETITION  # the competition bundled with kops (datasets/)

emulator_app = typer.Typer(help="The loopback Kaggle API emulator.", no_args_is_help=False)
app.add_typer(emulator_app, name="emulator")


def parse_faults(specs: list[str]) -> list[tuple[str, int]]:
    """``--fault`` values → (method, status) pairs, or a ConfigError naming the bad one."""
    from kaggleops.emulator.faults import parse_fault_spec

    try:
        return [pair for spec in specs for pair in parse_fault_spec(spec)]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_faults(specs: list[str] | None) -> list[str] | None:
    """``--fault`` checked while parsing: a bad spec is a usage error (exit 2)."""
    try:
        parse_faults(specs or [])
    except ConfigError as e:
        raise typer.BadParameter(e.message) from None
    return specs


@emulator_app.command("start")
def start(
    port: int = typer.Option(0, help="Port on 127.0.0.1 (0 = a free one)."),
    root: Path = typer.Option(None, help="Folder for its state, kept across restarts (default: a throw-away one)."),
    username: str = typer.Option("testuser", help="Accepted Kaggle username."),
    key: str = typer.Option("testkey", help="Accepted Kaggle key."),
    fault: list[str] = typer.Option(None, callback=_check_faults, help="Inject failures, e.g. "
                                    "datasets.DatasetApiService/CreateDatasetVersion=503,429 or Upload=drop "
                                    "(repeatable; statuses are used in order, one call each)."),
    processing_s: float = typer.Option(3.0, "--dataset-processing-s",
                                       help="Seconds a new dataset version stays processing before READY."),
    daily_limit: int = typer.Option(5, "--daily-submission-limit", help="Submissions per day before 429."),
    input_layout: str = typer.Option("current", "--input-layout", help="Kernel inputs as Kaggle mounts them now "
                                     "(current: competitions/, datasets/<owner>/, models/<owner>/) or legacy "
                                     "(<slug>/)."),
    isolation: str = typer.Option("namespace", help="Kernel sessions: namespace (read-only inputs, no network; "
                                                    "where unshare works, else guard) or guard (socket guard)."),
    competition: list[str] = typer.Option(None, "--competition", help="A bundled competition to serve, e.g. "
                                          "digit-recognizer, or a folder with a competition.json (repeatable; "
                                          "default: the ones kept in --root, else the default competition)."),
    secret: list[str] = typer.Option(None, "--secret", help="A notebook secret (Add-ons > Secrets) for every notebook "
                                     "of --username, e.g. MLFLOW_TRACKING_URI; its value is read from this process' "
                                     "environment variable of that name, never from the command line (repeatable)."),
    evaluation_startup_s: float = typer.Option(None, "--evaluation-startup-s", min=0.1, help="Evaluation-API "
                                               "competitions: the rerun's startup limit (default: the package's, "
                                               "15 min)."),
    evaluation_timeout_s: float = typer.Option(None, "--evaluation-timeout-s", min=0.1, help="Evaluation-API "
                                               "competitions: the rerun's per-call timeout (default: the gateway's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the connection settings as JSON (one line)."),
) -> None:
    """Serve bundled sample competitions on 127.0.0.1 until Ctrl-C (a --root keeps them across restarts)."""
    from kaggleops.emulator import Emulator
    from kaggleops.emulator.seeding import seed_competition

    faults = parse_faults(fault or [])
    folder = root.resolve() if root else Path(tempfile.mkdtemp(prefix="kops-emulator-"))
    emulator = Emulator(folder, username=username, key=key, dataset_processing_s=processing_s,
                        daily_submission_limit=daily_limit, persist=root is not None, input_layout=input_layout,
                        isolation=isolation, evaluation_startup_s=evaluation_startup_s,
                        evaluation_timeout_s=evaluation_timeout_s)
    for slug in competition or ([] if emulator.store.competitions else [COMPETITION]):
        seed_competition(emulator, slug)
    served = sorted(emulator.store.competitions)
    for method, status in faults:
        emulator.inject_fault(method, status)
    for name in secret or []:
        if not os.environ.get(name):
            raise ConfigError(f"--secret {name}: the environment variable {name} is not set.",
                              f"Set it first: export {name}=VALUE")
        emulator.add_secret(name, os.environ[name], every_notebook=True)
    url = emulator.start(host="127.0.0.1", port=port)
    try:  # from here on a Ctrl-C stops the server (and exits 130, as `kops ui` does)
        env = {"KOPS_KAGGLE_ENDPOINT": url, "KAGGLE_USERNAME": username, "KAGGLE_KEY": key}
        data = {"url": url, "competition": served[0], "competitions": served, "root": str(folder), "env": env,
                "faults": [f"{m}={s}" for m, s in faults]}
        if as_json:
            import json

            typer.echo(json.dumps(data), nl=True)
        else:
            emit(data, False, "\n".join(f"export {k}={v}" for k, v in env.items()))
        hint(f"Kaggle emulator on {url} (competitions {', '.join(served)}, state in {folder}); Ctrl-C stops it.")
        sleep_until_interrupted()  # the server's threads may be the ones a Ctrl-C lands on
    finally:
        emulator.stop()
