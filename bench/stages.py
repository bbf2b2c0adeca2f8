"""Stages of a matrix cell.  ``finetune_eval`` is the last one: fine-tune a PTM on a dataset with a seed,
evaluate clean accuracy and every trigger set, and return one record per trigger set."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

import bench
from bench.context import RunContext
from bench.evaluate import evaluate
from bench.finetune import FinetunePreset, finetune
from bench.ptm import PTM


def versions() -> dict[str, str]:
    return {"ptmbench": bench.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


@dataclass
class CellSpec:
    """Who a record belongs to: the lineage names and keys of the PTM being fine-tuned."""

    model: str
    dataset: str
    seed: int
    preset: FinetunePreset
    attack: str = "none"
    defense: str = "none"
    attack_config: dict[str, Any] = field(default_factory=dict)
    defense_config: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)


def finetune_eval(ptm: PTM, cell: CellSpec, trigger_sets: dict[str, list[Any]], ctx: RunContext,
                  cache_dir: Path | None) -> list[dict[str, Any]]:
    from bench.data import spec as dataset_spec

    dspec = dataset_spec(cell.dataset)
    adapter = ptm.adapter
    p = cell.preset
    train_data = adapter.load_split(ptm, cell.dataset, "train", p.max_train, cache_dir)
    val = adapter.load_split(ptm, cell.dataset, "validation", p.max_eval, cache_dir)
    test = adapter.load_split(ptm, cell.dataset, "test", p.max_eval, cache_dir)
    for s in trigger_sets.values():  # fail on an unusable trigger before any training
        for t in s:
            if hasattr(t, "token_id"):
                t.token_id(ptm.processor)
    ft = finetune(ptm, train_data, dspec.num_classes, p, ctx)
    ev = evaluate(ft.model, val, test, trigger_sets, dspec.num_classes, p, ctx)
    records = []
    for set_name, m in ev.by_set.items():
        d = m.to_dict()
        rec = {
            "model": cell.model, "attack": cell.attack, "defense": cell.defense, "dataset": cell.dataset,
            "seed": cell.seed, "preset": p.name, "triggers": set_name,
            "cacc": d["cacc"], "aasr": d["aasr"], "masr": d["masr"], "casr": d["casr"], "alc": d["alc"],
            "alc_threshold": d["alc_threshold"], "per_trigger": d["per_trigger"],
            "n_train": ft.n_train, "n_val": d["n_val"], "n_test": d["n_test"], "num_classes": dspec.num_classes,
            "attack_config": cell.attack_config, "defense_config": cell.defense_config,
            "finetune_config": p.to_dict(), "finetune_train": ft.train.summary(),
            "wall_s": {**cell.wall, "finetune": round(ft.train.wall_s, 2), "evaluate": round(ev.wall_s, 2)},
            "keys": cell.keys, "device": ctx.device, "precision": ctx.precision, "versions": versions(),
            "lineage": ptm.lineage,
        }
        records.append(rec)
    return records
