"""``ptmbench finetune``: fine-tune a PTM on a dataset and score clean accuracy and triggers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.cli.common import DETERMINISTIC_HELP, common
from bench.cli.session import Session
from bench.errors import PtmbenchError


def add_parser(sub: Any) -> None:
    f = sub.add_parser("finetune", help="fine-tune a PTM on a dataset and score clean accuracy and triggers")
    f.add_argument("--model", required=True, help="zoo name, PTM directory or hub id")
    f.add_argument("--dataset", required=True,
                   help="registered name, a data file (.csv, .tsv, .jsonl, .parquet), a folder of train/validation/"
                        "test files or of images (root/[split/]class/*.png), or hf:NAME[:CONFIG]")
    f.add_argument("--text-column", default=None, help="your data's text column (default: text, sentence, content)")
    f.add_argument("--label-column", default=None, help="your data's label column (default: label, labels)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--preset", default="paper", help="downstream budget: paper, demo or smoke")
    f.add_argument("--triggers", default=None,
                   help="comma list of registered trigger sets (text: por, neuba, badpre; images: neuba-vision) "
                        "and literal text trigger words spelled word:WORD (e.g. por,word:cf); default: "
                        "por,neuba for text, neuba-vision for images")
    f.add_argument("--results", type=Path, default=Path("ptmbench-results"),
                   help="results store; records go to RESULTS/records/")
    f.add_argument("--epochs", type=float, default=None, help="override the preset's epochs")
    f.add_argument("--max-train", type=int, default=None, help="override the preset's training subset")
    f.add_argument("--force", action="store_true", help="recompute even if the record exists")
    f.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    common(f)


def run(args: argparse.Namespace) -> int:
    from bench import data
    from bench.finetune import get_preset
    from bench.records import ResultsStore
    from bench.stages import CellSpec, finetune_eval
    from bench.triggers import trigger_sets_for
    from bench.zoo import model_label

    args.dataset = data.dataset_name(args.dataset, args.text_column, args.label_column)
    dspec = data.spec(args.dataset)  # unknown dataset -> error listing the known ones
    if dspec.role != "downstream":
        raise PtmbenchError(f"dataset {args.dataset!r} is auxiliary (no labels to fine-tune on); "
                            "choose a downstream dataset")
    if args.epochs is not None and args.epochs <= 0:
        raise PtmbenchError(f"--epochs must be > 0, got {args.epochs}")
    if args.seed < 0:
        raise PtmbenchError(f"--seed must be >= 0, got {args.seed}")
    if args.max_train is not None and args.max_train < 1:
        raise PtmbenchError(f"--max-train must be >= 1, got {args.max_train}")
    modality = dspec.modality
    preset = get_preset(modality, args.preset, epochs=args.epochs, max_train=args.max_train)
    store = ResultsStore(args.results)
    store.check_writable()
    data.check_splits(args.dataset)  # mirror present and intact
    session = Session.from_args(args)
    ctx = session.ctx
    store.check_regime(ctx.regime)
    ptm, key = session.zoo.load(args.model, ctx)
    if ptm.modality != modality:
        raise PtmbenchError(f"model {args.model!r} is {ptm.modality} but dataset {args.dataset!r} is {dspec.modality}")
    trigger_sets = trigger_sets_for(modality, args.triggers, "por,neuba")
    model_name = model_label(args.model)
    cell = CellSpec(model=model_name, dataset=args.dataset, seed=args.seed, preset=preset, keys={"ptm": key})
    ident = cell.identity(ctx.regime)  # what its records will carry (and be found by)
    if not args.force and trigger_sets and all(data.has_current_record(store, ident.record_key(s), dspec)
                                               for s in trigger_sets):
        print(f"cached: records for {model_name} on {args.dataset} seed {args.seed} exist (use --force to redo)")
        return 0
    records = finetune_eval(ptm, cell, trigger_sets, ctx, session.cache)
    for rec in records:
        path = store.write(rec)
        print(f"record: {path}")
    print_records(records)
    return 0


def print_records(records: list[dict[str, Any]]) -> None:
    r0 = records[0]
    print(f"\n{r0['model']} on {r0['dataset']} (seed {r0['seed']}, preset {r0['preset']}, {r0['precision']}): "
          f"CACC {100 * r0['cacc']:.2f}%  [{r0['n_test']} test samples]")
    for r in records:
        if not r["per_trigger"]:
            continue
        print(f"  trigger set {r['triggers']}: AASR {100 * r['aasr']:.2f}%  MASR {100 * r['masr']:.2f}%  "
              f"C-ASR {100 * r['casr']:.2f}%  ALC {100 * r['alc']:.1f}%")
        w = max(10, *(len(t["trigger"]) for t in r["per_trigger"]))
        print(f"    {'trigger':<{w}} {'target':>6} {'ASR %':>7}")
        for t in r["per_trigger"]:
            print(f"    {t['trigger']:<{w}} {t['target']:>6} {100 * t['asr']:>7.2f}")
