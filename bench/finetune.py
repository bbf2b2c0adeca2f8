"""Downstream fine-tuning (the victim's step): the whole PTM plus a new linear head on its representation."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.ptm import PTM
from bench.train import OptimConfig, TrainResult, cycle_epochs, steps_for, train


@dataclass(frozen=True)
class FinetunePreset:
    """A named downstream budget; ``paper`` is the reference protocol (PROTOCOL §5), others scale it down."""

    name: str
    epochs: float
    batch_size: int
    lr: float
    max_len: int = 128
    max_train: int | None = None
    max_eval: int | None = None
    optimizer: str = "adamw"
    eval_batch_size: int = 128
    bucketing: bool = True
    reinit_pooler: bool = False  # the reference RECIPE script's accident: fine-tuning gets a fresh pooler

    def validate(self, where: str) -> None:
        from bench.config import positive
        from bench.train import OPTIMIZERS

        positive(where, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, max_len=self.max_len,
                 max_train=self.max_train, max_eval=self.max_eval, eval_batch_size=self.eval_batch_size)
        if self.optimizer not in OPTIMIZERS:
            raise PtmbenchError(f"{where}.optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")

    def optim(self) -> OptimConfig:
        return OptimConfig(optimizer=self.optimizer, lr=self.lr, clip=1.0, schedule="linear")

    def to_dict(self) -> dict[str, Any]:
        """The preset as recorded; options added later are left out at their default (record identities of
        earlier results stay valid)."""
        d = asdict(self)
        for k, default in ADDED_OPTIONS.items():
            if d.get(k) == default:
                del d[k]
        return d


ADDED_OPTIONS = {"reinit_pooler": False}


TEXT_PRESETS = {
    "paper": FinetunePreset("paper", epochs=3, batch_size=32, lr=2e-5, max_len=128),
    "demo": FinetunePreset("demo", epochs=2, batch_size=32, lr=4e-5, max_len=64, max_train=2000, max_eval=600),
    "smoke": FinetunePreset("smoke", epochs=1, batch_size=8, lr=1e-3, max_len=32, max_train=48, max_eval=24),
}
VISION_PRESETS = {
    "paper": FinetunePreset("paper", epochs=10, batch_size=64, lr=1e-3, optimizer="sgd", bucketing=False),
    "demo": FinetunePreset("demo", epochs=2, batch_size=64, lr=1e-2, optimizer="sgd", max_train=5000,
                           max_eval=1000, bucketing=False),
    "smoke": FinetunePreset("smoke", epochs=1, batch_size=8, lr=1e-2, optimizer="sgd", max_train=32, max_eval=16,
                            bucketing=False),
}
PRESETS = {"text": TEXT_PRESETS, "vision": VISION_PRESETS}


def get_preset(modality: str, name: str, **overrides: Any) -> FinetunePreset:
    """A named preset with ``overrides`` (unknown keys and wrong types fail naming the key)."""
    from bench.config import from_dict

    table = PRESETS[modality]
    if name not in table:
        raise PtmbenchError(f"unknown preset {name!r}; known presets: {', '.join(table)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "name" in given:
        raise PtmbenchError("finetune.name: the preset's name is set by 'preset', not by 'finetune'")
    checked = from_dict(FinetunePreset, {**asdict(table[name]), **given}, "finetune")
    return replace(table[name], **{k: getattr(checked, k) for k in given})


class Classifier(nn.Module):
    """PTM backbone + dropout + a new linear head on the PTM's representation (pooler / class token)."""

    def __init__(self, ptm: PTM, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ptm = ptm
        self.backbone = ptm.backbone
        hidden = ptm.adapter.hidden_size(ptm)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rep = self.ptm.adapter.representation(self.ptm, batch)
        return self.head(self.dropout(rep))


@dataclass
class Finetuned:
    model: Classifier
    train: TrainResult
    num_classes: int
    n_train: int


def finetune(ptm: PTM, train_data: Any, num_classes: int, preset: FinetunePreset, ctx: RunContext,
             copy_ptm: bool = True) -> Finetuned:
    """Fine-tune a copy of ``ptm`` (the cached PTM stays untouched) on labelled ``train_data``."""
    if len(train_data) == 0:
        raise PtmbenchError("the training split is empty; nothing to fine-tune on")
    adapter = ptm.adapter
    if copy_ptm:
        ptm = copy.deepcopy(ptm)
    if preset.reinit_pooler:
        pooler = getattr(ptm.backbone, "pooler", None)
        if pooler is None:
            raise PtmbenchError(f"reinit_pooler: this {ptm.family} PTM has no pooler to re-initialise")
        with ctx.seeded("finetune-pooler"), torch.no_grad():
            pooler.dense.weight.normal_(0.0, 0.02)
            pooler.dense.bias.zero_()
    with ctx.seeded("finetune-head"):
        model = Classifier(ptm, num_classes).to(ctx.device)
    labels = torch.as_tensor(np.asarray(train_data.labels), dtype=torch.long)
    lengths = adapter.lengths(train_data, preset.max_len)

    def epoch(e: int) -> list[np.ndarray]:
        return adapter.batches(lengths, preset.batch_size, ctx.rng("finetune-batches", e), shuffle=True,
                               bucketing=preset.bucketing, ctx=ctx)

    def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = adapter.collate(ptm, train_data, idx, preset.max_len, ctx)
        loss = nn.functional.cross_entropy(model(batch).float(), labels[idx].to(ctx.device))
        return loss, {}

    steps = steps_for(len(train_data), preset.batch_size, preset.epochs)
    params = [p for p in model.parameters()]
    with ctx.seeded("finetune-dropout"):
        result = train([model], params, loss_fn, cycle_epochs(epoch), steps, preset.optim(), ctx, desc="finetune")
    model.eval()
    return Finetuned(model, result, num_classes, len(train_data))


@torch.inference_mode()
def predict(model: Classifier, data: Any, preset: FinetunePreset, ctx: RunContext) -> np.ndarray:
    """Predicted labels in input order; batches sorted by length so padding is minimal (on the reference
    paths: fixed-order batches padded to ``max_len``)."""
    adapter = model.ptm.adapter
    model.eval()
    out = np.empty(len(data), dtype=np.int64)
    for idx in adapter.batches(adapter.lengths(data, preset.max_len), preset.eval_batch_size, None, shuffle=False,
                               bucketing=True, ctx=ctx):
        batch = adapter.collate(model.ptm, data, idx, preset.max_len, ctx)
        with ctx.autocast():
            logits = model(batch)
        out[idx] = logits.argmax(-1).cpu().numpy()
    return out
