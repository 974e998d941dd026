"""A submission file checked against the competition's ``sample_submission.csv`` before it costs a day's slot.

Kaggle scores a file submission only when it has the sample's columns, every id of the sample exactly once, and
no empty (NaN) cell; a numeric column must hold numbers. :func:`first_problem` names the first thing that would make
Kaggle answer ERROR, in one line, or returns None.

Example:
    >>> first_problem(Path("submission.csv"), Path("data/sample_submission.csv"))  # doctest: +SKIP
    '500 of the 1,000 ids of sample_submission.csv are missing (first: 17)'
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

NAN_TEXTS = {"", "nan", "NaN", "NAN", "null", "NULL", "None", "NA", "N/A", "#N/A"}


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        return header, [row for row in reader if row]


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _columns_problem(header: list[str], expected: list[str]) -> str | None:
    missing = [c for c in expected if c not in header]
    extra = [c for c in header if c not in expected]
    if missing or extra or len(header) != len(set(header)):
        return (f"its columns are {header}, sample_submission.csv has {expected}"
                + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else ""))
    return None


def _ids_problem(ids: list[str], expected: list[str]) -> str | None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            return f"id {i} appears more than once"
        seen.add(i)
    wanted = set(expected)
    missing = [i for i in expected if i not in seen]
    if missing:
        return (f"{len(missing):,} of the {len(expected):,} ids of sample_submission.csv are missing "
                f"(first: {missing[0]})")
    unknown = [i for i in ids if i not in wanted]
    if unknown:
        return f"{len(unknown):,} id(s) are not in sample_submission.csv (first: {unknown[0]})"
    return None


def _cells_problem(header: list[str], rows: list[list[str]], id_at: int) -> str | None:
    for col, name in enumerate(header):
        if col == id_at:
            continue
        empty = [r[id_at] for r in rows if len(r) <= col or r[col].strip() in NAN_TEXTS]
        if empty:
            return f"{len(empty):,} empty or NaN {name} cell(s) (Kaggle reads them as NaN; first id: {empty[0]})"
    return None


def _dtype_problem(header: list[str], rows: list[list[str]], sample_header: list[str],
                   sample_rows: list[list[str]], id_at: int) -> str | None:
    for name in sample_header:
        at, sample_at = header.index(name), sample_header.index(name)
        if at == id_at or not sample_rows or not all(_is_number(r[sample_at]) for r in sample_rows):
            continue
        bad = [r for r in rows if not _is_number(r[at])]
        if bad:
            return (f"column {name} is numeric in sample_submission.csv but holds {bad[0][at]!r} "
                    f"(id {bad[0][id_at]}; {len(bad):,} such cell(s))")
    return None


def first_problem(path: Path, sample: Path) -> str | None:
    """The first reason Kaggle would refuse ``path`` as a submission for the competition of ``sample``; None if
    none (columns, row count, id set, empty/NaN cells, numbers where the sample has numbers)."""
    sample_header, sample_rows = _read(sample)
    header, rows = _read(path)
    if not header:
        return "it is empty"
    id_column = sample_header[0]
    problem = _columns_problem(header, sample_header)
    if problem:
        return problem
    id_at = header.index(id_column)
    short = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if short:
        return f"line {short[0]} has a different number of cells than the header ({len(short):,} such line(s))"
    if len(rows) != len(sample_rows):
        problem = f"it has {len(rows):,} rows, sample_submission.csv has {len(sample_rows):,}"
        detail = _ids_problem([r[id_at] for r in rows], [r[0] for r in sample_rows])
        return f"{problem}: {detail}" if detail else problem
    return (_ids_problem([r[id_at] for r in rows], [r[0] for r in sample_rows])
            or _cells_problem(header, rows, id_at)
            or _dtype_problem(header, rows, sample_header, sample_rows, id_at))
