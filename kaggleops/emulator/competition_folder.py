"""Competition seeds: a folder in Kaggle's own format plus a ``competition.json`` saying how it is scored.

A bundled competition (``datasets/<slug>/``) or any folder a user prepares looks like::

    train.csv  test.csv  sample_submission.csv    the public files (``files``)
    solution.csv                                  hidden: id + target columns, rows in leaderboard order
    competition.json                              {"metric": "accuracy", "id_column": "ImageId",
                                                   "target_columns": ["Label"], "kind": "file"}

Keys of ``competition.json``: ``metric`` (a name from :mod:`kaggleops.emulator.metrics`), ``id_column``,
``target_columns``, ``kind`` (``file``: CSV uploads and notebook outputs are accepted, ``code``: notebook
outputs only, as in a Kaggle code competition), optional ``files`` (default the three public CSVs),
``solution`` (default ``solution.csv``), ``output_file`` (default ``submission.csv``), ``title`` and ``slug``
(default: the folder's name). A name in ``files`` may be a folder (served file by file, e.g. ``kaggle_evaluation``).
An evaluation-API competition adds ``evaluation``: ``{"gateway": "kaggle_evaluation.x_gateway:XGateway",
"data_paths": ["hidden/test.csv", ...]}``, the gateway its rerun runs (see ``rerun.py``) and the hidden files it
serves (not public); its ``output_file`` is ``submission.parquet``.
The emulator keeps a copy of each seed under ``<root>/seeds/<slug>/``, so a persistent emulator restarts with
the competitions it had.

Example:
    >>> from kaggleops.resources import bundled_competition
    >>> read_seed(bundled_competition("digit-recognizer")).metric
    'accuracy'
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .metrics import METRICS

SEED_FILE = "competition.json"
KINDS = ("file", "code")
DEFAULT_FILES = ("train.csv", "test.csv", "sample_submission.csv")
_KEYS = {"slug", "metric", "id_column", "target_columns", "kind", "files", "solution", "output_file", "title",
         "evaluation"}


class SeedError(ValueError):
    """A competition folder or its ``competition.json`` is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class CompetitionSeed:
    """How one competition is served and scored (the contents of ``competition.json`` plus its slug)."""

    slug: str
    metric: str
    id_column: str
    target_columns: tuple[str, ...]
    kind: str = "file"
    files: tuple[str, ...] = DEFAULT_FILES
    solution: str = "solution.csv"
    output_file: str = "submission.csv"
    title: str = ""
    evaluation: dict[str, object] | None = None  # gateway (module:Class), data_paths (hidden files)

    def to_json(self) -> dict[str, object]:
        """The ``competition.json`` contents (the slug is the folder name)."""
        data = asdict(self)
        data.pop("slug")
        if data["evaluation"] is None:
            data.pop("evaluation")
        return data


def read_seed(folder: Path, slug: str | None = None) -> CompetitionSeed:
    """Read and check ``folder/competition.json``; ``slug`` defaults to its ``slug`` key, else the folder name."""
    folder = Path(folder)
    path = folder / SEED_FILE
    if not path.is_file():
        raise SeedError(f"{path} not found; a competition folder needs one (keys: metric, id_column, "
                        "target_columns, kind)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SeedError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SeedError(f"{path} must hold a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise SeedError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    for key in ("metric", "id_column", "target_columns"):
        if not data.get(key):
            raise SeedError(f"{path}: key {key!r} is required")
    if data["metric"] not in METRICS:
        raise SeedError(f"{path}: unknown metric {data['metric']!r}; known: {', '.join(sorted(METRICS))}")
    if data.get("kind", "file") not in KINDS:
        raise SeedError(f"{path}: kind must be one of {', '.join(KINDS)}, not {data['kind']!r}")
    targets = data["target_columns"]
    if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
        raise SeedError(f"{path}: target_columns must be a list of column names")
    seed = CompetitionSeed(slug=slug or data.get("slug") or folder.name, metric=data["metric"],
                           id_column=str(data["id_column"]),
                           target_columns=tuple(targets), kind=data.get("kind", "file"),
                           files=tuple(data.get("files", DEFAULT_FILES)),
                           solution=data.get("solution", "solution.csv"),
                           output_file=data.get("output_file", "submission.csv"), title=data.get("title", ""),
                           evaluation=_evaluation(path, data.get("evaluation")))
    hidden = list(seed.evaluation["data_paths"]) if seed.evaluation else []  # type: ignore[call-overload]
    for name in (*seed.files, seed.solution, *hidden):
        if not (folder / name).exists() or (name not in seed.files and not (folder / name).is_file()):
            raise SeedError(f"{path} names {name}, which is not in {folder}")
    return seed


def _evaluation(path: Path, value: object) -> dict[str, object] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"gateway", "data_paths"}:
        raise SeedError(f"{path}: evaluation must be an object with keys gateway and data_paths")
    module, _, cls = str(value["gateway"]).partition(":")
    if not module or not cls.isidentifier():
        raise SeedError(f"{path}: evaluation.gateway must be `module:Class`, not {value['gateway']!r}")
    paths = value["data_paths"]
    if isinstance(paths, str) or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise SeedError(f"{path}: evaluation.data_paths must be a list of file names")
    return {"gateway": str(value["gateway"]), "data_paths": list(paths)}


def expand_files(folder: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """``{name: path}`` of the public files; a folder among ``names`` gives each file under it (``folder/sub/x``)."""
    out: dict[str, Path] = {}
    for name in names:
        path = Path(folder) / name
        if path.is_dir():
            out.update({p.relative_to(folder).as_posix(): p for p in sorted(path.rglob("*"))
                        if p.is_file() and "__pycache__" not in p.parts})
        else:
            out[name] = path
    return out


def read_solution(folder: Path, seed: CompetitionSeed) -> list[dict[str, str]]:
    """The solution rows, checked to hold the id and every target column."""
    path = Path(folder) / seed.solution
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in (seed.id_column, *seed.target_columns) if c not in header]
    if missing:
        raise SeedError(f"{path} lacks column(s) {', '.join(missing)}")
    if not rows:
        raise SeedError(f"{path} has no rows")
    return rows


def write_seed(folder: Path, seed: CompetitionSeed) -> None:
    """Write ``folder/competition.json`` for ``seed``."""
    (Path(folder) / SEED_FILE).write_text(json.dumps(seed.to_json(), indent=2) + "\n", encoding="utf-8")
