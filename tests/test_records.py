"""Results store and tables: one record per cell identity, mean ± std over seeds, DER pairing."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.records import (
    ResultsStore,
    cells_frame,
    der_frame,
    headline_frame,
    record_id,
    summary_frame,
    write_tables,
)


def rec(defense: str, seed: int, cacc: float, aasr: float, dataset: str = "sst2") -> dict:
    return {"model": "m", "attack": "neuba", "defense": defense, "dataset": dataset, "preset": "demo",
            "seed": seed, "triggers": "neuba", "cacc": cacc, "aasr": aasr, "masr": aasr, "casr": aasr,
            "alc": 0.0, "alc_threshold": 0.9, "per_trigger": [{"trigger": "≈", "target": 1, "asr": aasr}],
            "wall_s": {"finetune": 1.0}}


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
