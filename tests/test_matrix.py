"""The matrix runner through the real CLI: caching, resume after SIGKILL, Ray parity, spec validation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

METRIC_COLS = ["model", "attack", "defense", "dataset", "seed", "preset", "triggers", "cacc", "aasr", "masr",
               "casr", "alc", "n_test"]


def write_matrix(path: Path, model_dir: Path, **extra) -> Path:
    spec = {"name": "tiny", "models": [str(model_dir)], "attacks": ["none", {"name": "neuba"}],
            "defenses": ["none", "recipe"], "datasets": ["sst2"], "seeds": [0], "preset": "smoke",
            "precision": "fp32", **extra}
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def cli(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, bert_dir, mirror):
    """One uninterrupted local run of the tiny matrix: (env, matrix file, results dir)."""
    tmp = tmp_path_factory.mktemp("baseline")
    env = {**os.environ, "PTMBENCH_DATA_DIR": str(mirror), "PTMBENCH_CACHE": str(tmp / "cache"),
           "HF_DATASETS_CACHE": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    m = write_matrix(tmp / "tiny.yaml", bert_dir)
    out = cli(env, "run", str(m), "--results", str(tmp / "res"), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    return env, m, tmp / "res", out


def cells(res: Path) -> pd.DataFrame:
    return pd.read_csv(res / "cells.csv")[METRIC_COLS]


def test_matrix_runs_every_cell_once_and_tables(baseline):
    env, m, res, out = baseline
    df = cells(res)
    # 2 attacks x 2 defenses x 1 dataset x 1 seed; the no-attack rows are scored on the NeuBA triggers
    assert len(df) == 4
    assert set(zip(df.attack, df.defense)) == {("none", "none"), ("none", "recipe"), ("neuba", "none"),
                                               ("neuba", "recipe")}
    assert set(df.triggers) == {"neuba"}
    assert "matrix: 7 stages, 0 cached, 7 to run" in out.stdout  # neuba, recipe x2, 4 cells
    for name in ("table.md", "table.tex", "table.csv", "table.html", "per_trigger.csv", "summary.md"):
        assert (res / name).is_file()
    assert "CACC / AASR / MASR" in (res / "table.md").read_text()


def test_rerun_does_no_work(baseline):
    env, m, res, _ = baseline
    before = {p: p.stat().st_mtime_ns for p in (res / "records").glob("*.json")}
    out = cli(env, "run", str(m), "--results", str(res), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "7 cached, 0 to run" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in (res / "records").glob("*.json")} == before
    dry = cli(env, "run", str(m), "--results", str(res), "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("[cached]") == 7 and "[todo" not in dry.stdout


def test_sigkill_at_several_points_then_resume_gives_identical_cells(baseline, tmp_path):
    env, m, res, _ = baseline
    env = {**env, "PTMBENCH_CACHE": str(tmp_path / "cache")}
    out_dir = tmp_path / "res"
    for delay in (3.0, 6.0, 9.0, 12.0):
        p = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(m), "--results", str(out_dir),
                              "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
    final = cli(env, "run", str(m), "--results", str(out_dir), "--no-progress")
    assert final.returncode == 0, final.stderr[-2000:]
    pd.testing.assert_frame_equal(cells(out_dir), cells(res))
    assert len(list((out_dir / "records").glob("*.json"))) == 4
    art = tmp_path / "cache" / "artifacts"
    assert list(art.glob(".tmp-*")) == []


def test_two_local_workers_match_one(baseline, tmp_path):
    env, m, res, _ = baseline
    env = {**env, "PTMBENCH_CACHE": str(tmp_path / "cache")}
    out = cli(env, "run", str(m), "--results", str(tmp_path / "res"), "--workers", "2", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    pd.testing.assert_frame_equal(cells(tmp_path / "res"), cells(res))


def test_ray_executor_matches_local(baseline, tmp_path):
    pytest.importorskip("ray")
    env, m, res, _ = baseline
    env = {**env, "PTMBENCH_CACHE": str(tmp_path / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    out = cli(env, "run", str(m), "--results", str(tmp_path / "res"), "--executor", "ray", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    pd.testing.assert_frame_equal(cells(tmp_path / "res"), cells(res))


BAD_SPECS = [
    ("models: [x]\ndatasets: [sst2\n", "malformed YAML"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ncolour: red\n", "unknown key 'colour'"),
    ("models: [minilm-l6]\ndatasets: [sst2]\nattacks: [nosuch]\n", "unknown attack 'nosuch'"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefenses: [{name: recipe, config: {lamda: 2}}]\n", "lamda"),
    ("models: [minilm-l6]\ndatasets: [sst2]\nseeds: zero\n", "seeds"),
    ("models: []\ndatasets: [sst2]\n", "models: must list"),
    ("models: [minilm-l6]\ndatasets: [wikitext2]\n", "auxiliary"),
    ("models: [minilm-l6]\ndatasets: [sst2]\npreset: giant\n", "unknown preset 'giant'"),
    ("- just\n- a list\n", "must be a mapping"),
]


@pytest.mark.parametrize("text,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_matrix_files(env, tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    out = cli(env, "run", str(f), "--results", str(tmp_path / "res"))
    assert out.returncode == 2, out.stdout + out.stderr
    line = out.stderr.strip().splitlines()
    assert len(line) == 1 and message in line[0], out.stderr
    assert not (tmp_path / "res").exists()
