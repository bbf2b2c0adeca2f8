"""``ptmbench table``: aggregate a results store's records into cells.csv and mean ± std tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    t = sub.add_parser("table", help="aggregate records into cells.csv and mean ± std tables")
    t.add_argument("results", type=Path, help="results store directory (holding records/)")
    t.add_argument("--out", type=Path, default=None, help="where to write tables (default: the store)")


def run(args: argparse.Namespace) -> int:
    from bench.records import ResultsStore, write_tables

    store = ResultsStore(args.results)
    records = store.load()
    paths = write_tables(records, args.out or args.results)
    print(paths["summary_md"].read_text())
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0
