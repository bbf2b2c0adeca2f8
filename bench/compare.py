"""``ptmbench compare RUN REFERENCE``: two results stores side by side, cell by cell.

A cell is aligned by its identity (model, attack, defense, dataset, preset, seed, trigger set) and, where the
configs behind it are the same, by those too; the numerical regime (bf16 fast paths, fp32, reference paths) is
not part of the alignment, so a run on a CPU without bf16 still lines up with a bf16 reference and the
difference is reported with a note.  Reads records only; writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.artifacts import canonical_json
from bench.errors import PtmbenchError
from bench.records import check_schema

ALIGN = ("model", "attack", "defense", "dataset", "preset", "seed", "triggers")
SHOWN = (("cacc", "CACC"), ("aasr", "AASR"), ("masr", "MASR"))
LISTED = 10  # cells named per "only in" line


def load_records(root: Path | str, role: str) -> list[dict[str, Any]]:
    """The records of the results directory ``root``; ``role`` (RUN, REFERENCE) names it in errors."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise PtmbenchError(f"{role} {root} {what}; give a results directory holding records/ (e.g. results/demo)")
    files = sorted((root / "records").glob("*.json"))
    if not files:
        raise PtmbenchError(f"{role} {root} holds no records ({root / 'records'}/*.json); run a matrix into it "
                            "first or give another results directory")
    out = []
    for f in files:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PtmbenchError(f"{role} record {f} is unreadable ({str(e).splitlines()[0]}); restore or delete "
                                "it") from e
        if not isinstance(rec, dict) or any(k not in rec for k in ALIGN):
            missing = [k for k in ALIGN if not isinstance(rec, dict) or k not in rec]
            raise PtmbenchError(f"{role} record {f} is not a cell record (no {', '.join(missing)}); restore or "
                                "delete it")
        check_schema(rec, f)
        out.append(rec)
    return out


def _identity(rec: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(rec[k]) for k in ALIGN)


def _configs(rec: dict[str, Any]) -> str:
    cfg = {k: rec.get(k) for k in ("attack_config", "defense_config", "finetune_config")}
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:8]


def align(run: list[dict[str, Any]], ref: list[dict[str, Any]]
          ) -> tuple[list[tuple[dict, dict, bool]], list[dict], list[dict]]:
    """(pairs, only in run, only in reference); a pair's flag is True where the two cells share their identity
    but not their configs (matched only because each store holds one such cell)."""
    def keyed(recs: list[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
        return {(*_identity(r), _configs(r)): r for r in recs}

    a, b = keyed(run), keyed(ref)
    pairs = [(a[k], b[k], False) for k in sorted(a.keys() & b.keys())]
    left: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    right: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for k in sorted(a.keys() - b.keys()):
        left[k[:-1]].append(a[k])
    for k in sorted(b.keys() - a.keys()):
        right[k[:-1]].append(b[k])
    for ident in sorted(left.keys() & right.keys()):
        if len(left[ident]) == 1 and len(right[ident]) == 1:
            pairs.append((left.pop(ident)[0], right.pop(ident)[0], True))
    pairs.sort(key=lambda p: _identity(p[0]))
    only_run = [r for rs in left.values() for r in rs]
    only_ref = [r for rs in right.values() for r in rs]
    return pairs, only_run, only_ref


def _pct(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else 100 * x


def _cell(run: Any, ref: Any) -> tuple[str, float | None]:
    a, b = _pct(run), _pct(ref)
    show = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
    if a is None or b is None:
        return f"{show(a)} / {show(b)}", None
    d = a - b
    return f"{show(a)} / {show(b)} ({'0.0' if round(d, 1) == 0 else f'{d:+.1f}'})", d


def _regime(recs: list[dict[str, Any]]) -> str:
    names = sorted({str(r.get("regime") or "bf16 fast-path") for r in recs})
    return ", ".join(names)


def _name(rec: dict[str, Any]) -> str:
    return "/".join(str(rec[k]) for k in ("model", "attack", "defense", "dataset")) + \
        f"/s{rec['seed']}/{rec['triggers']}" + (f" ({rec['preset']})" if rec.get("preset") else "")


def compare_stores(run_dir: Path | str, ref_dir: Path | str) -> str:
    """The comparison as Markdown: one row per aligned cell with each metric as 'run / reference (difference)'
    in percent and points, then the largest differences and the cells only one side holds."""
    run, ref = load_records(run_dir, "RUN"), load_records(ref_dir, "REFERENCE")
    pairs, only_run, only_ref = align(run, ref)
    if not pairs:
        raise PtmbenchError(f"no cell of RUN {run_dir} is in REFERENCE {ref_dir} (e.g. RUN has {_name(run[0])}, "
                            f"REFERENCE {_name(ref[0])}); compare two results of the same matrix")
    cols = [*ALIGN, *(f"{title} run / ref (Δ)" for _, title in SHOWN)]
    lines = [f"Cells of {run_dir} (run) against {ref_dir} (ref): CACC / AASR / MASR in %, difference run − ref "
             "in points.", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    worst: dict[str, float] = {}
    config_notes = 0
    for a, b, differs in pairs:
        row = [str(a[k]) for k in ALIGN]
        for m, title in SHOWN:
            text, d = _cell(a.get(m), b.get(m))
            row.append(text + (" ‡" if differs else ""))
            if d is not None:
                worst[title] = max(worst.get(title, 0.0), abs(d))
        config_notes += differs
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"{len(pairs)} cells in both; largest difference: "
                 + ", ".join(f"{t} {worst[t]:.1f}" for _, t in SHOWN if t in worst) + " points.")
    if config_notes:
        lines.append(f"‡ {config_notes} cell(s) share their identity but not their attack, defense or fine-tuning "
                     "config (the reference was made by another version of the matrix or preset).")
    if (rr := _regime(run)) != (fr := _regime(ref)):
        lines.append(f"Numerical regime: run {rr}, reference {fr}; the differences include it.")
    for side, cells in (("RUN", only_run), ("REFERENCE", only_ref)):
        if cells:
            more = f", … ({len(cells) - LISTED} more)" if len(cells) > LISTED else ""
            lines.append(f"Only in {side} ({len(cells)}): " + ", ".join(_name(r) for r in cells[:LISTED]) + more)
    return "\n".join(lines) + "\n"
