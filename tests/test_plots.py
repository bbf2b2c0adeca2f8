"""Comparison plots: PNG + SVG per figure, byte-identical on re-runs, collapsed cells drawn differently."""

from __future__ import annotations

from bench.plots import plot_all
from bench.records import cells_frame


def rec(attack: str, defense: str, seed: int, cacc: float, aasr: float, majority: float = 0.5) -> dict:
    return {"model": "m", "attack": attack, "defense": defense, "dataset": "sst2", "preset": "demo", "seed": seed,
            "triggers": "neuba", "cacc": cacc, "aasr": aasr, "masr": aasr, "casr": aasr, "alc": 0.0,
            "majority_share": majority}


RECORDS = [rec(a, d, s, 0.8 - 0.01 * s, aasr) for s in (0, 1)
           for a, d, aasr in (("none", "none", 0.1), ("neuba", "none", 0.95), ("neuba", "recipe", 0.4))]


def test_plots_written_and_identical_on_rerun(tmp_path):
    first = plot_all(cells_frame(RECORDS), tmp_path / "a")
    again = plot_all(cells_frame(RECORDS), tmp_path / "b")
    assert sorted(p.name for p in first) == ["aasr_bars.png", "aasr_bars.svg", "asr_vs_cacc.png", "asr_vs_cacc.svg"]
    for p, q in zip(first, again):
        if p.suffix == ".svg":
            assert p.read_bytes() == q.read_bytes(), p.name


def test_collapsed_cell_changes_the_scatter_only(tmp_path):
    plain = {p.name: p.read_bytes() for p in plot_all(cells_frame(RECORDS), tmp_path / "plain")}
    # the same numbers, but the recipe cell's majority share says its classifier is no better than constant
    flagged = [{**r, "majority_share": 0.8} if r["defense"] == "recipe" else r for r in RECORDS]
    marked = {p.name: p.read_bytes() for p in plot_all(cells_frame(flagged), tmp_path / "marked")}
    assert marked["asr_vs_cacc.svg"] != plain["asr_vs_cacc.svg"]
    assert marked["aasr_bars.svg"] == plain["aasr_bars.svg"]
