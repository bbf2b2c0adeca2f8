"""Matrix spec (YAML -> typed dataclasses) and its expansion into a DAG of content-keyed stages.

zoo(model) -> attack(ptm) -> defense(ptm) -> cell(finetune + evaluate, per dataset and seed).
Identical stages share one key and run once ("attack once, defend many, fine-tune per dataset").
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bench.artifacts import ArtifactStore, canonical_json, content_key
from bench.config import from_dict
from bench.errors import PtmbenchError
from bench.nodes import (
    ArtifactSource,
    AttackStage,
    CellStage,
    DefenseStage,
    MethodRef,
    StageNode,
    TriggerPlan,
    ZooSource,
    ZooStage,
)
from bench.records import CellIdentity, ResultsStore
from bench.registry import get

NONE = "none"


LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RE = LABEL_RE  # a matrix name is one path component (the default results store is named after it)


@dataclass(frozen=True)
class MethodEntry:
    """An attack or defense of the matrix: registry name, preset (default: the matrix's), config overrides,
    and ``label``, the name its rows/columns carry in records, tables, plots, DER and ``--only`` (default:
    the registry name).  The label is display only: it never enters a cache key or a stage identity."""

    name: str
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    by_attack: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_attack(self, attack: MethodEntry) -> MethodEntry:
        """This defense as it runs against ``attack``: ``config`` plus the ``by_attack`` overrides named by the
        attack's label or registry name (a protocol whose schedule depends on the attack: RECIPE's epochs, FP-GA's
        share).  The label stays, so the row is one defense in every table."""
        extra = self.by_attack.get(attack.display, self.by_attack.get(attack.name, {}))
        return replace(self, config={**self.config, **extra}, by_attack={}) if extra else self

    @property
    def display(self) -> str:
        return self.label if self.label is not None else self.name

    def validate(self, where: str) -> None:
        for attack, overrides in self.by_attack.items():
            if not isinstance(overrides, dict):
                raise PtmbenchError(f"{where}.by_attack.{attack}: expected a mapping of config overrides, got "
                                    f"{overrides!r}")
        if self.label is None or self.label == self.name:
            return
        if self.name == NONE:
            raise PtmbenchError(f"{where}.label: the 'none' entry is the reference row of every table and is "
                                f"always named none; drop its label {self.label!r}")
        if self.label == NONE or not LABEL_RE.fullmatch(self.label):
            raise PtmbenchError(f"{where}.label: {self.label!r} is not a usable label; use letters, digits, "
                                "'_', '.', '-' (starting with a letter or digit), and not 'none'")


@dataclass(frozen=True)
class MatrixSpec:
    name: str
    models: list[str]
    datasets: list[Any]  # names/paths, or {path: ..., text_column: ..., label_column: ...}; ids after load_matrix
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
        if not NAME_RE.fullmatch(self.name) or self.name.endswith("."):
            raise PtmbenchError(f"{where}.name: {self.name!r} is not a usable matrix name (it names the default "
                                "results folder); use letters, digits, '_', '.', '-', starting with a letter or "
                                "digit, e.g. name: my-matrix")
        for key in ("models", "datasets", "seeds"):
            if not getattr(self, key):
                raise PtmbenchError(f"{where}.{key}: must list at least one entry")
        if len(set(self.seeds)) != len(self.seeds):
            raise PtmbenchError(f"{where}.seeds: repeated seed in {self.seeds}")
        for key, values in (("seeds", self.seeds), ("attack_seed", [self.attack_seed]),
                            ("defense_seed", [self.defense_seed])):
            for v in values:
                if v < 0:
                    raise PtmbenchError(f"{where}.{key}: must be >= 0, got {v}")

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
        self._check_distinct(kind, out)
        return out

    def _check_distinct(self, kind: str, entries: list[MethodEntry]) -> None:
        """Two entries must differ in label (else their records and table rows merge) and in what they
        compute (else they share one cache key and run once, under one label only)."""

        def show(i: int, e: MethodEntry) -> str:
            extra = [f"preset {e.preset}"] if e.preset else []
            extra += [f"config {e.config}"] if e.config else []
            return f"{kind}s[{i}] ({e.name}{', ' + ', '.join(extra) if extra else ''})"

        by_label: dict[str, int] = {}
        for i, e in enumerate(entries):
            j = by_label.setdefault(e.display, i)
            if j != i:
                raise PtmbenchError(f"{self.name}: {show(j, entries[j])} and {show(i, e)} are both named "
                                    f"{e.display!r} in records and tables; give each a distinct label: "
                                    f"e.g. {{name: {e.name}, label: {e.name}-2}}")
        by_config: dict[tuple[str, str], int] = {}
        for i, e in enumerate(entries):
            cfg = {} if e.name == NONE else _method(kind, e, self.preset).config_dict()
            j = by_config.setdefault((e.name, canonical_json(cfg)), i)
            if j != i:
                raise PtmbenchError(f"{self.name}: {kind}s[{j}] ({entries[j].display!r}) and {kind}s[{i}] "
                                    f"({e.display!r}) are the same {e.name} with the same config, so they would "
                                    "run once and be recorded under one label; drop one or change its config")


def builtin_config(name: str) -> Path | None:
    ref = importlib.resources.files("bench.configs") / f"{name}.yaml"
    return Path(str(ref)) if ref.is_file() else None


def builtin_names() -> list[str]:
    """The matrices shipped in bench/configs (``ptmbench run NAME``)."""
    root = importlib.resources.files("bench.configs")
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_matrix(source: str | Path) -> MatrixSpec:
    """A matrix from a YAML file, or a built-in name (``smoke``, ``demo``, ``paper-text-s0``, …) shipped in
    bench/configs."""
    p = Path(source)
    if not p.is_file():
        b = builtin_config(str(source).removesuffix(".yaml").split("/")[-1]) if not p.exists() else None
        if b is None:
            raise PtmbenchError(f"matrix file {source} not found; give a YAML path or a built-in name "
                                f"({', '.join(builtin_names())})")
        p = b
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PtmbenchError(f"{p}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}); "
                            "save the matrix file as UTF-8") from e
    except OSError as e:
        raise PtmbenchError(f"{p}: cannot read the matrix file ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise PtmbenchError(f"{p}: malformed YAML{at}: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise PtmbenchError(f"{p}: a matrix file must be a mapping (models, attacks, defenses, datasets, seeds)")
    data.setdefault("name", p.stem)
    spec = from_dict(MatrixSpec, data, p.stem)
    from bench.userdata import entry_id

    spec = replace(spec, datasets=[entry_id(d, f"{p.stem}.datasets[{i}]") for i, d in enumerate(spec.datasets)])
    attacks = spec.method_entries("attack")
    known = {a.display for a in attacks} | {a.name for a in attacks}
    for i, d in enumerate(spec.method_entries("defense")):
        for name in d.by_attack:
            if name not in known:
                raise PtmbenchError(f"{p.stem}.defenses[{i}].by_attack: {name!r} is no attack of this matrix "
                                    f"(its attacks: {', '.join(sorted(known))})")
    from bench.data import spec as dataset_spec

    for d in spec.datasets:
        if dataset_spec(d).role != "downstream":
            raise PtmbenchError(f"{p.stem}.datasets: {d!r} is an auxiliary corpus, not a downstream dataset")
    from bench.finetune import get_preset

    get_preset("text", spec.preset, **spec.finetune)  # keys, types and ranges of the overrides
    return spec


@dataclass
class Node:
    """One stage of the DAG: what it does (``work``, a typed stage of :mod:`bench.nodes` that any executor,
    process or Ray, can ship), its description and the keys of the stages it needs."""

    label: str
    deps: list[str]
    work: StageNode

    @property
    def key(self) -> str:
        return self.work.key

    @property
    def stage(self) -> str:
        """``zoo``, ``attack``, ``defense`` or ``cell``."""
        return self.work.kind


def _method(kind: str, entry: MethodEntry, default_preset: str) -> Any:
    cls = get(kind, entry.name)
    return cls.build(entry.preset or default_preset, entry.config, where=f"{kind} {entry.name}")


def _dir_modality(p: Path) -> str:
    """The modality of a local model directory, whose weights are checked to be whole (headers only) so that a
    damaged directory is refused before any stage runs."""
    from bench.ptm import PTM_FILE, check_weights, read_description

    check_weights(p)
    return read_description(p)["modality"] if (p / PTM_FILE).is_file() else "text"


def safe_name(text: str) -> str:
    """``text`` as one file-name component (a user dataset's path becomes ``_``-joined); registered names pass
    through unchanged, so their keys stay as they were."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def data_sha256(dataset: str) -> str | None:
    """A user's dataset's files' sha256 (its cells' ``data_sha256``): an edited file is a new cell key, and
    :func:`is_done` redoes a cell whose records were made from other data (their ids, like the table rows,
    stay those of the dataset's name, so the new records replace the old).  None for registered datasets
    (their mirror files are checked against MANIFEST.json instead)."""
    from bench.data import spec as dataset_spec

    sha = (getattr(dataset_spec(dataset), "record_fields", {}).get("data") or {}).get("sha256")
    return str(sha) if sha else None


def plan(spec: MatrixSpec, store: ArtifactStore, regime: str | None = None) -> list[Node]:
    """Expand the matrix into nodes in dependency order, deduplicated by key.

    ``regime`` is the numerical regime of the run (:func:`bench.artifacts.regime`: None for bf16 on the fast
    paths, ``"fp32"``, ``"refpaths"``): off the default every key is marked with it and every cell's identity
    carries it, so artifacts and records of different regimes never share a key or a record id."""
    from bench.data import spec as dataset_spec
    from bench.finetune import get_preset
    from bench.triggers import DEFAULT_CONTROL_SETS, named_set
    from bench.zoo import Zoo

    nodes: dict[str, Node] = {}
    attacks = spec.method_entries("attack")
    defenses = spec.method_entries("defense")
    attack_objs = {e.display: _method("attack", e, spec.preset) for e in attacks if e.name != NONE}
    control_attacks = tuple(MethodRef(e.name, e.preset or spec.preset, e.config) for e in attacks if e.name != NONE)
    zoo = Zoo(store, store.root.parent)
    for model in spec.models:
        mspec = get("model", model) if not Path(model).is_dir() else None
        modality = mspec.modality if mspec else _dir_modality(Path(model))
        for label, obj in attack_objs.items():
            if modality not in obj.modalities:
                raise PtmbenchError(f"{spec.name}: attack {label!r} supports {', '.join(obj.modalities)} PTMs, and "
                                    f"model {model!r} is {modality}; split the matrix by modality")
        for ds in spec.datasets:
            if dataset_spec(ds).modality != modality:
                raise PtmbenchError(f"{spec.name}.datasets: {ds!r} is a {dataset_spec(ds).modality} dataset and "
                                    f"model {model!r} is {modality}; split the matrix by modality")
        named = list(spec.control_triggers) or ([] if attack_objs else DEFAULT_CONTROL_SETS[modality])
        for n in named:  # registered sets of this modality, or an error listing them (before any work)
            named_set(n, modality, f"{spec.name}.control_triggers")
        control_sets = sorted({*named, *(a.trigger_set for a in attack_objs.values())})
        preset = get_preset(modality, spec.preset, **spec.finetune)
        zkey = zoo.key(model, regime) if mspec else content_key("zoo", "local", {"path": str(Path(model).resolve())},
                                                                None, None, "1", regime)
        zoo_node = None
        if mspec is not None and mspec.cached:
            zoo_node = Node(f"zoo {model}", [], ZooStage(zkey, model))
            nodes.setdefault(zkey, zoo_node)
        root = ZooSource(model)
        for a in attacks:
            if a.name == NONE:
                akey, asrc, adeps, acfg = zkey, root, ([zkey] if zoo_node else []), {}
                trig = TriggerPlan(control_attacks, tuple(named), tuple(control_sets))
            else:
                obj = attack_objs[a.display]
                acfg = obj.config_dict()
                akey = content_key("attack", a.name, acfg, zkey, spec.attack_seed, obj.version, regime)
                nodes.setdefault(akey, Node(f"attack {a.display} on {model}", [zkey] if zoo_node else [],
                                            AttackStage(akey, a.name, a.preset or spec.preset, a.config, root,
                                                        spec.attack_seed)))
                asrc, adeps = ArtifactSource(akey), [akey]
                trig = TriggerPlan((MethodRef(a.name, a.preset or spec.preset, a.config),), (), (obj.trigger_set,))
            for d in defenses:
                if d.name == NONE:
                    dkey, dsrc, ddeps, dcfg = akey, asrc, adeps, {}
                else:
                    d = d.for_attack(a)
                    dobj = _method("defense", d, spec.preset)
                    dcfg = dobj.config_dict()
                    dkey = content_key("defense", d.name, dcfg, akey, spec.defense_seed, dobj.version, regime)
                    nodes.setdefault(dkey, Node(f"defense {d.display} <- {a.display} on {model}", adeps,
                                                DefenseStage(dkey, d.name, d.preset or spec.preset, d.config, asrc,
                                                             spec.defense_seed)))
                    dsrc, ddeps = ArtifactSource(dkey), [dkey]
                for ds in spec.datasets:
                    for seed in spec.seeds:
                        ident = CellIdentity(model=model, attack=a.name, defense=d.name, dataset=ds, seed=seed,
                                             preset=preset.name, attack_config=acfg, defense_config=dcfg,
                                             finetune_config=preset.to_dict(), regime=regime,
                                             data_sha256=data_sha256(ds))
                        ckey = content_key("cell", f"{a.name}.{d.name}.{safe_name(ds)}", ident.key_fields(), dkey,
                                           seed, "1", regime)
                        # the labels name the records; the key and ident above hold registry names only
                        cell = CellStage(ckey, ident, a.display, d.display, dsrc, trig, spec.finetune,
                                         {"zoo": zkey, "attack": akey, "defense": dkey})
                        nodes.setdefault(ckey, Node(f"cell {model}/{a.display}/{d.display}/{ds}/s{seed}", ddeps,
                                                    cell))
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
    """The cells matching every ``only`` filter, and the stages they depend on (in plan order).

    An attack or defense matches by its label or by its registry name (``defense=recipe`` selects every
    RECIPE variant; ``defense=recipe-lam10`` the one labelled so)."""
    if not only:
        return nodes
    by_key = {n.key: n for n in nodes}
    keep: set[str] = set()

    def matches(n: Node, k: str, wanted: set[str]) -> bool:  # by registry name or by label
        return bool({str(getattr(n.work.ident, k)), str(n.work.record_fields()[k])} & wanted)

    for n in nodes:
        if n.stage == "cell" and all(matches(n, k, v) for k, v in only.items()):
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
    return node.work.record_ids(trigger_set_names)


def cell_trigger_sets(node: Node) -> list[str]:
    return list(node.work.triggers.sets)


def is_done(node: Node, store: ArtifactStore, results: ResultsStore) -> bool:
    """A cell is done when each of its records exists — and, on a user's dataset, was made from the files as
    they are now (its ``data.sha256``): an edited file is recomputed and its records overwritten."""
    if node.stage == "cell":
        sha = node.work.ident.data_sha256
        for rid in expected_record_ids(node, cell_trigger_sets(node)):
            f = results.records_dir / f"{rid}.json"
            if not f.is_file() or (sha and _record_data_sha(f) != sha):
                return False
        return True
    return store.is_valid(node.key)


def _record_data_sha(path: Path) -> str | None:
    import json

    try:
        return (json.loads(path.read_text()).get("data") or {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


CACHED, TODO, SKIP = "cached", "todo", "skip"


def stage_status(nodes: list[Node], done: Callable[[Node], bool]) -> dict[str, str]:
    """What a run does with each node: ``cached`` (a recorded cell, a valid artifact), ``todo``, or ``skip``.

    The DAG is pruned from its cells upwards: a cell is todo unless ``done``; a zoo, attack or defense stage
    is looked at only when a todo cell lies below it, and is then cached or todo.  A stage all of whose cells
    are recorded is ``skip``: it is neither checked (no hashing) nor built, cached or not, so a results
    store that holds every record runs nothing even from an empty artifact cache.  ``done`` is called once per
    cell and at most once per upstream stage."""
    by_key = {n.key: n for n in nodes}
    status: dict[str, str] = {}
    stack: list[str] = []
    for n in nodes:
        if n.stage == "cell":
            status[n.key] = CACHED if done(n) else TODO
            if status[n.key] == TODO:
                stack.extend(n.deps)
    while stack:
        k = stack.pop()
        if k in status:
            continue
        status[k] = CACHED if done(by_key[k]) else TODO
        stack.extend(by_key[k].deps)  # a needed stage's own inputs are needed too (records name every stage)
    return {n.key: status.get(n.key, SKIP) for n in nodes}


def spec_dict(spec: MatrixSpec) -> dict[str, Any]:
    return asdict(spec)
