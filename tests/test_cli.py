"""End to end through the real CLI (subprocesses), offline, on the tiny mirror and tiny PTMs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def ptmbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_finetune_writes_record_and_table(env, bert_dir, tmp_path):
    res = tmp_path / "results"
    out = ptmbench(env, "finetune", "--model", str(bert_dir), "--dataset", "sst2", "--seed", "1",
                   "--preset", "smoke", "--triggers", "por,neuba", "--results", str(res))
    assert out.returncode == 0, out.stderr
    assert "CACC" in out.stdout and "trigger set por" in out.stdout
    recs = sorted((res / "records").glob("*.json"))
    assert len(recs) == 2
    r = json.loads(recs[0].read_text())
    for k in ("model", "attack", "defense", "dataset", "seed", "cacc", "aasr", "masr", "casr", "alc",
              "per_trigger", "n_test", "wall_s", "keys", "versions", "precision"):
        assert k in r
    assert r["attack"] == "none" and r["seed"] == 1 and r["n_test"] == 24
    assert {t["trigger"] for t in json.loads(recs[1].read_text())["per_trigger"]} | {
        t["trigger"] for t in r["per_trigger"]} == {"cf", "tq", "mn", "bb", "mb", "≈", "≡", "∈", "⊆", "⊕", "⊗"}
    again = ptmbench(env, "finetune", "--model", str(bert_dir), "--dataset", "sst2", "--seed", "1",
                     "--preset", "smoke", "--triggers", "por,neuba", "--results", str(res))
    assert again.returncode == 0 and "cached" in again.stdout
    tab = ptmbench(env, "table", str(res))
    assert tab.returncode == 0, tab.stderr
    cells = pd.read_csv(res / "cells.csv")
    assert list(cells.columns[:7]) == ["model", "attack", "defense", "dataset", "seed", "preset", "triggers"]
    assert len(cells) == 2 and (res / "summary.md").exists() and (res / "per_trigger.csv").exists()
    # every cell records its test split's majority-label share; a record written before it was recorded gets
    # the same number from the mirror when the tables are made (same seeded test subset)
    shares = {json.loads(p.read_text())["majority_share"] for p in recs}
    assert len(shares) == 1 and 0.5 <= shares.pop() <= 1.0
    old = json.loads(recs[0].read_text())
    del old["majority_share"], old["clean_top_share"]
    recs[0].write_text(json.dumps(old))
    assert ptmbench(env, "table", str(res)).returncode == 0
    cells = pd.read_csv(res / "cells.csv")
    assert cells["majority_share"].nunique() == 1 and cells["clean_top_share"].isna().sum() == 1
    assert set(cells["collapsed"]) <= {True, False} and (res / "collapse.md").exists()


def test_finetune_is_deterministic(env, roberta_dir, tmp_path):
    runs = []
    for i in range(2):
        res = tmp_path / f"r{i}"
        out = ptmbench(env, "finetune", "--model", str(roberta_dir), "--dataset", "sst2", "--seed", "0",
                       "--preset", "smoke", "--triggers", "por", "--results", str(res), "--precision", "fp32")
        assert out.returncode == 0, out.stderr
        (rec,) = (res / "records").glob("*.json")
        r = json.loads(rec.read_text())
        runs.append((r["cacc"], r["aasr"], r["per_trigger"], r["finetune_train"]["loss_last"]))
    assert runs[0] == runs[1]


def _corrupt_mirror(mirror: Path, tmp_path: Path) -> Path:
    import shutil

    bad = tmp_path / "badmirror"
    shutil.copytree(mirror, bad)
    p = bad / "text/sst2/test.parquet"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    return bad


def _missing_mirror(mirror: Path, tmp_path: Path) -> Path:
    import shutil

    bad = tmp_path / "missing"
    shutil.copytree(mirror, bad)
    (bad / "text/sst2/validation.parquet").unlink()
    return bad


def _mirror_with(mirror: Path, tmp_path: Path, name: str, split: str, ds, rel: str | None = None) -> Path:
    """A copy of the mirror whose sst2 ``split`` (or the file ``rel``) is replaced by ``ds`` (manifest
    updated, so only the content is wrong, not the checksum)."""
    import hashlib
    import shutil

    bad = tmp_path / name
    shutil.copytree(mirror, bad)
    rel = rel or f"text/sst2/{split}.parquet"
    ds.to_parquet(str(bad / rel))
    manifest = json.loads((bad / "MANIFEST.json").read_text())
    for f in manifest["files"]:
        if f["path"] == rel:
            f["sha256"] = hashlib.sha256((bad / rel).read_bytes()).hexdigest()
            f["bytes"] = (bad / rel).stat().st_size
            f["rows"] = len(ds)
    (bad / "MANIFEST.json").write_text(json.dumps(manifest))
    return bad


def _no_label_mirror(mirror: Path, tmp_path: Path) -> Path:
    import datasets

    return _mirror_with(mirror, tmp_path, "nolabel", "train", datasets.Dataset.from_dict({"text": ["a b", "c d"]}))


def _empty_mirror(mirror: Path, tmp_path: Path) -> Path:
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["negative", "positive"])})
    return _mirror_with(mirror, tmp_path, "empty", "test", datasets.Dataset.from_dict({"text": [], "label": []},
                                                                                       feats))


def _image_mirror(mirror: Path, tmp_path: Path, name: str, mode: str, size: int) -> Path:
    """cifar10 test with one image of the wrong mode or size among good ones."""
    import datasets
    from conftest import jpeg

    good = [jpeg(np.full((32, 32, 3), 90)) for _ in range(5)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)])})
    ds = datasets.Dataset.from_dict({"image": [*good, jpeg(np.full((size, size, 3), 90), mode)],
                                     "label": [0, 1, 2, 3, 5, 1]}, feats)
    return _mirror_with(mirror, tmp_path, name, "test", ds, rel="images/cifar10/test.parquet")


BAD = [
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--dataset", "sst3"], "unknown dataset 'sst3'"),
    (["--triggers", "word:cfzzq"], "not a single piece"),
    (["--triggers", "por,cfzzq"], "unknown trigger set 'cfzzq'; known trigger sets: badpre, neuba, neuba-vision, "
                                  "por; a literal trigger word is spelled word:cfzzq"),
    (["--triggers", "neuba-vision"], "trigger set 'neuba-vision' is for vision PTMs, not text"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--dataset", "wikitext2"], "auxiliary"),
    (["--epochs", "-1"], "--epochs must be > 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--precision", "fp8"], "precision 'fp8'"),
    (["--seed", "abc"], "invalid int value"),
    (["--model", "/nonexistent/dir/xyz"], "does not exist"),
    (["--model", "bert-base-uncased"], "bert-base-uncased"),
    (["--max-train", "0"], "--max-train must be >= 1"),
    ("corrupt", "sha256"),
    ("missing", "validation.parquet"),
    ("nolabel", "label"),
    ("empty", "test.parquet"),
    ("cmyk", "mode 'CMYK'"),
    ("tiny-image", "is 4x4, too small"),
    ("vit-on-text", "is vision but dataset 'sst2' is text"),
    (["--dataset", "cifar10"], "is text but dataset 'cifar10' is vision"),
    (["--model", "vit_tiny_patch16_224"], "cannot load timm model 'vit_tiny_patch16_224'"),
    ("bad-header", "not a readable safetensors file"),
    ("truncated-weights", "not a readable safetensors file"),
    ("hf-bad-header", "not a readable safetensors file"),
    ("vit-bad-header", "not a readable safetensors file"),
    ("bad-ptm-json", "ptm.json"),
]


def _damaged_copy(src: Path, tmp_path: Path, name: str, weights: str, how: str) -> Path:
    """A copy of the model directory ``src`` whose ``weights`` file is damaged: ``header`` flips a byte of the
    header length, ``truncate`` cuts its end off (the header then declares more data than the file holds)."""
    import shutil

    bad = tmp_path / name
    shutil.copytree(src, bad)
    w = bad / weights
    data = bytearray(w.read_bytes())
    if how == "header":
        data[3] ^= 0xFF
    else:
        del data[-100:]
    w.write_bytes(bytes(data))
    return bad


def _hf_dir(tmp_path: Path) -> Path:
    """A Hugging Face model directory (config.json, model.safetensors, tokenizer) of a tiny BERT."""
    from conftest import wordpiece_tokenizer
    from transformers import BertConfig, BertModel

    tok = wordpiece_tokenizer()
    d = tmp_path / "hf-bert"
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.mark.parametrize("case,message", BAD, ids=[str(c[1])[:24] for c in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(env, bert_dir, vit_dir, mirror, tmp_path, case, message):
    res = tmp_path / "results"
    args = {"--model": str(bert_dir), "--dataset": "sst2", "--preset": "smoke", "--triggers": "por"}
    if isinstance(case, list):
        args[case[0]] = case[1]
    elif case == "corrupt":
        env = {**env, "PTMBENCH_DATA_DIR": str(_corrupt_mirror(mirror, tmp_path))}
    elif case == "missing":
        env = {**env, "PTMBENCH_DATA_DIR": str(_missing_mirror(mirror, tmp_path))}
    elif case == "nolabel":
        env = {**env, "PTMBENCH_DATA_DIR": str(_no_label_mirror(mirror, tmp_path))}
    elif case == "empty":
        env = {**env, "PTMBENCH_DATA_DIR": str(_empty_mirror(mirror, tmp_path))}
    elif case in ("cmyk", "tiny-image"):
        mode, size = ("CMYK", 32) if case == "cmyk" else ("RGB", 4)
        env = {**env, "PTMBENCH_DATA_DIR": str(_image_mirror(mirror, tmp_path, case, mode, size))}
        args.update({"--model": str(vit_dir), "--dataset": "cifar10"})
        del args["--triggers"]
    elif case == "vit-on-text":
        args["--model"] = str(vit_dir)
    elif case in ("bad-header", "truncated-weights"):
        how = "header" if case == "bad-header" else "truncate"
        args["--model"] = str(_damaged_copy(bert_dir, tmp_path, case, "weights.safetensors", how))
    elif case == "hf-bad-header":
        args["--model"] = str(_damaged_copy(_hf_dir(tmp_path), tmp_path, case, "model.safetensors", "header"))
    elif case == "vit-bad-header":
        args.update({"--model": str(_damaged_copy(vit_dir, tmp_path, case, "model.safetensors", "header")),
                     "--dataset": "cifar10"})
        del args["--triggers"]
    elif case == "bad-ptm-json":
        import shutil

        bad = tmp_path / case
        shutil.copytree(bert_dir, bad)
        (bad / "ptm.json").write_text("{not json")
        args["--model"] = str(bad)
    flat = [x for kv in args.items() for x in kv]
    out = ptmbench(env, "finetune", *flat, "--results", str(res))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptmbench: error:"), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stderr
    assert not res.exists()


def test_unwritable_results_dir(env, bert_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = ptmbench(env, "finetune", "--model", str(bert_dir), "--dataset", "sst2", "--preset", "smoke",
                   "--results", str(blocker / "results"))
    assert out.returncode == 2 and "not writable" in out.stderr
    assert blocker.read_text() == "not a directory"


def test_data_and_zoo_listing(env):
    out = ptmbench(env, "data", "list")
    assert out.returncode == 0 and "sst2" in out.stdout
    out = ptmbench(env, "data", "verify", "sst2")
    assert out.returncode == 0 and "ok" in out.stdout
    out = ptmbench(env, "zoo", "list")
    assert out.returncode == 0 and "minilm-l6-mlm" in out.stdout


def test_analyze_activations_writes_csv_and_figure(env, bert_dir, tmp_path):
    out = ptmbench(env, "analyze", "activations", "--ptm", f"clean={bert_dir}", "--ptm", f"again={bert_dir}",
                   "--triggers", "neuba", "--dataset", "sst2", "--samples", "8", "--out", str(tmp_path / "a"))
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "a" / "selective_activation.csv")
    assert set(df.ptm) == {"clean", "again"} and set(df.layer) == {0, 1}
    assert len(df) == 2 * 2 * 64  # two PTMs x two layers x 64 FFN neurons
    same = df.pivot_table(index=["layer", "rank"], columns="ptm", values="shift")
    assert (same["clean"] - same["again"]).abs().max() < 1e-5  # same PTM, same inputs -> same shifts
    assert (tmp_path / "a" / "selective_activation.png").is_file()
