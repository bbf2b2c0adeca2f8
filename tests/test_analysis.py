"""Selective activation: the per-layer count of neurons shifting more than the clean PTM's largest shift."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from bench.analysis import selectivity
from bench.errors import PtmbenchError


def test_selectivity_hand_case():
    df = pd.DataFrame({"ptm": ["clean"] * 4 + ["bd"] * 4, "layer": [0, 0, 1, 1] * 2,
                       "shift": [0.5, 0.1, 0.2, -0.1, 0.9, 0.6, 0.1, 0.3]})
    sel = selectivity(df, "clean").set_index(["ptm", "layer"])
    assert sel.loc[("bd", 0), "above_reference"] == 2 and sel.loc[("bd", 1), "above_reference"] == 1
    assert sel.loc[("clean", 0), "above_reference"] == 0 and sel.loc[("bd", 0), "reference_max"] == 0.5
    with pytest.raises(PtmbenchError, match="no PTM labelled 'x'"):
        selectivity(df, "x")


def test_analyze_activations_reference_writes_selectivity(env, bert_dir, tmp_path):
    args = [sys.executable, "-m", "bench.cli", "analyze", "activations", "--ptm", f"clean={bert_dir}", "--ptm",
            f"again={bert_dir}", "--triggers", "neuba", "--dataset", "sst2", "--samples", "8"]
    out = subprocess.run([*args, "--reference", "clean", "--out", str(tmp_path / "a")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    sel = pd.read_csv(tmp_path / "a" / "selectivity.csv")
    assert set(sel.ptm) == {"clean", "again"} and (sel.above_reference == 0).all()  # the same PTM twice
    bad = subprocess.run([*args, "--reference", "nope", "--out", str(tmp_path / "b")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--reference 'nope' names no --ptm" in bad.stderr
    assert not (tmp_path / "b").exists()
