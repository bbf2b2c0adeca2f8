"""RECIPE's controls (PROTOCOL §4), same aux data and budget: ``only-pt`` (λ = 0) and ``only-reg`` (no L_PT);
and ``pooler-reinit``, the reference RECIPE script's lost pooler as a control of its own.

Both are RECIPE with one term removed; they share its batches, masks and dropout draws for a seed, so a
comparison with ``recipe`` is paired.  The presets are RECIPE's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.ptm import PTM
from bench.registry import register
from defenses.base import Defense, finish
from defenses.recipe import Recipe, RecipeConfig


@dataclass
class OnlyPTConfig(RecipeConfig):
    """RECIPE's config with λ = 0 (the only allowed value)."""

    lam: float = 0.0

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.lam != 0:
            raise PtmbenchError(f"{where}.lam: only-pt is RECIPE with lam = 0, got {self.lam}; "
                                "use 'recipe' for lam > 0")


@register("defense")
class OnlyPT(Recipe):
    """Only-PT: continued pretraining on the aux data with RECIPE's schedule and trainable set, no penalty."""

    name = "only-pt"
    Config = OnlyPTConfig


@register("defense")
class OnlyReg(Recipe):
    """Only-Reg: RECIPE's norm penalty alone (no L_PT), for as many steps as RECIPE would take."""

    name = "only-reg"
    uses_pt = False


@dataclass
class PoolerReinitConfig:
    """``std``: the normal init of the pooler's dense weight (BERT's initializer range); bias set to 0."""

    std: float = 0.02

    def validate(self, where: str) -> None:
        if not self.std > 0:
            raise PtmbenchError(f"{where}.std: must be > 0, got {self.std}")


@register("defense")
class PoolerReinit(Defense):
    """A control, not a defense to recommend: re-initialise the pooler, as the reference RECIPE script does
    by accident (Hugging Face's masked-LM classes drop the pooler, so fine-tuning gets a fresh one).

    NeuBA's and POR's targets live on the pooler output; this measures how much of an "erasure" the lost
    pooler alone accounts for (PROTOCOL §4).  Every other weight is left bit-identical.
    """

    name = "pooler-reinit"
    changes_pooler = True  # by design: the method contract's "pooler unchanged" does not apply
    modalities = ("text",)
    Config = PoolerReinitConfig
    reference_paths = True  # weights only, no data pass: nothing depends on the regime
    presets = {"demo": {}, "smoke": {}}

    def purify(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        cfg: PoolerReinitConfig = self.config
        cfg.validate(f"defense {self.name}")
        self.check_modality(ptm)
        pooler = getattr(ptm.backbone, "pooler", None)
        if pooler is None:
            raise PtmbenchError(f"defense {self.name}: this {ptm.family} PTM has no pooler")
        gen = ctx.torch_generator(self.name)
        with torch.no_grad():
            w = pooler.dense.weight
            w.copy_(torch.randn(w.shape, generator=gen) * cfg.std)
            pooler.dense.bias.zero_()
        return finish(self, ptm, ctx, {"std": cfg.std, "pooler_norm": float(w.detach().norm())})
