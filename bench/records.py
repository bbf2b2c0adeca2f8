"""The results store (one JSON record per evaluated cell, named by its identity, never by a timestamp)
and the tables aggregated from it with pandas."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.artifacts import atomic_write_text, canonical_json
from bench.errors import PtmbenchError

IDENTITY = ("model", "attack", "defense", "dataset", "preset", "seed", "triggers")
CELL_COLUMNS = ["model", "attack", "defense", "dataset", "seed", "preset", "triggers", "cacc", "aasr", "masr",
                "casr", "alc", "alc_threshold", "n_train", "n_val", "n_test", "precision"]
METRICS = ("cacc", "aasr", "masr", "casr", "alc")


def record_id(rec: dict[str, Any]) -> str:
    """Readable, deterministic name of a cell: its identity plus a hash of the method configs (and of the
    ``reference_paths`` flag, only when set: fast-path ids are unchanged, reference-path ones differ)."""
    base = "__".join(str(rec[k]) for k in IDENTITY)
    hashed = {k: rec.get(k) for k in ("attack_config", "defense_config", "finetune_config")}
    if rec.get("reference_paths"):
        hashed["reference_paths"] = True
    cfg = hashlib.sha256(canonical_json(hashed).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{base}__{cfg}")


def cell_identity(payload: dict[str, Any]) -> dict[str, Any]:
    """The identity a matrix cell's records carry: its stage identity with the attack and defense named by
    their matrix labels (display names; the stage identity and cache key keep the registry names)."""
    return {**payload["ident"], **payload.get("labels", {})}


class ResultsStore:
    """``<root>/records/<cell id>.json``: re-running a cell overwrites its one record, never duplicates it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

    def check_writable(self) -> None:
        """Fail before any work if the store cannot be written (without creating anything)."""
        p = self.records_dir
        while not p.exists():
            p = p.parent
        import os

        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            raise PtmbenchError(f"results directory {self.root} is not writable (nearest existing: {p}); "
                                "choose another with --results")

    def path(self, rec: dict[str, Any]) -> Path:
        return self.records_dir / f"{record_id(rec)}.json"

    def has(self, rec: dict[str, Any]) -> bool:
        try:
            json.loads(self.path(rec).read_text())
            return True
        except (OSError, ValueError):
            return False

    def write(self, rec: dict[str, Any]) -> Path:
        p = self.path(rec)
        atomic_write_text(p, json.dumps(rec, indent=1, sort_keys=True, allow_nan=False, default=_jsonable))
        return p

    def load(self) -> list[dict[str, Any]]:
        if not self.records_dir.is_dir():
            raise PtmbenchError(f"no records under {self.records_dir}; run a matrix or `ptmbench finetune` first")
        return [json.loads(p.read_text()) for p in sorted(self.records_dir.glob("*.json"))]


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def cells_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        rows.append({c: r.get(c) for c in CELL_COLUMNS})
    df = pd.DataFrame(rows, columns=CELL_COLUMNS)
    return df.sort_values(["model", "attack", "defense", "dataset", "triggers", "seed"]).reset_index(drop=True)


def per_trigger_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = [{**{k: r[k] for k in IDENTITY}, **t} for r in records for t in r.get("per_trigger", [])]
    cols = [*IDENTITY, "trigger", "target", "asr"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values([*IDENTITY[:-1], "triggers", "trigger"]).reset_index(drop=True) if len(df) else df


def summary_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds per (model, attack, defense, dataset, triggers), in percent."""
    keys = ["model", "attack", "defense", "dataset", "preset", "triggers"]
    out = []
    for k, g in cells.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, k))
        row["seeds"] = len(g)
        for m in METRICS:
            v = pd.to_numeric(g[m], errors="coerce").dropna() * 100
            row[f"{m}_mean"] = v.mean() if len(v) else math.nan
            row[f"{m}_std"] = v.std(ddof=1) if len(v) > 1 else (0.0 if len(v) else math.nan)
        out.append(row)
    return pd.DataFrame(out)


def fmt_pm(mean: float, std: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.1f}" if n <= 1 else f"{mean:.1f} ± {std:.1f}"


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _pm_columns(stats: pd.DataFrame, columns: list[str], metrics: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    """``columns`` of ``stats`` plus one 'mean ± std' column per (metric, title), from its _mean/_std/seeds."""
    df = stats[columns].copy()
    for m, title in metrics:
        df[title] = [fmt_pm(a, b, n) for a, b, n in zip(stats[f"{m}_mean"], stats[f"{m}_std"], stats["seeds"])]
    return df


def display_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The human table: one row per group, metrics as 'mean ± std' percentages."""
    return _pm_columns(summary, ["model", "attack", "defense", "dataset", "preset", "triggers", "seeds"],
                       (("cacc", "CACC"), ("aasr", "AASR"), ("masr", "MASR"), ("casr", "C-ASR"), ("alc", "ALC")))


def matrix_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows model/attack/trigger set, columns defense × dataset, cells 'CACC / AASR / MASR' (mean ± std, %)."""
    if summary.empty:
        return pd.DataFrame()
    s = summary.copy()
    s["col"] = s["defense"] + " · " + s["dataset"]

    def cell(r: Any) -> str:
        parts = [fmt_pm(r[f"{m}_mean"], r[f"{m}_std"], r["seeds"]) for m in ("cacc", "aasr", "masr")]
        return " / ".join(parts)

    s["cell"] = s.apply(cell, axis=1)
    t = s.pivot_table(index=["model", "attack", "triggers"], columns="col", values="cell", aggfunc="first")
    cols = sorted(t.columns, key=lambda c: (c.split(" · ")[0] != "none", c))
    return t[cols].reset_index().fillna("")


def timing_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Wall seconds and peak resident memory per stage and cell (kept out of cells.csv, which must be
    identical across re-runs)."""
    rows = [{**{k: r[k] for k in IDENTITY}, **{f"{k}_s": v for k, v in r.get("wall_s", {}).items()},
             **{f"{k}_peak_rss_mib": v for k, v in (r.get("peak_rss_mib") or {}).items()}}
            for r in records]
    return pd.DataFrame(rows)


def der_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """DER of every defense against the same cell without defense (on mean AASR and CACC over seeds)."""
    from bench.metrics import der

    keys = ["model", "attack", "dataset", "preset", "triggers"]
    base = summary[summary["defense"] == "none"].set_index(keys)
    rows = []
    for _, r in summary[summary["defense"] != "none"].iterrows():
        k = tuple(r[c] for c in keys)
        if k not in base.index or pd.isna(r["aasr_mean"]):
            continue
        b = base.loc[k]
        rows.append({**{c: r[c] for c in keys}, "defense": r["defense"],
                     "aasr_before": b["aasr_mean"], "aasr_after": r["aasr_mean"],
                     "cacc_before": b["cacc_mean"], "cacc_after": r["cacc_mean"],
                     "der": der(b["aasr_mean"] / 100, r["aasr_mean"] / 100, b["cacc_mean"] / 100,
                                r["cacc_mean"] / 100)})
    return pd.DataFrame(rows)


def headline_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """The paper's headline form: per model, attack, defense and trigger set, each metric averaged over the
    datasets every seed of the group has (per seed), then mean ± std over the seeds, in percent.
    ``datasets`` names what was averaged (a dataset only some seeds have is left out of the average)."""
    keys = ["model", "attack", "defense", "preset", "triggers"]
    rows = []
    for k, g in cells.groupby(keys, sort=True, dropna=False):
        per_seed = [set(gs["dataset"]) for _, gs in g.groupby("seed")]
        datasets = sorted(set.intersection(*per_seed))
        if not datasets:
            continue
        sub = g[g["dataset"].isin(datasets)]
        row = {**dict(zip(keys, k)), "datasets": "+".join(datasets), "seeds": len(per_seed)}
        for m in ("cacc", "aasr", "masr"):
            vals = pd.to_numeric(sub[m], errors="coerce") * 100
            avg = vals.groupby(sub["seed"]).mean()
            row[f"{m}_mean"] = avg.mean()
            row[f"{m}_std"] = avg.std(ddof=1) if len(avg) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def headline_display(head: pd.DataFrame) -> pd.DataFrame:
    if head.empty:
        return head
    return _pm_columns(head, ["model", "attack", "defense", "preset", "triggers", "datasets", "seeds"],
                       (("cacc", "avg CACC"), ("aasr", "avg AASR"), ("masr", "avg MASR")))


def write_tables(records: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """cells.csv, per_trigger.csv and the mean ± std summary as Markdown, LaTeX, CSV and HTML."""
    out.mkdir(parents=True, exist_ok=True)
    cells = cells_frame(records)
    summary = summary_frame(cells)
    disp = display_frame(summary)
    paths = {
        "cells": out / "cells.csv", "per_trigger": out / "per_trigger.csv", "summary_csv": out / "summary.csv",
        "summary_md": out / "summary.md", "summary_tex": out / "summary.tex", "summary_html": out / "summary.html",
        "matrix_md": out / "table.md", "matrix_tex": out / "table.tex", "matrix_csv": out / "table.csv",
        "matrix_html": out / "table.html",
    }
    atomic_write_text(out / "der.csv", der_frame(summary).to_csv(index=False, float_format="%.4g"))
    head = headline_frame(cells)
    paths.update(headline_md=out / "headline.md", headline_tex=out / "headline.tex",
                 headline_csv=out / "headline.csv")
    hnote = ("Averaged over the datasets named (per seed), then mean ± std over seeds, in %: the form of the "
             "RECIPE paper's headline (average ASR over three datasets).\n\n")
    atomic_write_text(paths["headline_md"], hnote + markdown_table(headline_display(head)))
    atomic_write_text(paths["headline_tex"], headline_display(head).to_latex(index=False, escape=True))
    atomic_write_text(paths["headline_csv"], head.to_csv(index=False, float_format="%.4g"))
    mat = matrix_frame(summary)
    note = ("Cells: CACC / AASR / MASR in %, mean ± std over seeds. Rows with attack `none` are the "
            "clean-model control for the named trigger set.\n\n")
    atomic_write_text(paths["matrix_md"], note + markdown_table(mat))
    atomic_write_text(paths["matrix_tex"], mat.to_latex(index=False, escape=True))
    atomic_write_text(paths["matrix_csv"], mat.to_csv(index=False))
    atomic_write_text(paths["matrix_html"], mat.to_html(index=False, border=0))
    atomic_write_text(paths["cells"], cells.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(paths["per_trigger"], per_trigger_frame(records).to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "timing.csv", timing_frame(records).to_csv(index=False, float_format="%.2f"))
    atomic_write_text(paths["summary_csv"], summary.to_csv(index=False, float_format="%.4g"))
    atomic_write_text(paths["summary_md"], markdown_table(disp))
    atomic_write_text(paths["summary_tex"], disp.to_latex(index=False, escape=True))
    atomic_write_text(paths["summary_html"], disp.to_html(index=False, border=0))
    return paths
