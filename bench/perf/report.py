"""The report of ``ptmbench perf compare`` (:func:`bench.perf.compare.run_compare`): Markdown for people,
JSON for tools, both written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.perf.compare import PHASE_TITLES, PHASES, RUN_PHASES
from bench.perf.memory import RSS_INTERVAL_S


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown; only the phases that ran (``--phases``) appear, in lines, rows and checks."""
    s = report["sizes"]
    q = report["quality"]
    ran = report.get("phases_run", list(RUN_PHASES))
    lines = [
        "# ptmbench perf compare: reference-style pipelines vs ptmbench's",
        "",
        f"* command: `{report['command']}`",
        f"* phases: {', '.join(f'{PHASE_TITLES[p]}' for p in ran)}",
        f"* model: `{report['model']}` ({report['family']}"
        + (f"; MLM head for RECIPE: {report['mlm_head']})" if "recipe" in ran else ")"),
        f"* dataset: `{report['dataset']}`: {s['train']} train, {s['validation']} validation, {s['test']} test; "
        f"{s['epochs']} epoch(s) = {s['finetune_steps']} steps of batch {s['batch_size']} at lr {s['lr']}",
    ]
    if "recipe" in ran:
        lines.append(f"* RECIPE: {s['recipe_steps']} steps of batch {s['recipe_batch_size']} at lr {s['recipe_lr']} "
                     f"on {s['aux_samples']} `{s['aux']}` sequences")
    if "triggers" in ran:
        lines.append(f"* triggers: `{s['triggers']}` ({s['n_triggers']})")
    recipe_pad = f" (RECIPE {s['recipe_pad_to']})" if "recipe" in ran else ""
    lines += [
        f"* padding: reference to {s['reference_pad_to']}{recipe_pad}; ptmbench dynamic "
        f"(max {s['ptmbench_max_len']})",
        f"* precision: reference {report['precision']['reference']}, ptmbench {report['precision']['ptmbench']}; "
        f"device {report['device']}; seed {report['seed']}",
        f"* threads: {report['threads']}; torch {report['torch']}; Python {report['python']}",
        f"* CPU: {report['cpu']}",
        f"* {report['order']}; peak RSS is the process's resident memory sampled every "
        f"{int(RSS_INTERVAL_S * 1000)} ms during the phase",
        "",
        "| phase | samples | reference s | ptmbench s | time ratio ref/ptmbench | reference samples/s "
        "| ptmbench samples/s | reference peak RSS MiB | ptmbench peak RSS MiB | RSS ratio ref/ptmbench |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in PHASES:
        p = report["phases"].get(name)
        if p is None:
            continue
        r, o = p["reference"], p["ptmbench"]
        lines.append(f"| {PHASE_TITLES[name]} | {r['samples']} | {r['wall_s']:.2f} | {o['wall_s']:.2f} | "
                     f"{_fmt(p['ratio_wall'], 2)} | {r['samples_per_s']:.1f} | {o['samples_per_s']:.1f} | "
                     f"{_fmt(r['rss_peak_mib'], 0)} | {_fmt(o['rss_peak_mib'], 0)} | {_fmt(p['ratio_rss_peak'], 2)} |")
    lines += ["", "| check | reference | ptmbench |", "|---|---:|---:|"]
    if "finetune" in q:
        ft = q["finetune"]
        lines += [
            f"| (a) CACC of each pipeline's fine-tuned model | {100 * ft['reference']['cacc']:.2f}% | "
            f"{100 * ft['ptmbench']['cacc']:.2f}% |",
            f"| (a) training loss first → last | {ft['reference']['loss_first']:.4f} → "
            f"{ft['reference']['loss_last']:.4f} | {ft['ptmbench']['loss_first']:.4f} → "
            f"{ft['ptmbench']['loss_last']:.4f} |",
        ]
    if "recipe" in q:
        rc = q["recipe"]
        lines += [
            f"| (b) MLM loss first → last | {_fmt(rc['reference']['mlm_first'], 4)} → "
            f"{_fmt(rc['reference']['mlm_last'], 4)} | {_fmt(rc['ptmbench']['mlm_first'], 4)} → "
            f"{_fmt(rc['ptmbench']['mlm_last'], 4)} |",
            f"| (b) Σ‖W‖_F over the regularised set ({rc['norm_S_before']:.3f} before) | "
            f"{rc['reference']['norm_S_after']:.3f} | {rc['ptmbench']['norm_S_after']:.3f} |",
        ]
    if "triggers" in q:
        tr = q["triggers"]
        lines.append(f"| (c) CACC of the ptmbench-fine-tuned model | {100 * tr['reference']['cacc']:.2f}% | "
                     f"{100 * tr['ptmbench']['cacc']:.2f}% |")
        for k in tr["reference"]:
            if k.startswith("aasr_"):
                lines.append(f"| (c) AASR, trigger set `{k[5:]}` | {_pct(tr['reference'][k])} | "
                             f"{_pct(tr['ptmbench'].get(k))} |")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None, nd: int) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.2f}%"


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out/compare.md`` and ``out/compare.json``, each written atomically (temporary file + rename)."""
    from bench.artifacts import atomic_write_text

    md, js = out / "compare.md", out / "compare.json"
    atomic_write_text(js, json.dumps(_jsonable(report), indent=1, sort_keys=False, allow_nan=False) + "\n")
    atomic_write_text(md, render_markdown(report))
    return md, js


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if v != v or v in (float("inf"), float("-inf")) else v
    if isinstance(x, np.integer):
        return int(x)
    return x



__all__ = ["render_markdown", "write_report"]
