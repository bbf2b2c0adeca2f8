"""Typed stage nodes: what the planner makes survives the trip to a worker (pickle: process pool and Ray) and
runs there; the node's type picks what runs."""

from __future__ import annotations

import json
import pickle

import yaml

from bench.artifacts import ArtifactStore
from bench.matrix import load_matrix, plan
from bench.nodes import ArtifactSource, AttackStage, CellStage, DefenseStage, ZooSource, ZooStage
from bench.stages import StageEnv, run_node


def tiny_plan(tmp_path, model, attacks=("none", "neuba"), defenses=("none", "recipe"), regime=None):
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"name": "nodes", "models": [model], "attacks": list(attacks),
                                 "defenses": list(defenses), "datasets": ["sst2"], "preset": "smoke",
                                 "precision": "fp32"}))
    return plan(load_matrix(m), ArtifactStore(tmp_path / "cache" / "artifacts"), regime)


def test_planned_nodes_are_typed_and_survive_pickle(env, bert_dir, tmp_path):
    nodes = tiny_plan(tmp_path, str(bert_dir))
    kinds = {n.stage: type(n.work) for n in nodes}
    assert kinds == {"attack": AttackStage, "defense": DefenseStage, "cell": CellStage}
    for n in nodes:
        back = pickle.loads(pickle.dumps(n.work))
        assert back == n.work and type(back) is type(n.work) and back.key == n.key
    by_key = {n.key: n for n in nodes}
    for n in nodes:  # a stage reads the artifact its one dependency makes (or, at the root, the model)
        src = n.work.source
        assert (src == ArtifactSource(n.deps[0])) if n.deps else src == ZooSource(str(bert_dir))
        assert all(d in by_key for d in n.deps)
    cell = next(n.work for n in nodes if n.stage == "cell" and n.work.ident.attack == "neuba"
                and n.work.ident.defense == "recipe")
    assert cell.keys["defense"] == cell.source.key and cell.keys["attack"] == by_key[cell.source.key].deps[0]
    assert cell.keys["zoo"].startswith("zoo-local-")  # a model directory: no zoo stage, a key all the same
    assert cell.record_ids() == [cell.ident.record_id(t) for t in cell.triggers.sets] and cell.triggers.sets


def test_zoo_node_of_a_registered_model(tmp_path):
    nodes = plan(load_matrix("demo"), ArtifactStore(tmp_path / "artifacts"))
    zoo = nodes[0].work
    assert isinstance(zoo, ZooStage) and zoo.model == "minilm-l6-mlm" and zoo.seed == 0
    assert pickle.loads(pickle.dumps(zoo)) == zoo
    assert all(n.deps == [zoo.key] for n in nodes[1:] if n.stage in ("attack", "cell") and n.work.source == ZooSource(
        "minilm-l6-mlm"))


def test_a_pickled_cell_node_runs_and_writes_the_records_it_names(env, bert_dir, tmp_path, one_thread):
    (n,) = tiny_plan(tmp_path, str(bert_dir), attacks=("none",), defenses=("none",), regime="fp32")  # as run
    work = pickle.loads(pickle.dumps(n.work))
    cache = tmp_path / "cache"
    run_env = StageEnv(store=str(cache / "artifacts"), results=str(tmp_path / "res"), cache=str(cache),
                       precision="fp32")
    res = run_node(work, run_env)
    assert res["key"] == n.key and res["computed"] is True
    written = sorted(p.stem for p in (tmp_path / "res" / "records").glob("*.json"))
    assert written == sorted(work.record_ids())
    for rid in written:
        rec = json.loads((tmp_path / "res" / "records" / f"{rid}.json").read_text())
        fields = work.record_fields()
        assert fields["regime"] == "fp32" and {k: rec[k] for k in fields} == fields and rec["keys"] == work.keys
    assert run_node(work, run_env)["computed"] is False  # its records exist: nothing runs
