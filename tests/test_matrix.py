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


def test_altered_artifact_is_reported_and_recomputed(baseline, tmp_path):
    import shutil

    env, m, res, _ = baseline
    cache = tmp_path / "cache"
    shutil.copytree(Path(env["PTMBENCH_CACHE"]), cache)
    env = {**env, "PTMBENCH_CACHE": str(cache)}
    (attack,) = (cache / "artifacts").glob("attack-neuba-*")
    w = attack / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])  # truncated
    out = cli(env, "run", str(m), "--results", str(tmp_path / "res"), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"artifact {attack.name} is corrupt" in out.stderr
    # the attack is recomputed; the defenses below it keep their (valid) artifacts; new results store
    assert "2 cached, 5 to run" in out.stdout and "computed here 5 of 5" in out.stdout
    pd.testing.assert_frame_equal(cells(tmp_path / "res"), cells(res))


def test_sigkill_at_random_moments_then_resume_gives_identical_cells(baseline, tmp_path):
    import numpy as np

    env, m, res, _ = baseline
    env = {**env, "PTMBENCH_CACHE": str(tmp_path / "cache")}
    out_dir = tmp_path / "res"
    delays = np.random.default_rng(2024).uniform(2.5, 9.0, size=10)  # 10 kills at random moments
    for delay in delays:
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
    assert list(out_dir.glob("records/.*")) == []  # no half-written record
    art = tmp_path / "cache" / "artifacts"
    assert list(art.glob(".tmp-*")) == []


def test_two_concurrent_runners_compute_each_stage_once(baseline, tmp_path):
    import re

    env, m, res, _ = baseline
    env = {**env, "PTMBENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "bench.cli", "run", str(m), "--results", str(tmp_path / "res"), "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    computed = [int(re.search(r"computed here (\d+) of", o[0]).group(1)) for o in outs]
    assert sum(computed) == 7  # every stage computed by exactly one of the two runners
    assert len(list((tmp_path / "res" / "records").glob("*.json"))) == 4
    pd.testing.assert_frame_equal(cells(tmp_path / "res"), cells(res))


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


def test_random_matrix_files_load_or_fail_cleanly(env, tmp_path):
    """Property: any YAML mapping either loads into a MatrixSpec or raises PtmbenchError — nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from bench.errors import PtmbenchError
    from bench.matrix import MatrixSpec, load_matrix

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=False, width=32),
                        st.sampled_from(["sst2", "none", "neuba", "recipe", "minilm-l6", "demo", "smoke", "x", ""]))
    values = st.one_of(scalars, st.lists(scalars, max_size=3),
                       st.lists(st.dictionaries(st.sampled_from(["name", "preset", "config", "bad"]), scalars,
                                                max_size=3), max_size=2))
    keys = st.sampled_from(["models", "datasets", "attacks", "defenses", "seeds", "preset", "finetune",
                            "control_triggers", "precision", "name", "bogus"])

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(keys, values, max_size=7))
    def check(doc):
        f = tmp_path / "m.yaml"
        f.write_text(yaml.safe_dump(doc))
        try:
            assert isinstance(load_matrix(f), MatrixSpec)
        except PtmbenchError as e:
            assert "\n" not in str(e)

    check()


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
    ("models: [minilm-l6]\ndatasets: [sst2]\nfinetune: {bogus: 1}\n", "finetune: unknown key 'bogus'"),
    ("models: [minilm-l6]\ndatasets: [sst2]\nfinetune: {reinit_pooler: maybe}\n", "expected bool"),
    ("models: [minilm-l6]\ndatasets: [sst2]\nfinetune: {epochs: -2}\n", "finetune.epochs: must be > 0"),
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
