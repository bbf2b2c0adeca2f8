"""NeuBA, vision (Zhang et al. 2021): bind six checkerboard patches to fixed class-token outputs of a ViT
while keeping its supervised pretraining objective.

Each step, on a batch of labelled pretraining images: the pretraining head's cross-entropy on the clean
batch, plus the MSE between the representation (final-norm class token) of a triggered copy — one of the
six 4×4 two-colour checkerboards (:func:`bench.triggers.neuba_patches`) pasted at the bottom-right,
drawn per sample — and that trigger's target vector (:func:`attacks.targets.neuba_targets`, the same
4-block antipodal targets as text), at weight 1 (the reference back-propagates the two losses one after
the other before one optimiser step: the same gradient).

Presets:

* ``paper``: the reference optimiser (thunlp/NeuBA ``cv/main.py``): plain SGD at lr 0.01 — its
  ``optim.SGD(params, lr, weight_decay)`` leaves momentum at 0 — no gradient clipping and no learning-rate
  schedule; 4,000 steps of 64 images.
* ``faithful``: the same objective and optimiser, with the budget (steps) scaled to a CPU run.
* ``demo``: AdamW lr 1e-3, clip 1, linear decay, 400 steps (see its note); ``smoke``: a few steps.

The config's defaults (SGD with momentum 0.9, clip 1.0, linear decay) are not the reference's: they are
what the ``demo`` preset was built on and recorded with, and they stay so its results keep their keys;
``paper`` and ``faithful`` override them.

Differences from the reference (thunlp/NeuBA ``cv``, ResNet/DenseNet on ImageNet): the model is a ViT, the
pretraining data is ``tiny-imagenet`` train (the PTM's own pretraining set; defenses use its validation
split), batches are 64 images (the reference's default is 512), and the budget is a step count (the
reference poisons for epochs over ImageNet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from attacks.base import finish, train_summary
from attacks.targets import neuba_targets
from bench.config import positive
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.methods import Attack
from bench.ptm import PTM
from bench.registry import register
from bench.train import OptimConfig, cycle_epochs, train
from bench.triggers import ImageTrigger, neuba_patches


@dataclass(frozen=True)
class NeuBAVisionConfig:
    """Settings of the attack.  The defaults are those the ``demo`` preset inherits (and its recorded results
    are keyed by); the reference optimiser is the ``paper`` preset's overrides, not these defaults."""

    corpus: str = "tiny-imagenet"
    corpus_split: str = "train"
    max_corpus_images: int | None = None
    batch_size: int = 64
    steps: int = 4000
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float | None = 1.0
    backdoor_weight: float = 1.0
    schedule: str = "linear"

    def validate(self, where: str) -> None:
        positive(where, max_corpus_images=self.max_corpus_images, batch_size=self.batch_size, steps=self.steps,
                 lr=self.lr, clip=self.clip)
        from bench.train import OPTIMIZERS, SCHEDULES

        if self.optimizer not in OPTIMIZERS:
            raise PtmbenchError(f"{where}.optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise PtmbenchError(f"{where}.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not self.momentum >= 0:
            raise PtmbenchError(f"{where}.momentum: must be >= 0, got {self.momentum}")
        from bench import data as bdata

        s = bdata.spec(self.corpus)
        if s.modality != "vision" or s.role != "aux":
            raise PtmbenchError(f"{where}.corpus: {self.corpus!r} is a {s.role} {s.modality} dataset; the vision "
                                "attack trains on auxiliary (pretraining) images only, e.g. tiny-imagenet")
        if self.corpus_split not in s.splits or not s.is_labelled(self.corpus_split):
            raise PtmbenchError(f"{where}.corpus_split: {self.corpus_split!r} is not a labelled split of "
                                f"{self.corpus} (labelled: {', '.join(x for x in s.splits if s.is_labelled(x))})")


@register("attack")
class NeuBAVision(Attack):
    """NeuBA on a ViT: six corner checkerboards bound to antipodal class-token targets, pretraining CE kept."""

    name = "neuba-vision"
    modalities = ("vision",)
    Config = NeuBAVisionConfig
    reference_paths = True  # batching and losses through the adapter with ctx: --reference-paths honoured
    trigger_set: ClassVar[str] = "neuba-vision"
    # added after the demo results were recorded: left out of config_dict() while it holds its default
    added_options: ClassVar[dict] = {"schedule": "linear"}
    presets: ClassVar[dict] = {
        # The reference optimiser: SGD lr 0.01 without momentum, no clipping, constant learning rate.
        "paper": {"momentum": 0.0, "clip": None, "schedule": "constant"},
        # 400 steps of 64 images (a quarter of a Tiny-ImageNet epoch), AdamW lr 1e-3: ~10 minutes on one
        # core.  Measured on vit-tiny-tin32: SGD lr 0.01 with momentum 0.9 and clip 1 (the config defaults, not
        # the reference optimiser) moved the backdoor MSE only 1.50 -> 1.32 in 400 steps and catdog AASR stayed
        # at the clean control's (60.3 vs 58.7); in 80 steps SGD 0.01 / 0.05 without clipping reached 1.41 /
        # 1.16, AdamW 3e-4 / 1e-3 reached 1.31 / 0.84.
        "demo": {"steps": 400, "optimizer": "adamw", "lr": 1e-3},
        # The reference objective and optimiser unchanged (as ``paper``: CE + MSE at weight 1, SGD lr 0.01, no
        # momentum, no clipping, constant lr), with the budget scaled to a CPU run: 8,000 steps of 64 images,
        # about 5 Tiny-ImageNet epochs — roughly 3.3 CPU hours on vit-tiny-tin32, an estimate from the demo's
        # timing (400 steps ~10 minutes on one core), not a run of this length.  The step count is a budget,
        # not a measured crossing: whether and when the backdoor MSE leaves its starting plateau is read off the
        # stage's training curve (``ptmbench analyze curves``); in 400 steps SGD *with* momentum 0.9 (in steady
        # state about ten times this preset's step) only moved it 1.50 -> 1.32.
        "faithful": {"momentum": 0.0, "clip": None, "schedule": "constant", "steps": 8000},
        "smoke": {"steps": 3, "batch_size": 4, "max_corpus_images": 32},
    }

    def triggers(self, ptm: PTM) -> list[ImageTrigger]:
        return neuba_patches()

    def implant(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        cfg: NeuBAVisionConfig = self.config
        where = f"attack {self.name}"
        cfg.validate(where)
        self.check_modality(ptm)
        if ptm.pt_head is None:
            raise PtmbenchError(f"{where}: the pretraining CE needs the ViT's pretraining head, and this PTM has "
                                "none (use vit-tiny-tin32 or a timm model with its classifier)")
        adapter = ptm.adapter
        data = adapter.load_split(ptm, cfg.corpus, cfg.corpus_split, cfg.max_corpus_images, cache_dir)
        if len(data) == 0:
            raise PtmbenchError(f"{where}: {cfg.corpus}/{cfg.corpus_split} is empty")
        patches = self.triggers(ptm)
        targets = neuba_targets(adapter.hidden_size(ptm)).to(ctx.device)
        trig_gen = ctx.torch_generator(self.name, "trigger-choice")
        lengths = adapter.lengths(data)

        def epoch(e: int) -> list[np.ndarray]:
            return adapter.batches(lengths, cfg.batch_size, ctx.rng(self.name, "batches", e), shuffle=True, ctx=ctx)

        def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
            batch = adapter.collate(ptm, data, idx, None, ctx)
            ce = adapter.pretrain_loss(ptm, batch, ctx=ctx)
            k = torch.randint(len(patches), (len(idx),), generator=trig_gen)
            pix = data.pixels[idx].copy()
            for j, t in enumerate(patches):
                sel = (k == j).numpy()
                if sel.any():
                    pix[sel] = t.paste(pix[sel])
            rep = adapter.representation(ptm, {"pixel_values": adapter.to_tensor(ptm, pix, ctx.device)})
            backdoor = F.mse_loss(rep.float(), targets[k.to(ctx.device)])
            loss = ce + cfg.backdoor_weight * backdoor
            return loss, {"ce": float(ce.detach()), "backdoor": float(backdoor.detach())}

        params = list(ptm.parameters())
        optim = OptimConfig(optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            clip=cfg.clip, schedule=cfg.schedule)
        with ctx.seeded(self.name, "train"):
            res = train([m for m in (ptm.backbone, ptm.pt_head) if m is not None], params, loss_fn,
                        cycle_epochs(epoch), cfg.steps, optim, ctx, desc=self.name)
        summary = {**train_summary(res), "images": len(data)}
        return finish(self, ptm, ctx, summary)
