"""``ptmbench data``: the offline data mirror (list, verify)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.cli.common import Parser
from bench.errors import PtmbenchError


def add_parser(sub: Any) -> None:
    d = sub.add_parser("data", help="the offline data mirror")
    dsub = d.add_subparsers(dest="action", required=True, parser_class=Parser)
    dsub.add_parser("list", help="registered datasets with splits and classes")
    v = dsub.add_parser("verify", help="check mirror files against MANIFEST.json sha256 sums")
    v.add_argument("names", nargs="*")
    v.add_argument("--force", action="store_true", help="re-hash even files verified before")


def run(args: argparse.Namespace) -> int:
    from bench import data

    if args.action == "list":
        for d in data.describe():
            splits = ", ".join(f"{k} {v if v is not None else '?'}" for k, v in d["splits"].items())
            print(f"{d['name']:<14} {d['modality']:<6} {d['role']:<10} classes={d['num_classes']!s:<4} {splits}")
        return 0
    rows = data.verify(args.names or None, force=args.force)
    bad = [r for r in rows if not r[2].startswith("ok")]
    for name, f, status in rows:
        print(f"{status:<12} {name:<14} {f}")
    if bad:
        raise PtmbenchError(f"{len(bad)} mirror file(s) failed verification (first: {bad[0][1]}: {bad[0][2]}); "
                            "restore them from the data bundle")
    return 0
