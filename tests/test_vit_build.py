"""The in-project ViT builds: vit-tin32-v2's recipe reports top-1 after every epoch, is deterministic, resumes
bit for bit after a kill, and vit-tiny-tin32 keeps its key."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import cancel_after

from bench.artifacts import ArtifactStore
from bench.checkpoint import progress
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.registry import get, names, register
from bench.zoo import VIT_V2_CFG, VIT_V2_NAME, ModelSpec, ViTRecipeConfig, Zoo, pretrain_vit, top1

ROOT = Path(__file__).resolve().parents[1]
TINY = "vit-test-tiny"
# 64 mirror images in batches of 16: 4 steps an epoch, 10 steps = 2.5 epochs (evaluations at steps 4, 8, 10)
TINY_CFG = ViTRecipeConfig(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
                           epochs=2.5, batch_size=16, lr=1e-3)


@pytest.fixture
def tiny_spec() -> str:
    """A test-only zoo model built by the same path as vit-tin32-v2, with a tiny config."""
    if TINY not in names("model"):
        register("model", TINY)(ModelSpec(TINY, "vision", "vit", "test-only tiny ViT recipe",
                                          lambda zoo, ctx: pretrain_vit(TINY_CFG, ctx, zoo.cache_dir),
                                          config=asdict(TINY_CFG)))
    return TINY


def _build(cache: Path, ctx: RunContext):
    zoo = Zoo(ArtifactStore(cache / "artifacts"), cache)
    return zoo, *zoo.load(TINY, ctx)


def _weights(ptm) -> dict[str, torch.Tensor]:
    return {**{f"b.{k}": v for k, v in ptm.backbone.state_dict().items()},
            **{f"h.{k}": v for k, v in ptm.pt_head.state_dict().items()}}




def test_build_reports_top1_per_epoch_and_is_deterministic(env, tiny_spec, tmp_path):
    # the build's randomness comes from its config's seed, not the run's
    _, a, key_a = _build(tmp_path / "a", RunContext(seed=0, precision="fp32"))
    zoo, b, key_b = _build(tmp_path / "b", RunContext(seed=7, precision="fp32"))
    assert key_a == key_b
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    report = a.info["vit_build"]
    assert report == b.info["vit_build"] | {"train": report["train"]}  # identical but for the wall time
    epochs = report["epochs"]
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1.0, 4), (2.0, 8), (2.5, 10)]
    assert all(0.0 <= e["val_top1"] <= 1.0 and e["train_loss"] > 0 for e in epochs)
    assert report["val_top1"] == epochs[-1]["val_top1"]
    assert report["config"]["label_smoothing"] == 0.1 and report["val_images"] == 32
    # the reported final top-1 is the saved model's
    val = a.adapter.load_split(a, "tiny-imagenet", "validation", None, tmp_path / "a")
    assert top1(a, val, RunContext(precision="fp32")) == report["val_top1"]
    # a second load is the cached artifact, not a new build
    again, key = zoo.load(TINY, RunContext(seed=0, precision="fp32"))
    assert key == key_b and again.info["vit_build"] == b.info["vit_build"]


@pytest.mark.parametrize("cut", [3, 6])  # mid first epoch; mid second epoch, after the first evaluation
def test_killed_build_resumes_bit_for_bit(env, tiny_spec, tmp_path, cut):
    _, ref, _ = _build(tmp_path / "ref", RunContext(precision="fp32", checkpoint_every_s=None))
    cache = tmp_path / "cut"
    ctx = RunContext(precision="fp32", checkpoint_every_s=0, cancel=cancel_after(cut))
    with pytest.raises(KeyboardInterrupt):
        _build(cache, ctx)
    ckdirs = list((cache / "artifacts" / ".checkpoints").iterdir())
    assert len(ckdirs) == 1 and progress(ckdirs[0])["step"] == cut
    _, out, _ = _build(cache, RunContext(precision="fp32", checkpoint_every_s=0))
    assert not ckdirs[0].exists()
    wr, wo = _weights(ref), _weights(out)
    assert all(torch.equal(wr[k], wo[k]) for k in wr)
    assert out.info["vit_build"]["epochs"] == ref.info["vit_build"]["epochs"]


def test_vit_tiny_key_unchanged_and_v2_registered():
    recs = [json.loads(f.read_text()) for f in sorted((ROOT / "results" / "vision" / "records").glob("*.json"))]
    zoo_keys = {r["keys"]["zoo"] for r in recs if r["model"] == "vit-tiny-tin32"}
    assert len(zoo_keys) == 1
    zoo = Zoo(ArtifactStore(Path("/nonexistent")), Path("/nonexistent"))
    assert zoo.key("vit-tiny-tin32") == zoo_keys.pop()
    spec = get("model", VIT_V2_NAME)  # committed weights like vit-tiny-tin32's, retrained by --rebuild
    assert not spec.cached and spec.rebuild is not None and spec.config == asdict(VIT_V2_CFG)
    assert (VIT_V2_CFG.img_size, VIT_V2_CFG.epochs, VIT_V2_CFG.label_smoothing) == (32, 10.0, 0.1)


def test_uncommitted_vit_is_refused_with_its_rebuild_command():
    from bench.zoo import CommittedViT

    with pytest.raises(PtmbenchError, match=r"vit-x: no committed weights at .*'ptmbench zoo build vit-x --rebuild' "
                                            r"\(an hour\)"):
        CommittedViT("vit-x", TINY_CFG, "an hour").build(None, None)


@pytest.mark.parametrize("name", ["vit-tiny-tin32", VIT_V2_NAME])
def test_rebuild_of_committed_vit_runs_checkpointed_and_reports_epochs(env, tmp_path, name):
    """``zoo build NAME --rebuild`` on the tiny mirror (64 images: one step an epoch)."""
    out = tmp_path / "w"
    p = subprocess.run([sys.executable, "-m", "bench.cli", "zoo", "build", name, "--rebuild", "--out",
                        str(out), "--precision", "fp32", "--checkpoint-every", "0"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    build = json.loads((out / "build.json").read_text())
    cfg = get("model", name).config
    steps = -(-64 * cfg["epochs"] // cfg["batch_size"])  # 64 mirror images: one step is a whole epoch
    assert [(e["epoch"], e["step"]) for e in build["epochs"]] == [(float(e), e) for e in range(1, int(steps) + 1)]
    assert build["config"] == get("model", name).config
    assert build["model"] == name and build["rebuild"] == f"ptmbench zoo build {name} --rebuild"
    assert set(build["sha256"]) == {f.name for f in out.iterdir()} - {"build.json"}
    ck = Path(env["PTMBENCH_CACHE"]) / "artifacts" / ".checkpoints"
    assert not ck.exists() or not any(ck.iterdir())  # the finished stage's checkpoints are gone
