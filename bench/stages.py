"""Stages of a matrix cell.  ``finetune_eval`` is the last one: fine-tune a PTM on a dataset with a seed,
evaluate clean accuracy and every trigger set, and return one record per trigger set."""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

import bench
from bench.artifacts import regime_fields
from bench.checkpoint import DEFAULT_EVERY_S
from bench.context import RunContext, cpu_description
from bench.evaluate import evaluate
from bench.finetune import FinetunePreset, finetune
from bench.nodes import CellStage, MethodStage, Source, StageNode, ZooSource, ZooStage
from bench.ptm import PTM
from bench.records import SCHEMA, CellIdentity
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

    def identity(self, regime: str | None) -> CellIdentity:
        """The identity of this cell's records under the numerical ``regime`` (registry names; the labels are
        :attr:`attack` and :attr:`defense`)."""
        return CellIdentity(model=self.model, attack=self.attack_method or self.attack,
                            defense=self.defense_method or self.defense, dataset=self.dataset, seed=self.seed,
                            preset=self.preset.name, attack_config=self.attack_config,
                            defense_config=self.defense_config, finetune_config=self.preset.to_dict(),
                            regime=regime)


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
    records, cpu, ident = [], cpu_description(), cell.identity(ctx.regime)
    for set_name, m in ev.by_set.items():
        d = m.to_dict()
        rec = {
            "schema": SCHEMA,
            **ident.record_key(set_name, cell.attack, cell.defense),  # regime: only off the default
            "cacc": d["cacc"], "aasr": d["aasr"], "masr": d["masr"], "casr": d["casr"], "alc": d["alc"],
            "alc_threshold": d["alc_threshold"], "per_trigger": d["per_trigger"],
            "n_train": ft.n_train, "n_val": d["n_val"], "n_test": d["n_test"], "num_classes": dspec.num_classes,
            "majority_share": d["majority_share"], "clean_top_share": d["clean_top_share"],
            "finetune_train": ft.train.summary(),
            "wall_s": {**cell.wall, "finetune": round(ft.train.wall_s, 2), "evaluate": round(ev.wall_s, 2)},
            "keys": cell.keys, "device": ctx.device, "precision": ctx.precision, "determinism": ctx.determinism(),
            "versions": versions(),
            "threads": stage_threads(ptm), "cpu": cpu,
            "lineage": ptm.lineage,
            **getattr(dspec, "record_fields", {}),  # your own data: "data" (source, sha256, label map)
        }
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


def _materialize(source: Source, env: StageEnv, ctx: RunContext) -> PTM:
    from bench.artifacts import ArtifactStore
    from bench.ptm import load_ptm
    from bench.zoo import Zoo

    store = ArtifactStore(env.store)
    if isinstance(source, ZooSource):
        return Zoo(store, Path(env.cache)).load(source.model, ctx)[0]
    return load_ptm(store.require(source.key)).to(ctx.device)


def run_node(node: StageNode, env: StageEnv) -> dict[str, Any]:
    """Run one DAG node (idempotent: a valid artifact or existing records make it a no-op)."""
    import time

    from bench.artifacts import ArtifactStore

    ctx = RunContext(seed=node.seed, device=env.device, precision=env.precision, progress=env.progress,
                     threads=env.threads, reference_paths=env.reference_paths,
                     checkpoint_every_s=env.checkpoint_every_s, deterministic=env.deterministic)
    t0 = time.perf_counter()
    computed = _NodeRun(env, ctx, ArtifactStore(env.store)).run(node)
    return {"key": node.key, "wall_s": round(time.perf_counter() - t0, 2), "computed": computed}


@dataclass
class _NodeRun:
    """One node's run: where it reads and writes, under which context.  :meth:`run` makes what the node makes
    (by the node's type) and says whether this call computed it (False: it was cached, or another runner made
    it meanwhile)."""

    env: StageEnv
    ctx: RunContext
    store: Any

    @functools.singledispatchmethod
    def run(self, node: Any) -> bool:
        raise TypeError(f"not a stage node: {node!r}")

    @run.register(ZooStage)
    def _zoo(self, node: ZooStage) -> bool:
        from bench.zoo import Zoo

        was_valid = self.store.is_valid(node.key)
        Zoo(self.store, Path(self.env.cache)).load(node.model, self.ctx)
        return not was_valid

    @run.register(MethodStage)
    def _method(self, node: MethodStage) -> bool:
        import time

        from bench.registry import get

        env, ctx, stage = self.env, self.ctx, node.kind
        method = get(stage, node.method).build(node.preset, node.config)
        method.check_context(ctx)  # e.g. --reference-paths for a method that does not honour them: before any work

        def write(d: Path) -> None:
            from bench.perf.memory import PeakRss

            with PeakRss() as mem:
                ptm = _materialize(node.source, env, ctx)
                method.check_modality(ptm)
                t = time.perf_counter()
                out = node.apply(method, ptm, ctx, Path(env.cache))  # implant or purify
            out.info[f"{stage}_wall_s"] = round(time.perf_counter() - t, 2)
            out.info[f"{stage}_threads"] = torch.get_num_threads()  # bf16 rounding depends on it
            if mem.peak is not None:  # the process's resident memory while the stage ran
                out.info[f"{stage}_peak_rss_mib"] = round(mem.peak / 2**20)
            out.info[f"{stage}_key"] = node.key
            out.save(d)

        with ctx.checkpointed(self.store.checkpoint_dir(node.key)):  # deleted once the artifact is in place
            _, computed = self.store.get_or_create(node.key, write, {
                "stage": stage, "method": node.method, "config": method.config_dict(), "seed": node.seed,
                "version": method.version, "source": node.source.to_dict(), **regime_fields(ctx.regime)})
        return computed

    @run.register(CellStage)
    def _cell(self, node: CellStage) -> bool:
        """Fine-tune and score one cell under its lock; False when another runner already wrote its records."""
        from bench.artifacts import weights_digest
        from bench.finetune import get_preset
        from bench.perf.memory import PeakRss
        from bench.records import ResultsStore
        from bench.registry import get
        from bench.triggers import named_trigger_sets

        env, ctx, store = self.env, self.ctx, self.store
        ident = node.ident  # registry names; the records name the attack and defense by the node's labels
        results = ResultsStore(env.results)
        with store.lock(node.key):
            ptm = _materialize(node.source, env, ctx)
            sets = named_trigger_sets(list(node.triggers.named), ptm.modality, "control_triggers")
            for a in node.triggers.attacks:  # the attack's own triggers (no-attack cells: the clean-model control)
                attack = get("attack", a.name).build(a.preset, a.config)
                sets.setdefault(attack.trigger_set, attack.triggers(ptm))
            todo = {k: v for k, v in sets.items() if not results.has(node.record_key(k))}
            if not todo:
                return False
            preset = get_preset(ptm.modality, ident.preset, **node.finetune)
            wall, weights = {}, {}  # each stage's wall time, and a fingerprint of its weights (weights_digest)
            methods = {"attack": ident.attack, "defense": ident.defense}
            for stage_key in ("zoo", "attack", "defense"):
                k = node.keys.get(stage_key)
                if not k or methods.get(stage_key) == "none" or not store.is_valid(k):
                    continue
                meta = store.meta(k)
                if stage_key != "zoo":
                    wall[stage_key] = meta.get("wall_s")
                if digest := weights_digest(meta):
                    weights[stage_key] = digest
            cell = CellSpec(model=ident.model, dataset=ident.dataset, seed=ident.seed, preset=preset,
                            attack=node.attack_label, defense=node.defense_label, attack_method=ident.attack,
                            defense_method=ident.defense, attack_config=ident.attack_config,
                            defense_config=ident.defense_config, keys=node.keys, wall=wall)
            with ctx.checkpointed(store.checkpoint_dir(node.key)):  # deleted once the records are written
                with PeakRss() as mem:
                    records = finetune_eval(ptm, cell, todo, ctx, Path(env.cache))
                # the process's resident memory while each stage ran (MiB); attack/defense from their artifacts
                rss = {k: ptm.info[f"{k}_peak_rss_mib"] for k in ("attack", "defense")
                       if methods[k] != "none" and f"{k}_peak_rss_mib" in ptm.info}
                if mem.peak is not None:
                    rss["cell"] = round(mem.peak / 2**20)
                for rec in records:
                    rec["peak_rss_mib"] = rss
                    rec["weights"] = weights
                    results.write(rec)
        return True
