"""Matrix spec (YAML -> typed dataclasses) and its expansion into a DAG of content-keyed stages.

zoo(model) -> attack(ptm) -> defense(ptm) -> cell(finetune + evaluate, per dataset and seed).
Identical stages share one key and run once ("attack once, defend many, fine-tune per dataset").
"""

from __future__ import annotations

import importlib.resources
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.artifacts import ArtifactStore, content_key
from bench.config import from_dict
from bench.errors import PtmbenchError
from bench.records import ResultsStore, record_id
from bench.registry import get

NONE = "none"


@dataclass(frozen=True)
class MethodEntry:
    """An attack or defense of the matrix: registry name, preset (default: the matrix's), config overrides."""

    name: str
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MatrixSpec:
    name: str
    models: list[str]
    datasets: list[str]
    attacks: list[Any] = field(default_factory=lambda: [NONE])
    defenses: list[Any] = field(default_factory=lambda: [NONE])
    seeds: list[int] = field(default_factory=lambda: [0])
    preset: str = "demo"
    finetune: dict[str, Any] = field(default_factory=dict)
    control_triggers: list[str] = field(default_factory=list)
    attack_seed: int = 0
    defense_seed: int = 0
    precision: str = "auto"
    device: str = "cpu"
    description: str = ""

    def validate(self, where: str) -> None:
        for key in ("models", "datasets", "seeds"):
            if not getattr(self, key):
                raise PtmbenchError(f"{where}.{key}: must list at least one entry")
        if len(set(self.seeds)) != len(self.seeds):
            raise PtmbenchError(f"{where}.seeds: repeated seed in {self.seeds}")

    def method_entries(self, kind: str) -> list[MethodEntry]:
        raw = self.attacks if kind == "attack" else self.defenses
        out = []
        for i, item in enumerate(raw):
            where = f"{self.name}.{kind}s[{i}]"
            if isinstance(item, str):
                entry = MethodEntry(item)
            elif isinstance(item, dict):
                entry = from_dict(MethodEntry, item, where)
            else:
                raise PtmbenchError(f"{where}: expected a name or a mapping with 'name', got {item!r}")
            if entry.name != NONE:
                get(kind, entry.name)  # unknown names fail with the known ones
            out.append(entry)
        return out


def builtin_config(name: str) -> Path | None:
    ref = importlib.resources.files("bench.configs") / f"{name}.yaml"
    return Path(str(ref)) if ref.is_file() else None


def load_matrix(source: str | Path) -> MatrixSpec:
    """A matrix from a YAML file, or a built-in name (``smoke``, ``demo``, …) shipped in bench/configs."""
    p = Path(source)
    if not p.is_file():
        b = builtin_config(str(source).removesuffix(".yaml").split("/")[-1]) if not p.exists() else None
        if b is None:
            raise PtmbenchError(f"matrix file {source} not found; give a YAML path or a built-in name "
                                "(smoke, demo)")
        p = b
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise PtmbenchError(f"{p}: malformed YAML{at}: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise PtmbenchError(f"{p}: a matrix file must be a mapping (models, attacks, defenses, datasets, seeds)")
    data.setdefault("name", p.stem)
    spec = from_dict(MatrixSpec, data, p.stem)
    spec.method_entries("attack")
    spec.method_entries("defense")
    from bench.data import spec as dataset_spec

    for d in spec.datasets:
        if dataset_spec(d).role != "downstream":
            raise PtmbenchError(f"{p.stem}.datasets: {d!r} is an auxiliary corpus, not a downstream dataset")
    from bench.finetune import get_preset

    get_preset("text", spec.preset, **spec.finetune)  # keys, types and ranges of the overrides
    return spec


@dataclass
class Node:
    """One stage of the DAG; ``payload`` is plain JSON so any executor (process, Ray) can run it."""

    key: str
    stage: str
    label: str
    deps: list[str]
    payload: dict[str, Any]


def _method(kind: str, entry: MethodEntry, default_preset: str) -> Any:
    cls = get(kind, entry.name)
    return cls.build(entry.preset or default_preset, entry.config, where=f"{kind} {entry.name}")


DATA_MODALITY = {"text": "text", "image": "vision"}  # dataset modality -> PTM modality


def _dir_modality(p: Path) -> str:
    import json

    from bench.ptm import PTM_FILE

    f = p / PTM_FILE
    return json.loads(f.read_text()).get("modality", "text") if f.is_file() else "text"


def plan(spec: MatrixSpec, store: ArtifactStore) -> list[Node]:
    """Expand the matrix into nodes in dependency order, deduplicated by key."""
    from bench.data import spec as dataset_spec
    from bench.finetune import get_preset
    from bench.triggers import DEFAULT_CONTROL_SETS
    from bench.zoo import Zoo

    nodes: dict[str, Node] = {}
    attacks = spec.method_entries("attack")
    defenses = spec.method_entries("defense")
    attack_objs = {e.name: _method("attack", e, spec.preset) for e in attacks if e.name != NONE}
    control_attacks = [{"name": e.name, "preset": e.preset or spec.preset, "config": e.config}
                       for e in attacks if e.name != NONE]
    zoo = Zoo(store, store.root.parent)
    for model in spec.models:
        mspec = get("model", model) if not Path(model).is_dir() else None
        modality = mspec.modality if mspec else _dir_modality(Path(model))
        for name, obj in attack_objs.items():
            if modality not in obj.modalities:
                raise PtmbenchError(f"{spec.name}: attack {name!r} supports {', '.join(obj.modalities)} PTMs, and "
                                    f"model {model!r} is {modality}; split the matrix by modality")
        for ds in spec.datasets:
            if DATA_MODALITY[dataset_spec(ds).modality] != modality:
                raise PtmbenchError(f"{spec.name}.datasets: {ds!r} is an {dataset_spec(ds).modality} dataset and "
                                    f"model {model!r} is {modality}; split the matrix by modality")
        named = list(spec.control_triggers) or ([] if attack_objs else DEFAULT_CONTROL_SETS[modality])
        control_sets = sorted({*named, *(a.trigger_set for a in attack_objs.values())})
        preset = get_preset(modality, spec.preset, **spec.finetune)
        zkey = zoo.key(model) if mspec else content_key("zoo", "local", {"path": str(Path(model).resolve())},
                                                        None, None, "1")
        zoo_node = None
        if mspec is not None and mspec.cached:
            zoo_node = Node(zkey, "zoo", f"zoo {model}", [], {"stage": "zoo", "model": model, "key": zkey})
            nodes.setdefault(zkey, zoo_node)
        root = {"kind": "zoo", "model": model}
        for a in attacks:
            if a.name == NONE:
                akey, asrc, adeps, acfg = zkey, root, ([zkey] if zoo_node else []), {}
                trig = {"attacks": control_attacks, "named": named, "sets": control_sets}
            else:
                obj = attack_objs[a.name]
                acfg = obj.config_dict()
                akey = content_key("attack", a.name, acfg, zkey, spec.attack_seed, obj.version)
                nodes.setdefault(akey, Node(akey, "attack", f"attack {a.name} on {model}",
                                            [zkey] if zoo_node else [],
                                            {"stage": "attack", "method": a.name, "preset": a.preset or spec.preset,
                                             "config": a.config, "source": root, "seed": spec.attack_seed,
                                             "key": akey}))
                asrc, adeps = {"kind": "artifact", "key": akey}, [akey]
                trig = {"attacks": [{"name": a.name, "preset": a.preset or spec.preset, "config": a.config}],
                        "named": [], "sets": [obj.trigger_set]}
            for d in defenses:
                if d.name == NONE:
                    dkey, dsrc, ddeps, dcfg = akey, asrc, adeps, {}
                else:
                    dobj = _method("defense", d, spec.preset)
                    dcfg = dobj.config_dict()
                    dkey = content_key("defense", d.name, dcfg, akey, spec.defense_seed, dobj.version)
                    nodes.setdefault(dkey, Node(dkey, "defense", f"defense {d.name} <- {a.name} on {model}", adeps,
                                                {"stage": "defense", "method": d.name,
                                                 "preset": d.preset or spec.preset, "config": d.config,
                                                 "source": asrc, "seed": spec.defense_seed, "key": dkey}))
                    dsrc, ddeps = {"kind": "artifact", "key": dkey}, [dkey]
                for ds in spec.datasets:
                    for seed in spec.seeds:
                        ident = {"model": model, "attack": a.name, "defense": d.name, "dataset": ds, "seed": seed,
                                 "preset": preset.name, "attack_config": acfg, "defense_config": dcfg,
                                 "finetune_config": preset.to_dict()}
                        ckey = content_key("cell", f"{a.name}.{d.name}.{ds}", ident, dkey, seed, "1")
                        nodes.setdefault(ckey, Node(ckey, "cell", f"cell {model}/{a.name}/{d.name}/{ds}/s{seed}",
                                                    ddeps, {"stage": "cell", "ident": ident, "source": dsrc,
                                                            "triggers": trig, "finetune": spec.finetune,
                                                            "keys": {"zoo": zkey, "attack": akey, "defense": dkey},
                                                            "key": ckey}))
    return list(nodes.values())


SELECT_KEYS = ("model", "attack", "defense", "dataset", "seed")


def parse_only(items: list[str]) -> dict[str, set[str]]:
    """``["dataset=sst2,agnews", "seed=0"]`` -> {"dataset": {"sst2", "agnews"}, "seed": {"0"}}."""
    out: dict[str, set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in SELECT_KEYS or not values.strip():
            raise PtmbenchError(f"--only {item!r}: expected KEY=V[,V...] with KEY one of {', '.join(SELECT_KEYS)}")
        out.setdefault(key, set()).update(v.strip() for v in values.split(",") if v.strip())
    return out


def select(nodes: list[Node], only: dict[str, set[str]]) -> list[Node]:
    """The cells matching every ``only`` filter, and the stages they depend on (in plan order)."""
    if not only:
        return nodes
    by_key = {n.key: n for n in nodes}
    keep: set[str] = set()
    for n in nodes:
        if n.stage == "cell" and all(str(n.payload["ident"][k]) in v for k, v in only.items()):
            stack = [n.key]
            while stack:
                k = stack.pop()
                if k not in keep:
                    keep.add(k)
                    stack.extend(by_key[k].deps)
    if not keep:
        wanted = " ".join(f"{k}={','.join(sorted(v))}" for k, v in only.items())
        raise PtmbenchError(f"--only {wanted} selects no cell of this matrix; check the values against the matrix file")
    return [n for n in nodes if n.key in keep]


def expected_record_ids(node: Node, trigger_set_names: list[str]) -> list[str]:
    return [record_id({**node.payload["ident"], "triggers": t}) for t in trigger_set_names]


def cell_trigger_sets(node: Node) -> list[str]:
    return list(node.payload["triggers"]["sets"])


def is_done(node: Node, store: ArtifactStore, results: ResultsStore) -> bool:
    if node.stage == "cell":
        return all(results.records_dir.joinpath(f"{rid}.json").is_file()
                   for rid in expected_record_ids(node, cell_trigger_sets(node)))
    return store.is_valid(node.key)


def spec_dict(spec: MatrixSpec) -> dict[str, Any]:
    return asdict(spec)
