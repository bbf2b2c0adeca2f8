"""RECIPE (Zhu et al. 2023, TACL): purify a PTM by pretraining on auxiliary data under a weight-norm penalty.

    loss = L_PT(aux batch) + λ · Σ_{W ∈ S} ‖W‖_F          (see :func:`recipe_loss`)

* ``L_PT`` is the PTM's own pretraining objective (MLM with 15% 80/10/10 masking for text; the
  pretraining head's CE for ViT), from ``ptm.adapter``.
* ``‖W‖_F`` is the Frobenius norm, *unsquared*; λ = 1; biases are not regularised.  The optimiser stays
  AdamW: Adam normalises each coordinate's step, so the gradient W/‖W‖_F of an unsquared norm acts as a
  sign-like shrinkage of every weight by about ``lr`` per step — not as weight decay.  That is the method,
  and it is why a scaled schedule must keep ``lr × steps`` near the reference (PROTOCOL §7).
* S and the trainable set depend on the model family (:data:`FAMILIES`): BERT regularises and trains
  only the FFN-in weights; RoBERTa regularises FFN-in + query and trains everything; ViT regularises
  fc1, fc2, q, k, v and trains everything.  Both can be overridden (``regularised``, ``trainable``).
* Reference schedule: AdamW lr 2e-5, linear decay without warmup, clip 1.0, batch 32, max length 64,
  20,000 BookCorpus sentences masked once before training (static masking; ``masking: dynamic`` draws
  a new mask every batch), ``epochs`` 4 against POR, 8 against BadPre, 10 against NeuBA (the default),
  4 for ViT.  ``steps`` overrides the epoch count.
* The pooler is never re-initialised or dropped (the reference script loses it); for BERT it is not
  even trainable, so it leaves bit-identical.  The PTM is modified in place and returned.

Presets: ``demo`` = 200 steps at lr 4e-4 (lr × steps = 0.08, against the reference 2e-5 × 6,250 = 0.125;
PROTOCOL §7 measured lr 2e-4 keeping clean accuracy but erasing less, and 5e-4 costing 5.5 points of
accuracy, so the demo sits between them); ``smoke`` = 3 steps, batch 4, 16 aux sequences.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bench.config import positive
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.base import ParamRef, placement, shuffled_batches
from bench.ptm import PTM
from bench.registry import register
from bench.train import OptimConfig, cycle_epochs, steps_for, train
from defenses.base import Defense, aux_name, check_groups, finish, frobenius, group_norms


def recipe_loss(pt_loss: torch.Tensor | None, refs: list[ParamRef],
                lam: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_PT + λ · Σ_{W∈refs} ‖W‖_F`` (unsquared, weights only) and its parts; ``pt_loss`` None: no L_PT."""
    reg = torch.stack([frobenius(r) for r in refs]).sum()
    loss = lam * reg if pt_loss is None else pt_loss + lam * reg
    parts = {"reg": float(reg.detach())}
    if pt_loss is not None:
        parts["pt"] = float(pt_loss.detach())
    return loss, parts


@dataclass(frozen=True)
class FamilyRecipe:
    """What RECIPE regularises and trains for one model family; ``("all",)`` = every parameter."""

    regularised: tuple[str, ...]
    trainable: tuple[str, ...]


FAMILIES: dict[str, FamilyRecipe] = {
    "bert": FamilyRecipe(("ffn_in",), ("ffn_in",)),
    "roberta": FamilyRecipe(("ffn_in", "attn_q"), ("all",)),
    "vit": FamilyRecipe(("ffn_in", "ffn_out", "attn_q", "attn_k", "attn_v"), ("all",)),
}
MASKING = ("static", "dynamic")
# ViT L_PT: CE on the aux labels, or (label-free) KL to the original PTM's pretraining-head outputs on
# unlabelled aux images; text L_PT (MLM) needs no labels either way.
PT_TARGETS = ("labels", "teacher")


@dataclass
class RecipeConfig:
    """Reference defaults (the ``paper`` preset); ``aux``, ``regularised``, ``trainable``: None = family's."""

    lam: float = 1.0
    epochs: float = 10.0
    steps: int | None = None
    lr: float = 2e-5
    batch_size: int = 32
    max_len: int = 64
    aux: str | None = None
    max_aux: int | None = 20000
    masking: str = "static"
    pt_target: str = "labels"
    regularised: tuple[str, ...] | None = None
    trainable: tuple[str, ...] | None = None

    def validate(self, where: str) -> None:
        positive(where, epochs=self.epochs, steps=self.steps, lr=self.lr, batch_size=self.batch_size,
                 max_aux=self.max_aux)
        if not self.lam >= 0:
            raise PtmbenchError(f"{where}.lam: must be >= 0, got {self.lam}")
        if self.max_len < 3:
            raise PtmbenchError(f"{where}.max_len: must be >= 3, got {self.max_len}")
        if self.masking not in MASKING:
            raise PtmbenchError(f"{where}.masking: {self.masking!r} is not one of {', '.join(MASKING)}")
        if self.pt_target not in PT_TARGETS:
            raise PtmbenchError(f"{where}.pt_target: {self.pt_target!r} is not one of {', '.join(PT_TARGETS)}")
        check_groups(where, "regularised", self.regularised)
        check_groups(where, "trainable", self.trainable, extra=("all",))


class StaticMasked:
    """The aux set masked once with a fixed generator (the reference's static masking), sliced per batch."""

    def __init__(self, ptm: PTM, data: Any, max_len: int, gen: torch.Generator, chunk: int = 1024) -> None:
        adapter = ptm.adapter
        ids, att, labels = [], [], []
        for s in range(0, len(data), chunk):
            idx = np.arange(s, min(s + chunk, len(data)))
            b = adapter.collate(ptm, data, idx, max_len, "cpu", pad_to=max_len)
            masked, lab = adapter.mask_tokens(ptm.processor, b["input_ids"], b["attention_mask"], gen)
            ids.append(masked)
            att.append(b["attention_mask"])
            labels.append(lab)
        self.ids, self.att, self.labels = torch.cat(ids), torch.cat(att), torch.cat(labels)

    def batch(self, idx: np.ndarray, where: RunContext | str,
              trim: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The masked rows ``idx`` on the context's device, trimmed to their longest sequence on the fast paths
        and at the full max length on the reference paths (low-level: a device name, and ``trim``)."""
        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        att = self.att[i]
        device, pad = placement(where, att.shape[1], None if trim else att.shape[1])
        w = pad or int(att.sum(1).max())
        return ({"input_ids": self.ids[i, :w].to(device), "attention_mask": att[:, :w].to(device)},
                self.labels[i, :w].to(device))


def trainable_params(ptm: PTM, groups: dict[str, list[ParamRef]],
                     names: tuple[str, ...]) -> tuple[list[nn.Parameter], list[Any]]:
    """Parameters to train, and gradient hooks confining a fused parameter to its named row slices.

    ``all`` = every parameter of the PTM; a group name = the matrices it lists (not their biases).
    """
    if "all" in names:
        return list(ptm.parameters()), []
    slices: dict[int, tuple[nn.Parameter, list[slice | None]]] = {}
    for ref in (r for g in names for r in groups[g]):
        slices.setdefault(id(ref.param), (ref.param, []))[1].append(ref.rows)
    params, hooks = [], []
    for p, rows in slices.values():
        params.append(p)
        if any(r is None for r in rows):
            continue
        keep = torch.zeros((p.shape[0],) + (1,) * (p.dim() - 1), dtype=p.dtype, device=p.device)
        for r in rows:
            keep[r] = 1
        hooks.append(p.register_hook(lambda g, keep=keep: g * keep))
    return params, hooks


@register("defense")
class Recipe(Defense):
    """RECIPE: L_PT on aux data + λ · Σ‖W‖_F over the family's regularised FFN/attention matrices."""

    name = "recipe"
    modalities = ("text", "vision")
    Config = RecipeConfig
    reference_paths = True  # batching and losses through the adapter with ctx: --reference-paths honoured
    version = "1"
    uses_pt: ClassVar[bool] = True  # only-reg drops L_PT
    added_options: ClassVar[dict] = {"pt_target": "labels"}
    presets = {
        "demo": {"steps": 200, "lr": 4e-4},
        "smoke": {"steps": 3, "batch_size": 4, "max_aux": 16, "max_len": 32},
    }

    def purify(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        cfg: RecipeConfig = self.config
        where = f"defense {self.name}"
        cfg.validate(where)
        self.check_modality(ptm)
        if self.uses_pt and ptm.pt_head is None:
            raise PtmbenchError(f"{where}: L_PT needs the PTM's pretraining head (pt_head), and this "
                                f"{ptm.family} PTM has none; build it with a head (e.g. minilm-l6-mlm)")
        fam = FAMILIES.get(ptm.family)
        if fam is None and (cfg.regularised is None or cfg.trainable is None):
            raise PtmbenchError(f"{where}: no RECIPE defaults for model family {ptm.family!r} (known: "
                                f"{', '.join(FAMILIES)}); set both 'regularised' and 'trainable'")
        reg_names = cfg.regularised or fam.regularised
        train_names = cfg.trainable or fam.trainable
        adapter = ptm.adapter
        groups = adapter.param_groups(ptm)
        refs = [r for g in reg_names for r in groups[g]]
        if not refs:
            raise PtmbenchError(f"{where}.regularised: groups {list(reg_names)} hold no matrices in this PTM")

        aux = aux_name(cfg.aux, ptm)
        teacher = None
        if cfg.pt_target == "teacher":
            if not adapter.teacher_logits:
                raise PtmbenchError(f"{where}.pt_target: 'teacher' is the label-free L_PT of vision PTMs; "
                                    f"a {ptm.modality} PTM's L_PT needs no labels (use 'labels')")
            teacher = copy.deepcopy(ptm).backbone.eval().requires_grad_(False), \
                copy.deepcopy(ptm.pt_head).eval().requires_grad_(False)
        data: Any = []  # only-reg with a fixed step count needs no aux data at all
        if self.uses_pt or cfg.steps is None:
            split = adapter.aux_splits["unlabelled" if teacher else "labelled"]
            data = adapter.load_split(ptm, aux, split, cfg.max_aux, cache_dir)
        steps = cfg.steps or steps_for(len(data), cfg.batch_size, cfg.epochs)
        norms_before = group_norms(groups, reg_names)
        # Keys are shared by recipe, only-pt and only-reg: same batches, masks and dropout (paired controls).
        static = None
        if self.uses_pt and teacher is None and cfg.masking == "static" and adapter.masked_lm:
            static = StaticMasked(ptm, data, cfg.max_len, ctx.torch_generator("recipe-static-mask"))
        gen = ctx.torch_generator("recipe-dynamic-mask")

        def pt_loss(idx: np.ndarray) -> torch.Tensor:
            if teacher is not None:
                batch = adapter.collate(ptm, data, idx, cfg.max_len, ctx)
                with torch.no_grad():
                    target = teacher[1](teacher[0](batch["pixel_values"])).float().log_softmax(-1)
                logp = adapter.pretrain_logits(ptm, batch).float().log_softmax(-1)
                return torch.nn.functional.kl_div(logp, target, log_target=True, reduction="batchmean")
            if static is not None:
                batch, labels = static.batch(idx, ctx)
                return adapter.mlm_loss(ptm, batch, labels, ctx)
            batch = adapter.collate(ptm, data, idx, cfg.max_len, ctx)
            return adapter.pretrain_loss(ptm, batch, gen, ctx)

        def loss_fn(idx: np.ndarray | None, step: int) -> tuple[torch.Tensor, dict[str, float]]:
            return recipe_loss(pt_loss(idx) if self.uses_pt else None, refs, cfg.lam)

        if self.uses_pt:
            batches = cycle_epochs(
                lambda e: shuffled_batches(len(data), cfg.batch_size, ctx.rng("recipe-batches", e)))
        else:
            batches = itertools.repeat(None)
        params, hooks = trainable_params(ptm, groups, train_names)
        modules = [m for m in (ptm.backbone, ptm.pt_head) if m is not None]
        try:
            with ctx.seeded("recipe-dropout"):
                res = train(modules, params, loss_fn, batches, steps,
                            OptimConfig(lr=cfg.lr, clip=1.0, schedule="linear"), ctx, desc=self.name)
        finally:
            for h in hooks:
                h.remove()
        norms_after = group_norms(groups, reg_names)
        summary: dict[str, Any] = {
            **res.summary(), "aux": aux, "aux_size": len(data) or None,
            **({"pt_target": cfg.pt_target} if self.uses_pt else {}),
            "lr_x_steps": round(cfg.lr * steps, 6),
            "masking": "static" if static is not None else (
                "dynamic" if self.uses_pt and adapter.masked_lm else "none"),
            "regularised": list(reg_names), "trainable": list(train_names),
            "norm_S_before": round(sum(norms_before.values()), 6),
            "norm_S_after": round(sum(norms_after.values()), 6),
            "norms_before": norms_before, "norms_after": norms_after,
        }
        k = max(1, len(res.parts) // 10)
        for part in res.parts[0]:
            summary[f"{part}_first"] = float(np.mean([p[part] for p in res.parts[:k]]))
            summary[f"{part}_last"] = float(np.mean([p[part] for p in res.parts[-k:]]))
        return finish(self, ptm, ctx, summary)
