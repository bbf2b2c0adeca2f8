"""Stage checkpoints: a training stage cut anywhere resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import cancel_after
from torch import nn

from bench.checkpoint import describe, latest_state, progress
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.train import OptimConfig, cycle_epochs, train


def _toy(ctx: RunContext, steps: int, calls: int = 2) -> tuple[nn.Module, list[list[float]]]:
    """A stage with ``calls`` training calls that draw dropout, a tracked torch generator and numpy batches."""
    with ctx.seeded("init"):
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    x = torch.as_tensor(ctx.rng("data").normal(size=(40, 4)), dtype=torch.float32)
    y = x.sum(1, keepdim=True)
    noise = ctx.torch_generator("noise")

    def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        jitter = torch.randn(len(idx), 1, generator=noise) * 0.01
        return nn.functional.mse_loss(model(x[idx]), y[idx] + jitter), {}

    losses = []
    for c in range(calls):
        batches = cycle_epochs(lambda e, c=c: np.array_split(ctx.rng("batches", c, e).permutation(40), 5))
        res = train([model], list(model.parameters()), loss_fn, batches, steps, OptimConfig(lr=1e-2), ctx,
                    desc=f"toy{c}")
        losses.append(res.losses)
    return model, losses




@pytest.mark.parametrize("cut", [3, 15, 17, 29])  # mid first call, at the call boundary, mid second call
def test_cut_training_resumes_bit_for_bit(tmp_path: Path, cut: int) -> None:
    ref_model, ref_losses = _toy(RunContext(seed=3, precision="fp32"), steps=15)
    ckdir = tmp_path / "ck"
    ctx = RunContext(seed=3, precision="fp32", checkpoint_every_s=0, cancel=cancel_after(cut))
    with pytest.raises(KeyboardInterrupt), ctx.checkpointed(ckdir):
        _toy(ctx, steps=15)
    assert ckdir.is_dir() and progress(ckdir) is not None  # kept for the re-run
    ctx = RunContext(seed=3, precision="fp32", checkpoint_every_s=0)
    with ctx.checkpointed(ckdir):
        model, losses = _toy(ctx, steps=15)
    assert not ckdir.exists()  # a finished stage deletes its checkpoints
    assert losses == ref_losses
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_progress_reports_call_and_step(tmp_path: Path) -> None:
    ctx = RunContext(seed=0, precision="fp32", checkpoint_every_s=0, cancel=cancel_after(7))
    with pytest.raises(KeyboardInterrupt), ctx.checkpointed(tmp_path / "ck"):
        _toy(ctx, steps=10, calls=1)
    p = progress(tmp_path / "ck")
    assert (p["call"], p["step"], p["steps"], p["desc"], p["done"]) == (0, 7, 10, "toy0", False)
    assert p["wall_s"] >= 0


def test_describe_gives_the_step_and_the_time_to_go_at_the_pace_so_far() -> None:
    part = {"call": 0, "step": 400, "steps": 6250, "desc": "recipe", "done": False}
    assert describe(part) == "recipe step 400/6250"  # a checkpoint written before wall_s was recorded
    assert describe({**part, "wall_s": 960.0}) == "recipe step 400/6250, 16 min trained, about 3.9 h to go at that pace"
    assert describe({**part, "step": 60, "steps": 120, "wall_s": 30.0}).endswith("30 s trained, about 30 s to go at "
                                                                                  "that pace")
    assert describe({**part, "step": 0, "wall_s": 0.0}) == "recipe step 0/6250"


def test_latest_state_is_the_last_call_of_a_cut_stage(tmp_path: Path) -> None:
    assert latest_state(tmp_path) is None
    ctx = RunContext(seed=0, precision="fp32", checkpoint_every_s=0, cancel=cancel_after(13))
    with pytest.raises(KeyboardInterrupt), ctx.checkpointed(tmp_path / "ck"):
        _toy(ctx, steps=10, calls=2)
    state = latest_state(tmp_path / "ck")
    assert (state["desc"], state["step"], state["steps"]) == ("toy1", 3, 10)
    assert len(state["losses"]) == 3
    (tmp_path / "ck" / "call-1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PtmbenchError, match="unreadable stage checkpoint.*delete"):
        latest_state(tmp_path / "ck")


def test_checkpoint_of_other_code_is_refused(tmp_path: Path) -> None:
    ctx = RunContext(seed=0, precision="fp32", checkpoint_every_s=0, cancel=cancel_after(4))
    with pytest.raises(KeyboardInterrupt), ctx.checkpointed(tmp_path / "ck"):
        _toy(ctx, steps=10, calls=1)
    ctx = RunContext(seed=0, precision="fp32", checkpoint_every_s=0)
    with pytest.raises(PtmbenchError, match="is for 10 steps, this call runs 12; delete"), \
            ctx.checkpointed(tmp_path / "ck"):
        _toy(ctx, steps=12, calls=1)
    (tmp_path / "ck" / "call-0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PtmbenchError, match="cannot be resumed.*delete"), ctx.checkpointed(tmp_path / "ck"):
        _toy(ctx, steps=10, calls=1)


def test_no_checkpoints_outside_a_stage_or_when_off(tmp_path: Path) -> None:
    _toy(RunContext(seed=0, precision="fp32", checkpoint_every_s=0), steps=3)  # no stage: nothing to write
    ctx = RunContext(seed=0, precision="fp32", checkpoint_every_s=None)
    with ctx.checkpointed(tmp_path / "ck") as ck:
        assert ck is None
        _toy(ctx, steps=3)
    assert not (tmp_path / "ck").exists()
    with pytest.raises(PtmbenchError, match="checkpoint interval"):
        RunContext(checkpoint_every_s=-1)


# ------------------------------------------------------------------------------------ through the real CLI
def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _weights(cache: Path, stage: str) -> str:
    """The weights digest of the one artifact of ``stage`` in a cache."""
    from bench.artifacts import weights_digest

    (meta,) = (cache / "artifacts").glob(f"{stage}-*/meta.json")
    return weights_digest(json.loads(meta.read_text()))


def _kill_when(p: subprocess.Popen, ckroot: Path, stage: str, step: int) -> dict:
    """SIGKILL ``p`` once a checkpoint of ``stage`` has reached ``step``; returns that progress."""
    for _ in range(3000):
        for d in ckroot.glob(f"{stage}-*"):
            if (prog := progress(d)) is not None and prog["step"] >= step and not prog["done"]:
                p.send_signal(signal.SIGKILL)
                p.wait()
                return prog
        if p.poll() is not None:
            pytest.fail(f"the run ended before {stage} reached step {step}: {p.stderr.read()[-2000:]}")
        time.sleep(0.02)
    p.kill()
    pytest.fail(f"{stage} never reached step {step}")


def test_sigkilled_attack_and_defense_resume_to_the_same_weights(env, bert_dir, tmp_path: Path) -> None:
    """One thread, fp32: an uninterrupted run and a run SIGKILLed mid-implant, then mid-defense, then run to
    the end give bit-identical attack and defense weights; --dry-run shows the partial stage and its step."""
    spec = {"name": "ckpt", "models": [str(bert_dir)], "datasets": ["sst2"], "seeds": [0], "preset": "smoke",
            "precision": "fp32", "attacks": [{"name": "neuba", "config": {"steps": 400}}],
            "defenses": [{"name": "recipe", "config": {"steps": 400}}]}
    m = tmp_path / "ckpt.yaml"
    m.write_text(yaml.safe_dump(spec))
    env = {**env, "OMP_NUM_THREADS": "1"}
    ref = {**env, "PTMBENCH_CACHE": str(tmp_path / "ref")}
    out = _cli(ref, "run", str(m), "--results", str(tmp_path / "ref-res"), "--no-progress")
    assert out.wait(900) == 0, out.stderr.read()[-3000:]

    cut = {**env, "PTMBENCH_CACHE": str(tmp_path / "cut")}
    ckroot = tmp_path / "cut" / "artifacts" / ".checkpoints"
    args = ("run", str(m), "--results", str(tmp_path / "cut-res"), "--no-progress", "--checkpoint-every", "0")
    at = _kill_when(_cli(cut, *args), ckroot, "attack", 40)
    dry = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(m), "--results", str(tmp_path / "cut-res"),
                          "--dry-run"], env=cut, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert f"(partial: neuba step {at['step']}/400, " in dry.stdout and " to go at that pace)" in dry.stdout
    _kill_when(_cli(cut, *args), ckroot, "defense", 40)
    assert not list(ckroot.glob("attack-*")), "the finished implant's checkpoints were not deleted"
    last = _cli(cut, *args)
    assert last.wait(900) == 0, last.stderr.read()[-3000:]
    assert not list(ckroot.glob("*")), "checkpoints left behind by a finished run"
    for stage in ("attack", "defense"):
        assert _weights(tmp_path / "cut", stage) == _weights(tmp_path / "ref", stage), stage
    assert os.listdir(tmp_path / "cut-res" / "records") == os.listdir(tmp_path / "ref-res" / "records")
