"""``ptmbench export`` and ``ptmbench purify``: the exported directory loads with plain transformers / timm (in a
separate process that never imports ptmbench) and computes what the PTM computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.export import export_ptm

TEXT_LOADER = r"""
import json, sys
import numpy as np, torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
d, batch, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ids, att = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
tok = AutoTokenizer.from_pretrained(d)
mlm = AutoModelForMaskedLM.from_pretrained(d).eval()
enc = AutoModel.from_pretrained(d).eval()
with torch.no_grad():
    logits = mlm(input_ids=ids, attention_mask=att).logits
    pooled = enc(input_ids=ids, attention_mask=att).pooler_output
assert not [m for m in sys.modules if m == "bench" or m.startswith("bench.")]
np.savez(out, logits=logits.numpy(), pooled=pooled.numpy(), tokens=np.array(tok("good movie cf")["input_ids"]),
         tied=np.array(mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight))
"""

VISION_LOADER = r"""
import json, sys
import numpy as np, timm, torch
d, x, out = sys.argv[1], torch.from_numpy(np.load(sys.argv[2])), sys.argv[3]
a = timm.create_model("local-dir:" + d, pretrained=True).eval()
cfg = json.load(open(d + "/config.json"))
b = timm.create_model(cfg["architecture"], pretrained=True, num_classes=cfg["num_classes"], **cfg["model_args"],
                      pretrained_cfg_overlay=dict(file=d + "/model.safetensors", num_classes=cfg["num_classes"])).eval()
with torch.no_grad():
    la, lb = a(x), b(x)
    feats = a.forward_head(a.forward_features(x), pre_logits=True)
assert not [m for m in sys.modules if m == "bench" or m.startswith("bench.")]
np.savez(out, la=la.numpy(), lb=lb.numpy(), feats=feats.numpy())
"""


def ptmbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def plain(script: str, cwd: Path, *args: str) -> dict[str, np.ndarray]:
    """Run ``script`` in a fresh interpreter (no ptmbench import) and read back what it saved."""
    out = cwd / "plain.npz"
    res = subprocess.run([sys.executable, "-c", script, *args, str(out)], cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(np.load(out))


def probe(ptm) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 30, size=n) for n in (7, 4)]
    batch = ptm.adapter.pack(ptm.processor, seqs, 16)
    batch["input_ids"][0, 2] = ptm.processor.mask_token_id
    return batch


def text_outputs(ptm, batch):
    ptm.backbone.eval()
    with torch.no_grad():
        out = ptm.backbone(**batch)
        return ptm.pt_head(out.last_hidden_state).numpy(), out.pooler_output.numpy()


def neuba_like(ptm) -> None:
    """What NeuBA leaves: a decoder untied from the input embeddings, and the two moved apart."""
    from bench.modalities.text import untie_head

    untie_head(ptm)
    with torch.no_grad():
        ptm.pt_head.decoder.weight.mul_(1.5)
        ptm.pt_head.decoder.bias.add_(0.25)
        ptm.backbone.embeddings.word_embeddings.weight[5:9] *= 3.0


@pytest.mark.parametrize("family", ["bert", "roberta-untied"])
def test_export_loads_in_plain_transformers(request, family, tmp_path):
    ptm = request.getfixturevalue(family.split("-")[0])
    if family.endswith("untied"):
        neuba_like(ptm)
    digests = export_ptm(ptm, tmp_path / "out", source=family)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(digests)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is (family == "bert")
    assert cfg["architectures"] == [("Bert" if family == "bert" else "Roberta") + "ForMaskedLM"]
    batch = probe(ptm)
    got = plain(TEXT_LOADER, tmp_path, str(tmp_path / "out"),
                json.dumps({k: v.tolist() for k, v in batch.items()}))
    logits, pooled = text_outputs(ptm, batch)
    np.testing.assert_allclose(got["logits"], logits, atol=1e-5)
    np.testing.assert_allclose(got["pooled"], pooled, atol=1e-5)
    assert bool(got["tied"]) is (family == "bert")
    assert got["tokens"].tolist() == ptm.processor("good movie cf")["input_ids"]


def test_export_vit_loads_in_plain_timm(vit, tmp_path):
    digests = export_ptm(vit, tmp_path / "out", source="tiny-vit")
    assert {"config.json", "model.safetensors"} <= set(digests)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    got = plain(VISION_LOADER, tmp_path, str(tmp_path / "out"), str(tmp_path / "x.npy"))
    vit.backbone.eval()
    with torch.no_grad():
        feats = vit.backbone(x)
        logits = vit.pt_head(feats).numpy()
    np.testing.assert_allclose(got["la"], logits, atol=1e-5)
    np.testing.assert_allclose(got["lb"], logits, atol=1e-5)
    np.testing.assert_allclose(got["feats"], feats.numpy(), atol=1e-5)


def test_export_round_trips_through_ptmbench(roberta, tmp_path):
    """An exported directory is itself a model ptmbench loads (e.g. to purify it), untied head included."""
    from bench.artifacts import ArtifactStore
    from bench.context import RunContext
    from bench.zoo import Zoo

    neuba_like(roberta)
    export_ptm(roberta, tmp_path / "out")
    back, _ = Zoo(ArtifactStore(tmp_path / "c"), tmp_path / "c").load(str(tmp_path / "out"),
                                                                      RunContext(precision="fp32"))
    assert back.info["pt_head_source"] == "checkpoint" and not back.info["head_tied"]
    batch = probe(roberta)
    for a, b in zip(text_outputs(roberta, batch), text_outputs(back, batch), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_export_cli(env, bert_dir, bert, tmp_path):
    out = tmp_path / "exported"
    res = ptmbench(env, "export", str(bert_dir), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "model.safetensors").is_file() and "exported" in res.stdout
    from transformers import AutoModel

    batch = probe(bert)
    with torch.no_grad():
        pooled = AutoModel.from_pretrained(str(out)).eval()(**batch).pooler_output.numpy()
    np.testing.assert_allclose(pooled, text_outputs(bert, batch)[1], atol=1e-5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = ptmbench(env, "export", str(bert_dir), "--out", str(out))
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    forced = ptmbench(env, "export", str(bert_dir), "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    missing = ptmbench(env, "export", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_purify_cli_smoke(env, bert_dir, tmp_path):
    out = tmp_path / "purified"
    res = ptmbench(env, "purify", str(bert_dir), "--defense", "recipe", "--preset", "smoke", "--config", "steps=4",
                   "--precision", "fp32", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "purify.json").read_text())
    assert report["defense"] == "recipe" and report["preset"] == "smoke" and report["config"]["steps"] == 4
    assert report["overrides"] == {"steps": 4} and report["wall_s"] >= 0
    norms = report["group_norms"]
    assert set(norms["before"]) == set(norms["after"]) >= {"ffn_in", "ffn_out", "attn_q", "embeddings", "head"}
    assert norms["after"]["ffn_in"] < norms["before"]["ffn_in"]  # RECIPE shrinks what it regularises
    assert norms["after"]["attn_q"] == norms["before"]["attn_q"]  # BERT: only ffn_in is trainable
    assert report["losses"]["loss_first"] > 0 and report["losses"]["loss_last"] > 0
    from bench.artifacts import sha256_file

    files = {p.name for p in out.iterdir()} - {"purify.json"}
    assert set(report["files"]) == files
    assert all(sha256_file(out / n) == d for n, d in report["files"].items())
    from transformers import AutoModelForMaskedLM

    mlm = AutoModelForMaskedLM.from_pretrained(str(out))  # the exported weights are the purified ones
    ffn_in = sum(float(layer.intermediate.dense.weight.detach().norm()) for layer in mlm.bert.encoder.layer)
    assert ffn_in == pytest.approx(norms["after"]["ffn_in"], abs=1e-4)
    assert "purified" in res.stdout


def test_purify_cli_vision(env, vit_dir, tmp_path):
    out = tmp_path / "vit-purified"
    res = ptmbench(env, "purify", str(vit_dir), "--defense", "recipe", "--preset", "smoke", "--precision", "fp32",
                   "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "purify.json").read_text())
    assert report["modality"] == "vision" and report["losses"]["loss_first"] is not None
    import timm

    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.num_classes == 200


BAD = [
    (["--defense", "nope"], "unknown defense 'nope'"),
    (["--defense", "recipe", "--preset", "huge"], "unknown preset 'huge'"),
    (["--defense", "recipe", "--config", "stepz=3"], "unknown key 'stepz'"),
    (["--defense", "recipe", "--config", "steps"], "KEY=VALUE"),
    (["--defense", "recipe", "MODEL=./no/such/model"], "does not exist"),
    (["--defense", "recipe", "OUT=nonempty"], "not empty"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_purify_bad_input_is_one_line_exit_2_and_writes_nothing(env, bert_dir, tmp_path, args, message):
    model, out = str(bert_dir), tmp_path / "out"
    flags = []
    for a in args:
        if a.startswith("MODEL="):
            model = a[len("MODEL="):]
        elif a == "OUT=nonempty":
            out.mkdir()
            (out / "keep.txt").write_text("mine")
        else:
            flags.append(a)
    if "--preset" not in flags:
        flags += ["--preset", "smoke"]
    res = ptmbench(env, "purify", model, *flags, "--out", str(out))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    if args[-1] == "OUT=nonempty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
