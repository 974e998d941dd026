"""Make the bundled Digit Recognizer competition from scikit-learn's ``load_digits`` (no download).

Kaggle's Digit Recognizer serves MNIST as ``label,pixel0..pixel783`` (28x28, values 0-255), a test.csv without
labels and a ``ImageId,Label`` submission (ImageId counting from 1), scored by accuracy. The same format here,
from the 1,797 real 8x8 handwritten digits that ship inside the scikit-learn wheel:

* ``train.csv``              1,197 rows: ``label,pixel0..pixel63``; pixels are the 0-16 originals scaled to 0-255
* ``test.csv``               600 rows: ``pixel0..pixel63`` (no label)
* ``sample_submission.csv``  ``ImageId,Label`` with ImageId 1..600 and Label 0
* ``solution.csv``           hidden: ``ImageId,Label,Usage``; the emulator scores rows at even positions
                             (ImageId 1, 3, 5, ...) as the public leaderboard and the others as private, and
                             ``Usage`` says the same for a human reader
* ``competition.json``       how the emulator serves and scores it (see ``kaggleops/emulator/competition_folder.py``)

Deterministic (a fixed seed and Python's own ``random``): running it again writes byte-identical files.
scikit-learn is a development-only dependency of kops; only this script needs it::

    python datasets/digit-recognizer/make_competition.py            # rewrites the files beside it
    python datasets/digit-recognizer/make_competition.py --out DIR  # somewhere else
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20120725  # Digit Recognizer opened on Kaggle in July 2012
N_TEST = 600
PIXELS = 64
SEED_JSON = {"title": "Digit Recognizer (8x8 digits from scikit-learn's load_digits)", "metric": "accuracy",
             "id_column": "ImageId", "target_columns": ["Label"], "kind": "file"}


def pixel(value: float) -> int:
    """A 0-16 intensity as a 0-255 one."""
    return min(255, round(float(value) * 255 / 16))


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make(out: Path) -> dict[str, int]:
    """Write the competition files into ``out``; returns row counts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [[pixel(v) for v in row] for row in digits.data]
    labels = [int(t) for t in digits.target]
    order = list(range(len(labels)))
    random.Random(SEED).shuffle(order)
    test_idx, train_idx = order[:N_TEST], order[N_TEST:]
    columns = [f"pixel{i}" for i in range(PIXELS)]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "train.csv", ["label", *columns], [[labels[i], *images[i]] for i in train_idx])
    write_csv(out / "test.csv", columns, [images[i] for i in test_idx])
    write_csv(out / "sample_submission.csv", ["ImageId", "Label"], [[n, 0] for n in range(1, N_TEST + 1)])
    write_csv(out / "solution.csv", ["ImageId", "Label", "Usage"],
              [[n, labels[i], "Public" if n % 2 == 1 else "Private"] for n, i in enumerate(test_idx, start=1)])
    (out / "competition.json").write_text(json.dumps(SEED_JSON, indent=2) + "\n", encoding="utf-8")
    return {"train": len(train_idx), "test": len(test_idx)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: beside this script)")
    counts = make(parser.parse_args().out)
    print(f"train.csv {counts['train']} rows, test.csv {counts['test']} rows")


if __name__ == "__main__":
    main()
