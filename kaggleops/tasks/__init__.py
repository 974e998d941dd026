"""Finding a competition's task: built-in tasks by slug, installed ones by entry point, the user's own by spec.

The interface a task implements is :mod:`kaggleops.task`. A task is named, in kops.yaml, by

- ``task: my_package.module:MyTask`` — an importable module: an installed package, or one in the folder of
  kops.yaml (appended to ``sys.path``, so an installed package of the same name wins);
- ``task: tasks/my_task.py:MyTask`` — a file in the user's repository, relative to kops.yaml. Its folder goes
  on ``sys.path`` first, so the file and its sibling modules import each other as top-level modules
  (``my_task``, ``helpers``), the same way they are installed inside the offline kernel;
- nothing: the competition slug picks a built-in task (:data:`BUILTIN`) or one an installed package registers
  under the ``kops.tasks`` entry-point group (``my-competition = my_package.module:MyTask``).

Importing this package imports no torch/transformers/pandas; a task's module is imported when it is loaded.

Example:
    >>> task = get_task("tweet-sentiment-extraction")
    >>> task.submission.id_column
    'textID'
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from kaggleops.errors import TaskLoadError
from kaggleops.schema import TASK_ENTRY_POINTS
from kaggleops.task import REQUIRED_MEMBERS, required_members

__all__ = ["BUILTIN", "DEFAULT_COMPETITION", "ENTRY_POINT_GROUP", "TaskLoadError", "get_task",
           "instantiate_task", "load_task", "split_spec", "task_for", "task_names", "task_spec"]

ENTRY_POINT_GROUP = TASK_ENTRY_POINTS
DEFAULT_COMPETITION = "tweet-sentiment-extraction"
"""The competition `kops init` and the demo use when none is named."""

BUILTIN: dict[str, str] = {
    "tweet-sentiment-extraction": "kaggleops.tasks.tse:TweetSentimentExtraction",
    "digit-recognizer": "kaggleops.tasks.digits:DigitRecognizer",
    "demand-forecasting": "kaggleops.tasks.demand:DemandForecast",
}
"""Competition slug → ``module:Class`` of the tasks shipped with kops (add a line to add one)."""


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    """Competition slugs with a known task (built in or registered by an installed package)."""
    return sorted({**_entry_points(), **BUILTIN})


def task_spec(competition: str) -> str | None:
    """The ``module:Class`` registered for ``competition`` (built-in first), or None."""
    return BUILTIN.get(competition) or _entry_points().get(competition)


def split_spec(spec: str) -> tuple[str, str]:
    """``(module or file, class name)`` of ``module:Class`` / ``path/file.py:Class``; TaskLoadError if malformed."""
    target, sep, cls = spec.rpartition(":")
    if not sep or not target or not cls.isidentifier():
        raise TaskLoadError(f"task {spec!r} is not of the form `package.module:Class` or `path/file.py:Class`")
    return target, cls


def is_file_spec(spec: str) -> bool:
    return split_spec(spec)[0].endswith(".py")


def import_task_module(spec: str, root: Path | None = None) -> tuple[Any, str]:
    """(module, class name) of ``spec``; a file spec puts its folder first on ``sys.path`` and imports its stem."""
    target, cls = split_spec(spec)
    if target.endswith(".py"):
        path = (Path(root or Path.cwd()) / target).resolve()
        if not path.is_file():
            raise TaskLoadError(f"task file {path} does not exist (task: {spec} in kops.yaml)")
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_name = path.stem
        loaded = sys.modules.get(module_name)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
            raise TaskLoadError(f"task file {path} is shadowed by an already imported module {module_name!r}; "
                                "rename the file")
    else:
        module_name = target
        folder = str(Path(root or Path.cwd()).resolve())
        if folder not in sys.path:  # a package in the project folder, not installed (installed ones win)
            sys.path.append(folder)
    try:
        return importlib.import_module(module_name), cls
    except ImportError as e:
        raise TaskLoadError(f"cannot import task {spec}: {type(e).__name__}: {e}") from None
    except Exception as e:  # an error while executing the user's module: still one line naming it
        raise TaskLoadError(f"importing task {spec} failed: {type(e).__name__}: {e}") from None


def instantiate_task(spec: str, root: Path | None = None) -> Any:
    """An instance of the class named by ``spec``, members unchecked (``kops check-task`` names each missing one)."""
    module, cls = import_task_module(spec, root)
    factory = getattr(module, cls, None)
    if factory is None:
        raise TaskLoadError(f"task module {module.__name__} has no {cls!r} (task: {spec})")
    try:
        task = factory()
    except NotImplementedError as e:
        raise TaskLoadError(f"task {spec}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's constructor failed: name it, not kops
        raise TaskLoadError(f"task {spec}: its constructor raised {type(e).__name__}: {e}") from None
    return task


def load_task(spec: str, root: Path | None = None) -> Any:
    """An instance of the task class named by ``spec`` (``root``: the folder of kops.yaml for file specs)."""
    task = instantiate_task(spec, root)
    missing = [a for a in REQUIRED_MEMBERS if a not in required_members(task)]
    if missing:
        raise TaskLoadError(f"task {spec} lacks {', '.join(missing)} (see kaggleops.task.Task)")
    return task


def get_task(name: str, root: Path | None = None) -> Any:
    """The task for a competition slug, or for a ``module:Class`` / ``file.py:Class`` spec.

    Raises TaskLoadError naming the known slugs when ``name`` is neither.

    Example:
        >>> get_task("tweet-sentiment-extraction").metric.name
        'jaccard'
    """
    if ":" in name:
        return load_task(name, root)
    spec = task_spec(name)
    if spec is None:
        raise TaskLoadError(f"Unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return load_task(spec, root)


def task_for(cfg: Any) -> Any:
    """The task of a loaded kops.yaml: ``task:`` (module:Class or file.py:Class, relative to kops.yaml), else the
    competition's; a ConfigError / UnknownCompetition (one line) when it cannot be loaded."""
    from kaggleops.errors import ConfigError, UnknownCompetition

    try:
        return get_task(cfg.task or cfg.competition, cfg.root)
    except TaskLoadError as e:
        if cfg.task:
            raise ConfigError(f"{e}.", "Fix `task:` in kops.yaml (module:Class or path/file.py:Class).") from None
        raise UnknownCompetition(f"{e}.", "Set `task:` in kops.yaml to your own task (kops init --competition "
                                 "SLUG writes a skeleton), or `competition:` to one with a built-in task.") from None
