"""The results store (one JSON record per evaluated cell, named by its identity, never by a timestamp)
and the tables aggregated from it with pandas."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.artifacts import atomic_write_text, canonical_json, regime_fields
from bench.errors import PtmbenchError

IDENTITY = ("model", "attack", "defense", "dataset", "preset", "seed", "triggers")
# The record schema this version writes and reads.  0: records written before the field existed (readers
# backfill what they lack); 1: adds ``schema`` itself.  A record of a newer schema is refused, not misread.
SCHEMA = 1
CELL_COLUMNS = ["model", "attack", "defense", "dataset", "seed", "preset", "triggers", "cacc", "aasr", "masr",
                "casr", "alc", "alc_threshold", "n_train", "n_val", "n_test", "precision", "majority_share",
                "clean_top_share", "collapsed"]
METRICS = ("cacc", "aasr", "masr", "casr", "alc")


def record_id(rec: dict[str, Any]) -> str:
    """Readable, deterministic name of a cell: its identity plus a hash of the method configs (and of the
    numerical ``regime``, only off the default: bf16 fast-path ids are unchanged, fp32 and reference-path
    ones differ)."""
    base = "__".join(str(rec[k]) for k in IDENTITY)
    hashed = {**{k: rec.get(k) for k in ("attack_config", "defense_config", "finetune_config")},
              **regime_fields(rec.get("regime"))}
    cfg = hashlib.sha256(canonical_json(hashed).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{base}__{cfg}")


@dataclass(frozen=True)
class CellIdentity:
    """Who a cell is: the PTM (model, attack and defense by registry name, with their configs), the dataset,
    the seed and the fine-tune preset, and the numerical ``regime`` (None: the default, bf16 on the fast
    paths) and, for a user's dataset, its files' sha256.  The planner hashes :meth:`key_fields` into the
    cell's cache key; records carry :meth:`record_fields` and are named by :meth:`record_id`.  The regime
    enters an identity here and nowhere else."""

    model: str
    attack: str
    defense: str
    dataset: str
    seed: int
    preset: str
    attack_config: dict[str, Any]
    defense_config: dict[str, Any]
    finetune_config: dict[str, Any]
    regime: str | None = None
    data_sha256: str | None = None

    def key_fields(self) -> dict[str, Any]:
        """What the cell's content key hashes: every field, ``regime`` and ``data_sha256`` only when set (so
        default-regime keys on registered data stay as they were before either existed)."""
        out = {"model": self.model, "attack": self.attack, "defense": self.defense, "dataset": self.dataset,
               "seed": self.seed, "preset": self.preset, "attack_config": self.attack_config,
               "defense_config": self.defense_config, "finetune_config": self.finetune_config,
               **regime_fields(self.regime)}
        if self.data_sha256:
            out["data_sha256"] = self.data_sha256
        return out

    def record_fields(self, attack_label: str | None = None, defense_label: str | None = None) -> dict[str, Any]:
        """The identity fields of the cell's records: attack and defense by their matrix labels (display
        names, default the registry names, which ``attack_method``/``defense_method`` keep), ``regime`` only
        off the default.  The data's sha256 is not among them (records carry the data's own fields)."""
        return {"model": self.model, "attack": attack_label or self.attack, "defense": defense_label or self.defense,
                "attack_method": self.attack, "defense_method": self.defense, "dataset": self.dataset,
                "seed": self.seed, "preset": self.preset, "attack_config": self.attack_config,
                "defense_config": self.defense_config, "finetune_config": self.finetune_config,
                **regime_fields(self.regime)}

    def record_key(self, triggers: str, attack_label: str | None = None,
                   defense_label: str | None = None) -> dict[str, Any]:
        """The identity of the cell's record for trigger set ``triggers``, as :class:`ResultsStore` finds it."""
        return {**self.record_fields(attack_label, defense_label), "triggers": triggers}

    def record_id(self, triggers: str, attack_label: str | None = None, defense_label: str | None = None) -> str:
        return record_id(self.record_key(triggers, attack_label, defense_label))


def check_schema(rec: dict[str, Any], where: Path) -> None:
    """Refuse a record written under a newer schema than :data:`SCHEMA` (missing: 0, the first records)."""
    version = rec.get("schema", 0)
    if not isinstance(version, int) or version > SCHEMA:
        raise PtmbenchError(f"{where}: record schema {version!r} is newer than this ptmbench reads ({SCHEMA}); "
                            "upgrade ptmbench to read this store")


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

    def check_regime(self, regime: str | None) -> None:
        """Fail before any work if the store already holds records of another numerical regime (bf16 fast
        paths, fp32, reference paths): its tables would average them as if they were seeds of one cell."""
        if not self.records_dir.is_dir():
            return
        for p in sorted(self.records_dir.glob("*.json")):
            try:
                theirs = json.loads(p.read_text()).get("regime")
            except (OSError, ValueError):
                continue
            if theirs != regime:
                raise PtmbenchError(f"results directory {self.root} holds {_regime_name(theirs)} records ({p.name}) "
                                    f"and this run is {_regime_name(regime)}; give it its own --results directory")

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
        out = []
        for p in sorted(self.records_dir.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise PtmbenchError(f"{p}: unreadable record ({e}); delete it and re-run its cell") from e
            if not isinstance(rec, dict):
                raise PtmbenchError(f"{p}: a record must be a JSON object; delete it and re-run its cell")
            check_schema(rec, p)
            out.append(rec)
        return out


def _regime_name(regime: str | None) -> str:
    return {None: "bf16 fast-path", "refpaths": "reference-path (--reference-paths)"}.get(regime, str(regime))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def mirror_majority_share(dataset: str, n_test: int) -> float:
    """The majority-label share of the test subset a cell with ``n_test`` test samples scored on (the same
    seeded subset the modality adapters load), from the data mirror."""
    from bench.data import load_split
    from bench.metrics import majority_share

    return majority_share(load_split(dataset, "test", max_samples=int(n_test))["label"])


def with_majority_share(records: list[dict[str, Any]],
                        share: Callable[[str, int], float] = mirror_majority_share) -> list[dict[str, Any]]:
    """Records written before cells recorded ``majority_share`` get it from ``share(dataset, n_test)``; a
    dataset the mirror cannot provide leaves it missing (its cells are then never flagged collapsed)."""
    known: dict[tuple[str, int], float | None] = {}
    out = []
    for r in records:
        if r.get("majority_share") is None and r.get("n_test"):
            k = (r["dataset"], int(r["n_test"]))
            if k not in known:
                try:
                    known[k] = share(*k)
                except PtmbenchError:
                    known[k] = None
            r = {**r, "majority_share": known[k]}
        out.append(r)
    return out


def cells_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per record. ``collapsed``: the classifier is no better than predicting the majority label
    (:func:`bench.metrics.collapsed`); missing where the majority share is unknown."""
    from bench.metrics import collapsed

    rows = []
    for r in records:
        row = {c: r.get(c) for c in CELL_COLUMNS}
        known = row["cacc"] is not None and row["majority_share"] is not None
        row["collapsed"] = collapsed(row["cacc"], row["majority_share"]) if known else None
        rows.append(row)
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
        row["collapsed"] = int((g["collapsed"] == True).sum())  # noqa: E712 (None/NaN count as not)
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
    return _pm_columns(summary, ["model", "attack", "defense", "dataset", "preset", "triggers", "seeds",
                                 "collapsed"],
                       (("cacc", "CACC"), ("aasr", "AASR"), ("masr", "MASR"), ("casr", "C-ASR"), ("alc", "ALC")))


def matrix_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows model/attack/trigger set, columns defense × dataset, cells 'CACC / AASR / MASR' (mean ± std, %)."""
    if summary.empty:
        return pd.DataFrame()
    s = summary.copy()
    s["col"] = s["defense"] + " · " + s["dataset"]

    def cell(r: Any) -> str:
        parts = [fmt_pm(r[f"{m}_mean"], r[f"{m}_std"], r["seeds"]) for m in ("cacc", "aasr", "masr")]
        return " / ".join(parts) + _dagger(r)

    s["cell"] = s.apply(cell, axis=1)
    t = s.pivot_table(index=["model", "attack", "triggers"], columns="col", values="cell", aggfunc="first")
    cols = sorted(t.columns, key=lambda c: (c.split(" · ")[0] != "none", c))
    return t[cols].reset_index().fillna("")


def _dagger(r: Any) -> str:
    """' †' on a cell whose every seed collapsed, ' †k/n' when k of n seeds did, '' otherwise."""
    k, n = int(r.get("collapsed", 0) or 0), int(r["seeds"])
    return "" if k == 0 else " †" if k == n else f" †{k}/{n}"


COLLAPSE_NOTE = ("† the fine-tuned classifier collapsed (CACC within 0.5 points of the test split's "
                 "majority-label share, so it predicts about one class for every input; its ASR towards that "
                 "class is no backdoor measurement): collapse.md lists these cells.")


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


def headline_frame(cells: pd.DataFrame, drop_collapsed: bool = False) -> pd.DataFrame:
    """The paper's headline form: per model, attack, defense and trigger set, each metric averaged over the
    datasets every seed of the group has (per seed), then mean ± std over the seeds, in percent.
    ``datasets`` names what was averaged (a dataset only some seeds have is left out of the average).
    ``drop_collapsed`` first removes collapsed cells, so a dataset any seed collapsed on leaves the average."""
    keys = ["model", "attack", "defense", "preset", "triggers"]
    if drop_collapsed:
        cells = cells[cells["collapsed"] != True]  # noqa: E712
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


def collapse_markdown(cells: pd.DataFrame) -> str:
    """The collapsed cells of a store, one row per cell (trigger sets share the fine-tuned classifier)."""
    flagged = cells[cells["collapsed"] == True]  # noqa: E712
    flagged = flagged.drop_duplicates(["model", "attack", "defense", "dataset", "preset", "seed"])
    unknown = int(cells["collapsed"].isna().sum())
    head = ("# Collapsed cells\n\nA fine-tuned classifier whose clean accuracy is within 0.5 points of its test "
            "split's majority-label share (`bench.metrics.collapsed`) predicts about one class for every input; "
            "its ASR towards that class counts the collapse, not a backdoor. `clean_top_share` is the share of "
            "clean test inputs given its most frequent prediction (recorded by cells run since it was added).\n\n"
            f"{len(flagged)} of {len(cells.drop_duplicates(['model', 'attack', 'defense', 'dataset', 'preset', 'seed']))}"
            " cells collapsed" + (f"; {unknown} records with no known majority share" if unknown else "") + ".\n\n")
    if flagged.empty:
        return head
    cols = ["model", "attack", "defense", "dataset", "seed", "cacc", "majority_share", "clean_top_share", "aasr"]
    return head + markdown_table(flagged[cols].round(3))


def write_tables(records: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """cells.csv, per_trigger.csv and the mean ± std summary as Markdown, LaTeX, CSV and HTML, the headline
    averages and the collapsed cells (records without a majority share get it from the data mirror)."""
    out.mkdir(parents=True, exist_ok=True)
    cells = cells_frame(with_majority_share(records))
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
    kept = headline_frame(cells, drop_collapsed=True)
    paths.update(headline_md=out / "headline.md", headline_tex=out / "headline.tex",
                 headline_csv=out / "headline.csv", collapse_md=out / "collapse.md")
    hnote = ("Averaged over the datasets named (per seed), then mean ± std over seeds, in %: the form of the "
             "RECIPE paper's headline (average ASR over three datasets).\n\n")
    knote = ("\n## Collapsed cells left out\n\nThe same with every collapsed cell removed first (collapse.md): a "
             "dataset on which any seed of the group collapsed leaves that group's average.\n\n")
    atomic_write_text(paths["headline_md"], hnote + markdown_table(headline_display(head))
                      + knote + markdown_table(headline_display(kept)))
    atomic_write_text(paths["headline_tex"], headline_display(head).to_latex(index=False, escape=True)
                      + "% collapsed cells left out\n" + headline_display(kept).to_latex(index=False, escape=True))
    both = pd.concat([head.assign(cells="all"), kept.assign(cells="collapsed out")], ignore_index=True)
    atomic_write_text(paths["headline_csv"], both.to_csv(index=False, float_format="%.4g"))
    atomic_write_text(paths["collapse_md"], collapse_markdown(cells))
    mat = matrix_frame(summary)
    note = ("Cells: CACC / AASR / MASR in %, mean ± std over seeds. Rows with attack `none` are the "
            f"clean-model control for the named trigger set. {COLLAPSE_NOTE}\n\n")
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


def terminal_table(paths: dict[str, Path], max_width: int = 160) -> str:
    """What ``ptmbench run`` prints at its end: the per-dataset matrix table when it fits ``max_width``
    characters, else the headline (averages over datasets) and where the full table lies."""
    matrix = paths["matrix_md"].read_text()
    width = max((len(line) for line in matrix.splitlines() if line.startswith("|")), default=0)
    if width <= max_width:
        return matrix
    head = paths["headline_md"].read_text().split("\n## ", 1)[0].rstrip("\n")
    return (f"{head}\n\nThe per-dataset table ({width} characters wide) is "
            f"{paths['matrix_md']}; collapsed cells are left out in {paths['headline_md']}.\n")
