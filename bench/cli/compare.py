"""``ptmbench compare``: two results directories cell by cell (CACC / AASR / MASR and the difference)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    cm = sub.add_parser("compare", help="two results directories cell by cell: CACC / AASR / MASR of each and the "
                        "difference")
    cm.add_argument("run", type=Path, help="results directory of a run (holding records/)")
    cm.add_argument("reference", type=Path, help="results directory to compare with, e.g. results/demo")


def run(args: argparse.Namespace) -> int:
    from bench.compare import compare_stores

    print(compare_stores(args.run, args.reference), end="")
    return 0
