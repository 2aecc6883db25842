"""A participant's submission with a bug: it reads a column that does not exist (expected to fail)."""

import csv
from pathlib import Path


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


print("loading training data...", flush=True)
rows = list(read_csv(Path("../inputs/data") / "train.csv"))
features = [float(r["x2"]) for r in rows]  # KeyError: 'x2'
