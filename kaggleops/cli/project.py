"""`kops init` and `kops demo`."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from kaggleops.cli import app, emit, hint
from kaggleops.errors import ConfigError


@app.command()
def init(
    competition: str = typer.Option(None, help="Kaggle competition slug (default: the built-in demo task's)."),
    owner: str = typer.Option(None, help="Kaggle user owning datasets/kernels (default: $KAGGLE_USERNAME)."),
    force: bool = typer.Option(False, help="Overwrite an existing kops.yaml."),
    mlproject: bool = typer.Option(False, help="Also write MLproject + python_env.yaml for `mlflow run`."),
    gpu: bool = typer.Option(None, "--gpu/--no-gpu", help="The inference kernel on a GPU (default: yes for a "
                             "built-in task, no for the skeleton of your own)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a commented kops.yaml (and optionally an MLflow Project) into the current folder.

    Example: kops init --owner alice --competition playground-series-s6e1 --no-gpu
    """
    from kaggleops.config import CONFIG_FILE, render_template
    from kaggleops.stages.mlproject import write_mlproject
    from kaggleops.tasks import DEFAULT_COMPETITION, task_spec
    from kaggleops.tasks.skeleton import module_name, render_skeleton

    competition = competition or DEFAULT_COMPETITION
    path = Path.cwd() / CONFIG_FILE
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists.", "Edit it, or pass --force to overwrite it.")
    task, skeleton = None, None
    if task_spec(competition) is None:
        rel = f"tasks/{module_name(competition)}.py"
        source, cls = render_skeleton(competition, rel)
        skeleton = Path.cwd() / rel
        if skeleton.exists() and not force:
            raise ConfigError(f"{skeleton} already exists.", "Edit it, or pass --force to overwrite it.")
        skeleton.parent.mkdir(parents=True, exist_ok=True)
        skeleton.write_text(source)
        task = f"{rel}:{cls}"
    path.write_text(render_template(competition=competition, owner=owner, task=task,
                                    gpu=gpu if gpu is not None else skeleton is None))
    written = [path, *_gitignore(Path.cwd()), *([skeleton] if skeleton else []),
               *(write_mlproject(Path.cwd(), competition) if mlproject else [])]
    lines = [f"Wrote {p}" for p in written]
    if skeleton:
        lines.append(f"No built-in task serves {competition}: {skeleton.name} is a skeleton of your task (every "
                     f"method raises NotImplementedError); fill it in, then: kops train")
    emit({"config": str(path), "files": [str(p) for p in written], "task": task}, as_json, "\n".join(lines))




def _gitignore(folder: Path) -> list[Path]:
    """Add what kops writes (tracking store, artifacts, staging) to ``folder/.gitignore``; [] when all are there."""
    from kaggleops.config import GITIGNORED

    path = folder / ".gitignore"
    text = path.read_text() if path.is_file() else ""
    missing = [p for p in GITIGNORED if p not in text.splitlines()]
    if not missing:
        return []
    head = text if not text or text.endswith("\n") else text + "\n"
    path.write_text(head + "# kops: tracking store, artifacts, staging\n" + "\n".join(missing) + "\n")
    return [path]


@app.command()
def demo(
    workdir: Path = typer.Option(None, help="Fresh folder to work in (default: a new temporary folder)."),
    epochs: int = typer.Option(None, min=1, help="Training epochs (default: the task's own)."),
    fold: list[int] = typer.Option([0], help="Fold(s) to train (of 5)."),
    competition: str = typer.Option(None, help="A bundled competition, e.g. digit-recognizer (default: the "
                                               "default competition)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run the whole loop offline: emulator → train → publish → push-kernel → submit → scores."""
    from kaggleops.stages.demo import COMPETITION, run_demo

    summary = run_demo(workdir, epochs=epochs, folds=fold, competition=competition or COMPETITION,
                       echo=lambda stage, line: hint(f"✓ {stage:<12} {line}"))
    human = "\n".join(f"{k:>18}: {v}" for k, v in summary.items())
    workdir = shlex.quote(str(summary["workdir"]))
    emit(summary, as_json, f"kops demo finished\n{human}\nLook at the runs: cd {workdir} && kops ui")
