"""The example out-of-tree plugin installs, is discovered through entry points, meets the method contract
(tests/test_contracts.py) and runs in a matrix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_example_plugin_runs_through_the_smoke_matrix(env, bert_dir, tmp_path):
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(site), str(ROOT / "examples" / "plugin")],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    env = {**env, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    listing = subprocess.run([sys.executable, "-c", "from bench.registry import names; "
                              "print(names('attack')); print(names('defense'))"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert "pooler-pin" in listing.stdout and "embedding-noise" in listing.stdout, listing.stderr
    # the method contract picks the plugin's methods up from the registry, with no edit of the tests
    contract = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_contracts.py"), "-k", "pooler-pin or embedding-noise"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert contract.returncode == 0, contract.stdout[-3000:] + contract.stderr[-2000:]
    ran = [line for line in contract.stdout.splitlines() if " passed" in line]
    assert ran and int(ran[-1].split(" passed")[0].split()[-1]) >= 8, contract.stdout[-2000:]
    m = tmp_path / "plugin.yaml"
    m.write_text(yaml.safe_dump({"name": "plugin", "models": [str(bert_dir)], "attacks": ["none", "pooler-pin"],
                                 "defenses": ["none", "embedding-noise"], "datasets": ["sst2"], "seeds": [0],
                                 "preset": "smoke", "precision": "fp32"}))
    out = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(m), "--results", str(tmp_path / "res"),
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    cells = pd.read_csv(tmp_path / "res" / "cells.csv")
    assert set(zip(cells.attack, cells.defense)) == {("none", "none"), ("none", "embedding-noise"),
                                                    ("pooler-pin", "none"), ("pooler-pin", "embedding-noise")}
    assert set(cells.triggers) == {"pooler-pin"}
