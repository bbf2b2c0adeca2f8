"""Fine-pruning baselines on FFN neurons (PTM-level, no fine-tuning): ``fp``, ``fp-gm``, ``fp-ga``.

A neuron is one row of an FFN-in matrix; pruning it zeroes that row and its bias (:func:`prune_neurons`),
so its activation is act(0) = 0 for GELU/ReLU and it no longer feeds FFN-out.

* ``fp``    — every neuron of the last layer's FFN-in (``layer`` = -1).
* ``fp-gm`` — globally over all layers, the ``share`` of neurons with the smallest incoming-weight L2 norm
  (reference share 1/3 for BERT, RoBERTa and ViT).
* ``fp-ga`` — globally, the ``share`` of neurons with the lowest mean activation (after the FFN
  nonlinearity, signed, averaged over the non-pad tokens of ``max_aux`` aux sequences, inference mode).
  Reference shares: 1/2 against POR and BadPre (the default), 2/3 against NeuBA, 5/12 for ViT;
  a matrix applies a share per attack with ``by_attack`` (``{name: fp-ga, by_attack: {neuba: {share: 0.667}}}``).

Budgets: ``round(share × number of FFN neurons)``; ties are broken by (layer, row) order.  Nothing else
(pooler included) is touched.  The PTM is modified in place and returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import positive
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.base import ParamRef
from bench.ptm import PTM
from bench.registry import register
from defenses.base import Defense, aux_name, finish


@torch.no_grad()
def prune_neurons(refs: list[ParamRef], masks: list[torch.Tensor]) -> int:
    """Zero the FFN-in rows and biases of the neurons marked True (``masks[i]`` for ``refs[i]``).

    Returns how many neurons were pruned.  Row-sliced refs (fused qkv) write through their view.
    """
    if len(refs) != len(masks):
        raise ValueError(f"prune_neurons: {len(refs)} matrices but {len(masks)} masks")
    n = 0
    for ref, m in zip(refs, masks, strict=True):
        m = m.to(device=ref.param.device, dtype=torch.bool)
        if m.shape != ref.weight.shape[:1]:
            raise ValueError(f"prune_neurons: mask of {ref.name} has shape {tuple(m.shape)}, "
                             f"expected ({ref.weight.shape[0]},)")
        ref.weight[m] = 0
        if ref.bias_view is not None:
            ref.bias_view[m] = 0
        n += int(m.sum())
    return n


def lowest_globally(scores: list[torch.Tensor], share: float) -> list[torch.Tensor]:
    """Per-layer masks of the ``round(share × total)`` lowest scores over all layers (stable order)."""
    flat = torch.cat([s.detach().double().cpu().flatten() for s in scores])
    k = int(round(share * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.sort(flat, stable=True).indices[:k]] = True
    return list(chosen.split([s.numel() for s in scores]))


def _summary(refs: list[ParamRef], masks: list[torch.Tensor],
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    per_layer = [int(m.sum()) for m in masks]
    return {"neurons_pruned": sum(per_layer), "neurons_total": sum(r.weight.shape[0] for r in refs),
            "pruned_per_layer": per_layer, **(extra or {})}


def _share_ok(where: str, share: float) -> None:
    if not 0 < share <= 1:
        raise PtmbenchError(f"{where}.share: must be in (0, 1], got {share}")


@dataclass
class FPConfig:
    """``layer``: which layer's FFN-in to zero; -1 (the last) is the reference."""

    layer: int = -1


@register("defense")
class FP(Defense):
    """Fine-pruning: zero all weights and biases of the last layer's FFN-in."""

    name = "fp"
    modalities = ("text", "vision")
    Config = FPConfig
    reference_paths = True  # weights only, no data pass: nothing depends on the regime
    presets = {"demo": {}, "smoke": {}}

    def purify(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        self.check_modality(ptm)
        refs = ptm.adapter.param_groups(ptm)["ffn_in"]
        if not -len(refs) <= self.config.layer < len(refs):
            raise PtmbenchError(f"defense {self.name}.layer: {self.config.layer} is out of range for "
                                f"{len(refs)} layers")
        target = refs[self.config.layer]
        masks = [torch.full((r.weight.shape[0],), r is target, dtype=torch.bool) for r in refs]
        prune_neurons(refs, masks)
        return finish(self, ptm, ctx, _summary(refs, masks))


@dataclass
class FPGMConfig:
    share: float = 1 / 3

    def validate(self, where: str) -> None:
        _share_ok(where, self.share)


@register("defense")
class FPGM(Defense):
    """Global magnitude pruning: the FFN neurons with the smallest incoming-weight L2 norm."""

    name = "fp-gm"
    modalities = ("text", "vision")
    Config = FPGMConfig
    reference_paths = True  # weights only, no data pass: nothing depends on the regime
    presets = {"demo": {}, "smoke": {}}

    def purify(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        self.config.validate(f"defense {self.name}")
        self.check_modality(ptm)
        refs = ptm.adapter.param_groups(ptm)["ffn_in"]
        with torch.no_grad():
            norms = [r.weight.float().flatten(1).norm(dim=1) for r in refs]
        masks = lowest_globally(norms, self.config.share)
        prune_neurons(refs, masks)
        return finish(self, ptm, ctx, _summary(refs, masks))


@dataclass
class FPGAConfig:
    """``aux`` None = the modality's default aux set (BookCorpus for text)."""

    share: float = 0.5
    aux: str | None = None
    max_aux: int | None = 20000
    batch_size: int = 64
    max_len: int = 64

    def validate(self, where: str) -> None:
        _share_ok(where, self.share)
        positive(where, max_aux=self.max_aux, batch_size=self.batch_size)
        if self.max_len < 3:
            raise PtmbenchError(f"{where}.max_len: must be >= 3, got {self.max_len}")


def mean_ffn_activations(ptm: PTM, data: Any, batch_size: int, max_len: int,
                         ctx: RunContext) -> list[torch.Tensor]:
    """Per layer, each FFN neuron's activation (after the nonlinearity) averaged over non-pad tokens (on the
    CPU, where the masks are chosen)."""
    adapter = ptm.adapter
    modules = adapter.ffn_modules(ptm)  # an unknown model family is refused here, in one line
    sums: list[torch.Tensor] = [torch.zeros((), dtype=torch.float64, device=ctx.device)] * len(modules)
    counts = [0.0] * len(modules)
    token_mask: list[torch.Tensor | None] = [None]  # the current batch's non-pad mask (None: all tokens)

    def hook(i: int) -> Any:
        def record(_module: Any, _inputs: Any, out: torch.Tensor) -> None:
            out = out.double().flatten(0, -2)
            m = token_mask[0]
            m = torch.ones(out.shape[0], dtype=torch.float64, device=out.device) if m is None else m.flatten()
            sums[i] = sums[i] + m @ out
            counts[i] += float(m.sum())
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    was_training = ptm.backbone.training
    ptm.backbone.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(data), batch_size):
                idx = np.arange(s, min(s + batch_size, len(data)))
                batch = adapter.collate(ptm, data, idx, max_len, ctx)
                mask = batch.get("attention_mask") if isinstance(batch, dict) else None
                token_mask[0] = None if mask is None else mask.double()
                with ctx.autocast():
                    adapter.representation(ptm, batch)
    finally:
        for h in handles:
            h.remove()
        ptm.backbone.train(was_training)
    return [(s / max(c, 1.0)).cpu() for s, c in zip(sums, counts, strict=True)]


@register("defense")
class FPGA(Defense):
    """Global activation pruning: the FFN neurons with the lowest mean activation on aux data."""

    name = "fp-ga"
    modalities = ("text", "vision")
    Config = FPGAConfig
    reference_paths = True  # batching and losses through the adapter with ctx: --reference-paths honoured
    presets = {"demo": {"max_aux": 2000}, "smoke": {"max_aux": 16, "batch_size": 8, "max_len": 32}}

    def purify(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        cfg: FPGAConfig = self.config
        cfg.validate(f"defense {self.name}")
        self.check_modality(ptm)
        aux = aux_name(cfg.aux, ptm)
        data = ptm.adapter.load_split(ptm, aux, ptm.adapter.aux_splits["unlabelled"], cfg.max_aux, cache_dir)
        acts = mean_ffn_activations(ptm, data, cfg.batch_size, cfg.max_len, ctx)
        refs = ptm.adapter.param_groups(ptm)["ffn_in"]
        masks = lowest_globally(acts, cfg.share)
        prune_neurons(refs, masks)
        pruned = torch.cat([a[m] for a, m in zip(acts, masks, strict=True)])
        kept = torch.cat([a[~m] for a, m in zip(acts, masks, strict=True)])
        return finish(self, ptm, ctx, _summary(refs, masks, {
            "aux": aux, "aux_size": len(data), "precision": ctx.precision,
            "max_pruned_activation": float(pruned.max()) if len(pruned) else None,
            "min_kept_activation": float(kept.min()) if len(kept) else None}))
