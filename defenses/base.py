"""The defense protocol (re-exported from :mod:`bench.methods`) and the few helpers every defense shares:
the default auxiliary set of a modality, norms of named parameter groups, and recording the result."""

from __future__ import annotations

from typing import Any

import torch

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.methods import Defense
from bench.modalities.base import GROUPS, ParamRef
from bench.ptm import PTM

__all__ = ["AUX_DEFAULT", "Defense", "aux_name", "check_groups", "finish", "frobenius", "group_norms"]

# The auxiliary (task-irrelevant) data a defense sees when its config names none.
AUX_DEFAULT = {"text": "bookcorpus", "vision": "tiny-imagenet"}


def aux_name(configured: str | None, ptm: PTM) -> str:
    if configured:
        return configured
    if ptm.modality not in AUX_DEFAULT:
        raise PtmbenchError(f"no default auxiliary data for {ptm.modality} PTMs; set the defense's 'aux' key")
    return AUX_DEFAULT[ptm.modality]


def check_groups(where: str, key: str, names: tuple[str, ...] | None, extra: tuple[str, ...] = ()) -> None:
    """Config check: every entry of ``names`` is a named parameter group (or one of ``extra``)."""
    if names is None:
        return
    valid = (*GROUPS, *extra)
    if not names:
        raise PtmbenchError(f"{where}.{key}: must name at least one group out of {', '.join(valid)}")
    for n in names:
        if n not in valid:
            raise PtmbenchError(f"{where}.{key}: unknown group {n!r}; valid: {', '.join(valid)}")


def frobenius(ref: ParamRef) -> torch.Tensor:
    """‖W‖_F of a group matrix (of its row slice, for fused parameters), in fp32, differentiable."""
    return ref.weight.float().norm()


@torch.no_grad()
def group_norms(groups: dict[str, list[ParamRef]], names: tuple[str, ...]) -> dict[str, float]:
    """Σ ‖W‖_F over each named group (biases excluded)."""
    return {g: round(float(sum(frobenius(r) for r in groups[g])), 6) for g in names}


def finish(method: Defense, ptm: PTM, ctx: RunContext, summary: dict[str, Any]) -> PTM:
    """Record what the defense did in ``ptm.info["defense"]`` and append it to the lineage."""
    config = method.config_dict()
    ptm.info["defense"] = {"name": method.name, "config": config, "summary": summary}
    return ptm.with_lineage({"stage": "defense", "defense": method.name, "config": config,
                             "version": method.version, "seed": ctx.seed})
