"""The organizer's scoring program: compares predictions with the reference labels.

Writes ../output/scores.json ({"r2": ..., "rmse": ...}) and prints the score. Fails with a clear
message when the predictions are missing or incomplete.
"""

import csv
import json
import math
import sys
from pathlib import Path


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


predictions_file = Path("../inputs/predictions/predictions.csv")
labels_file = Path("../inputs/reference/labels.csv")
if not predictions_file.exists():
    sys.exit("no predictions.csv in the submission's output")
predicted = {r["id"]: float(r["y"]) for r in read_csv(predictions_file)}
truth = {r["id"]: float(r["y"]) for r in read_csv(labels_file)}
missing = sorted(set(truth) - set(predicted))
if missing:
    sys.exit(f"predictions missing for ids {', '.join(missing[:5])}")

mean = sum(truth.values()) / len(truth)
ss_res = sum((truth[i] - predicted[i]) ** 2 for i in truth)
ss_tot = sum((y - mean) ** 2 for y in truth.values())
scores = {"r2": round(1 - ss_res / ss_tot, 4), "rmse": round(math.sqrt(ss_res / len(truth)), 4)}
Path("../output/scores.json").write_text(json.dumps(scores))
print(f"score: r2={scores['r2']} rmse={scores['rmse']}")
