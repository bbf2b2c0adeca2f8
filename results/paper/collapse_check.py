"""Flag collapsed cells (the fine-tuned classifier predicts the majority class for every clean input) and
recompute the headline without them.

A cell whose CACC is within 0.5 points of its test split's majority-label share almost surely predicts one
class everywhere; its AASR then counts every non-majority sample as "flipped" to the majority class whatever
the trigger, so it is no measurement of a backdoor.  Usage (writes next to the store):

    python results/paper/collapse_check.py results/paper/text
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pandas as pd

from bench.data import load_split
from bench.records import markdown_table


def majority_share(dataset: str, n_test: int) -> float:
    split = load_split(dataset, "test", max_samples=n_test)
    counts = collections.Counter(split["label"])
    return max(counts.values()) / sum(counts.values())


def main(store: Path) -> None:
    cells = pd.read_csv(store / "cells.csv")
    shares = {(d, n): majority_share(d, int(n)) for d, n in cells[["dataset", "n_test"]].drop_duplicates().values}
    cells["majority_share"] = [shares[(d, n)] for d, n in cells[["dataset", "n_test"]].values]
    cells["collapsed"] = cells["cacc"] <= cells["majority_share"] + 0.005
    flagged = cells[cells["collapsed"]].drop_duplicates(["model", "attack", "defense", "dataset", "seed"])
    keys = ["model", "attack", "defense", "triggers"]
    rows = []
    for k, g in cells.groupby(keys):
        ok = g[~g["collapsed"]]
        rows.append({**dict(zip(keys, k)),
                     "avg AASR, all datasets": round(100 * g["aasr"].mean(), 1),
                     "datasets kept": "+".join(sorted(ok["dataset"].unique())),
                     "avg AASR, collapsed cells out": round(100 * ok["aasr"].mean(), 1) if len(ok) else None,
                     "avg CACC, collapsed cells out": round(100 * ok["cacc"].mean(), 1) if len(ok) else None})
    out = ["# Collapsed cells (CACC within 0.5 points of the test split's majority-label share)\n",
           f"Command: `python results/paper/collapse_check.py {store}`\n",
           markdown_table(flagged[["model", "attack", "defense", "dataset", "seed", "cacc", "majority_share",
                                   "aasr"]].round(3)),
           "\n# Averages with and without them (seed-mean over all cells of each group)\n",
           markdown_table(pd.DataFrame(rows))]
    (store / "collapse.md").write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
