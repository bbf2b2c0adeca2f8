"""Results store and tables: one record per cell identity, mean ± std over seeds, DER pairing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.artifacts import content_key
from bench.errors import PtmbenchError
from bench.records import (
    CellIdentity,
    ResultsStore,
    cells_frame,
    der_frame,
    headline_frame,
    record_id,
    summary_frame,
    terminal_table,
    with_majority_share,
    write_tables,
)


def rec(defense: str, seed: int, cacc: float, aasr: float, dataset: str = "sst2", majority: float = 0.5) -> dict:
    return {"model": "m", "attack": "neuba", "defense": defense, "dataset": dataset, "preset": "demo",
            "seed": seed, "triggers": "neuba", "cacc": cacc, "aasr": aasr, "masr": aasr, "casr": aasr,
            "alc": 0.0, "alc_threshold": 0.9, "per_trigger": [{"trigger": "≈", "target": 1, "asr": aasr}],
            "wall_s": {"finetune": 1.0}, "majority_share": majority}


def test_record_ids_are_identity_not_time_and_rewrites_do_not_duplicate(tmp_path):
    store = ResultsStore(tmp_path)
    r = rec("none", 0, 0.8, 0.9)
    assert record_id(r) == record_id(dict(r))
    store.write(r)
    store.write({**r, "cacc": 0.81})
    assert len(store.load()) == 1 and store.load()[0]["cacc"] == 0.81
    assert record_id(r) != record_id({**r, "seed": 1})


def test_summary_mean_std_over_seeds_in_percent():
    cells = cells_frame([rec("none", 0, 0.80, 0.90), rec("none", 1, 0.90, 0.70)])
    s = summary_frame(cells).iloc[0]
    assert s["seeds"] == 2
    assert s["cacc_mean"] == pytest.approx(85.0)
    assert s["aasr_std"] == pytest.approx(14.1421356, rel=1e-6)  # sample std of 90 and 70


def test_der_pairs_each_defense_with_no_defense():
    cells = cells_frame([rec("none", 0, 0.80, 1.00), rec("recipe", 0, 0.78, 0.10)])
    d = der_frame(summary_frame(cells)).iloc[0]
    # (max(0, 1.00-0.10) - max(0, 0.80-0.78) + 1) / 2 = (0.90 - 0.02 + 1) / 2
    assert d["defense"] == "recipe" and d["der"] == pytest.approx(0.94)


def test_write_tables_outputs(tmp_path):
    paths = write_tables([rec("none", 0, 0.8, 1.0), rec("recipe", 0, 0.78, 0.1)], tmp_path)
    for p in paths.values():
        assert p.is_file()
    md = paths["matrix_md"].read_text()
    assert "none · sst2" in md and "recipe · sst2" in md and "80.0 / 100.0 / 100.0" in md
    assert list(pd.read_csv(tmp_path / "der.csv")["defense"]) == ["recipe"]
    head = paths["headline_md"].read_text()
    assert "| m | neuba | recipe | demo | neuba | sst2 | 1 | 78.0 | 10.0 | 10.0 |" in head


def test_headline_averages_datasets_per_seed_then_over_seeds():
    cells = cells_frame([rec("none", 0, 0.80, 1.00), rec("none", 0, 0.90, 0.80, "agnews"),
                         rec("none", 1, 0.70, 0.60), rec("none", 1, 0.90, 0.40, "agnews"),
                         rec("none", 0, 0.50, 0.30, "extra")])  # only seed 0 has "extra": not averaged
    h = headline_frame(cells).iloc[0]
    assert h["datasets"] == "agnews+sst2" and h["seeds"] == 2
    assert h["aasr_mean"] == pytest.approx(70.0)  # seed 0: 90, seed 1: 50
    assert h["aasr_std"] == pytest.approx(28.2842712, rel=1e-6)
    assert h["cacc_mean"] == pytest.approx(82.5)


def test_collapsed_cells_are_flagged_daggered_and_left_out_of_the_second_headline(tmp_path):
    # offenseval: majority share 0.74; seed 0 collapsed (CACC 0.74), seed 1 learnt (0.80)
    records = [rec("none", 0, 0.80, 0.90), rec("none", 1, 0.84, 0.70),
               rec("none", 0, 0.74, 1.00, "offenseval", 0.74), rec("none", 1, 0.80, 0.50, "offenseval", 0.74)]
    cells = cells_frame(records)
    assert list(cells["collapsed"]) == [True, False, False, False]  # sorted: offenseval s0, s1, sst2 s0, s1
    s = summary_frame(cells).set_index("dataset")
    assert (s.loc["offenseval", "collapsed"], s.loc["sst2", "collapsed"]) == (1, 0)
    every = headline_frame(cells).iloc[0]
    kept = headline_frame(cells, drop_collapsed=True).iloc[0]
    assert every["datasets"] == "offenseval+sst2" and every["aasr_mean"] == pytest.approx(77.5)
    # a dataset any seed collapsed on leaves the average: sst2 only, (90 + 70) / 2
    assert kept["datasets"] == "sst2" and kept["aasr_mean"] == pytest.approx(80.0)
    paths = write_tables(records, tmp_path)
    assert "77.0 ± 4.2 / 75.0 ± 35.4 / 75.0 ± 35.4 †1/2" in paths["matrix_md"].read_text()
    collapse = paths["collapse_md"].read_text()
    assert "1 of 4 cells collapsed" in collapse and "| m | neuba | none | offenseval | 0 | 0.74 | 0.74 |" in collapse
    assert "## Collapsed cells left out" in paths["headline_md"].read_text()
    assert set(pd.read_csv(paths["headline_csv"])["cells"]) == {"all", "collapsed out"}


def test_majority_share_backfill_only_where_missing_and_known():
    calls = []

    def share(dataset, n_test):
        calls.append((dataset, n_test))
        if dataset == "gone":
            raise PtmbenchError("dataset 'gone' is not in the mirror")
        return 0.6

    old = [{**rec("none", s, 0.6, 0.5, d), "n_test": 600} for s in (0, 1) for d in ("sst2", "gone")]
    for r in old:
        del r["majority_share"]
    new = with_majority_share([*old, {**rec("none", 0, 0.9, 0.1, "agnews", 0.25), "n_test": 600}], share)
    assert [r.get("majority_share") for r in new] == [0.6, None, 0.6, None, 0.25]
    assert calls == [("sst2", 600), ("gone", 600)]  # once per (dataset, n_test); recorded values kept
    assert all("majority_share" not in r for r in old)  # the records passed in are not modified
    c = cells_frame(new)
    assert c["collapsed"].isna().sum() == 2 and c["collapsed"].sum() == 2  # 0.6 <= 0.6 + 0.005


def test_run_prints_the_matrix_table_when_narrow_and_the_headline_when_wide(tmp_path):
    narrow = write_tables([rec("none", 0, 0.8, 1.0), rec("recipe", 0, 0.78, 0.1)], tmp_path / "narrow")
    assert terminal_table(narrow) == narrow["matrix_md"].read_text()
    many = [rec(d, 0, 0.8, 0.5, dataset=ds) for d in ("none", "recipe", "only-pt", "only-reg", "fp", "fp-gm")
            for ds in ("sst2", "offenseval", "agnews")]
    wide = write_tables(many, tmp_path / "wide")
    text = terminal_table(wide)
    assert "avg AASR" in text and "| m | neuba | fp-gm | demo | neuba | agnews+offenseval+sst2 | 1 |" in text
    assert "none · sst2" not in text and str(wide["matrix_md"]) in text and "## Collapsed" not in text


def test_records_carry_a_schema_and_a_newer_one_is_refused(tmp_path):
    import json

    from bench.errors import PtmbenchError
    from bench.records import SCHEMA, ResultsStore

    store = ResultsStore(tmp_path)
    rec = {"model": "m", "attack": "none", "defense": "none", "dataset": "sst2", "preset": "smoke", "seed": 0,
           "triggers": "neuba"}
    store.write(rec)  # schema 0: a record from before the field, read as it is
    assert store.load() == [rec]
    store.write({**rec, "seed": 1, "schema": SCHEMA})
    assert [r.get("schema", 0) for r in store.load()] == [0, SCHEMA]
    newer = {**rec, "seed": 2, "schema": SCHEMA + 1}
    (tmp_path / "records" / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(PtmbenchError, match=r"record schema 2 is newer than this ptmbench reads \(1\)"):
        store.load()


# ------------------------------------------------------------------------------------------ cell identity
DEMO_FINETUNE = {"batch_size": 32, "bucketing": True, "epochs": 2, "eval_batch_size": 128, "lr": 4e-05,
                 "max_eval": 600, "max_len": 64, "max_train": 2000, "name": "demo", "optimizer": "adamw"}


def demo_identity(**kw) -> CellIdentity:
    return CellIdentity(model="minilm-l6-mlm", attack="none", defense="none", dataset="sst2", seed=0, preset="demo",
                        attack_config={}, defense_config={}, finetune_config=DEMO_FINETUNE, **kw)


def test_identity_hashes_what_the_planner_hashed_before():
    """The dicts and keys below are what the planner built by hand for the demo's clean cell (copied from a
    plan made before the identity existed): the same dict, the same cell key, in both regimes."""
    before = {"model": "minilm-l6-mlm", "attack": "none", "defense": "none", "dataset": "sst2", "seed": 0,
              "preset": "demo", "attack_config": {}, "defense_config": {}, "finetune_config": DEMO_FINETUNE}
    ident = demo_identity()
    assert ident.key_fields() == before
    zoo = "zoo-minilm-l6-mlm-21151b886478dfe0"
    assert content_key("cell", "none.none.sst2", ident.key_fields(), zoo, 0, "1") == \
        "cell-none.none.sst2-5116b4dbb8a1f996"
    fp32 = demo_identity(regime="fp32")
    assert fp32.key_fields() == {**before, "regime": "fp32"}
    assert content_key("cell", "none.none.sst2", fp32.key_fields(), zoo + "-fp32", 0, "1", "fp32") == \
        "cell-none.none.sst2-a460d11a765cb762-fp32"
    assert demo_identity(data_sha256="ab" * 32).key_fields() == {**before, "data_sha256": "ab" * 32}
    assert fp32.record_id("neuba") == "minilm-l6-mlm__none__none__sst2__demo__0__neuba__2e6cb2b9"


def test_identity_names_every_committed_record():
    """Each committed record's identity (registry names, its configs, its labels: demo, labelled defense
    variants, paper stores) gives back the record's fields and its file name."""
    records = sorted((Path(__file__).resolve().parents[1] / "results").glob("**/records/*.json"))
    if not any(p.parts[-3] == "demo" for p in records):
        pytest.skip("no committed demo records")
    for path in records:
        rec = json.loads(path.read_text())
        # records written before ``attack_method``/``defense_method`` existed name the methods by registry name
        ident = CellIdentity(model=rec["model"], attack=rec.get("attack_method", rec["attack"]),
                             defense=rec.get("defense_method", rec["defense"]), dataset=rec["dataset"],
                             seed=rec["seed"], preset=rec["preset"], attack_config=rec["attack_config"],
                             defense_config=rec["defense_config"], finetune_config=rec["finetune_config"],
                             regime=rec.get("regime"))
        fields = ident.record_fields(rec["attack"], rec["defense"])
        assert {k: v for k, v in fields.items() if k in rec} == {k: rec[k] for k in fields if k in rec}, path.name
        assert set(fields) - set(rec) <= {"attack_method", "defense_method"}, path.name
        assert ident.record_id(rec["triggers"], rec["attack"], rec["defense"]) == path.stem == record_id(rec)
        assert ResultsStore(path.parents[1]).has(ident.record_key(rec["triggers"], rec["attack"], rec["defense"]))


def test_identity_labels_name_records_and_the_regime_only_off_the_default():
    ident = demo_identity()
    assert "regime" not in ident.record_fields() and "data_sha256" not in ident.record_fields()
    labelled = ident.record_fields("clean", "nodef")
    assert (labelled["attack"], labelled["defense"], labelled["attack_method"], labelled["defense_method"]) == \
        ("clean", "nodef", "none", "none")
    assert ident.record_id("neuba", "clean").startswith("minilm-l6-mlm__clean__none__")
    assert demo_identity(regime="refpaths").record_fields()["regime"] == "refpaths"
    # the data's sha256 changes the cell key, not the record id (a new file's records replace the old)
    assert demo_identity(data_sha256="0" * 64).record_id("neuba") == ident.record_id("neuba")
    assert demo_identity(regime="fp32").record_id("neuba") != ident.record_id("neuba")
