"""Peak resident memory of every stage of a preset, one model: each registered attack and defense that
supports the model's modality, and one fine-tune + evaluate cell, each run as a matrix stage would run it
(one process, stages one after another, memory handed back between them).

Memory is set by the batch shape, the sequence length and the data a stage loads, not by how many
optimiser steps it takes, so ``steps`` caps the optimiser steps of every stage that has them (attacks,
RECIPE and its ablations; the cell's fine-tuning) while the data, batch size and lengths stay the preset's.
The report says so next to each number.  ``ptmbench perf memory`` writes ``OUT/memory.md`` and ``.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.perf.memory import measured
from bench.ptm import PTM
from bench.registry import get, names

MIB = 2**20


def default_dataset(modality: str) -> str:
    """The downstream dataset of the measured fine-tune + evaluate cell when none is named."""
    return "sst2" if modality == "text" else "cifar10"


def _capped(kind: str, name: str, preset: str, steps: int) -> tuple[Any, dict[str, Any]]:
    cls = get(kind, name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    over = {"steps": steps} if "steps" in fields else {}
    return cls.build(preset, over, where=f"{kind} {name}"), over


def _measure(label: str, fn: Callable[[], Any]) -> dict[str, Any]:
    _, m = measured(0, fn)
    return {"stage": label, "start_mib": round((m.rss_start_bytes or 0) / MIB),
            "peak_mib": round((m.rss_peak_bytes or 0) / MIB), "wall_s": round(m.wall_s, 1)}


def measure_stages(ptm: PTM, model: str, preset: str, steps: int, dataset: str, ctx: RunContext,
                   cache_dir: Path, log: Callable[[str], None] = print,
                   skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Run every stage of ``preset`` on a fresh copy of ``ptm`` (but the methods in ``skip``) and return the
    report (rows per stage)."""
    from bench.data import spec as dataset_spec
    from bench.finetune import get_preset
    from bench.stages import CellSpec, finetune_eval

    dspec = dataset_spec(dataset)
    if dspec.modality != ptm.modality or dspec.role != "downstream":
        raise PtmbenchError(f"dataset {dataset!r} is not a downstream {ptm.modality} dataset for model {model!r}")
    rows: list[dict[str, Any]] = []
    attacks = []
    for kind in ("attack", "defense"):
        for name in names(kind):
            method, over = _capped(kind, name, preset, steps)
            if ptm.modality not in method.modalities or name in skip:
                continue
            if kind == "attack":
                attacks.append(method)
            log(f"{kind} {name} ({preset}{', steps ' + str(steps) if over else ''})")
            def run(m: Any = method, k: str = kind) -> PTM:
                fresh = copy.deepcopy(ptm)
                return m.implant(fresh, ctx, cache_dir) if k == "attack" else m.purify(fresh, ctx, cache_dir)

            rows.append({"kind": kind, "method": name, "capped": bool(over), **_measure(f"{kind} {name}", run)})
    base = get_preset(ptm.modality, preset)
    fpreset = get_preset(ptm.modality, preset, max_train=steps * base.batch_size, epochs=1)
    sets: dict[str, list[Any]] = {}
    for a in attacks:
        sets.setdefault(a.trigger_set, a.triggers(ptm))
    cell = CellSpec(model=model, dataset=dataset, seed=ctx.seed, preset=fpreset)
    n_trig = sum(len(v) for v in sets.values())
    log(f"cell: fine-tune {steps} steps of {base.batch_size} on {dataset}, evaluate clean + {n_trig} triggers")
    rows.append({"kind": "cell", "method": f"finetune + evaluate ({dataset}, {n_trig} triggers)", "capped": True,
                 **_measure("cell", lambda: finetune_eval(ptm, cell, sets, ctx, cache_dir))})
    return {"model": model, "modality": ptm.modality, "preset": preset, "steps_cap": steps, "dataset": dataset,
            "threads": torch.get_num_threads(), "precision": ctx.precision, "torch": torch.__version__,
            "python": platform.python_version(), "rows": rows, "skipped": sorted(skip),
            "max_peak_mib": max(r["peak_mib"] for r in rows)}


def write_report(report: dict[str, Any], out: Path, command: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "command": command}
    stem = f"memory-{report['model']}-{report['preset']}"
    js = out / f"{stem}.json"
    md = out / f"{stem}.md"
    lines = [f"# Peak resident memory per stage: `{report['model']}`, `{report['preset']}` preset", "",
             f"* command: `{command}`",
             f"* every attack and defense registered for {report['modality']}, then one fine-tune + evaluate "
             f"cell on `{report['dataset']}` (validation and test in full, every attack's triggers)",
             f"* optimiser steps capped at {report['steps_cap']} where a stage has them (marked ✓); data, batch "
             "sizes and lengths are the preset's, and memory does not grow with the step count",
             f"* threads {report['threads']}, precision {report['precision']}, torch {report['torch']}, "
             f"Python {report['python']}; RSS sampled every 50 ms, the process's resident memory",
             "", "| stage | steps capped | RSS at start MiB | peak RSS MiB | wall s |", "|---|:---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['stage'] if r['kind'] != 'cell' else r['method']} | {'✓' if r['capped'] else ''} | "
                     f"{r['start_mib']} | {r['peak_mib']} | {r['wall_s']} |")
    if report.get("skipped"):
        lines += ["", f"Not run here: {', '.join(report['skipped'])} (see docs/performance.md)."]
    lines += ["", f"Largest peak: **{report['max_peak_mib']} MiB** ({report['max_peak_mib'] / 1024:.2f} GiB).", ""]
    tmp_md, tmp_js = md.with_suffix(".md.tmp"), js.with_suffix(".json.tmp")
    tmp_md.write_text("\n".join(lines))
    tmp_js.write_text(json.dumps(report, indent=1))
    tmp_md.replace(md)
    tmp_js.replace(js)
    return md, js
