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
from bench.checkpoint import DEFAULT_EVERY_S
from bench.context import RunContext, cpu_description
from bench.evaluate import evaluate
from bench.finetune import FinetunePreset, finetune
from bench.ptm import PTM
from bench.records import SCHEMA
from bench.triggers import TextTrigger


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
    attack_method: str | None = None  # registry names when attack/defense above are matrix labels
    defense_method: str | None = None
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
            if isinstance(t, TextTrigger):
                t.token_id(ptm.processor)
    ft = finetune(ptm, train_data, dspec.num_classes, p, ctx)
    ev = evaluate(ft.model, val, test, trigger_sets, dspec.num_classes, p, ctx, dataset=cell.dataset)
    records, cpu = [], cpu_description()
    for set_name, m in ev.by_set.items():
        d = m.to_dict()
        rec = {
            "schema": SCHEMA,
            "model": cell.model, "attack": cell.attack, "defense": cell.defense, "dataset": cell.dataset,
            "attack_method": cell.attack_method or cell.attack,
            "defense_method": cell.defense_method or cell.defense,
            "seed": cell.seed, "preset": p.name, "triggers": set_name,
            "cacc": d["cacc"], "aasr": d["aasr"], "masr": d["masr"], "casr": d["casr"], "alc": d["alc"],
            "alc_threshold": d["alc_threshold"], "per_trigger": d["per_trigger"],
            "n_train": ft.n_train, "n_val": d["n_val"], "n_test": d["n_test"], "num_classes": dspec.num_classes,
            "majority_share": d["majority_share"], "clean_top_share": d["clean_top_share"],
            "attack_config": cell.attack_config, "defense_config": cell.defense_config,
            "finetune_config": p.to_dict(), "finetune_train": ft.train.summary(),
            "wall_s": {**cell.wall, "finetune": round(ft.train.wall_s, 2), "evaluate": round(ev.wall_s, 2)},
            "keys": cell.keys, "device": ctx.device, "precision": ctx.precision, "determinism": ctx.determinism(),
            "versions": versions(),
            "threads": stage_threads(ptm), "cpu": cpu,
            "lineage": ptm.lineage,
            **getattr(dspec, "record_fields", {}),  # your own data: "data" (source, sha256, label map)
        }
        if ctx.regime:  # only off the default regime, so the record ids of default results stay as they were
            rec["regime"] = ctx.regime
        records.append(rec)
    return records


def stage_threads(ptm: PTM) -> dict[str, int]:
    """The torch thread count of every stage behind a record (the PTM's build, attack and defense, from its
    artifacts, and this cell): results are bit-identical only across runs with the same counts, since the
    order of a matmul's partial sums, and with it bf16 rounding, depends on them."""
    out = {k: ptm.info[f"{k}_threads"] for k in ("zoo", "attack", "defense") if f"{k}_threads" in ptm.info}
    return {**out, "cell": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------- DAG nodes
@dataclass(frozen=True)
class StageEnv:
    """Where a node reads and writes, and how it runs; plain values so it crosses process/Ray boundaries."""

    store: str
    results: str
    cache: str
    device: str = "cpu"
    precision: str = "auto"
    progress: bool = False
    threads: int | None = None
    reference_paths: bool = False
    checkpoint_every_s: float | None = DEFAULT_EVERY_S
    deterministic: bool = False


def _materialize(source: dict[str, Any], env: StageEnv, ctx: RunContext) -> PTM:
    from bench.artifacts import ArtifactStore
    from bench.ptm import load_ptm
    from bench.zoo import Zoo

    store = ArtifactStore(env.store)
    if source["kind"] == "zoo":
        return Zoo(store, Path(env.cache)).load(source["model"], ctx)[0]
    return load_ptm(store.require(source["key"])).to(ctx.device)


def run_node(payload: dict[str, Any], env: StageEnv) -> dict[str, Any]:
    """Run one DAG node (idempotent: a valid artifact or existing records make it a no-op)."""
    import time

    from bench.artifacts import ArtifactStore
    from bench.registry import get

    store = ArtifactStore(env.store)
    stage = payload["stage"]
    seed = payload.get("seed", payload.get("ident", {}).get("seed", 0))
    ctx = RunContext(seed=seed, device=env.device, precision=env.precision, progress=env.progress,
                     threads=env.threads, reference_paths=env.reference_paths,
                     checkpoint_every_s=env.checkpoint_every_s, deterministic=env.deterministic)
    t0 = time.perf_counter()
    computed = True
    if stage == "zoo":
        from bench.zoo import Zoo

        was_valid = store.is_valid(payload["key"])
        Zoo(store, Path(env.cache)).load(payload["model"], ctx)
        computed = not was_valid
    elif stage in ("attack", "defense"):
        method = get(stage, payload["method"]).build(payload["preset"], payload["config"])
        method.check_context(ctx)  # e.g. --reference-paths for a method that does not honour them: before any work

        def write(d: Path) -> None:
            from bench.perf.memory import PeakRss

            with PeakRss() as mem:
                ptm = _materialize(payload["source"], env, ctx)
                method.check_modality(ptm)
                t = time.perf_counter()
                if stage == "attack":
                    out = method.implant(ptm, ctx, Path(env.cache))
                else:
                    out = method.purify(ptm, ctx, Path(env.cache))
            out.info[f"{stage}_wall_s"] = round(time.perf_counter() - t, 2)
            out.info[f"{stage}_threads"] = torch.get_num_threads()  # bf16 rounding depends on it
            if mem.peak is not None:  # the process's resident memory while the stage ran
                out.info[f"{stage}_peak_rss_mib"] = round(mem.peak / 2**20)
            out.info[f"{stage}_key"] = payload["key"]
            out.save(d)

        with ctx.checkpointed(store.checkpoint_dir(payload["key"])):  # deleted once the artifact is in place
            _, computed = store.get_or_create(payload["key"], write, {
                "stage": stage, "method": payload["method"], "config": method.config_dict(), "seed": seed,
                "version": method.version, "source": payload["source"],
                **({"regime": ctx.regime} if ctx.regime else {})})
    elif stage == "cell":
        computed = _run_cell(payload, env, ctx, store)
    else:
        raise ValueError(f"unknown stage {stage}")
    return {"key": payload["key"], "wall_s": round(time.perf_counter() - t0, 2), "computed": computed}


def _run_cell(payload: dict[str, Any], env: StageEnv, ctx: RunContext, store: Any) -> bool:
    """Fine-tune and score one cell under its lock; False when another runner already wrote its records."""
    from bench.artifacts import weights_digest
    from bench.finetune import get_preset
    from bench.records import ResultsStore, cell_identity
    from bench.registry import get

    ident = payload["ident"]  # registry names; rident: the same with the matrix labels, as records carry it
    rident = cell_identity(payload)
    results = ResultsStore(env.results)
    with store.lock(payload["key"]):
        ptm = _materialize(payload["source"], env, ctx)
        from bench.triggers import named_trigger_sets

        trig = payload["triggers"]
        sets = named_trigger_sets(trig["named"], ptm.modality, "control_triggers")
        for a in trig["attacks"]:  # the attack's own triggers (for no-attack cells: the clean-model control)
            attack = get("attack", a["name"]).build(a["preset"], a["config"])
            sets.setdefault(attack.trigger_set, attack.triggers(ptm))
        todo = {k: v for k, v in sets.items() if not results.has({**rident, "triggers": k})}
        if not todo:
            return False
        preset = get_preset(ptm.modality, ident["preset"],
                            **payload.get("finetune", {}))
        wall, weights = {}, {}  # each stage's wall time, and a fingerprint of its weights (weights_digest)
        for stage_key in ("zoo", "attack", "defense"):
            k = payload["keys"].get(stage_key)
            if not k or (stage_key != "zoo" and ident[stage_key] == "none") or not store.is_valid(k):
                continue
            meta = store.meta(k)
            if stage_key != "zoo":
                wall[stage_key] = meta.get("wall_s")
            if digest := weights_digest(meta):
                weights[stage_key] = digest
        cell = CellSpec(model=ident["model"], dataset=ident["dataset"], seed=ident["seed"], preset=preset,
                        attack=rident["attack"], defense=rident["defense"], attack_method=ident["attack"],
                        defense_method=ident["defense"], attack_config=ident["attack_config"],
                        defense_config=ident["defense_config"], keys=payload["keys"], wall=wall)
        from bench.perf.memory import PeakRss

        with ctx.checkpointed(store.checkpoint_dir(payload["key"])):  # deleted once the records are written
            with PeakRss() as mem:
                records = finetune_eval(ptm, cell, todo, ctx, Path(env.cache))
            # the process's resident memory while each stage ran (MiB); attack/defense from their artifacts
            rss = {k: ptm.info[f"{k}_peak_rss_mib"] for k in ("attack", "defense")
                   if ident[k] != "none" and f"{k}_peak_rss_mib" in ptm.info}
            if mem.peak is not None:
                rss["cell"] = round(mem.peak / 2**20)
            for rec in records:
                rec["peak_rss_mib"] = rss
                rec["weights"] = weights
                results.write(rec)
    return True
