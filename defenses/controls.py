"""RECIPE's controls (PROTOCOL §4), same aux data and budget: ``only-pt`` (λ = 0) and ``only-reg`` (no L_PT).

Both are RECIPE with one term removed; they share its batches, masks and dropout draws for a seed, so a
comparison with ``recipe`` is paired.  The presets are RECIPE's.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import PtmbenchError
from bench.registry import register
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


@register("defense", "only-pt")
class OnlyPT(Recipe):
    """Only-PT: continued pretraining on the aux data with RECIPE's schedule and trainable set, no penalty."""

    name = "only-pt"
    Config = OnlyPTConfig


@register("defense", "only-reg")
class OnlyReg(Recipe):
    """Only-Reg: RECIPE's norm penalty alone (no L_PT), for as many steps as RECIPE would take."""

    name = "only-reg"
    uses_pt = False
