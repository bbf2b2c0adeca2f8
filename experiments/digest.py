"""Numbers docs/results.md quotes from a results store that `ptmbench table` does not print as such.

    python experiments/digest.py results/paper/text

Per seed: average AASR over the datasets for no defense and RECIPE; per defense and attack: mean DER
(der.csv, over datasets and seeds) and the range of the defense stage's wall time (timing.csv)."""

import sys
from pathlib import Path

import pandas as pd


def main(store: Path) -> None:
    cells = pd.read_csv(store / "cells.csv")
    own = cells[(cells.attack != "none") | (cells.triggers == "neuba")]
    per_seed = (own[own.defense.isin(["none", "recipe"])]
                .pivot_table(index=["attack", "triggers", "defense"], columns="seed", values="aasr") * 100)
    print("average AASR over the datasets, per seed (%)\n", per_seed.round(1).to_string(), "\n")
    der = pd.read_csv(store / "der.csv")
    der = der[der.attack != "none"]
    table = der.pivot_table(index="defense", columns="attack", values="der")
    table["mean"] = der.groupby("defense").der.mean()
    print("mean DER over datasets and seeds\n", table.round(3).to_string(), "\n")
    timing = pd.read_csv(store / "timing.csv").dropna(subset=["defense_s"])
    stages = timing.drop_duplicates(["attack", "defense", "defense_s"])
    print("defense stage wall time, s\n", stages.groupby("defense").defense_s.agg(["min", "max"]).round(0).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
