"""`kops init --mlproject`: an MLflow Project (MLproject + python_env.yaml) whose entry point trains with kops."""

from __future__ import annotations

from pathlib import Path

MLPROJECT = """\
# MLflow Project written by `kops init --mlproject`: `mlflow run . -P fold=0` (or a git URL) trains with kops.
name: {name}

python_env: python_env.yaml

entry_points:
  main:
    parameters:
      fold: {{type: string, default: "0"}}
    command: "kops train --fold {{fold}}"
"""
PYTHON_ENV = """\
python: "3.11"
build_dependencies:
  - pip
dependencies:
  - torch==2.13.0
  - kaggleops
"""


def write_mlproject(folder: Path, name: str) -> list[Path]:
    """Write MLproject + python_env.yaml so `mlflow run` (also on a git URL) trains with kops."""
    written = []
    for filename, text in (("MLproject", MLPROJECT.format(name=name)), ("python_env.yaml", PYTHON_ENV)):
        path = folder / filename
        path.write_text(text)
        written.append(path)
    return written
