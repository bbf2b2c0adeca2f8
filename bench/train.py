"""The one training loop: pretraining, attacks, defenses and fine-tuning all run through ``train``.

Extra losses, frozen groups, schedules and post-step hooks are parameters, never copies of the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.checkpoint import skip
from bench.context import RunContext
from bench.errors import PtmbenchError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule; defaults are the reference AdamW (lr 2e-5, linear decay, no warmup, clip 1)."""

    optimizer: str = "adamw"
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    clip: float | None = 1.0
    schedule: str = "linear"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise PtmbenchError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise PtmbenchError(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not self.lr > 0:
            raise PtmbenchError(f"learning rate must be > 0, got {self.lr}")

    def build(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                 weight_decay=self.weight_decay, foreach=True)

    def lr_lambda(self, total: int) -> Callable[[int], float]:
        w = self.warmup_steps

        def f(step: int) -> float:
            if step < w:
                return (step + 1) / w
            if self.schedule == "constant":
                return 1.0
            return max(0.0, (total - step) / max(1, total - w))

        return f


@dataclass
class TrainResult:
    steps: int
    wall_s: float
    losses: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        k = max(1, len(self.losses) // 10)
        return {"steps": self.steps, "wall_s": round(self.wall_s, 2),
                "loss_first": _mean(self.losses[:k]), "loss_last": _mean(self.losses[-k:])}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def cycle_epochs(make_epoch: Callable[[int], Iterable[Any]]) -> Iterator[Any]:
    """Endless batches: epoch 0, 1, 2, ... each built by ``make_epoch(epoch)`` (its own shuffle)."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


class MicroBatches(list):
    """One optimiser step's batch given as its micro-batches (sample-index arrays): gradient accumulation."""


def micro_batches(batches: Iterable[np.ndarray], micro_batch: int | None) -> list[Any]:
    """Each batch of sample indices larger than ``micro_batch`` becomes a :class:`MicroBatches` of near-equal
    parts of at most ``micro_batch`` samples; :func:`train` steps once per batch on their size-weighted
    mean gradient, so the smaller last batch of an epoch is one step too.  ``None``: batches unchanged."""
    out: list[Any] = []
    for b in batches:
        b = np.asarray(b)
        if micro_batch is None or len(b) <= micro_batch:
            out.append(b)
        else:
            out.append(MicroBatches(np.array_split(b, math.ceil(len(b) / micro_batch))))
    return out


def accumulation(batch_size: int, micro_batch: int | None) -> int:
    """How many micro-batches of at most ``micro_batch`` samples make one batch (1 = no accumulation)."""
    if micro_batch is None or micro_batch >= batch_size:
        return 1
    return math.ceil(batch_size / micro_batch)


def train(modules: list[nn.Module], params: list[nn.Parameter],
          loss_fn: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]],
          batches: Iterator[Any], steps: int, optim: OptimConfig, ctx: RunContext,
          post_step: Callable[[int], None] | None = None, desc: str = "train") -> TrainResult:
    """Run ``steps`` optimiser steps of ``loss_fn(batch, step)`` over ``params`` (everything else frozen).

    ``loss_fn`` returns the loss to minimise and a dict of named parts for logging; it runs under the
    context's autocast.  ``post_step(step)`` runs after each update (e.g. a projection or rescaling).
    A batch that is a :class:`MicroBatches` (see :func:`micro_batches`) is run one micro-batch at a time,
    each loss weighted by its share of the batch's samples, before the one optimiser step (gradient
    accumulation: the memory of a micro-batch, the step of the whole batch); the logged loss and parts
    are the same weighted means.

    Inside a checkpointed stage (:meth:`RunContext.checkpointed`) the call saves its whole state every
    ``ctx.checkpoint_every_s`` seconds and resumes from the last save: weights, optimiser, scheduler, RNG
    streams and data position (``batches`` must be the same deterministic iterator on every run: the resumed
    call skips the batches already trained on), so the result is the one of an uninterrupted run.
    """
    if steps < 1:
        raise PtmbenchError(f"{desc}: the number of training steps must be >= 1, got {steps}")
    trainable = {id(p) for p in params}
    saved = []
    for m in modules:
        m.train()
        for p in m.parameters():
            saved.append((p, p.requires_grad))
            p.requires_grad_(id(p) in trainable)
    unique = list({id(p): p for p in params}.values())
    opt = optim.build(unique)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, optim.lr_lambda(steps))
    scaler = ctx.grad_scaler()  # fp16 on CUDA: loss scaling (None in bf16 and fp32)
    result = TrainResult(steps=steps, wall_s=0.0)
    ckpt = ctx.checkpoints.next_call(desc) if ctx.checkpoints is not None else None
    start, before = 0, 0.0  # the step to start from and the wall time of the steps before it
    state = ckpt.load() if ckpt is not None else None
    if state is not None:
        if state["steps"] != steps:
            raise PtmbenchError(f"stage checkpoint {ckpt.path} is for {state['steps']} steps, this call runs "
                                f"{steps}; delete {ckpt.stage.directory} to run the stage from its start")
        if not state["done"]:
            skip(batches, state["step"])
        ckpt.restore(state, modules, opt, sched, scaler)
        start, before = state["step"], state["wall_s"]
        result.losses, result.parts = list(state["losses"]), list(state["parts"])
    bar = _progress(ctx, steps, desc, start)
    t0 = time.perf_counter()

    def save(step: int, done: bool) -> None:
        ckpt.save(step=step, steps=steps, done=done, modules=modules, optimizer=opt, scheduler=sched,
                  losses=result.losses, parts=result.parts, wall_s=before + time.perf_counter() - t0,
                  scaler=scaler)

    try:
        for step in range(start, steps):
            ctx.check_cancel()
            batch = next(batches)
            pieces = batch if isinstance(batch, MicroBatches) else [batch]
            shares = [len(p) / sum(map(len, pieces)) for p in pieces] if len(pieces) > 1 else [1.0]
            total, summed = 0.0, {}
            for piece, share in zip(pieces, shares, strict=True):
                with ctx.autocast():
                    loss, parts = loss_fn(piece, step)
                if not torch.isfinite(loss):
                    raise PtmbenchError(f"{desc}: loss became {loss.item()} at step {step}; "
                                        f"lower the learning rate")
                weighted = loss * share if share != 1.0 else loss
                (weighted if scaler is None else scaler.scale(weighted)).backward()
                total += float(loss.detach()) * share
                for k, v in parts.items():
                    summed[k] = summed.get(k, 0.0) + float(v) * share
            if scaler is not None:
                scaler.unscale_(opt)  # clipping acts on the true gradients
            if optim.clip:
                torch.nn.utils.clip_grad_norm_(unique, optim.clip)
            if scaler is None:
                opt.step()
            else:  # skips the update when a gradient overflowed, and adapts the scale
                scaler.step(opt)
                scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if post_step is not None:
                with torch.no_grad():
                    post_step(step)
            result.losses.append(total)
            result.parts.append(summed)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
            if ckpt is not None and step + 1 < steps and ckpt.due():
                save(step + 1, done=False)
        # a finished call is kept when re-running it would cost a checkpoint interval or more, so a stage with
        # further calls resumes past it
        if ckpt is not None and start < steps and (ckpt.saves or ckpt.due()):
            save(steps, done=True)
    finally:
        if bar is not None:
            bar.close()
        for p, rg in saved:
            p.requires_grad_(rg)
        for m in modules:
            m.eval()
    result.wall_s = before + time.perf_counter() - t0
    return result


def _progress(ctx: RunContext, total: int, desc: str, initial: int = 0) -> Any:
    if not ctx.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def steps_for(n_samples: int, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(n_samples / batch_size * epochs))
