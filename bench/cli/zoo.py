"""``ptmbench zoo``: the model zoo (list, build)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.cli.common import Parser, checkpoint_flag, common
from bench.cli.session import Session
from bench.errors import PtmbenchError


def add_parser(sub: Any) -> None:
    z = sub.add_parser("zoo", help="the model zoo")
    zsub = z.add_subparsers(dest="action", required=True, parser_class=Parser)
    zsub.add_parser("list", help="registered models")
    zb = zsub.add_parser("build", help="build (or find cached) a model and print its report")
    zb.add_argument("name")
    zb.add_argument("--report", type=Path, default=None, help="also write the build report as JSON here")
    zb.add_argument("--rebuild", action="store_true",
                    help="for models with committed weights (vit-tiny-tin32): retrain them from scratch")
    zb.add_argument("--out", type=Path, default=None,
                    help="with --rebuild: where to write the weights (default: the committed location)")
    common(zb)
    checkpoint_flag(zb)


def run(args: argparse.Namespace) -> int:
    from bench.registry import get, names

    if args.action == "list":
        for n in names("model"):
            s = get("model", n)
            print(f"{n:<20} {s.modality:<6} {s.family:<8} {s.description}")
        return 0
    from bench.artifacts import atomic_write_text

    spec = get("model", args.name)
    session = Session.from_args(args)
    if args.rebuild or args.out:
        if spec.rebuild is None:
            raise PtmbenchError(f"--rebuild: model {args.name!r} has no committed weights; "
                                f"'ptmbench zoo build {args.name}' builds and caches it")
        report = spec.rebuild(session.zoo, session.ctx, args.out)
    else:
        ptm, key = session.zoo.load(args.name, session.ctx)
        report = {"model": args.name, "key": key, "family": ptm.family, "info": ptm.info}
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.report:
        atomic_write_text(args.report, text + "\n")
    return 0
