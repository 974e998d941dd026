"""Make the bundled demand-forecasting competition: a small daily time series served through an evaluation API.

The shape of Kaggle's forecasting competitions since 2024 (no submission.csv; a gateway serves the hidden test set
one time step per call and reveals the previous step's answers in the next call, then scores
``submission.parquet``): six series of daily demand driven by two known features and yesterday's demand.

* ``train.csv``      row_id, date_id, series_id, x0, x1, target: dates 0..79, series 0..5 (480 rows)
* ``test.csv``       the public mock test the local gateway serves: dates 77..79 of train, without ``target``
* ``lags.csv``       per test date, the previous date's demand per series: date_id, series_id, target_lag_1
* ``hidden/test.csv``, ``hidden/lags.csv``  the hidden test (dates 80..99; a seventh series opens on date 90)
                     that only the gateway sees on the rerun
* ``solution.csv``   hidden: row_id, target, Usage, in the gateway's order (even positions public, odd private)
* ``kaggle_evaluation/``  the competition's evaluation API (gateway + ``DemandInferenceServer``)
* ``competition.json``    how the emulator serves and scores it (see ``kaggleops/emulator/competition_folder.py``)

Deterministic (Python's own ``random`` with a fixed seed)::

    python datasets/demand-forecasting/make_competition.py            # rewrites the files beside it
    python datasets/demand-forecasting/make_competition.py --out DIR  # somewhere else (without kaggle_evaluation/)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20241001
N_SERIES, N_TRAIN, N_TEST, NEW_SERIES_FROM = 6, 80, 20, 10  # the 7th series opens on test day 10
MOCK_DATES = 3
SEED_JSON = {
    "title": "Demand forecasting (a daily series through an evaluation API)", "metric": "rmse",
    "id_column": "row_id", "target_columns": ["target"], "kind": "code",
    "files": ["train.csv", "test.csv", "lags.csv", "kaggle_evaluation"], "output_file": "submission.parquet",
    "evaluation": {"gateway": "kaggle_evaluation.demand_gateway:DemandGateway",
                   "data_paths": ["hidden/test.csv", "hidden/lags.csv"]},
}


def simulate(rng: random.Random) -> list[dict[str, object]]:
    """Every (date, series) row with its demand: 0.6 x yesterday + 1.5 x0 - 0.8 x1 + the series' level + noise."""
    levels = [rng.uniform(2.0, 6.0) for _ in range(N_SERIES + 1)]
    last = list(levels)
    rows = []
    for date in range(N_TRAIN + N_TEST):
        for series in range(N_SERIES + 1):
            if series == N_SERIES and date < N_TRAIN + NEW_SERIES_FROM:
                continue
            x0, x1 = round(rng.gauss(0, 1), 4), round(rng.uniform(0, 2), 4)
            target = 0.6 * last[series] + 0.4 * levels[series] + 1.5 * x0 - 0.8 * x1 + rng.gauss(0, 0.3)
            last[series] = target
            rows.append({"row_id": f"{date}_{series}", "date_id": date, "series_id": series, "x0": x0, "x1": x1,
                         "target": round(target, 4)})
    return rows


def lags_for(rows: list[dict[str, object]], dates: list[int]) -> list[list[object]]:
    """For each date, the demand of the date before it per series (what the gateway reveals with that date)."""
    by_date: dict[int, list[dict[str, object]]] = {}
    for r in rows:
        by_date.setdefault(int(r["date_id"]), []).append(r)  # type: ignore[arg-type]
    return [[d, r["series_id"], r["target"]] for d in dates for r in by_date.get(d - 1, [])]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make(out: Path) -> dict[str, int]:
    """Write the data files into ``out``; returns row counts."""
    rows = simulate(random.Random(SEED))
    train = [r for r in rows if int(r["date_id"]) < N_TRAIN]  # type: ignore[arg-type]
    hidden = [r for r in rows if int(r["date_id"]) >= N_TRAIN]  # type: ignore[arg-type]
    mock = [r for r in train if int(r["date_id"]) >= N_TRAIN - MOCK_DATES]  # type: ignore[arg-type]
    features = ["row_id", "date_id", "series_id", "x0", "x1"]
    lag_header = ["date_id", "series_id", "target_lag_1"]
    write_csv(out / "train.csv", [*features, "target"], [[r[c] for c in [*features, "target"]] for r in train])
    write_csv(out / "test.csv", features, [[r[c] for c in features] for r in mock])
    write_csv(out / "lags.csv", lag_header, lags_for(rows, list(range(N_TRAIN - MOCK_DATES, N_TRAIN))))
    write_csv(out / "hidden" / "test.csv", features, [[r[c] for c in features] for r in hidden])
    write_csv(out / "hidden" / "lags.csv", lag_header, lags_for(rows, list(range(N_TRAIN, N_TRAIN + N_TEST))))
    write_csv(out / "solution.csv", ["row_id", "target", "Usage"],
              [[r["row_id"], r["target"], "Public" if i % 2 == 0 else "Private"] for i, r in enumerate(hidden)])
    (out / "competition.json").write_text(json.dumps(SEED_JSON, indent=2) + "\n", encoding="utf-8")
    return {"train": len(train), "test": len(mock), "hidden": len(hidden)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: beside this script)")
    counts = make(parser.parse_args().out)
    print(f"train.csv {counts['train']} rows, public test.csv {counts['test']} rows, "
          f"hidden test {counts['hidden']} rows")


if __name__ == "__main__":
    main()
