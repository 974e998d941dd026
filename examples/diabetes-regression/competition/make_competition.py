"""Make the example's competition files from scikit-learn's bundled diabetes data (442 patients, no download).

A Kaggle-style tabular regression: predict ``progression`` (a disease-progression score one year after baseline)
from ten baseline measurements; metric RMSE (lower is better).

* ``train.csv``              342 rows: ``id,age,sex,bmi,bp,s1..s6,progression``
* ``test.csv``               100 rows without ``progression``
* ``sample_submission.csv``  ``id,progression`` (the train mean)
* ``solution.csv``           hidden: ``id,progression,Usage`` (the emulator scores even rows as public)
* ``competition.json``       how the kops emulator serves and scores it

The features are scikit-learn's raw (unscaled) ones (``scaled=False``). Deterministic: a fixed seed and Python's
own ``random``. Only this script needs scikit-learn::

    python examples/diabetes-regression/competition/make_competition.py
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1975
N_TEST = 100
SEED_JSON = {"slug": "diabetes-progression", "title": "Diabetes progression (scikit-learn's load_diabetes)",
             "metric": "rmse", "id_column": "id", "target_columns": ["progression"], "kind": "file"}


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make(out: Path) -> None:
    """Write the competition files into ``out``."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    names = [str(n) for n in data.feature_names]
    rows = [[float(v) for v in row] for row in data.data]
    target = [float(t) for t in data.target]
    order = list(range(len(rows)))
    random.Random(SEED).shuffle(order)
    ids = {i: 1000 + n for n, i in enumerate(order)}
    test, train = order[:N_TEST], order[N_TEST:]
    mean = round(sum(target[i] for i in train) / len(train), 1)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "train.csv", ["id", *names, "progression"], [[ids[i], *rows[i], target[i]] for i in train])
    write_csv(out / "test.csv", ["id", *names], [[ids[i], *rows[i]] for i in test])
    write_csv(out / "sample_submission.csv", ["id", "progression"], [[ids[i], mean] for i in test])
    write_csv(out / "solution.csv", ["id", "progression", "Usage"],
              [[ids[i], target[i], "Public" if n % 2 == 0 else "Private"] for n, i in enumerate(test)])
    (out / "competition.json").write_text(json.dumps(SEED_JSON, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    make(parser.parse_args().out)
