"""`kops kernel …`: work with generated inference kernels locally."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from kaggleops.cli import CONFIG_HELP, app, emit, hint, load, one_of, session
from kaggleops.errors import KernelError
from kaggleops.schema import SESSION_LIMIT_S

LAYOUTS = ("current", "legacy")  # kaggleops.kernel.local.LAYOUTS (not imported: `kops --help` stays light)

kernel_app = typer.Typer(help="Generated inference kernels: run them locally before spending a submission.",
                         no_args_is_help=False)
app.add_typer(kernel_app, name="kernel")


@kernel_app.command("run-local")
def run_local(
    folder: Path = typer.Argument(..., help="Kernel folder `kops push-kernel --no-push` (or a push) rendered "
                                            "(.kops/kernels/<slug>/)."),
    data: Path = typer.Option(None, help="Folder with the competition's test.csv + sample_submission.csv "
                                         "(default: the competition's data, downloaded as Kaggle attaches it)."),
    timeout: float = typer.Option(SESSION_LIMIT_S, help="The session's limit in seconds: the kernel and every "
                                  "process it started are stopped after this long (default 3 h, the reference "
                                  "competition's code-submission limit; Kaggle ends any session at 12 h)."),
    python: str = typer.Option(None, "--python", help="Run the kernel with this interpreter instead of the Kaggle "
                               "image environment (a cached venv holding only the Kaggle image's packages)."),
    input_layout: str = typer.Option("current", "--input-layout", callback=one_of(*LAYOUTS),
                                     help="current: input/competitions/<slug>, datasets/<owner>/<slug>, "
                                          "models/<owner>/<model>/<framework>/<variation>/<version> (Kaggle today); "
                                          "legacy: input/<slug>."),
    isolation: str = typer.Option("auto", help="auto | namespace+guard | guard: how the network is blocked."),
    full_rows: int = typer.Option(None, help="Rows of the real test set, to estimate its run time."),
    config: str = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run a rendered kernel as Kaggle would: the exact planned versions (read-only input/), the Kaggle image's
    packages only, offline, within the session's limit.

    Example: kops kernel run-local .kops/kernels/tse-inference   (or --python .venv/bin/python to use another)
    """
    from kaggleops.kernel.local import render_report
    from kaggleops.kernel.local import run_local as do_run

    report = do_run(load(config), folder, data_dir=data, timeout_s=timeout, isolation=isolation, full_rows=full_rows,
                    python=python, input_layout=input_layout, progress=hint)
    emit(report.as_dict(), as_json, render_report(report))
    if not report.ok:
        raise KernelError(f"run-local: the kernel in {folder} would fail on Kaggle: {report.problems[0]}",
                          "Fix it, then run: kops kernel run-local " + str(folder))


@kernel_app.command("output")
def output(
    kernel: str = typer.Argument(None, help="owner/slug of the kernel (default: the one push-kernel makes)."),
    version: int = typer.Option(None, help="Kernel version (default: the latest pushed by kops)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for the files (default: .kops/output/<slug>/v<N>/)."),
    config: str = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Download a kernel version's output files (a file competition's submission.csv, logs' artifacts).

    Example: kops kernel output --version 3   then: kops submit --file .kops/output/<slug>/v3/submission.csv
    """
    from kaggleops.stages.submit import kernel_output

    ref, files = kernel_output(session(config), kernel, version, out)
    csv = next((f for f in files if f.name == "submission.csv"), None)
    text = "\n".join([f"Output of {ref}: {len(files)} file(s)", *(f"  {f}" for f in files)]
                     + ([f"next: kops submit --file {shlex.quote(str(csv))}"] if csv else []))
    emit({"kernel": str(ref), "files": [str(f) for f in files]}, as_json, text)
