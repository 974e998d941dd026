"""The `kops` command. Commands parse, call one library function, render; no logic lives here.

Only typer/rich are imported at start-up: torch, transformers, mlflow and kaggle load inside the library
functions a command calls, so `kops --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

from kaggleops import __version__
from kaggleops.errors import KopsError

app = typer.Typer(
    name="kops",
    help="Traceable Kaggle work: train → publish → push-kernel → submit → scores, every hop linked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def emit(data: dict[str, Any] | list[Any], as_json: bool, human: str) -> None:
    """Data on stdout: JSON when asked, else the human line."""
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else human)


def hint(text: str) -> None:
    """Progress and hints go to stderr, so stdout stays parseable."""
    typer.echo(text, err=True)


def load(config: str | None) -> Any:
    from kaggleops.config import load_config

    return load_config(config)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """kops: from a training run to a leaderboard score and back."""


def _register() -> None:
    from kaggleops.cli import (  # noqa: F401  (commands register on import)
        data,
        emulator,
        kernel,
        project,
        runs,
        submissions,
        sync,
        ui,
    )


QUIET_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",            # transformers' shard/weight bars; kops shows its own progress
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",               # "Creating initial MLflow database tables..."
}


def main() -> None:
    """Entry point: run the app; a KopsError becomes one line on stderr and exit code 1."""
    for var, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(var, value)
    _register()
    try:
        app(prog_name="kops", standalone_mode=False)
    except KopsError as e:
        typer.echo(f"kops: error: {e}", err=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
