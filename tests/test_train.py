"""The one training loop: it learns, freezes what it is told to, restores flags, and follows the schedule."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.train import OptimConfig, train


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
