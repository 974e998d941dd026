"""The `kops` command: the Typer app and its sub-commands, and :func:`run`/:func:`main`, which print every error
as one line and return its exit code (0, 1 a kops error, 2 a usage mistake, 130 interrupted). Each command module
(``cli/project.py``, ``cli/runs.py``, …) parses its options, calls one stage function and renders the result.

Only typer/rich are imported at start-up: torch, transformers, mlflow and kaggle load inside the library
functions a command calls, so `kops --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from kaggleops import __version__
from kaggleops.errors import KopsError, disk_full_detail, is_disk_full

app = typer.Typer(
    name="kops",
    help="Traceable Kaggle work: train → publish → push-kernel → submit → scores, every hop linked in MLflow.",
    no_args_is_help=False,  # `kops` alone: a usage error (exit 2), see run()
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


def session(config: str | None) -> Any:
    """The command's one :class:`kaggleops.adapters.session.Session`: its kops.yaml, tracker and Kaggle client."""
    from kaggleops.adapters.session import Session

    return Session(load(config))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kops {__version__}")
        raise typer.Exit()


def one_of(*values: str) -> Callable[[str | None], str | None]:
    """A typer option callback: the value must be one of ``values`` (else a usage error, exit 2, at parse time)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}.")
        return value

    return check


def known_machine_shape(value: str | None) -> str | None:
    """A typer option callback: an accelerator the installed kaggle client does not know is a usage error (exit 2)
    while parsing; a retired one is judged later (``--allow-retired``)."""
    if value is None:
        return value
    from kaggleops.adapters.kaggle_machines import known_accelerators

    known = known_accelerators()
    if value.strip().lower() not in known:
        current = sorted(a.name for a in known.values() if not a.retired)
        raise typer.BadParameter(f"{value!r} is not an accelerator the installed kaggle client knows: "
                                 f"{', '.join(current)}.")
    return value


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """kops: from a training run to a leaderboard score and back."""


def _register() -> None:
    from kaggleops.cli import (  # noqa: F401  (commands register on import)
        check,
        data,
        emulator,
        ensemble,
        kernel,
        project,
        runs,
        submissions,
        sweep,
        sync,
        ui,
    )


QUIET_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",            # transformers' shard/weight bars; kops shows its own progress
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",               # "Creating initial MLflow database tables..."
}


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CONFIG_HELP = "kops.yaml to use (default: the nearest, here or in a parent folder)."
ENV_DEBUG = "KOPS_DEBUG"  # =1: an unexpected error shows its traceback


def _click_class(name: str) -> type[BaseException]:
    """typer's own click exception class ``name`` (0.29+ bundles click as ``typer._click``; older typer uses the
    installed click): found through typer's public exceptions, so both work."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def one_line(text: str) -> str:
    """``text`` as one line: its non-empty lines joined."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _usage_error(e: Any) -> int:
    """A click usage error as ``kops CMD: error: MESSAGE`` plus one hint line naming the help to read."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "kops"
    message = one_line(e.format_message())
    typer.echo(f"{where}: error: {message}", err=True)
    typer.echo(f"Try '{where} --help' for help.", err=True)
    return int(getattr(e, "exit_code", EXIT_USAGE) or EXIT_USAGE)


def run(args: list[str] | None = None) -> int:
    """Run the app on ``args`` (default: ``sys.argv[1:]``); the exit code, every error printed as one line.

    0 success, 1 a kops error (or an unexpected one: its traceback only with ``KOPS_DEBUG=1``), 2 a usage
    mistake, 130 interrupted; a command that ran a child process (``--nproc``) exits with the child's code.
    """
    click_error, abort = _click_class("ClickException"), typer.Abort
    try:
        rv = app(args=args, prog_name="kops", standalone_mode=False)
    except KopsError as e:
        prefix = "kops: " if e.exit_code == EXIT_INTERRUPTED else "kops: error: "
        typer.echo(prefix + one_line(str(e)), err=True)
        return e.exit_code
    except click_error as e:
        if _click_class("UsageError") in type(e).__mro__:
            return _usage_error(e)
        typer.echo(f"kops: error: {one_line(e.format_message())}", err=True)  # type: ignore[attr-defined]
        return int(getattr(e, "exit_code", EXIT_ERROR))
    except (abort, KeyboardInterrupt):
        rv = EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback on request
        if os.environ.get(ENV_DEBUG) == "1":
            raise
        if is_disk_full(e):  # not a bug: say so, with the file that could not be written
            where = getattr(e, "filename", None)
            typer.echo(f"kops: error: the disk is full{f' ({where})' if where else ''}: {disk_full_detail(e)}. "
                       "Free space, then run the command again.", err=True)
            return EXIT_ERROR
        typer.echo(f"kops: internal error: {type(e).__name__}: {one_line(str(e))[:300]}", err=True)
        typer.echo(f"Run again with {ENV_DEBUG}=1 to see the traceback, and please report it.", err=True)
        return EXIT_ERROR
    code = rv if isinstance(rv, int) and not isinstance(rv, bool) else EXIT_OK
    if code == EXIT_INTERRUPTED:
        typer.echo("kops: interrupted.", err=True)
    return code


def main() -> None:
    """Entry point of the ``kops`` script: :func:`run`, then exit with its code."""
    for var, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(var, value)
    _register()
    sys.exit(run())
