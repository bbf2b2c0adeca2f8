"""``ptmbench purify``: one defense on any model, exported with a JSON report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.cli.common import common
from bench.cli.session import Session


def add_parser(sub: Any) -> None:
    pu = sub.add_parser("purify", help="run one defense on any model (zoo name, directory, hub id) and export the "
                        "purified model with a JSON report (purify.json)")
    pu.add_argument("model", help="zoo name, PTM directory, model directory or hub id")
    pu.add_argument("--defense", required=True, help="a registered defense (recipe, fp, …)")
    pu.add_argument("--preset", default="paper", help="the defense's preset: paper (reference), demo or smoke")
    pu.add_argument("--config", action="append", default=[], metavar="K=V",
                    help="override one setting of the defense's config (repeatable; YAML values)")
    pu.add_argument("--seed", type=int, default=0)
    pu.add_argument("--out", type=Path, required=True, help="output directory (must be new or empty)")
    pu.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    common(pu)


def run(args: argparse.Namespace) -> int:
    from bench.purify import parse_config, run_purify

    session = Session.from_args(args)
    report = run_purify(args.model, args.defense, args.preset, parse_config(args.config), args.out, args.force,
                        session.ctx, session.cache, command="ptmbench " + " ".join(sys.argv[1:]),
                        log=lambda s: print(f"[purify] {s}", file=sys.stderr, flush=True))
    norms = report["group_norms"]
    for g in norms["before"]:
        print(f"{g:<12} ‖W‖ {norms['before'][g]:>12.4f} -> {norms['after'][g]:>12.4f}")
    loss = report["losses"]
    if loss.get("loss_first") is not None:
        print(f"loss {loss['loss_first']:.4f} -> {loss['loss_last']:.4f}")
    print(f"purified {args.model} with {args.defense} ({args.preset}) in {report['wall_s']:.1f}s; "
          f"wrote {args.out} (report: {args.out / 'purify.json'})")
    return 0
