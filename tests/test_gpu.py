"""The CUDA path (docs/gpu.md) as far as a machine without a GPU can check it: where a stage puts the PTM,
the gradient scaler's branch of the training loop and its checkpoint, the determinism settings a record
carries, the regime that keeps GPU artifacts apart, and ``--device cuda`` refused where CUDA is missing.
The tests marked ``cuda`` run only where a CUDA device is present."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.artifacts import ArtifactStore, regime
from bench.context import CUBLAS_WORKSPACE, RunContext, determinism
from bench.errors import PtmbenchError
from bench.train import OptimConfig, cycle_epochs, train

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def ptmbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ regime and context
def test_cuda_regimes_are_keyed_apart_and_cpu_keys_are_unchanged():
    assert regime("bf16") is None and regime("fp32") == "fp32" and regime("fp32", True) == "refpaths"
    assert regime("bf16", device="cpu") is None and regime("fp32", device="cpu") == "fp32"
    assert regime("bf16", device="cuda") == "cuda-bf16"
    assert regime("fp16", device="cuda:1") == "cuda-fp16"  # the device index is not part of it
    assert regime("fp32", True, "cuda") == "cuda-refpaths"
    assert RunContext(precision="bf16").regime is None


def test_device_and_precision_are_checked():
    with pytest.raises(PtmbenchError, match="fp16 .* is for CUDA devices"):
        RunContext(precision="fp16")
    for bad in ("gpu", "cuda:x", "cpu:1", "mps"):
        with pytest.raises(PtmbenchError, match="not one of cpu, cuda, cuda:N"):
            RunContext(device=bad)
    with pytest.raises(PtmbenchError, match="drop --precision bf16"):
        RunContext(precision="bf16", reference_paths=True)
    assert RunContext(precision="bf16").grad_scaler() is None and RunContext(precision="fp32").grad_scaler() is None


@without_cuda
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(PtmbenchError, match="CUDA is not available; use --device cpu"):
        RunContext(device="cuda")


def test_determinism_settings_are_described():
    d = RunContext().determinism()
    assert set(d) == {"deterministic_algorithms", "cudnn_deterministic", "cudnn_benchmark", "cublas_workspace_config"}
    assert d["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert "gpu" not in determinism("cpu")


# ------------------------------------------------------------------------------------------ where the PTM lives
def test_stages_put_the_ptm_on_the_context_device(bert_dir, tmp_path):
    """``meta`` stands in for a second device: a PTM that a stage materialises ends up wherever ctx.device
    says, from a zoo source (a PTM directory) and from an artifact, with its MLM head still tied."""
    from bench.nodes import ArtifactSource, ZooSource
    from bench.ptm import load_ptm
    from bench.stages import StageEnv, _materialize

    env = StageEnv(store=str(tmp_path / "store"), results=str(tmp_path / "results"), cache=str(tmp_path / "cache"))
    key = "attack-test-0000000000000000"
    ArtifactStore(env.store).write(key, load_ptm(bert_dir).save, {"stage": "attack"})
    for device in ("cpu", "meta"):
        ctx = RunContext(precision="fp32")
        ctx.device = device  # past the CUDA checks: a device this machine has besides the CPU
        for source in (ZooSource(str(bert_dir)), ArtifactSource(key)):
            ptm = _materialize(source, env, ctx)
            assert {p.device.type for p in ptm.parameters()} == {device}
            assert {b.device.type for b in ptm.backbone.buffers()} == {device}
            assert ptm.pt_head.decoder.weight is ptm.backbone.embeddings.word_embeddings.weight
            assert ptm.device.type == device


def test_a_fresh_mlm_head_is_made_on_the_backbone_device(bert):
    from bench.modalities.text import new_mlm_head

    bert.backbone.to("meta")
    head = new_mlm_head(bert.backbone, tied=False)
    assert {p.device.type for p in head.parameters()} == {"meta"}


def test_to_device_on_the_cpu_is_the_tensor_itself():
    from bench.modalities.base import to_device

    t = torch.arange(6)
    assert to_device(t, "cpu") is t


# ------------------------------------------------------------------------------------------ gradient scaler
def _toy(ctx: RunContext, steps: int = 12) -> tuple[nn.Module, list[float]]:
    with ctx.seeded("init"):
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    x = torch.as_tensor(ctx.rng("data").normal(size=(32, 4)), dtype=torch.float32)
    y = x.sum(1, keepdim=True)

    def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return nn.functional.mse_loss(model(x[idx]), y[idx]), {}

    batches = cycle_epochs(lambda e: np.array_split(ctx.rng("batches", e).permutation(32), 4))
    res = train([model], list(model.parameters()), loss_fn, batches, steps, OptimConfig(lr=1e-2), ctx, desc="toy")
    return model, res.losses


def _with_scaler(ctx: RunContext, made: list, **kw) -> RunContext:
    """``ctx`` handing ``train`` a CPU gradient scaler (fp16 training is CUDA-only; the scaler's branch of the
    loop is the same on every device)."""
    def make() -> torch.amp.GradScaler:
        made.append(torch.amp.GradScaler("cpu", **kw))
        return made[-1]

    ctx.grad_scaler = make
    return ctx


def test_scaled_steps_equal_unscaled_ones():
    """A power-of-two loss scale is exact in fp32: unscaled before clipping, the steps are the same."""
    ref_model, ref_losses = _toy(RunContext(seed=1, precision="fp32"))
    made: list = []
    model, losses = _toy(_with_scaler(RunContext(seed=1, precision="fp32"), made, init_scale=2.0**10,
                                      growth_interval=1))
    assert losses == ref_losses
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert made[0].get_scale() == 2.0 ** (10 + 12)  # grew after every finite step


def test_an_overflowing_step_is_skipped_and_the_scale_lowered():
    made: list = []
    ctx = _with_scaler(RunContext(seed=1, precision="fp32"), made, init_scale=3e38)
    with ctx.seeded("init"):
        model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.ones(8, 4) * 10

    def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return model(x[idx]).pow(2).mean() + 100.0, {}

    train([model], list(model.parameters()), loss_fn, iter([np.arange(8)]), 1, OptimConfig(lr=1e-2), ctx)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert made[0].get_scale() == pytest.approx(1.5e38)


def test_the_scaler_state_is_checkpointed(tmp_path):
    """A run cut mid-call resumes with the loss scale it had reached, not the initial one."""
    made: list = []
    ref_model, ref_losses = _toy(_with_scaler(RunContext(seed=2, precision="fp32"), made, init_scale=2.0**4,
                                              growth_interval=1))
    ref_scale = made[-1].get_scale()
    count = {"n": 0}

    def cancel() -> bool:
        count["n"] += 1
        return count["n"] > 7

    ckdir = tmp_path / "ck"
    ctx = _with_scaler(RunContext(seed=2, precision="fp32", checkpoint_every_s=0, cancel=cancel), [],
                       init_scale=2.0**4, growth_interval=1)
    with pytest.raises(KeyboardInterrupt), ctx.checkpointed(ckdir):
        _toy(ctx)
    state = torch.load(ckdir / "call-0.pt", weights_only=True)
    assert state["scaler"]["scale"] == 2.0 ** (4 + 7)
    made = []
    ctx = _with_scaler(RunContext(seed=2, precision="fp32", checkpoint_every_s=0), made, init_scale=2.0**4,
                       growth_interval=1)
    with ctx.checkpointed(ckdir):
        model, losses = _toy(ctx)
    assert losses == ref_losses and made[-1].get_scale() == ref_scale
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ through the CLI
def test_records_carry_determinism_and_the_flag_leaves_cpu_scores_alone(env, bert_dir, tmp_path):
    runs = {}
    for flag in ((), ("--deterministic",)):
        res = tmp_path / f"results{len(flag)}"
        out = ptmbench(env, "finetune", "--model", str(bert_dir), "--dataset", "sst2", "--preset", "smoke",
                       "--triggers", "por", "--results", str(res), "--precision", "fp32", *flag)
        assert out.returncode == 0, out.stderr
        (rec,) = (res / "records").glob("*.json")
        runs[bool(flag)] = json.loads(rec.read_text())
    plain, det = runs[False], runs[True]
    assert plain["device"] == "cpu" and plain["regime"] == "fp32"  # the CPU fp32 regime, as before
    assert plain["determinism"]["deterministic_algorithms"] is False and "gpu" not in plain["determinism"]
    assert det["determinism"]["deterministic_algorithms"] is True
    assert det["determinism"]["cublas_workspace_config"] == env.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    for k in ("cacc", "aasr", "per_trigger", "finetune_train"):
        if k == "finetune_train":
            assert plain[k]["loss_last"] == det[k]["loss_last"]
        else:
            assert plain[k] == det[k]


@without_cuda
@pytest.mark.parametrize("command", ["finetune", "run"])
def test_device_cuda_without_cuda_is_one_line_exit_2_and_writes_nothing(env, bert_dir, tmp_path, command):
    res, cache = tmp_path / "results", tmp_path / "cache-here"
    if command == "finetune":
        args = ["finetune", "--model", str(bert_dir), "--dataset", "sst2", "--preset", "smoke"]
    else:
        args = ["run", "smoke"]
    out = ptmbench(env, *args, "--device", "cuda", "--results", str(res), "--cache", str(cache))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available; use --device cpu" in lines[0], out.stderr
    assert not res.exists() and not cache.exists()


# ------------------------------------------------------------------------------------------ the GPU check script
def test_gpu_check_without_cuda_exits_2_with_one_line_and_writes_nothing(monkeypatch, capsys, tmp_path):
    module = gpu_check()
    assert callable(module.main) and set(module.SECTION_FUNCS) == set(module.SECTIONS)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert module.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]
    assert not (tmp_path / "out").exists()


def test_gpu_check_times_steps_and_writes_its_report(monkeypatch, tmp_path):
    """The step timing and the report, on the CPU with the tiny PTMs standing in for the zoo's."""
    from conftest import bpe_tokenizer, tiny_ptm, tiny_vit, wordpiece_tokenizer

    module = gpu_check()
    ptms = {"bert": lambda: tiny_ptm("bert", wordpiece_tokenizer()),
            "roberta": lambda: tiny_ptm("roberta", bpe_tokenizer()), "vit": tiny_vit}
    monkeypatch.setattr(module, "family_ptm", lambda family: (ptms[family](), f"tiny {family}"))
    monkeypatch.setattr(module, "TEXT_BATCH", 4)
    monkeypatch.setattr(module, "TEXT_LEN", 16)
    monkeypatch.setattr(module, "VIT_BATCH", 4)
    families = {}
    for family in ptms:
        r = module.time_steps(family, "cpu", 2)
        assert r["steps_timed"] == 2 and r["step_s"] > 0 and r["precision"] in ("fp32", "bf16")
        families[family] = {"cuda": r, "cpu": r, "speedup": 1.0}
    report = {"command": "python benchmarks/gpu_check.py", "ok": True,
              "machine": {"gpu": "test", "capability": "9.0", "gpu_memory_gib": 1, "bf16_native": True, "cuda": "x",
                          "cudnn": 1, "torch": torch.__version__, "cpu": {"model": "cpu", "bf16": "none"},
                          "cpu_threads": 1},
              "sections": {"steps": {"ok": True, "wall_s": 1.0, "families": families}}}
    md, js = module.write_report(report, tmp_path / "out")
    assert json.loads(js.read_text())["sections"]["steps"]["families"]["vit"]["cpu"]["steps_timed"] == 2
    assert "| vit | tiny vit |" in md.read_text()


# ------------------------------------------------------------------------------------------ on a GPU
@needs_cuda
def test_cuda_stages_keep_every_tensor_on_the_device(env, bert_dir, tmp_path):
    """Every text attack and defense at its smoke preset, then a fine-tuned cell, on CUDA: a tensor created
    on the wrong device stops the stage with torch's device-mismatch error."""
    from bench.finetune import get_preset
    from bench.ptm import load_ptm
    from bench.registry import get
    from bench.stages import CellSpec, finetune_eval
    from bench.triggers import trigger_sets_for

    ctx = RunContext(device="cuda")
    for kind, name in (("attack", "neuba"), ("attack", "por1"), ("attack", "badpre"), ("defense", "recipe"),
                       ("defense", "fp-ga"), ("defense", "fp-gm"), ("defense", "pooler-reinit")):
        ptm = load_ptm(bert_dir).to(ctx.device)
        method = get(kind, name).build("smoke", {})
        out = method.implant(ptm, ctx, tmp_path) if kind == "attack" else method.purify(ptm, ctx, tmp_path)
        assert out.device.type == "cuda"
    ptm = load_ptm(bert_dir).to(ctx.device)
    cell = CellSpec(model="tiny", dataset="sst2", seed=0, preset=get_preset("text", "smoke"))
    (rec,) = finetune_eval(ptm, cell, trigger_sets_for("text", "por", "por"), ctx, tmp_path)
    assert rec["device"] == "cuda" and rec["determinism"]["gpu"]["name"]


@needs_cuda
def test_fp16_on_cuda_trains_with_a_scaler():
    ctx = RunContext(device="cuda", precision="fp16")
    assert isinstance(ctx.grad_scaler(), torch.amp.GradScaler) and ctx.regime == "cuda-fp16"
    model = nn.Linear(4, 1).to("cuda")
    x = torch.randn(16, 4, device="cuda")

    def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return model(x[idx]).float().pow(2).mean(), {}

    res = train([model], list(model.parameters()), loss_fn, cycle_epochs(lambda e: [np.arange(16)]), 5,
                OptimConfig(lr=1e-2), ctx)
    assert all(np.isfinite(res.losses)) and res.losses[-1] < res.losses[0]


@needs_cuda
def test_batches_bound_for_cuda_go_through_pinned_memory():
    from bench.modalities.base import to_device

    t = torch.arange(6)
    out = to_device(t, "cuda")
    assert out.device.type == "cuda" and torch.equal(out.cpu(), t)
