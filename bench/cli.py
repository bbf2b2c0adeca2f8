"""The ``ptmbench`` command line.  Bad input is one line on stderr and exit code 2 (``--debug`` for the
traceback); nothing is written before the inputs have been checked."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.errors import PtmbenchError
from bench.quiet import quiet_libraries

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too; keep it short)
        raise PtmbenchError(f"{self.prog}: {message}")


RUNS_DIR = Path("runs")  # default parent of `ptmbench run` results stores (gitignored)

REFERENCE_PATHS_HELP = ("switch every fast path off, for a before/after timing: text batches padded to the max "
                        "length without length bucketing, full-vocabulary MLM logits, fp32, per-trigger "
                        "re-tokenised evaluation; artifacts and records are keyed apart from fast-path ones")


def _common(p: argparse.ArgumentParser, reference_paths: bool = True) -> None:
    p.add_argument("--cache", type=Path, default=None, help="artifact and token cache (default $PTMBENCH_CACHE "
                   "or ~/.cache/ptmbench)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", default="auto", help="fp32, bf16 (autocast), fp16 (autocast with a gradient "
                   "scaler; CUDA only) or auto (bf16 where the hardware has it; on older GPUs fp16; else fp32)")
    if reference_paths:
        p.add_argument("--reference-paths", action="store_true", help=REFERENCE_PATHS_HELP)
    p.add_argument("--progress", action="store_true", help="show progress bars")


def _checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=float, default=None, metavar="MINUTES",
                   help="save each training stage's whole state this often, so a killed run resumes from it "
                        "(default 5; 0: after every step)")


DETERMINISTIC_HELP = ("deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, "
                      "CUBLAS_WORKSPACE_CONFIG): bit-identical reruns on a GPU, at some speed; an op without a "
                      "deterministic kernel then stops the run (docs/gpu.md)")


def _checkpoint_seconds(args: argparse.Namespace) -> float:
    from bench.checkpoint import DEFAULT_EVERY_S

    minutes = getattr(args, "checkpoint_every", None)
    if minutes is None:
        return DEFAULT_EVERY_S
    if not minutes >= 0:
        raise PtmbenchError(f"--checkpoint-every: must be >= 0 minutes, got {minutes:g}")
    return minutes * 60


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ptmbench", description="Benchmark task-agnostic backdoors in pre-trained models.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("--allow-pickle", action="store_true",
                    help="load pickle checkpoints of upstream models, only via torch.load(weights_only=True)")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    d = sub.add_parser("data", help="the offline data mirror")
    dsub = d.add_subparsers(dest="action", required=True, parser_class=_Parser)
    dsub.add_parser("list", help="registered datasets with splits and classes")
    v = dsub.add_parser("verify", help="check mirror files against MANIFEST.json sha256 sums")
    v.add_argument("names", nargs="*")
    v.add_argument("--force", action="store_true", help="re-hash even files verified before")

    z = sub.add_parser("zoo", help="the model zoo")
    zsub = z.add_subparsers(dest="action", required=True, parser_class=_Parser)
    zsub.add_parser("list", help="registered models")
    zb = zsub.add_parser("build", help="build (or find cached) a model and print its report")
    zb.add_argument("name")
    zb.add_argument("--report", type=Path, default=None, help="also write the build report as JSON here")
    zb.add_argument("--rebuild", action="store_true",
                    help="for models with committed weights (vit-tiny-tin32): retrain them from scratch")
    zb.add_argument("--out", type=Path, default=None,
                    help="with --rebuild: where to write the weights (default: the committed location)")
    _common(zb)
    _checkpoint_flag(zb)

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
    _common(f)

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
    _checkpoint_flag(r)

    an = sub.add_parser("analyze", help="analyses of PTMs")
    ansub = an.add_subparsers(dest="action", required=True, parser_class=_Parser)
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
    _common(aa)
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
    _common(al)

    pl = sub.add_parser("plot", help="draw ASR-vs-CACC and grouped AASR bars (PNG + SVG) from a results store")
    pl.add_argument("results", type=Path, help="results store directory (holding records/)")
    pl.add_argument("--out", type=Path, default=None, help="where to write plots (default RESULTS/plots)")

    pf = sub.add_parser("perf", help="performance comparisons")
    pfsub = pf.add_subparsers(dest="action", required=True, parser_class=_Parser)
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
    _common(pc, reference_paths=False)  # the comparison runs both pipelines itself

    pm = pfsub.add_parser("memory", help="peak resident memory of every stage (attacks, defenses, a fine-tune + "
                          "evaluate cell) of a preset on one model, optimiser steps capped")
    pm.add_argument("--model", default="minilm-l6-mlm", help="zoo name or PTM directory")
    pm.add_argument("--preset", default="paper", help="preset of every stage (default: paper)")
    pm.add_argument("--steps", type=int, default=20, help="optimiser-step cap of every stage that has steps")
    pm.add_argument("--dataset", default=None, help="downstream dataset of the cell (default: sst2 / cifar10)")
    pm.add_argument("--skip", default="", help="comma list of attacks/defenses not to run")
    pm.add_argument("--out", type=Path, default=Path("results/perf"),
                    help="writes OUT/memory-MODEL-PRESET.md and .json")
    _common(pm)

    cm = sub.add_parser("compare", help="two results directories cell by cell: CACC / AASR / MASR of each and the "
                        "difference")
    cm.add_argument("run", type=Path, help="results directory of a run (holding records/)")
    cm.add_argument("reference", type=Path, help="results directory to compare with, e.g. results/demo")

    t = sub.add_parser("table", help="aggregate records into cells.csv and mean ± std tables")
    t.add_argument("results", type=Path, help="results store directory (holding records/)")
    t.add_argument("--out", type=Path, default=None, help="where to write tables (default: the store)")

    ex = sub.add_parser("export", help="write a PTM as a directory plain transformers (AutoModelForMaskedLM, "
                        "AutoModel, AutoTokenizer) or timm loads")
    ex.add_argument("model", help="zoo name, PTM directory, model directory or hub id")
    ex.add_argument("--out", type=Path, required=True, help="output directory (must be new or empty)")
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    _common(ex)

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
    _common(pu)
    return ap


def _ctx(args: argparse.Namespace, seed: int = 0) -> Any:
    from bench.context import RunContext

    return RunContext(seed=seed, device=args.device, precision=args.precision, progress=args.progress, threads=None,
                      reference_paths=getattr(args, "reference_paths", False),
                      checkpoint_every_s=_checkpoint_seconds(args),
                      deterministic=getattr(args, "deterministic", False))


def _cache(args: argparse.Namespace) -> Path:
    from bench.artifacts import default_cache_dir

    return args.cache or default_cache_dir()


def cmd_data(args: argparse.Namespace) -> int:
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


def cmd_zoo(args: argparse.Namespace) -> int:
    from bench.registry import get, names

    if args.action == "list":
        for n in names("model"):
            s = get("model", n)
            print(f"{n:<20} {s.modality:<6} {s.family:<8} {s.description}")
        return 0
    from bench.artifacts import ArtifactStore, atomic_write_text
    from bench.zoo import Zoo

    spec = get("model", args.name)
    cache = _cache(args)
    zoo = Zoo(ArtifactStore(cache / "artifacts"), cache)
    if args.rebuild or args.out:
        if spec.rebuild is None:
            raise PtmbenchError(f"--rebuild: model {args.name!r} has no committed weights; "
                                f"'ptmbench zoo build {args.name}' builds and caches it")
        report = spec.rebuild(zoo, _ctx(args), args.out)
    else:
        ptm, key = zoo.load(args.name, _ctx(args))
        report = {"model": args.name, "key": key, "family": ptm.family, "info": ptm.info}
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.report:
        atomic_write_text(args.report, text + "\n")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from bench import data
    from bench.artifacts import ArtifactStore
    from bench.finetune import get_preset
    from bench.records import ResultsStore
    from bench.stages import CellSpec, finetune_eval
    from bench.triggers import trigger_sets_for
    from bench.zoo import Zoo

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
    modality = "text" if dspec.modality == "text" else "vision"
    preset = get_preset(modality, args.preset, epochs=args.epochs, max_train=args.max_train)
    store = ResultsStore(args.results)
    store.check_writable()
    for split in ("train", "validation", "test"):
        data.load_split(args.dataset, split, max_samples=1)  # mirror present and intact
    ctx = _ctx(args, seed=args.seed)
    store.check_regime(ctx.regime)
    cache = _cache(args)
    zoo = Zoo(ArtifactStore(cache / "artifacts"), cache)
    ptm, key = zoo.load(args.model, ctx)
    if ptm.modality != modality:
        raise PtmbenchError(f"model {args.model!r} is {ptm.modality} but dataset {args.dataset!r} is {dspec.modality}")
    trigger_sets = trigger_sets_for(modality, args.triggers, "por,neuba")
    model_name = Path(args.model).name if Path(args.model).is_dir() else args.model
    cell = CellSpec(model=model_name, dataset=args.dataset, seed=args.seed, preset=preset, keys={"ptm": key})
    probe = {"model": model_name, "attack": "none", "defense": "none", "dataset": args.dataset,
             "preset": preset.name, "seed": args.seed, "finetune_config": preset.to_dict(),
             "attack_config": {}, "defense_config": {}}
    if ctx.regime:  # records of another numerical regime (fp32, reference paths) have ids of their own
        probe["regime"] = ctx.regime
    if not args.force and trigger_sets and all(data.has_current_record(store, {**probe, "triggers": s}, dspec)
                                               for s in trigger_sets):
        print(f"cached: records for {model_name} on {args.dataset} seed {args.seed} exist (use --force to redo)")
        return 0
    records = finetune_eval(ptm, cell, trigger_sets, ctx, cache)
    for rec in records:
        path = store.write(rec)
        print(f"record: {path}")
    _print_records(records)
    return 0


def _print_records(records: list[dict[str, Any]]) -> None:
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


def cmd_table(args: argparse.Namespace) -> int:
    from bench.records import ResultsStore, write_tables

    store = ResultsStore(args.results)
    records = store.load()
    paths = write_tables(records, args.out or args.results)
    print(paths["summary_md"].read_text())
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.artifacts import ArtifactStore
    from bench.context import RunContext
    from bench.matrix import SKIP, TODO, is_done, load_matrix, parse_only, plan, select, stage_status
    from bench.records import ResultsStore, write_tables
    from bench.runner import LocalExecutor, RayExecutor, execute
    from bench.stages import StageEnv

    only = parse_only(args.only or [])
    every_s = _checkpoint_seconds(args)
    spec = load_matrix(args.matrix)
    device = args.device or spec.device
    # --reference-paths: fp32 whatever the matrix says; an explicit --precision bf16 is refused
    asked = args.precision or ("auto" if args.reference_paths else spec.precision)
    run_ctx = RunContext(device=device, precision=asked, reference_paths=args.reference_paths,
                         deterministic=args.deterministic)
    precision = run_ctx.precision
    cache = _cache(args)
    store = ArtifactStore(cache / "artifacts")
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
        from bench.checkpoint import progress

        for n in nodes:
            mark = f"{status[n.key]:<6}"
            part = None if done(n) else progress(store.checkpoint_dir(n.key))
            at = f"  (partial: {part['desc']} step {part['step']}/{part['steps']})" if part else ""
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


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare_stores

    print(compare_stores(args.run, args.reference), end="")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.action == "locus":
        return cmd_locus(args)
    if args.action == "curves":
        return cmd_curves(args)
    import pandas as pd

    from bench import data
    from bench.analysis import activation_shift, plot_shifts, shift_frame
    from bench.artifacts import ArtifactStore, atomic_write_text
    from bench.triggers import parse_triggers
    from bench.zoo import Zoo

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
    ctx = _ctx(args, seed=args.seed)
    cache = _cache(args)
    zoo = Zoo(ArtifactStore(cache / "artifacts"), cache)
    frames = []
    for label, source in entries:
        ptm, _ = zoo.load(source, ctx)
        split = "train" if "train" in data.spec(args.dataset).splits else "validation"
        inputs = ptm.adapter.load_split(ptm, args.dataset, split, args.samples, cache)
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


def cmd_curves(args: argparse.Namespace) -> int:
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


def cmd_locus(args: argparse.Namespace) -> int:
    from bench.artifacts import ArtifactStore, atomic_write_text
    from bench.locus import locate, to_markdown
    from bench.triggers import trigger_sets_for
    from bench.zoo import Zoo

    if args.samples < 1:
        raise PtmbenchError(f"--samples must be >= 1, got {args.samples}")
    ctx = _ctx(args, seed=args.seed)
    cache = _cache(args)
    zoo = Zoo(ArtifactStore(cache / "artifacts"), cache)
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
    dataset = args.dataset or ("sst2" if clean.modality == "text" else "catdog")
    triggers = [t for s in sets.values() for t in s]
    inputs = clean.adapter.load_split(clean, dataset, "test", args.samples, cache)
    frame = locate(clean, backdoored, inputs, triggers, args.max_len, ctx, purified)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "locus.csv", frame.to_csv(index=False, float_format="%.5g"))
    md = to_markdown(frame)
    atomic_write_text(args.out / "locus.md", md)
    print(md)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bench.plots import plot_all
    from bench.records import ResultsStore, cells_frame, with_majority_share

    paths = plot_all(cells_frame(with_majority_share(ResultsStore(args.results).load())),
                     args.out or args.results / "plots")
    if not paths:
        raise PtmbenchError(f"no triggered cells in {args.results}; nothing to plot")
    for p in paths:
        print(p)
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    if args.action == "memory":
        return _perf_memory(args)
    from bench import data
    from bench.artifacts import ArtifactStore
    from bench.context import RunContext
    from bench.perf.compare import PerfOptions, parse_phases, run_compare, write_report
    from bench.records import ResultsStore
    from bench.triggers import parse_triggers
    from bench.zoo import Zoo

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
    for split in ("train", "validation", "test"):
        data.load_split(args.dataset, split, max_samples=1)  # mirror present and intact
    ctx = RunContext(seed=args.seed, device=args.device, precision=args.precision, progress=args.progress,
                     threads=args.threads)
    cache = _cache(args)
    ptm, _ = Zoo(ArtifactStore(cache / "artifacts"), cache).load(args.model, ctx)
    label = Path(args.model).name if Path(args.model).is_dir() else args.model
    comp = run_compare(ptm, opts, ctx, model_label=label, log=lambda s: print(f"[perf] {s}", file=sys.stderr,
                                                                               flush=True))
    comp.report["command"] = opts.command(args.out)
    md, js = write_report(comp.report, args.out)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    return 0


def _perf_memory(args: argparse.Namespace) -> int:
    from bench.artifacts import ArtifactStore
    from bench.perf.stage_memory import measure_stages, write_report
    from bench.records import ResultsStore
    from bench.zoo import Zoo

    if args.steps < 1:
        raise PtmbenchError(f"--steps must be at least 1, got {args.steps}")
    ResultsStore(args.out).check_writable()
    ctx = _ctx(args, 0)
    cache = _cache(args)
    ptm, _ = Zoo(ArtifactStore(cache / "artifacts"), cache).load(args.model, ctx)
    dataset = args.dataset or ("sst2" if ptm.modality == "text" else "cifar10")
    label = Path(args.model).name if Path(args.model).is_dir() else args.model
    from bench.registry import names

    skip = frozenset(x.strip() for x in args.skip.split(",") if x.strip())
    unknown = sorted(skip - set(names("attack")) - set(names("defense")))
    if unknown:
        raise PtmbenchError(f"--skip: {', '.join(unknown)} is not a registered attack or defense")
    report = measure_stages(ptm, label, args.preset, args.steps, dataset, ctx, cache,
                            log=lambda s: print(f"[memory] {s}", file=sys.stderr, flush=True), skip=skip)
    cmd = (f"ptmbench perf memory --model {args.model} --preset {args.preset} --steps {args.steps} "
           f"--dataset {dataset}{' --skip ' + ','.join(sorted(skip)) if skip else ''} --out {args.out}")
    md, js = write_report(report, args.out, cmd)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export import run_export

    digests = run_export(args.model, args.out, args.force, _ctx(args), _cache(args))
    for name, digest in digests.items():
        print(f"{digest}  {args.out / name}")
    print(f"exported {args.model} to {args.out}")
    return 0


def cmd_purify(args: argparse.Namespace) -> int:
    from bench.purify import parse_config, run_purify

    report = run_purify(args.model, args.defense, args.preset, parse_config(args.config), args.out, args.force,
                        _ctx(args, seed=args.seed), _cache(args), command="ptmbench " + " ".join(sys.argv[1:]),
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


COMMANDS = {"analyze": cmd_analyze, "compare": cmd_compare, "plot": cmd_plot, "run": cmd_run, "data": cmd_data, "zoo": cmd_zoo, "finetune": cmd_finetune, "table": cmd_table,
            "perf": cmd_perf, "export": cmd_export, "purify": cmd_purify}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or bool(os.environ.get("PTMBENCH_DEBUG"))
    quiet_libraries()
    try:
        if "--allow-pickle" in argv:  # inherited by worker processes; off unless asked for
            os.environ["PTMBENCH_ALLOW_PICKLE"] = "1"
        args = build_parser().parse_args([a for a in argv if a not in ("--debug", "--allow-pickle")])
        return COMMANDS[args.cmd](args)
    except PtmbenchError as e:
        if debug:
            raise
        print(f"ptmbench: error: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except KeyboardInterrupt:
        print("ptmbench: interrupted; finished stages are kept — run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
