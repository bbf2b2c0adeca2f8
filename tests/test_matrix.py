"""The matrix runner through the real CLI: caching, resume after SIGKILL, Ray parity, spec validation."""

from __future__ import annotations

import json
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
    # every record names the torch thread count of each stage behind it (OMP_NUM_THREADS=1 here)
    for r in (json.loads(p.read_text()) for p in (res / "records").glob("*.json")):
        stages = {"cell"} | {k for k in ("attack", "defense") if r[k] != "none"}
        assert r["threads"] == dict.fromkeys(stages, 1), r["threads"]
        assert r["cpu"]["model"] and r["cpu"]["bf16"] in ("amx", "avx512_bf16", "none")
    # ... and a fingerprint of each stage's weights (a local model path has no zoo artifact): one per artifact
    recs = [json.loads(p.read_text()) for p in (res / "records").glob("*.json")]
    by_key: dict[str, set[str]] = {}
    for r in recs:
        stages = {k for k in ("attack", "defense") if r[k] != "none"}
        assert set(r["weights"]) == stages, r["weights"]
        for k in stages:
            by_key.setdefault(r["keys"][k], set()).add(r["weights"][k])
    assert len(by_key) == 3 and all(len(v) == 1 for v in by_key.values())  # neuba, recipe on clean, on neuba
    assert len(set().union(*by_key.values())) == 3  # each stage changed the weights


def test_rerun_does_no_work(baseline):
    env, m, res, _ = baseline
    before = {p: p.stat().st_mtime_ns for p in (res / "records").glob("*.json")}
    out = cli(env, "run", str(m), "--results", str(res), "--no-progress")
    assert out.returncode == 0, out.stderr
    # every cell is recorded, so no stage above them is even checked
    assert "matrix: 7 stages, 4 cached, 0 to run, 3 not needed" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in (res / "records").glob("*.json")} == before
    dry = cli(env, "run", str(m), "--results", str(res), "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("[cached] cell") == 4 and "[todo" not in dry.stdout
    assert dry.stdout.count("[skip  ] attack") == 1 and dry.stdout.count("[skip  ] defense") == 2


def _copy_results(res: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(res / "records", dest / "records")
    return dest


def _artifacts(cache: Path) -> list[str]:
    root = cache / "artifacts"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def test_recorded_store_builds_nothing_from_an_empty_cache(baseline, tmp_path):
    """Every record present: no stage runs, not even the upstream ones missing from a cold artifact cache."""
    env, m, res, _ = baseline
    env = {**env, "PTMBENCH_CACHE": str(tmp_path / "cache")}
    out_dir = _copy_results(res, tmp_path / "res")
    before = {p.name: p.read_bytes() for p in (out_dir / "records").glob("*.json")}
    dry = cli(env, "run", str(m), "--results", str(out_dir), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("[cached] cell") == 4 and dry.stdout.count("[skip  ]") == 3 + 1  # + the legend
    assert "[todo" not in dry.stdout
    out = cli(env, "run", str(m), "--results", str(out_dir), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "matrix: 7 stages, 4 cached, 0 to run, 3 not needed" in out.stdout
    assert "computed here 0 of 0 stages" in out.stdout and "0 stages ran, 4 cached, 3 not needed" in out.stdout
    assert _artifacts(tmp_path / "cache") == []
    assert {p.name: p.read_bytes() for p in (out_dir / "records").glob("*.json")} == before
    pd.testing.assert_frame_equal(cells(out_dir), cells(res))


def test_a_missing_record_builds_only_the_stages_above_its_cell(baseline, tmp_path):
    """One cell unrecorded (NeuBA + RECIPE) and a cold cache: its implant, its defense and the cell run; RECIPE
    on the clean PTM, whose cells are recorded, is not built.  The recomputed cell equals the first run's."""
    env, m, res, _ = baseline
    env = {**env, "PTMBENCH_CACHE": str(tmp_path / "cache")}
    out_dir = _copy_results(res, tmp_path / "res")
    (gone,) = (out_dir / "records").glob("*__neuba__recipe__*.json")
    gone.unlink()
    out = cli(env, "run", str(m), "--results", str(out_dir), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "matrix: 7 stages, 3 cached, 3 to run, 1 not needed" in out.stdout
    assert "computed here 3 of 3 stages" in out.stdout
    built = _artifacts(tmp_path / "cache")
    assert [b.split("-")[0] for b in built] == ["attack", "defense"]
    assert gone.is_file()
    pd.testing.assert_frame_equal(cells(out_dir), cells(res))


def test_run_compare_prints_both_tables_and_the_difference(baseline, tmp_path):
    env, m, res, _ = baseline
    out_dir = _copy_results(res, tmp_path / "res")
    rec = next((out_dir / "records").glob("*__none__none__*.json"))
    doc = json.loads(rec.read_text())
    doc["cacc"] -= 0.125
    rec.write_text(json.dumps(doc))
    out = cli(env, "run", str(m), "--results", str(out_dir), "--no-progress", "--compare", str(res))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CACC / AASR / MASR" in out.stdout  # the run's own table first
    assert "CACC run / ref (Δ)" in out.stdout and "4 cells in both" in out.stdout
    assert "(-12.5)" in out.stdout and "largest difference: CACC 12.5, AASR 0.0, MASR 0.0 points" in out.stdout
    bad = cli(env, "run", str(m), "--results", str(tmp_path / "new"), "--compare", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "does not exist" in bad.stderr
    assert not (tmp_path / "new").exists()


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

def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.add(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_killed_runner_takes_its_workers_and_locks_with_it(baseline, bert_dir, tmp_path):
    """SIGKILL the parent of ``--workers 2`` while a worker trains a (deliberately endless) implant: the worker
    must not train on as an orphan holding the stage lock."""
    from filelock import FileLock, Timeout

    env, _, _, _ = baseline
    cache = tmp_path / "cache"
    env = {**env, "PTMBENCH_CACHE": str(cache)}
    m = write_matrix(tmp_path / "long.yaml", bert_dir, attacks=["none", {"name": "neuba", "config": {"steps": 10_000_000}}], defenses=["none"])
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(m), "--results", str(tmp_path / "res"),
                          "--workers", "2", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        for _ in range(600):  # until the implant is being trained (its temporary artifact exists)
            workers |= _children(p.pid)
            if list((cache / "artifacts").glob(".tmp-attack-neuba-*")) or p.poll() is not None:
                break
            time.sleep(0.2)
        assert p.poll() is None, "the runner ended before the implant started"
        workers |= _children(p.pid)
        assert workers
        p.send_signal(signal.SIGKILL)
        p.wait()
        for _ in range(150):
            if not any(_alive(w) for w in workers):
                break
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived its killed runner"
        (lock,) = (cache / "artifacts" / ".locks").glob("attack-neuba-*.lock")
        free = FileLock(str(lock))
        try:
            free.acquire(timeout=5)
            free.release()
        except Timeout:
            pytest.fail(f"{lock.name} is still held after the runner and its workers died")
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)



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
    ("models: [minilm-l6]\ndatasets: [sst2]\nseeds: [0, -1]\n", "seeds: must be >= 0, got -1"),
    ("models: [minilm-l6]\ndatasets: [sst2]\nattack_seed: -3\n", "attack_seed: must be >= 0, got -3"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefense_seed: -1\n", "defense_seed: must be >= 0, got -1"),
    ("name: caf\xe9\nmodels: [minilm-l6]\ndatasets: [sst2]\n".encode("latin-1"), "not UTF-8 text"),
    ("name: ../../elsewhere\nmodels: [minilm-l6]\ndatasets: [sst2]\n", "not a usable matrix name"),
    ("name: a/b\nmodels: [minilm-l6]\ndatasets: [sst2]\n", "not a usable matrix name"),
    ("name: ''\nmodels: [minilm-l6]\ndatasets: [sst2]\n", "not a usable matrix name"),
]


@pytest.mark.parametrize("text,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_matrix_files(env, tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_bytes(text) if isinstance(text, bytes) else f.write_text(text)
    out = cli(env, "run", str(f), "--results", str(tmp_path / "res"))
    assert out.returncode == 2, out.stdout + out.stderr
    line = out.stderr.strip().splitlines()
    assert len(line) == 1 and message in line[0], out.stderr
    assert not (tmp_path / "res").exists()


def test_matrix_name_cannot_lead_records_out_of_the_results_folder(env, tmp_path):
    """The default results store is named after the matrix: a name with path separators or '..' is refused
    before anything is written (here the run has no --results, so the name alone would place the store)."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    f = tmp_path / "m.yaml"
    f.write_text("name: ../../elsewhere\nmodels: [minilm-l6]\ndatasets: [sst2]\npreset: smoke\n")
    before = sorted(tmp_path.rglob("*"))
    out = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(f), "--no-progress"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stdout + out.stderr[-2000:]
    assert "not a usable matrix name" in out.stderr and "Traceback" not in out.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_corrupt_model_directory_in_a_matrix_is_refused_before_any_work(env, bert_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad-ptm"
    shutil.copytree(bert_dir, bad)
    w = bad / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])  # truncated: the header declares more data than the file holds
    m = write_matrix(tmp_path / "m.yaml", bad)
    out = cli(env, "run", str(m), "--results", str(tmp_path / "res"), "--no-progress")
    assert out.returncode == 2, out.stdout + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "weights.safetensors" in lines[0] and "not a readable safetensors file" in lines[0]
    assert not (tmp_path / "res").exists()


# ------------------------------------------------------------------------------------------ labels, built-ins
def plan_of(tmp_path: Path, defenses: list, name: str = "m", **extra) -> list:
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    doc = {"name": name, "models": ["minilm-l6-mlm"], "attacks": ["none", "neuba"], "defenses": defenses,
           "datasets": ["sst2"], "seeds": [0, 1], **extra}
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(doc))
    return plan(load_matrix(f), ArtifactStore(tmp_path / "cache" / "artifacts"))  # plans only: nothing runs


def record_ids(nodes: list) -> list[str]:
    from bench.matrix import cell_trigger_sets, expected_record_ids

    return [r for n in nodes if n.stage == "cell" for r in expected_record_ids(n, cell_trigger_sets(n))]


def test_labels_name_records_and_never_enter_keys(tmp_path):
    plain = plan_of(tmp_path, ["none", "recipe"])
    explicit = plan_of(tmp_path, ["none", {"name": "recipe", "label": "recipe"}])
    relabelled = plan_of(tmp_path, ["none", {"name": "recipe", "label": "purify"}])
    keys = [n.key for n in plain]
    # a label equal to the name changes nothing; another label changes no key and no stage identity
    assert [n.key for n in explicit] == keys and [n.key for n in relabelled] == keys
    assert [n.work for n in explicit] == [n.work for n in plain]
    assert record_ids(explicit) == record_ids(plain)
    cells = [n for n in relabelled if n.stage == "cell"]
    assert [n.work.ident for n in cells] == [n.work.ident for n in plain if n.stage == "cell"]
    recipe_cells = [n for n in cells if n.work.ident.defense == "recipe"]
    assert len(recipe_cells) == 4
    assert all((n.work.attack_label, n.work.defense_label) == (n.work.ident.attack, "purify")
               and "/purify/" in n.label for n in recipe_cells)
    assert {r for r in record_ids(relabelled) if "__purify__" in r} == \
        {r.replace("__recipe__", "__purify__") for r in record_ids(plain) if "__recipe__" in r}
    assert any(n.label.startswith("defense purify <- ") for n in relabelled)


def test_variants_of_one_method_get_their_own_rows_and_only_matches_labels(tmp_path):
    from bench.matrix import parse_only, select

    nodes = plan_of(tmp_path, ["none", "recipe", {"name": "recipe", "label": "recipe-lam10", "config": {"lam": 10}},
                               {"name": "recipe", "label": "recipe-wt2", "config": {"aux": "wikitext2"}}])
    cells = [n for n in nodes if n.stage == "cell"]
    assert len(cells) == 2 * 4 * 2 and len({n.key for n in nodes}) == len(nodes)
    assert len(set(record_ids(nodes))) == len(record_ids(nodes))
    assert sum(n.stage == "defense" for n in nodes) == 2 * 3

    def defenses(only: list[str]) -> set[str]:
        return {n.work.defense_label for n in select(nodes, parse_only(only)) if n.stage == "cell"}

    assert defenses(["defense=recipe-lam10"]) == {"recipe-lam10"}
    assert defenses(["defense=recipe"]) == {"recipe", "recipe-lam10", "recipe-wt2"}  # the registry name: all
    assert defenses(["defense=none,recipe-wt2", "attack=neuba"]) == {"none", "recipe-wt2"}


def test_demo_plans_the_committed_record_ids():
    """Labels or not, the built-in demo names the records committed in results/demo/ (keys unchanged)."""
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    committed = Path(__file__).resolve().parents[1] / "results" / "demo" / "records"
    if not committed.is_dir():
        pytest.skip("no committed demo records")
    nodes = plan(load_matrix("demo"), ArtifactStore(Path("/nonexistent-ptmbench-cache") / "artifacts"))
    assert sorted(record_ids(nodes)) == sorted(p.stem for p in committed.glob("*.json"))


@pytest.mark.parametrize("store_dir,complete,all_files", [
    ("text", ("paper-text-s0", "paper-text-s1", "paper-text-s2"), ("paper-text-s0", "paper-text-s1", "paper-text-s2")),
    ("roberta", ("paper-roberta-s0", "paper-roberta-s1", "paper-roberta-s2"), ("paper-roberta-s0", "paper-roberta-s1", "paper-roberta-s2")),
])
def test_paper_stores_hold_the_record_ids_their_matrices_plan(store_dir, complete, all_files):
    """A committed benchmark store holds every record its completed seed files plan and nothing their seed
    files do not plan (so a re-run resumes it instead of recomputing: the regime marker leaves default keys
    and record ids unchanged)."""
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    committed_dir = Path(__file__).resolve().parents[1] / "results" / "paper" / store_dir / "records"
    if not committed_dir.is_dir():
        pytest.skip(f"no committed paper/{store_dir} records")
    store = ArtifactStore(Path("/nonexistent-ptmbench-cache") / "artifacts")
    committed = {p.stem for p in committed_dir.glob("*.json")}
    ids = {name: set(record_ids(plan(load_matrix(name), store))) for name in all_files}
    for name in complete:
        assert ids[name] <= committed, f"{name}: {len(ids[name] - committed)} records missing"
    assert committed <= set().union(*ids.values())


RESULTS = Path(__file__).resolve().parents[1] / "results"
MATRICES = Path(__file__).resolve().parents[1] / "matrices"


def test_matrix_files_live_in_matrices_only():
    assert not list(RESULTS.rglob("*.yaml")), "matrix files belong in matrices/ (their stores stay in results/)"


@pytest.mark.parametrize("src", sorted(MATRICES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(MATRICES)))
def test_committed_result_matrices_still_plan_their_records(src, tmp_path):
    """Every matrix file under matrices/ (the commands in the COMMAND files of results/) still loads and
    plans; where its store sits at the same path under results/, every committed record is one the matrix
    plans (a re-run resumes that store instead of recomputing it)."""
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    nodes = plan(load_matrix(src), ArtifactStore(tmp_path / "artifacts"))
    assert any(n.stage == "cell" for n in nodes)
    records = RESULTS / src.relative_to(MATRICES).with_suffix("") / "records"
    if records.is_dir():
        committed = {p.stem for p in records.glob("*.json")}
        assert committed and committed <= set(record_ids(nodes))


def _builtins() -> list[str]:
    from bench.matrix import builtin_names

    return builtin_names()


@pytest.mark.parametrize("name", _builtins())
def test_every_builtin_matrix_loads_and_plans(name, tmp_path):
    """Each shipped matrix loads and expands into its full DAG (a plan only: nothing trains)."""
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    spec = load_matrix(name)
    assert spec.description
    nodes = plan(spec, ArtifactStore(tmp_path / "artifacts"))
    cells = [n for n in nodes if n.stage == "cell"]
    n_att, n_def = len(spec.attacks), len(spec.defenses)
    assert len(cells) == len(spec.models) * n_att * n_def * len(spec.datasets) * len(spec.seeds)
    named = {(n.work.ident.model, n.work.attack_label, n.work.defense_label, n.work.ident.dataset,
              n.work.ident.seed) for n in cells}
    assert len(named) == len(cells)  # no two cells merge in records and tables
    assert len({n.key for n in nodes}) == len(nodes)
    assert all(d in {m.key for m in nodes} for n in nodes for d in n.deps)


def test_builtin_matrices_of_one_store_plan_the_same_stages(tmp_path):
    """paper-text-s0/s1/s2 (and the roberta split) share their implants and defenses, differ in seed only."""
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    for stem in ("paper-text", "paper-roberta"):
        plans = [plan(load_matrix(f"{stem}-s{s}"), ArtifactStore(tmp_path / "artifacts")) for s in range(3)]
        assert {load_matrix(f"{stem}-s{s}").name for s in range(3)} == {stem}
        stages = [{n.key for n in p if n.stage != "cell"} for p in plans]
        assert stages[0] == stages[1] == stages[2]
        seeds = [{n.work.ident.seed for n in p if n.stage == "cell"} for p in plans]
        assert seeds == [{0}, {1}, {2}]
    vision = MATRICES / "vision" / "vision.yaml"
    if vision.is_file():  # the built-in is the committed vision matrix, key for key
        keys = [[n.key for n in plan(load_matrix(src), ArtifactStore(tmp_path / "artifacts"))]
                for src in ("paper-vision", vision)]
        assert keys[0] == keys[1]


LABEL_SPECS = [
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefenses: [recipe, {name: recipe, config: {lam: 0.1}}]\n",
     "defenses[0] (recipe) and defenses[1] (recipe, config {'lam': 0.1}) are both named 'recipe' in records and "
     "tables; give each a distinct label:"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefenses: [{name: recipe, label: a}, {name: only-pt, label: a}]\n",
     "give each a distinct label:"),
    ("models: [minilm-l6]\ndatasets: [sst2]\nattacks: [{name: neuba, label: x}, {name: neuba, label: x}]\n",
     "attacks[0] (neuba) and attacks[1] (neuba) are both named 'x'"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefenses: [recipe, {name: recipe, label: r2, config: {lam: 1.0}}]\n",
     "are the same recipe with the same config"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefenses: [{name: none, label: baseline}]\n", "drop its label"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefenses: [{name: recipe, label: 'lam 0.1'}]\n", "not a usable label"),
    ("models: [minilm-l6]\ndatasets: [sst2]\ndefenses: [{name: recipe, label: none}]\n", "not a usable label"),
]


@pytest.mark.parametrize("text,message", LABEL_SPECS, ids=[m[:40] for _, m in LABEL_SPECS])
def test_bad_labels_are_refused_at_load(env, tmp_path, text, message):
    test_bad_matrix_files(env, tmp_path, text, message)


def test_labelled_matrix_end_to_end(env, bert_dir, tmp_path):
    """Labels flow into records, cells.csv, DER and the table; --only selects by label; the dry run knows
    which labelled cells are done."""
    m = write_matrix(tmp_path / "lab.yaml", bert_dir, attacks=["none"],
                     defenses=["none", "recipe", {"name": "recipe", "label": "recipe-lam0.5", "config": {"lam": 0.5}}])
    res = tmp_path / "res"
    out = cli(env, "run", str(m), "--results", str(res), "--no-progress", "--only", "defense=none,recipe-lam0.5")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "matrix: 3 stages, 0 cached, 3 to run" in out.stdout  # recipe-lam0.5 and its cell, the none cell
    import json

    recs = [json.loads(p.read_text()) for p in (res / "records").glob("*.json")]
    assert {(r["defense"], r["defense_method"]) for r in recs} == {("none", "none"), ("recipe-lam0.5", "recipe")}
    assert {r["defense_config"].get("lam") for r in recs if r["defense"] != "none"} == {0.5}
    assert set(pd.read_csv(res / "cells.csv").defense) == {"none", "recipe-lam0.5"}
    assert list(pd.read_csv(res / "der.csv").defense) == ["recipe-lam0.5", "recipe-lam0.5"]  # 2 trigger sets
    assert "recipe-lam0.5 · sst2" in (res / "table.md").read_text()
    dry = cli(env, "run", str(m), "--results", str(res), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert any(x.startswith("[cached] cell") and "/recipe-lam0.5/" in x for x in lines)
    assert any(x.startswith("[todo  ] cell") and "/recipe/" in x for x in lines)
