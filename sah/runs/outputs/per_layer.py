"""``per_layer.csv``: every completed configuration's figures on every layer of every scored
recording, in long format (one row per chain, trial, recording and layer):
``chain, trial, recording, layer, output_error, density``.

A configuration's ``output_error[<recording>]`` in ``trials.csv`` is the mean of its rows
for that recording, and its ``output_error`` the mean of those over the recordings (the
same for ``density``).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Dict, List

from sah.runs.outputs.trials import COMPLETED

COLUMNS = ("chain", "trial", "recording", "layer", "output_error", "density")


def per_layer_csv(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        if row["status"] != COMPLETED:
            continue
        for item in row.get("per_layer") or []:
            writer.writerow([row["chain"], row["trial"], item["recording"], item["layer"],
                             item["output_error"], item["density"]])
    return out.getvalue()
