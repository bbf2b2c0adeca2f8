"""``ptmbench run``: run a matrix (a YAML file or a built-in name) and print its table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.cli.common import DETERMINISTIC_HELP, REFERENCE_PATHS_HELP, checkpoint_flag
from bench.cli.session import Session, checkpoint_seconds

RUNS_DIR = Path("runs")  # default parent of `ptmbench run` results stores (gitignored)


def add_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="run a matrix (YAML file or a built-in name from bench/configs: demo, "
                         "paper-text-s0, …) and print its table")
    r.add_argument("matrix", help="matrix YAML file or built-in name")
    r.add_argument("--results", type=Path, default=None, help=f"results store (default {RUNS_DIR}/<matrix name>; "
                   "the committed stores under results/ are written only when named here)")
    r.add_argument("--compare", type=Path, default=None, metavar="REFERENCE",
                   help="after the run, print each cell next to the same cell of the results directory REFERENCE "
                        "(e.g. results/demo) with the difference, as 'ptmbench compare' does")
    r.add_argument("--executor", choices=("local", "ray"), default="local")
    r.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    r.add_argument("--workers", type=int, default=1, help="local worker processes")
    r.add_argument("--dry-run", action="store_true", help="print the stage DAG and what is cached; run nothing")
    r.add_argument("--only", action="append", metavar="KEY=V[,V]",
                   help="run a slice: the cells whose model/attack/defense/dataset/seed match (repeatable; an "
                        "attack or defense matches by its label or registry name); "
                        "the tables still cover every record in the results store")
    r.add_argument("--cache", type=Path, default=None, help="artifact and token cache (default $PTMBENCH_CACHE "
                   "or ~/.cache/ptmbench)")
    r.add_argument("--device", default=None, help="override the matrix's device")
    r.add_argument("--precision", default=None, help="override the matrix's precision (fp32, bf16, auto)")
    r.add_argument("--reference-paths", action="store_true", help=REFERENCE_PATHS_HELP + " (fp32 whatever the "
                   "matrix's precision)")
    r.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    r.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    checkpoint_flag(r)


def run(args: argparse.Namespace) -> int:
    from bench.matrix import SKIP, TODO, is_done, load_matrix, parse_only, plan, select, stage_status
    from bench.records import ResultsStore, write_tables
    from bench.runner import LocalExecutor, RayExecutor, execute
    from bench.stages import StageEnv

    only = parse_only(args.only or [])
    every_s = checkpoint_seconds(args)
    spec = load_matrix(args.matrix)
    device = args.device or spec.device
    # --reference-paths: fp32 whatever the matrix says; an explicit --precision bf16 is refused
    asked = args.precision or ("auto" if args.reference_paths else spec.precision)
    session = Session.from_args(args, device=device, precision=asked)
    run_ctx = session.ctx
    precision = run_ctx.precision
    cache = session.cache
    store = session.store
    results = ResultsStore(args.results or RUNS_DIR / spec.name)
    results.check_writable()
    results.check_regime(run_ctx.regime)
    if args.compare is not None:
        from bench.compare import load_records

        load_records(args.compare, "--compare")  # a missing or empty reference fails before any work
    nodes = select(plan(spec, store, run_ctx.regime), only)
    # pruned from the cells up: stages whose cells are all recorded are skipped, neither checked nor built
    status = stage_status(nodes, lambda n: is_done(n, store, results))
    done = lambda n: status[n.key] != TODO  # noqa: E731
    if args.dry_run:
        from bench.checkpoint import describe, progress

        for n in nodes:
            mark = f"{status[n.key]:<6}"
            part = None if done(n) else progress(store.checkpoint_dir(n.key))
            at = f"  (partial: {describe(part)})" if part else ""
            print(f"[{mark}] {n.stage:<8} {n.label:<55} {n.key}" + (f"  <- {', '.join(n.deps)}" if n.deps else "")
                  + at)
        if SKIP in status.values():
            print("[skip  ]: every cell below this stage is recorded, so it is neither checked nor built")
        return 0
    # a Ray task sees a GPU only when it asks for one (Ray hides the others through CUDA_VISIBLE_DEVICES)
    gpus = 1.0 if device.startswith("cuda") else 0.0
    executor = RayExecutor(args.address, gpus_per_task=gpus) if args.executor == "ray" else LocalExecutor(args.workers)
    env = StageEnv(store=str(store.root), results=str(results.root), cache=str(cache), device=device,
                   precision=precision, progress=not args.no_progress, reference_paths=args.reference_paths,
                   checkpoint_every_s=every_s, deterministic=args.deterministic)
    store.clean_tmp()
    for n in nodes:  # report what is recomputed because it was altered or cut short
        if n.stage != "cell" and status[n.key] == TODO and store.path(n.key).exists():
            print(f"artifact {n.key} is corrupt or incomplete (sha256 mismatch or no meta.json); recomputing",
                  file=sys.stderr)
    summary = execute(nodes, env, executor, done, progress=not args.no_progress)
    records = results.load()
    paths = write_tables(records, results.root)
    from bench.plots import plot_all
    from bench.records import cells_frame, terminal_table, with_majority_share

    plot_all(cells_frame(with_majority_share(records)), results.root / "plots")
    print(terminal_table(paths))
    skipped = f", {summary['skipped']} not needed" if summary["skipped"] else ""
    print(f"{summary['ran']} stages ran, {summary['cached']} cached{skipped}, {summary['wall_s']:.0f}s; "
          f"tables in {results.root}/")
    if args.compare is not None:
        from bench.compare import compare_stores

        print(f"\n{compare_stores(results.root, args.compare)}", end="")
    return 0
