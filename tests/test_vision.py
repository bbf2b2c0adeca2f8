"""The vision path: the ViT adapter, patch triggers, NeuBA (vision), defenses on a ViT and the matrix."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import jpeg

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.vision import ADAPTER as VISION
from bench.modalities.vision import decode_images
from bench.ptm import load_ptm
from bench.registry import get
from bench.triggers import ImageTrigger, checkerboard, neuba_patches

CTX = RunContext(seed=0, precision="fp32")


def state(ptm) -> dict[str, torch.Tensor]:
    out = {f"b.{k}": v.clone() for k, v in ptm.backbone.state_dict().items()}
    out.update({f"h.{k}": v.clone() for k, v in ptm.pt_head.state_dict().items()})
    return out


# ------------------------------------------------------------------------------------------- adapter
def test_groups_address_qkv_slices(vit):
    g = VISION.param_groups(vit)
    assert len(g["ffn_in"]) == len(g["attn_q"]) == 2
    blk = vit.backbone.blocks[0]
    assert g["ffn_in"][0].param is blk.mlp.fc1.weight and g["ffn_out"][0].param is blk.mlp.fc2.weight
    q, k, v = g["attn_q"][0], g["attn_k"][0], g["attn_v"][0]
    assert q.param is k.param is v.param is blk.attn.qkv.weight
    d = vit.backbone.num_features
    assert torch.equal(torch.cat([q.weight, k.weight, v.weight]), blk.attn.qkv.weight)
    assert q.weight.shape == (d, d) and torch.equal(k.bias_view, blk.attn.qkv.bias[d:2 * d])
    # a slice is a view: writing through it changes the fused matrix
    with torch.no_grad():
        v.weight.zero_()
    assert blk.attn.qkv.weight[2 * d:].abs().sum() == 0 and blk.attn.qkv.weight[:d].abs().sum() > 0
    assert {r.name for r in g["embeddings"]} >= {"cls_token", "pos_embed", "patch_embed.proj.weight"}


def test_save_load_roundtrip_keeps_representation_and_head(vit, tmp_path):
    vit.save(tmp_path / "p")
    back = load_ptm(tmp_path / "p")
    x = {"pixel_values": torch.randn(3, 3, 16, 16)}
    assert torch.equal(VISION.representation(vit, x), VISION.representation(back, x))
    assert torch.equal(VISION.pretrain_logits(vit, x), VISION.pretrain_logits(back, x))
    assert back.processor == vit.processor and VISION.hidden_size(back) == 32
    assert not list((tmp_path / "p").glob("*.bin")) and (tmp_path / "p" / "model.safetensors").is_file()


def test_committed_weights_are_fp16_and_sha_checked(vit, tmp_path):
    from bench.zoo import load_committed, write_committed

    build = write_committed(vit, tmp_path / "w")
    assert set(build["sha256"]) == {"config.json", "model.safetensors", "processor.json", "ptm.json"}
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "w" / "model.safetensors")).values())
    back = load_committed(tmp_path / "w")
    x = {"pixel_values": torch.randn(2, 3, 16, 16)}
    assert torch.allclose(VISION.representation(vit, x), VISION.representation(back, x), atol=2e-2)
    f = tmp_path / "w" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(PtmbenchError, match="sha256"):
        load_committed(tmp_path / "w")


def test_load_split_decodes_resizes_converts_and_caches(env, vit, tmp_path):
    cache = tmp_path / "c"
    val = VISION.load_split(vit, "tiny-imagenet", "validation", None, cache)
    assert val.pixels.shape == (32, 16, 16, 3) and val.pixels.dtype == np.uint8
    assert val.labels is not None and val.labels.max() < 200
    grey = val.pixels[0].astype(int)  # image 0 is greyscale: three equal channels after conversion
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1
    assert len(list((cache / "images").glob("*.npy"))) == 1
    again = VISION.load_split(vit, "tiny-imagenet", "validation", None, cache)
    assert np.array_equal(again.pixels, val.pixels)
    test = VISION.load_split(vit, "tiny-imagenet", "test", None, cache)
    assert test.labels is None and len(test) == 24
    catdog = VISION.load_split(vit, "catdog", "train", None, cache)
    assert set(np.unique(catdog.labels)) <= {0, 1} and len(catdog) > 0


@pytest.mark.parametrize("mode, size, match", [("CMYK", 32, "mode 'CMYK'"), ("RGBA", 32, "mode 'RGBA'"),
                                               ("RGB", 4, "too small")])
def test_bad_images_are_refused(mode, size, match):
    item = jpeg(np.full((size, size, 3), 128), mode)
    with pytest.raises(PtmbenchError, match=match):
        decode_images([jpeg(np.zeros((32, 32, 3))), item], 16, "x/train")


# ------------------------------------------------------------------------------------------- triggers
def test_neuba_patches_are_the_six_checkerboards():
    patches = neuba_patches()
    assert [p.id for p in patches] == ["cb-cyan-magenta", "cb-cyan-yellow", "cb-cyan-red", "cb-magenta-yellow",
                                       "cb-magenta-red", "cb-yellow-red"]
    cb = checkerboard("cyan", "red")
    assert cb.shape == (4, 4, 3)
    assert tuple(cb[0, 0]) == (0, 255, 255) and tuple(cb[0, 1]) == (255, 0, 0)
    assert tuple(cb[1, 0]) == (255, 0, 0) and tuple(cb[1, 1]) == (0, 255, 255)
    assert len({p.patch for p in patches}) == 6


def test_patch_pasted_bottom_right_and_random_is_deterministic():
    px = np.zeros((5, 16, 16, 3), np.uint8)
    t = neuba_patches()[0]
    out = t.paste(px)
    assert px.sum() == 0  # input untouched
    assert np.array_equal(out[:, 12:, 12:], np.broadcast_to(t.array, (5, 4, 4, 3)))
    assert out[:, :12].sum() == 0 and out[:, :, :12].sum() == 0
    r = ImageTrigger(t.name, t.patch, "random")
    a, b = r.paste(px, seed=1), r.paste(px, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, r.paste(px, seed=2))
    assert r.id == f"{t.name}@random"
    with pytest.raises(PtmbenchError, match="does not fit"):
        t.paste(np.zeros((1, 3, 3, 3), np.uint8))


# ------------------------------------------------------------------------------------------- attack
def test_neuba_vision_implants_and_is_deterministic(env, vit_dir, tmp_path):
    attack = get("attack", "neuba-vision").build("smoke", {"steps": 25, "lr": 0.3, "batch_size": 16,
                                                           "max_corpus_images": 64})
    runs = []
    for _ in range(2):
        ptm = load_ptm(vit_dir)
        out = attack.implant(ptm, CTX, tmp_path / "cache")
        runs.append(state(out))
    info = out.info["attack"]["train"]
    assert info["backdoor_last"] < info["backdoor_first"]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert out.lineage[-1]["attack"] == "neuba-vision"


# ------------------------------------------------------------------------------------------- defenses
# (every registered method on a ViT, and refusing a text PTM: tests/test_contracts.py)
def test_recipe_on_vit_regularises_the_five_groups_and_shrinks_them(env, vit_dir, tmp_path):
    ptm = load_ptm(vit_dir)
    out = get("defense", "only-reg").build("smoke", {"steps": 20, "lr": 1e-2}).purify(ptm, CTX, tmp_path / "c")
    s = out.info["defense"]["summary"]
    assert s["regularised"] == ["ffn_in", "ffn_out", "attn_q", "attn_k", "attn_v"]
    assert s["norm_S_after"] < s["norm_S_before"]
    for g in s["regularised"]:
        assert s["norms_after"][g] < s["norms_before"][g]
    rec = get("defense", "recipe").build("smoke").purify(load_ptm(vit_dir), CTX, tmp_path / "c")
    assert rec.info["defense"]["summary"]["aux"] == "tiny-imagenet"
    assert rec.info["defense"]["summary"]["masking"] == "none"


# ------------------------------------------------------------------------------------------- matrix + CLI
def test_vision_matrix_end_to_end(env, vit_dir, tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(f"name: vis\nmodels: [{vit_dir}]\nattacks: [none, neuba-vision]\ndefenses: [none, fp]\n"
                    "datasets: [catdog]\nseeds: [0]\npreset: smoke\n")
    res = tmp_path / "res"
    p = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(spec), "--results", str(res),
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    recs = [json.loads(f.read_text()) for f in sorted((res / "records").glob("*.json"))]
    assert len(recs) == 4 and {r["triggers"] for r in recs} == {"neuba-vision"}
    for r in recs:
        assert 0 <= r["cacc"] <= 1 and 0 <= r["aasr"] <= 1
        assert r["peak_rss_mib"]["cell"] > 0
        assert ("attack" in r["peak_rss_mib"]) == (r["attack"] != "none")
        assert [t["trigger"] for t in r["per_trigger"]][:1] == ["cb-cyan-magenta"]
    assert (res / "cells.csv").is_file()


def test_matrix_refuses_mixed_modalities(env, vit_dir, tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(f"name: mix\nmodels: [{vit_dir}]\ndatasets: [sst2]\npreset: smoke\n")
    p = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(spec), "--results", str(tmp_path / "r"),
                        "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "split the matrix by modality" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_finetune_cli_on_images(env, vit_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench.cli", "finetune", "--model", str(vit_dir), "--dataset",
                        "gtsrb-binary", "--preset", "smoke", "--results", str(tmp_path / "r")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    recs = list((tmp_path / "r" / "records").glob("*.json"))
    assert recs and json.loads(recs[0].read_text())["num_classes"] == 2


def test_recipe_label_free_teacher_option(env, vit_dir, bert, tmp_path):
    rec = get("defense", "recipe").build("smoke", {"pt_target": "teacher", "max_aux": None})
    assert rec.config_dict()["pt_target"] == "teacher"
    assert "pt_target" not in get("defense", "recipe").build("smoke").config_dict()  # keys of old runs unchanged
    out = rec.purify(load_ptm(vit_dir), CTX, tmp_path / "c")
    s = out.info["defense"]["summary"]
    assert s["pt_target"] == "teacher" and s["aux_size"] == 24  # the unlabelled tiny-imagenet test split
    assert s["pt_first"] >= 0
    with pytest.raises(PtmbenchError, match="label-free L_PT of vision"):
        rec.purify(bert, CTX, tmp_path / "c")


# ------------------------------------------------------------------------------------------- NeuBA presets
def test_neuba_vision_demo_keeps_its_keys_paper_and_faithful_have_the_reference_optimiser():
    from pathlib import Path

    from bench.artifacts import content_key

    attack = get("attack", "neuba-vision")
    demo = attack.build("demo")
    root = Path(__file__).resolve().parents[1] / "results" / "vision" / "records"
    recs = [json.loads(f.read_text()) for f in sorted(root.glob("*.json"))]
    recs = [r for r in recs if r["attack"] == "neuba-vision"]
    assert recs and {r["preset"] for r in recs} == {"demo"}
    for r in recs:  # the committed results' attack config and cache key, unchanged
        assert r["attack_config"] == demo.config_dict()
        seed = next(x["seed"] for x in r["lineage"] if x.get("stage") == "attack")
        assert content_key("attack", "neuba-vision", demo.config_dict(), r["keys"]["zoo"], seed,
                           demo.version) == r["keys"]["attack"]
    reference = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "clip": None, "schedule": "constant",
                 "backdoor_weight": 1.0, "weight_decay": 0.0}
    paper = attack.build("paper").config_dict()
    faithful = attack.build("faithful").config_dict()
    assert {k: paper[k] for k in reference} == reference
    assert {k for k in paper if paper[k] != faithful[k]} <= {"steps", "batch_size"}
    assert faithful["steps"] > paper["steps"]


def test_neuba_vision_paper_preset_trains_with_plain_constant_sgd(env, vit_dir, tmp_path, monkeypatch):
    import attacks.neuba_vision as nv

    seen = []
    real = nv.train

    def spy(modules, params, loss_fn, batches, steps, optim, ctx, **kw):
        seen.append(optim)
        return real(modules, params, loss_fn, batches, steps, optim, ctx, **kw)

    monkeypatch.setattr(nv, "train", spy)
    attack = get("attack", "neuba-vision").build("paper", {"steps": 2, "batch_size": 4, "max_corpus_images": 16})
    out = attack.implant(load_ptm(vit_dir), CTX, tmp_path / "cache")
    (optim,) = seen
    opt = optim.build([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.0 and opt.defaults["lr"] == 0.01
    assert optim.clip is None and optim.schedule == "constant" and optim.warmup_steps == 0
    assert all(optim.lr_lambda(2)(s) == 1.0 for s in range(2))
    assert "curve" in out.info["attack"]["train"]  # read with 'ptmbench analyze curves'
