"""`kops check-task`: the task checked against the task contract in seconds."""

from __future__ import annotations

from pathlib import Path

import typer

from kaggleops.cli import CONFIG_HELP, app, emit

CONFIG_OPT = typer.Option(None, "--config", "-c", help=CONFIG_HELP)


@app.command("check-task")
def check_task(
    task: str = typer.Option(None, "--task", help="The task to check, `module:Class` or `path/file.py:Class` "
                             "(default: kops.yaml's task)."),
    data: Path = typer.Option(None, "--data", help="A folder with train.csv and test.csv (default: kops.yaml's "
                              "data_dir, else the task's sample_dir(), else the cached download)."),
    config: str = CONFIG_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print every check as JSON."),
) -> None:
    """Run the task through a tiny fold, a save/load round trip and a kernel-side
    predict, in seconds; each contract breach is one line naming the hook.

    Checked: the required members and their types; settings() (an unknown key
    must raise SettingsError); load_train/load_test on a handful of rows;
    make_folds; train_fold on a fold of at most 64 rows (in a temporary folder);
    the metric; predict (and post_process) from the model folder moved
    elsewhere, in a fresh process. Exit 1 if any check fails.

    The tiny fold trains with kops.yaml's `train:` section (n_folds, seed and the
    task's own keys): keep check-task fast there (few epochs or steps), or point
    --config at a kops.yaml made for checking.

    Example: kops check-task --task tasks/my_task.py:MyTask --data data
    """
    from kaggleops.errors import TaskContractBroken
    from kaggleops.stages.check_task import check_project

    report = check_project(config, task, data)
    emit(report.as_dict(), as_json, report.render())
    if not report.ok:
        raise TaskContractBroken(f"task {report.task} breaks the task contract in {len(report.breaches)} place(s), "
                                 "each named above; fix them and run: kops check-task")
