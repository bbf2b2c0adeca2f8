"""``ptmbench compare RUN REFERENCE``: cells aligned by identity, both values and the difference, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import align, compare_stores


def rec(attack: str = "neuba", defense: str = "none", seed: int = 0, cacc: float = 0.8, aasr: float | None = 0.9,
        masr: float | None = 1.0, **extra) -> dict:
    return {"model": "m", "attack": attack, "defense": defense, "dataset": "sst2", "preset": "demo", "seed": seed,
            "triggers": "neuba", "cacc": cacc, "aasr": aasr, "masr": masr, "attack_config": {"steps": 1},
            "defense_config": {}, "finetune_config": {"epochs": 2}, **extra}


def store(root: Path, *records: dict) -> Path:
    (root / "records").mkdir(parents=True)
    for i, r in enumerate(records):
        (root / "records" / f"r{i}.json").write_text(json.dumps(r))
    return root


def ptmbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=300)


def test_cells_align_by_identity_and_show_both_values_and_the_difference(tmp_path):
    run = store(tmp_path / "run", rec(cacc=0.815, aasr=0.9994), rec("none", cacc=0.863, aasr=0.175),
                rec(seed=1, cacc=0.7))
    ref = store(tmp_path / "ref", rec("none", cacc=0.86, aasr=0.2), rec(cacc=0.8, aasr=0.9994),
                rec(defense="recipe"))
    text = compare_stores(run, ref)
    rows = [x for x in text.splitlines() if x.startswith("| m |")]
    assert rows == [
        "| m | neuba | none | sst2 | demo | 0 | neuba | 81.5 / 80.0 (+1.5) | 99.9 / 99.9 (0.0) | 100.0 / 100.0 (0.0) |",
        "| m | none | none | sst2 | demo | 0 | neuba | 86.3 / 86.0 (+0.3) | 17.5 / 20.0 (-2.5) | 100.0 / 100.0 (0.0) |",
    ]
    assert "2 cells in both; largest difference: CACC 1.5, AASR 2.5, MASR 0.0 points." in text
    assert "Only in RUN (1): m/neuba/none/sst2/s1/neuba (demo)" in text
    assert "Only in REFERENCE (1): m/neuba/recipe/sst2/s0/neuba (demo)" in text
    assert "regime" not in text and "‡" not in text


def test_regime_is_noted_and_a_config_change_is_marked(tmp_path):
    run = store(tmp_path / "run", rec(regime="fp32"), rec("none", attack_config={}, regime="fp32"))
    ref = store(tmp_path / "ref", rec(), rec("none", attack_config={"steps": 2}, aasr=None))
    text = compare_stores(run, ref)
    assert "Numerical regime: run fp32, reference bf16 fast-path; the differences include it." in text
    none_row = next(x for x in text.splitlines() if x.startswith("| m | none |"))
    assert "90.0 / – ‡" in none_row and "1 cell(s) share their identity but not" in text


def test_two_configs_of_one_identity_pair_up_by_config():
    a = [rec(cacc=0.1, defense_config={"lam": 1}), rec(cacc=0.2, defense_config={"lam": 10})]
    b = [rec(cacc=0.3, defense_config={"lam": 10}), rec(cacc=0.4, defense_config={"lam": 1})]
    pairs, only_a, only_b = align(a, b)
    assert sorted((x["cacc"], y["cacc"], d) for x, y, d in pairs) == [(0.1, 0.4, False), (0.2, 0.3, False)]
    assert only_a == only_b == []


def test_compare_cli_prints_the_table(tmp_path):
    run = store(tmp_path / "run", rec())
    ref = store(tmp_path / "ref", rec(cacc=0.9))
    out = ptmbench("compare", str(run), str(ref))
    assert out.returncode == 0, out.stderr
    assert "80.0 / 90.0 (-10.0)" in out.stdout and "1 cells in both" in out.stdout


BAD = [
    ("missing-run", "RUN {run} does not exist"),
    ("missing-ref", "REFERENCE {ref} does not exist"),
    ("file", "RUN {run} is not a directory"),
    ("empty-dir", "RUN {run} holds no records"),
    ("empty-records", "REFERENCE {ref} holds no records"),
    ("bad-json", "is unreadable"),
    ("not-a-record", "is not a cell record (no model"),
    ("disjoint", "no cell of RUN"),
]


@pytest.mark.parametrize("case,message", BAD, ids=[c for c, _ in BAD])
def test_bad_compare_input_is_one_line_exit_2(tmp_path, case, message):
    run, ref = tmp_path / "run", tmp_path / "ref"
    if case != "missing-run" and case != "file":
        store(run, rec())
    if case != "missing-ref":
        store(ref, rec())
    if case == "file":
        run.write_text("not a directory")
    elif case == "empty-dir":
        import shutil

        shutil.rmtree(run)
        run.mkdir()
    elif case == "empty-records":
        (ref / "records" / "r0.json").unlink()
    elif case == "bad-json":
        (ref / "records" / "r0.json").write_text("{broken")
    elif case == "not-a-record":
        (ref / "records" / "r0.json").write_text("[1, 2]")
    elif case == "disjoint":
        (ref / "records" / "r0.json").write_text(json.dumps(rec(attack="por1")))
    out = ptmbench("compare", str(run), str(ref))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptmbench: error:"), out.stderr
    assert message.format(run=run, ref=ref) in lines[0]
    assert out.stdout == ""
