"""Reference-style pipelines: what Hugging Face ``Trainer`` + ``run_glue.py``, ``BertForMaskedLM`` and a
per-trigger re-tokenising evaluation do, on ptmbench's PTMs, seeds and batch order, so that their cost can be
set beside ptmbench's fast paths (``ptmbench perf compare``, :mod:`bench.perf.compare`).  (c), which
``--reference-paths`` matrix cells evaluate with, and the encoding and prediction helpers (a) shares with it
live in the core, :mod:`bench.reference`, and are re-exported here.

(a) fine-tuning: every sequence padded to ``max_len`` (128), fp32, shuffled batches without length
    bucketing, AdamW with linear decay (no warmup, clip 1.0), then fp32 inference in fixed order, batch 32.
(b) RECIPE: MLM logits over the whole vocabulary at every position, CE with ``ignore_index=-100``, fp32,
    padded to the recipe's max length (64), static masking; same loss, trainable set, optimiser and steps.
(c) trigger evaluation: for every trigger, insert the word into the raw text at a word slot, tokenise
    afresh, pad to 128, fp32 batches of 32 in fixed order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.context import RunContext
from bench.finetune import Classifier, FinetunePreset
from bench.modalities.base import shuffled_batches
from bench.ptm import PTM
from bench.reference import pad_width, reference_encode, rows
from bench.train import cycle_epochs, steps_for


# ---------------------------------------------------------------------------------------------- (a) fine-tuning
@dataclass
class RefFinetuned:
    model: Classifier
    steps: int
    losses: list[float] = field(default_factory=list)


def reference_finetune(ptm: PTM, enc: dict[str, torch.Tensor], labels: np.ndarray, num_classes: int,
                       preset: FinetunePreset, ctx: RunContext) -> RefFinetuned:
    """A plain Trainer-style loop: padded batches, fp32, shuffled without bucketing, AdamW + linear decay.

    Same classifier (pooler -> dropout -> linear), head init, lr, batch size, epochs, clip and batch
    order as :func:`bench.finetune.finetune`; only the padding, precision and batching differ.
    """
    from transformers import get_linear_schedule_with_warmup

    ptm = copy.deepcopy(ptm)
    with ctx.seeded("finetune-head"):
        model = Classifier(ptm, num_classes).to(ctx.device)
    n = len(labels)
    y = torch.as_tensor(labels, dtype=torch.long)
    steps = steps_for(n, preset.batch_size, preset.epochs)
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=preset.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=steps)
    batches = cycle_epochs(lambda e: shuffled_batches(n, preset.batch_size, ctx.rng("finetune-batches", e)))
    out = RefFinetuned(model, steps)
    model.train()
    with ctx.seeded("finetune-dropout"):
        for _ in range(steps):
            ctx.check_cancel()
            idx = torch.from_numpy(np.asarray(next(batches), dtype=np.int64))
            loss = F.cross_entropy(model(rows(enc, idx, ctx.device)), y[idx].to(ctx.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            out.losses.append(float(loss.detach()))
    model.eval()
    return out


# ---------------------------------------------------------------------------------------------- (b) RECIPE
def reference_mlm_loss(ptm: PTM, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """BertForMaskedLM's loss: the MLM head over every position's hidden state (full-vocabulary logits at
    every token, padding included), then CE with ``ignore_index=-100`` (the text adapter's ``full_vocab``
    loss, which ``--reference-paths`` runs use too)."""
    return ptm.adapter.mlm_loss(ptm, batch, labels, full_vocab=True)


def static_masks(ptm: PTM, enc: dict[str, torch.Tensor], gen: torch.Generator,
                 chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the whole aux set once (BERT 80/10/10), in the same chunks and generator as ptmbench's static
    masking, so both pipelines train on identical masks."""
    ids, labels = [], []
    n = enc["input_ids"].shape[0]
    for s in range(0, n, chunk):
        m, lab = ptm.adapter.mask_tokens(ptm.processor, enc["input_ids"][s:s + chunk],
                                         enc["attention_mask"][s:s + chunk], gen)
        ids.append(m)
        labels.append(lab)
    return torch.cat(ids), torch.cat(labels)


def reference_recipe(ptm: PTM, texts: list[str], cfg: Any, steps: int, ctx: RunContext) -> dict[str, Any]:
    """RECIPE the BertForMaskedLM way on ``ptm`` (modified in place): tokenise the aux texts padded to
    ``cfg.max_len``, mask them once, then ``steps`` fp32 AdamW steps of full-vocabulary L_MLM + λ Σ‖W‖_F."""
    from defenses.base import frobenius
    from defenses.recipe import FAMILIES, trainable_params

    fam = FAMILIES.get(ptm.family)
    reg_names = cfg.regularised or fam.regularised
    train_names = cfg.trainable or fam.trainable
    groups = ptm.adapter.param_groups(ptm)
    refs = [r for g in reg_names for r in groups[g]]
    enc = reference_encode(ptm.processor, texts, pad_width(ptm, cfg.max_len))
    ids, labels = static_masks(ptm, enc, ctx.torch_generator("recipe-static-mask"))
    att = enc["attention_mask"]
    modules = [ptm.backbone, ptm.pt_head]
    params, hooks = trainable_params(ptm, groups, train_names)
    trainable = {id(p) for p in params}
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=steps)
    n = ids.shape[0]
    batches = cycle_epochs(lambda e: shuffled_batches(n, cfg.batch_size, ctx.rng("recipe-batches", e)))
    losses: list[float] = []
    for m in modules:
        m.train()
    try:
        with ctx.seeded("recipe-dropout"):
            for _ in range(steps):
                ctx.check_cancel()
                i = torch.from_numpy(np.asarray(next(batches), dtype=np.int64))
                batch = {"input_ids": ids[i].to(ctx.device), "attention_mask": att[i].to(ctx.device)}
                mlm = reference_mlm_loss(ptm, batch, labels[i].to(ctx.device))
                loss = mlm + cfg.lam * torch.stack([frobenius(r) for r in refs]).sum()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(mlm.detach()))
    finally:
        for h in hooks:
            h.remove()
        for m in modules:
            m.eval()
    with torch.no_grad():
        norm = float(sum(float(frobenius(r)) for r in refs))
    return {"steps": steps, "mlm_first": losses[0], "mlm_last": losses[-1], "norm_S_after": round(norm, 6)}


def aux_split(ptm: PTM) -> str:
    """The split of an auxiliary corpus that RECIPE reads (the adapter's, else ``train``)."""
    return getattr(ptm.adapter, "aux_splits", {}).get("labelled", "train")


def reference_recipe_on(aux: str, ptm: PTM, cfg: Any, steps: int, ctx: RunContext) -> dict[str, Any]:
    """:func:`reference_recipe` on the first ``cfg.max_aux`` texts of the aux dataset, loading included
    (as :meth:`~defenses.recipe.Recipe.purify` loads its own)."""
    from bench import data as bdata

    texts = list(bdata.load_split(aux, aux_split(ptm), max_samples=cfg.max_aux)["text"])
    return reference_recipe(ptm, texts, cfg, steps, ctx)


__all__ = ["RefFinetuned", "aux_split", "reference_finetune", "reference_mlm_loss", "reference_recipe",
           "reference_recipe_on", "static_masks"]
