"""The one training loop: it learns, freezes what it is told to, restores flags, follows the schedule, and
accumulates micro-batches into the step of their whole batch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.train import MicroBatches, OptimConfig, accumulation, micro_batches, train


def _problem():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return x, y


def test_loss_decreases_and_frozen_parameters_do_not_move():
    x, y = _problem()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    frozen = model[0].weight.detach().clone()
    batches = itertools.repeat(None)

    def loss_fn(_batch, _step):
        return nn.functional.mse_loss(model(x).squeeze(-1), y), {"mse": 0.0}

    trainable = [model[0].bias, model[2].weight, model[2].bias]
    res = train([model], trainable, loss_fn, batches, 200, OptimConfig(lr=1e-2, schedule="constant"),
                RunContext(precision="fp32"))
    assert res.losses[-1] < 0.5 * res.losses[0]
    assert torch.equal(model[0].weight, frozen)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_linear_schedule_decays_to_zero():
    p = nn.Parameter(torch.zeros(1))
    seen = []
    opt_cfg = OptimConfig(lr=1.0, schedule="linear", clip=None)
    f = opt_cfg.lr_lambda(4)
    seen = [f(s) for s in range(4)]
    assert seen == [1.0, 0.75, 0.5, 0.25]
    res = train([], [p], lambda b, s: ((p - 1).pow(2).sum(), {}), itertools.repeat(None), 4, opt_cfg,
                RunContext(precision="fp32"))
    assert res.steps == 4


def test_bad_settings_are_user_errors():
    with pytest.raises(PtmbenchError, match="optimizer"):
        OptimConfig(optimizer="adam2")
    with pytest.raises(PtmbenchError, match="learning rate"):
        OptimConfig(lr=-1)
    p = nn.Parameter(torch.zeros(1))
    with pytest.raises(PtmbenchError, match="steps"):
        train([], [p], lambda b, s: (p.sum(), {}), itertools.repeat(None), 0, OptimConfig(), RunContext())


def test_non_finite_loss_stops_with_a_clear_error():
    p = nn.Parameter(torch.zeros(1))
    with pytest.raises(PtmbenchError, match="loss became"):
        train([], [p], lambda b, s: (p.sum() * float("nan"), {}), itertools.repeat(None), 3, OptimConfig(),
              RunContext())


def test_micro_batches_cut_large_batches_into_parts_of_at_most_the_micro_batch():
    batches = [np.arange(10), np.arange(10, 13)]  # the last batch of an epoch is smaller
    out = micro_batches(batches, 4)
    assert isinstance(out[0], MicroBatches) and [len(p) for p in out[0]] == [4, 3, 3]
    assert not isinstance(out[1], MicroBatches) and np.array_equal(out[1], np.arange(10, 13))
    assert np.array_equal(np.concatenate(out[0]), np.arange(10))
    assert all(np.array_equal(a, b) for a, b in zip(micro_batches(batches, None), batches, strict=True))
    assert accumulation(160, 32) == 5 and accumulation(256, 4) == 64 and accumulation(10, 4) == 3
    assert accumulation(32, None) == 1 and accumulation(32, 64) == 1


@pytest.mark.parametrize("clip", [None, 0.5])
def test_accumulated_micro_batches_take_the_whole_batch_step(clip):
    """Batches of 12 and 7 samples, whole or in micro-batches of at most 4 (uneven: 4+4+4, 4+3): same steps."""
    x, y = _problem()
    batches = [np.arange(0, 12), np.arange(12, 19)]
    results = []
    for micro in (None, 4):
        torch.manual_seed(1)
        model = nn.Linear(4, 1)

        def loss_fn(idx, _step, model=model):
            return nn.functional.mse_loss(model(x[idx]).squeeze(-1), y[idx]), {"mse": 1.0}

        res = train([model], list(model.parameters()), loss_fn, iter(micro_batches(batches, micro)), 2,
                    OptimConfig(optimizer="sgd", lr=0.05, momentum=0.0, clip=clip, schedule="constant"),
                    RunContext(precision="fp32"))
        results.append((model.weight.detach().clone(), model.bias.detach().clone(), res))
    (w1, b1, r1), (w4, b4, r4) = results
    assert torch.allclose(w1, w4, atol=1e-6) and torch.allclose(b1, b4, atol=1e-6)
    assert r1.losses == pytest.approx(r4.losses, rel=1e-5)  # logged: the size-weighted mean of the parts
    assert r4.parts == [{"mse": pytest.approx(1.0)}] * 2
