"""`kops kernel …`: work with generated inference kernels locally."""

from __future__ import annotations

from pathlib import Path

import typer

from kaggleops.cli import app, emit, load
from kaggleops.errors import KernelError

kernel_app = typer.Typer(help="Generated inference kernels: run them locally before spending a submission.",
                         no_args_is_help=False)
app.add_typer(kernel_app, name="kernel")


@kernel_app.command("run-local")
def run_local(
    folder: Path = typer.Argument(..., help="Kernel folder `kops push-kernel --no-push` (or a push) rendered "
                                            "(.kops/kernels/<slug>/)."),
    data: Path = typer.Option(None, help="Folder with the competition's test.csv + sample_submission.csv "
                                         "(default: the competition's data, downloaded as Kaggle attaches it)."),
    timeout: float = typer.Option(3 * 3600, help="Seconds the kernel may run (Kaggle's limit for the competition)."),
    isolation: str = typer.Option("auto", help="auto | namespace+guard | guard: how the network is blocked."),
    full_rows: int = typer.Option(None, help="Rows of the real test set, to estimate its run time."),
    config: str = typer.Option(None, "--config", "-c", help="Path to kops.yaml (default: ./kops.yaml)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run a rendered kernel on the exact dataset versions its plan names (downloaded, read-only input/), offline."""
    from kaggleops.kernel.local import render_report
    from kaggleops.kernel.local import run_local as do_run

    report = do_run(load(config), folder, data_dir=data, timeout_s=timeout, isolation=isolation, full_rows=full_rows)
    emit(report.as_dict(), as_json, render_report(report))
    if not report.ok:
        raise KernelError(f"run-local: the kernel in {folder} would fail on Kaggle: {report.problems[0]}",
                          "Fix it, then run: kops kernel run-local " + str(folder))
