"""``ptmbench export``: a PTM as a directory plain transformers or timm loads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.cli.common import common
from bench.cli.session import Session


def add_parser(sub: Any) -> None:
    ex = sub.add_parser("export", help="write a PTM as a directory plain transformers (AutoModelForMaskedLM, "
                        "AutoModel, AutoTokenizer) or timm loads")
    ex.add_argument("model", help="zoo name, PTM directory, model directory or hub id")
    ex.add_argument("--out", type=Path, required=True, help="output directory (must be new or empty)")
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    common(ex)


def run(args: argparse.Namespace) -> int:
    from bench.export import run_export

    session = Session.from_args(args)
    digests = run_export(args.model, args.out, args.force, session.ctx, session.cache)
    for name, digest in digests.items():
        print(f"{digest}  {args.out / name}")
    print(f"exported {args.model} to {args.out}")
    return 0
