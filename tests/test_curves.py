"""Training curves: window means, recorded by attacks, drawn by ``ptmbench analyze curves``."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from bench.context import RunContext
from bench.curves import window_means
from bench.registry import get


def test_window_means_hand_case():
    losses = [4.0, 2.0, 3.0, 1.0, 5.0]
    parts = [{"a": 1.0}, {"a": 3.0}, {"a": 2.0}, {"a": 2.0}, {"a": 0.0}]
    c = window_means(losses, parts, points=3)  # windows of 2 steps: [0,1], [2,3], [4]
    assert c == {"step": [2, 4, 5], "loss": [3.0, 2.0, 5.0], "a": [2.0, 2.0, 0.0]}
    assert window_means([], []) == {"step": [], "loss": []}
    assert len(window_means([1.0] * 1000, [{}] * 1000)["step"]) == 200


def test_an_implant_records_its_curve_and_the_cli_draws_it(bert, env, tmp_path):
    attack = get("attack", "neuba").build("smoke", {"steps": 6})
    ptm = attack.implant(bert, RunContext(seed=0, precision="fp32"), tmp_path / "cache")
    curve = ptm.info["attack"]["train"]["curve"]
    assert curve["step"] == [1, 2, 3, 4, 5, 6] and len(curve["backdoor"]) == 6
    ptm.save(tmp_path / "neuba")
    out = tmp_path / "plots"
    run = subprocess.run([sys.executable, "-m", "bench.cli", "analyze", "curves", "--curve",
                          f"smoke={tmp_path / 'neuba'}", "--part", "backdoor", "--threshold", "0.1", "--out",
                          str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "smoke                neuba: 6/6 steps" in run.stdout
    df = pd.read_csv(out / "curves.csv")
    assert df["backdoor"].tolist() == pytest.approx(curve["backdoor"], rel=1e-5)
    assert (out / "curve-backdoor.png").is_file() and (out / "curve-backdoor.svg").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--curve", "nolabel"], "expected LABEL=DIR"),
    (["--curve", "x=/nonexistent-dir"], "neither a PTM directory"),
])
def test_bad_curve_sources_are_one_line_errors(env, tmp_path, args, message):
    run = subprocess.run([sys.executable, "-m", "bench.cli", "analyze", "curves", *args, "--out",
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
