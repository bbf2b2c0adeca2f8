"""``ptmbench perf``: performance comparisons (compare: reference-style pipelines vs ptmbench's; memory: peak
resident memory of every stage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.cli.common import Parser, common
from bench.cli.session import Session
from bench.errors import PtmbenchError


def add_parser(sub: Any) -> None:
    pf = sub.add_parser("perf", help="performance comparisons")
    pfsub = pf.add_subparsers(dest="action", required=True, parser_class=Parser)
    pc = pfsub.add_parser("compare", help="reference-style pipelines (HF Trainer / BertForMaskedLM / per-trigger "
                          "re-tokenising) vs ptmbench's on the same model, data and seed: time, samples/s, peak RSS")
    pc.add_argument("--model", default="minilm-l6", help="zoo name, PTM directory or hub id (text)")
    pc.add_argument("--dataset", default="sst2", help="labelled text dataset")
    pc.add_argument("--max-train", type=int, default=2000, help="training samples for fine-tuning")
    pc.add_argument("--max-eval", type=int, default=None, help="validation/test samples (default: whole splits)")
    pc.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs (both pipelines)")
    pc.add_argument("--recipe-steps", type=int, default=100, help="RECIPE optimiser steps (both pipelines)")
    pc.add_argument("--triggers", default="neuba", help="text trigger sets and/or word:WORD, as for finetune")
    pc.add_argument("--seed", type=int, default=0)
    pc.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, e.g. OMP_NUM_THREADS)")
    pc.add_argument("--phases", default="finetune,recipe,triggers",
                    help="comma list of phases to run: finetune ((a) fine-tuning + CACC), recipe ((b)), triggers "
                         "((c); without finetune its classifier is fine-tuned untimed); default all three")
    pc.add_argument("--out", type=Path, default=Path("results/perf"), help="writes OUT/compare.md and OUT/compare.json")
    common(pc, reference_paths=False)  # the comparison runs both pipelines itself

    pm = pfsub.add_parser("memory", help="peak resident memory of every stage (attacks, defenses, a fine-tune + "
                          "evaluate cell) of a preset on one model, optimiser steps capped")
    pm.add_argument("--model", default="minilm-l6-mlm", help="zoo name or PTM directory")
    pm.add_argument("--preset", default="paper", help="preset of every stage (default: paper)")
    pm.add_argument("--steps", type=int, default=20, help="optimiser-step cap of every stage that has steps")
    pm.add_argument("--dataset", default=None, help="downstream dataset of the cell (default: sst2 / cifar10)")
    pm.add_argument("--skip", default="", help="comma list of attacks/defenses not to run")
    pm.add_argument("--out", type=Path, default=Path("results/perf"),
                    help="writes OUT/memory-MODEL-PRESET.md and .json")
    common(pm)


def run(args: argparse.Namespace) -> int:
    if args.action == "memory":
        return memory(args)
    return compare(args)


def compare(args: argparse.Namespace) -> int:
    from bench import data
    from bench.perf.compare import PerfOptions, parse_phases, run_compare
    from bench.perf.report import write_report
    from bench.records import ResultsStore
    from bench.triggers import parse_triggers
    from bench.zoo import model_label

    opts = PerfOptions(model=args.model, dataset=args.dataset, max_train=args.max_train, max_eval=args.max_eval,
                       epochs=args.epochs, recipe_steps=args.recipe_steps, triggers=args.triggers, seed=args.seed,
                       threads=args.threads, phases=parse_phases(args.phases))
    opts.validate()
    dspec = data.spec(args.dataset)  # unknown dataset -> error listing the known ones
    if dspec.modality != "text" or dspec.role != "downstream":
        raise PtmbenchError(f"dataset {args.dataset!r} is not a labelled text dataset; choose e.g. sst2")
    if not parse_triggers(args.triggers, "text"):
        raise PtmbenchError("--triggers names no trigger")
    ResultsStore(args.out).check_writable()
    data.check_splits(args.dataset)  # mirror present and intact
    session = Session.from_args(args)
    ctx = session.ctx
    ptm, _ = session.zoo.load(args.model, ctx)
    comp = run_compare(ptm, opts, ctx, model_label=model_label(args.model),
                       log=lambda s: print(f"[perf] {s}", file=sys.stderr, flush=True))
    comp.report["command"] = opts.command(args.out)
    md, js = write_report(comp.report, args.out)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    return 0


def memory(args: argparse.Namespace) -> int:
    from bench.perf.stage_memory import default_dataset, measure_stages, write_report
    from bench.records import ResultsStore
    from bench.registry import names
    from bench.zoo import model_label

    if args.steps < 1:
        raise PtmbenchError(f"--steps must be at least 1, got {args.steps}")
    ResultsStore(args.out).check_writable()
    session = Session.from_args(args)
    ctx = session.ctx
    ptm, _ = session.zoo.load(args.model, ctx)
    dataset = args.dataset or default_dataset(ptm.modality)
    label = model_label(args.model)
    skip = frozenset(x.strip() for x in args.skip.split(",") if x.strip())
    unknown = sorted(skip - set(names("attack")) - set(names("defense")))
    if unknown:
        raise PtmbenchError(f"--skip: {', '.join(unknown)} is not a registered attack or defense")
    report = measure_stages(ptm, label, args.preset, args.steps, dataset, ctx, session.cache,
                            log=lambda s: print(f"[memory] {s}", file=sys.stderr, flush=True), skip=skip)
    cmd = (f"ptmbench perf memory --model {args.model} --preset {args.preset} --steps {args.steps} "
           f"--dataset {dataset}{' --skip ' + ','.join(sorted(skip)) if skip else ''} --out {args.out}")
    md, js = write_report(report, args.out, cmd)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    return 0
