"""``ptmbench plot``: ASR-vs-CACC and grouped AASR bars (PNG + SVG) from a results store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.errors import PtmbenchError


def add_parser(sub: Any) -> None:
    pl = sub.add_parser("plot", help="draw ASR-vs-CACC and grouped AASR bars (PNG + SVG) from a results store")
    pl.add_argument("results", type=Path, help="results store directory (holding records/)")
    pl.add_argument("--out", type=Path, default=None, help="where to write plots (default RESULTS/plots)")


def run(args: argparse.Namespace) -> int:
    from bench.plots import plot_all
    from bench.records import ResultsStore, cells_frame, with_majority_share

    paths = plot_all(cells_frame(with_majority_share(ResultsStore(args.results).load())),
                     args.out or args.results / "plots")
    if not paths:
        raise PtmbenchError(f"no triggered cells in {args.results}; nothing to plot")
    for p in paths:
        print(p)
    return 0
