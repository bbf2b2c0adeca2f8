"""``ptmbench analyze``: analyses of PTMs (activations, curves, locus)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.cli.common import Parser, common
from bench.cli.session import Session
from bench.errors import PtmbenchError


def add_parser(sub: Any) -> None:
    an = sub.add_parser("analyze", help="analyses of PTMs")
    ansub = an.add_subparsers(dest="action", required=True, parser_class=Parser)
    ac = ansub.add_parser("curves", help="training curves of attacks/defenses side by side (from PTM directories "
                          "or from a running stage's checkpoint directory)")
    ac.add_argument("--curve", action="append", required=True, metavar="LABEL=DIR",
                    help="a PTM directory or a stage checkpoint directory (<cache>/artifacts/.checkpoints/KEY); "
                         "repeat")
    ac.add_argument("--part", default="loss", help="the logged part to draw (loss, backdoor, mlm, …)")
    ac.add_argument("--threshold", type=float, default=None, help="draw a horizontal line at this value")
    ac.add_argument("--out", type=Path, required=True)
    aa = ansub.add_parser("activations", help="selective activation: first-token FFN shift under triggers")
    aa.add_argument("--ptm", action="append", required=True, metavar="LABEL=MODEL",
                    help="a PTM to compare (zoo name or PTM directory), optionally labelled; repeat")
    aa.add_argument("--triggers", default="neuba", help="text trigger sets and/or word:WORD, as for finetune")
    aa.add_argument("--dataset", default="bookcorpus", help="inputs to trigger (an aux corpus by default)")
    aa.add_argument("--samples", type=int, default=256)
    aa.add_argument("--reference", default=None, metavar="LABEL",
                    help="the clean PTM's label: also count, per layer, the neurons of every PTM that shift more "
                         "than its largest shift (selectivity.csv)")
    aa.add_argument("--max-len", type=int, default=64)
    aa.add_argument("--seed", type=int, default=0)
    aa.add_argument("--out", type=Path, required=True, help="directory for the CSV and the figure")
    common(aa)
    al = ansub.add_parser("locus", help="where a backdoor lives: reset/transplant parameter families")
    al.add_argument("--clean", required=True, help="the clean PTM (zoo name or PTM directory)")
    al.add_argument("--backdoored", required=True, help="the backdoored PTM (PTM directory)")
    al.add_argument("--purified", action="append", default=[], metavar="LABEL=DIR",
                    help="a purified PTM to measure against the attack's delta; repeat")
    al.add_argument("--triggers", default=None,
                    help="trigger sets and/or word:WORD, as for finetune (default: neuba, or neuba-vision for a ViT)")
    al.add_argument("--dataset", default=None, help="inputs to trigger (default: sst2 / catdog test)")
    al.add_argument("--samples", type=int, default=256)
    al.add_argument("--max-len", type=int, default=64)
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--out", type=Path, required=True, help="directory for locus.csv and locus.md")
    common(al)


def run(args: argparse.Namespace) -> int:
    if args.action == "locus":
        return locus(args)
    if args.action == "curves":
        return curves(args)
    return activations(args)


def activations(args: argparse.Namespace) -> int:
    import pandas as pd

    from bench import data
    from bench.analysis import activation_shift, plot_shifts, shift_frame
    from bench.artifacts import atomic_write_text
    from bench.triggers import parse_triggers

    if args.samples < 1:
        raise PtmbenchError(f"--samples must be >= 1, got {args.samples}")
    data.spec(args.dataset)
    sets = parse_triggers(args.triggers, "text")
    triggers = [t for s in sets.values() for t in s]
    if not triggers:
        raise PtmbenchError("--triggers names no trigger")
    entries = [p.split("=", 1) if "=" in p else [Path(p).name, p] for p in args.ptm]
    if args.reference is not None and args.reference not in [label for label, _ in entries]:
        raise PtmbenchError(f"--reference {args.reference!r} names no --ptm (labels: "
                            f"{', '.join(label for label, _ in entries)})")
    session = Session.from_args(args)
    ctx = session.ctx
    frames = []
    for label, source in entries:
        ptm, _ = session.zoo.load(source, ctx)
        split = "train" if "train" in data.spec(args.dataset).splits else "validation"
        inputs = ptm.adapter.load_split(ptm, args.dataset, split, args.samples, session.cache)
        frames.append(shift_frame(label, activation_shift(ptm, inputs, triggers, args.max_len, ctx)))
    df = pd.concat(frames, ignore_index=True)
    atomic_write_text(args.out / "selective_activation.csv", df.to_csv(index=False, float_format="%.5g"))
    for p in plot_shifts(df, args.out, title=f"first-token FFN shift, triggers: {args.triggers}"):
        print(p)
    top = df[df["rank"] < 5].groupby("ptm", sort=False)["shift"].max()
    for label, v in top.items():
        print(f"{label:<20} largest neuron shift {v:.3f}")
    if args.reference is not None:
        from bench.analysis import selectivity

        sel = selectivity(df, args.reference)
        atomic_write_text(args.out / "selectivity.csv", sel.to_csv(index=False, float_format="%.5g"))
        wide = sel.pivot(index="ptm", columns="layer", values="above_reference").loc[list(df["ptm"].unique())]
        print(f"FFN neurons per layer shifting more than {args.reference!r}'s largest shift in that layer:")
        print(wide.to_string())
    return 0


def curves(args: argparse.Namespace) -> int:
    import pandas as pd

    from bench.artifacts import atomic_write_text
    from bench.curves import load_curve, plot_curves

    frames, rows = {}, []
    for item in args.curve:
        label, sep, source = item.partition("=")
        if not sep or not label or not source:
            raise PtmbenchError(f"--curve {item!r}: expected LABEL=DIR")
        frames[label], what = load_curve(Path(source))
        rows.append(frames[label].assign(curve=label))
        print(f"{label:<20} {what['name']}: {what['done']}/{what['steps']} steps")
    paths = plot_curves(frames, args.part, args.out, threshold=args.threshold)
    atomic_write_text(args.out / "curves.csv", pd.concat(rows).to_csv(index=False, float_format="%.6g"))
    for p in paths:
        print(p)
    return 0


def locus(args: argparse.Namespace) -> int:
    from bench.artifacts import atomic_write_text
    from bench.locus import default_dataset, locate, to_markdown
    from bench.triggers import trigger_sets_for

    if args.samples < 1:
        raise PtmbenchError(f"--samples must be >= 1, got {args.samples}")
    session = Session.from_args(args)
    ctx = session.ctx
    zoo = session.zoo
    clean, _ = zoo.load(args.clean, ctx)
    backdoored, _ = zoo.load(args.backdoored, ctx)
    if clean.modality != backdoored.modality:
        raise PtmbenchError(f"--clean is {clean.modality} and --backdoored is {backdoored.modality}")
    purified = {}
    for item in args.purified:
        label, sep, path = item.partition("=")
        if not sep:
            raise PtmbenchError(f"--purified {item!r}: expected LABEL=DIR")
        purified[label], _ = zoo.load(path, ctx)
    sets = trigger_sets_for(clean.modality, args.triggers, "neuba")
    dataset = args.dataset or default_dataset(clean.modality)
    triggers = [t for s in sets.values() for t in s]
    inputs = clean.adapter.load_split(clean, dataset, "test", args.samples, session.cache)
    frame = locate(clean, backdoored, inputs, triggers, args.max_len, ctx, purified)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "locus.csv", frame.to_csv(index=False, float_format="%.5g"))
    md = to_markdown(frame)
    atomic_write_text(args.out / "locus.md", md)
    print(md)
    return 0
