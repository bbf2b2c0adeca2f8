"""Reference-style pipelines: what Hugging Face ``Trainer`` + ``run_glue.py``, ``BertForMaskedLM`` and a
per-trigger re-tokenising evaluation do, on ptmbench's PTMs, seeds and batch order, so that their cost can be
set beside ptmbench's fast paths (``ptmbench perf compare``, :mod:`bench.perf.compare`) and so that
``--reference-paths`` matrix cells can evaluate the reference way (:mod:`bench.stages`).

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.context import RunContext
from bench.finetune import Classifier, FinetunePreset
from bench.modalities.base import shuffled_batches
from bench.ptm import PTM
from bench.train import cycle_epochs, steps_for

REFERENCE_MAX_LEN = 128
REFERENCE_EVAL_BATCH = 32


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TextSplit:
    """One split for both pipelines: raw texts and labels (reference) and ptmbench's token ids."""

    texts: list[str]
    labels: np.ndarray
    tokens: Any  # bench.modalities.text.TokenizedText

    def __len__(self) -> int:
        return len(self.texts)


def load_text_split(ptm: PTM, dataset: str, split: str, max_samples: int | None, cache_dir: Path) -> TextSplit:
    """The same subset twice: raw (for the reference) and tokenised by ptmbench (disk cache in ``cache_dir``)."""
    from bench import data as bdata

    ds = bdata.load_split(dataset, split, max_samples=max_samples)
    tokens = ptm.adapter.load_split(ptm, dataset, split, max_samples, cache_dir)
    return TextSplit(list(ds["text"]), np.asarray(ds["label"], dtype=np.int64), tokens)


def max_positions(ptm: PTM) -> int:
    """Longest sequence the backbone's position table allows (RoBERTa reserves padding_idx + 1 rows)."""
    cfg = ptm.backbone.config
    n = int(cfg.max_position_embeddings)
    if ptm.family == "roberta":
        n -= int(cfg.pad_token_id) + 1
    return n


def pad_width(ptm: PTM, max_len: int) -> int:
    """``max_len`` capped by the model, as run_glue caps ``max_seq_length`` by the model's maximum."""
    return min(max_len, max_positions(ptm))


def reference_encode(tokenizer: Any, texts: list[str], width: int) -> dict[str, torch.Tensor]:
    """Tokenise raw texts with the tokenizer itself, truncated and padded to ``width`` (``padding="max_length"``).

    A tokenizer without a post-processor (e.g. a bare BPE built on the fly) adds no [CLS]/[SEP]; for it the
    special tokens are added here, as a configured tokenizer would, so the model sees the same sequence.
    """
    from bench.modalities.text import ADAPTER as TEXT

    cls_id, sep_id, pad_id = TEXT.special_ids(tokenizer)
    probe = tokenizer("a")["input_ids"]
    if probe and probe[0] == cls_id and probe[-1] == sep_id:
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=width, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    body = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=width - 2)["input_ids"]
    ids = torch.full((len(body), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(body), width), dtype=torch.long)
    for i, b in enumerate(body):
        ids[i, : len(b) + 2] = torch.tensor([cls_id, *b, sep_id])
        mask[i, : len(b) + 2] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _rows(enc: dict[str, torch.Tensor], idx: Any, device: str) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device) for k, v in enc.items()}


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
            loss = F.cross_entropy(model(_rows(enc, idx, ctx.device)), y[idx].to(ctx.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            out.losses.append(float(loss.detach()))
    model.eval()
    return out


@torch.inference_mode()
def reference_logits(model: Classifier, enc: dict[str, torch.Tensor], device: str,
                     batch_size: int = REFERENCE_EVAL_BATCH) -> torch.Tensor:
    """fp32 logits in input order, fixed-order batches of ``batch_size`` at the encoding's padded width."""
    model.eval()
    n = enc["input_ids"].shape[0]
    out = [model(_rows(enc, slice(s, s + batch_size), device)).float().cpu() for s in range(0, n, batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def reference_predict(model: Classifier, enc: dict[str, torch.Tensor], device: str,
                      batch_size: int = REFERENCE_EVAL_BATCH) -> np.ndarray:
    return reference_logits(model, enc, device, batch_size).argmax(-1).numpy().astype(np.int64)


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


# ---------------------------------------------------------------------------------------------- (c) triggers
def insert_word(text: str, word: str, rng: np.random.Generator, position: str = "random", copies: int = 1) -> str:
    """The trigger word inserted into the raw text at a word slot (0..n), drawn exactly as ptmbench's
    :class:`~bench.triggers.TextTrigger` draws it from the same generator."""
    words = text.split()
    n = len(words)
    if position == "first":
        slots = [0] * copies
    elif position == "last":
        slots = [n] * copies
    else:
        slots = sorted(int(s) for s in rng.integers(0, n + 1, size=copies))
    for j, slot in enumerate(slots):
        words.insert(slot + j, word)
    return " ".join(words)


def reference_evaluate(model: Classifier, val: TextSplit, test: TextSplit, trigger_sets: dict[str, list[Any]],
                       num_classes: int, ctx: RunContext, width: int) -> dict[str, Any]:
    """Clean test predictions, then per trigger: insert into the raw val/test texts, re-tokenise, pad to
    ``width``, predict in fixed order (fp32, batch 32); metrics as :func:`bench.evaluate.evaluate`."""
    from bench.metrics import score_cell
    from bench.triggers import sample_rng

    tok = model.ptm.processor
    clean = reference_predict(model, reference_encode(tok, test.texts, width), ctx.device)
    by_set = {}
    for set_name, triggers in (trigger_sets or {"none": []}).items():
        preds: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
        for trig in triggers:
            pos, copies = getattr(trig, "position", "random"), getattr(trig, "copies", 1)
            for name, split in (("val", val), ("test", test)):
                texts = [insert_word(t, trig.word, sample_rng(ctx.seed, trig.id, i), pos, copies)
                         for i, t in enumerate(split.texts)]
                preds[name][trig.id] = reference_predict(model, reference_encode(tok, texts, width), ctx.device)
        by_set[set_name] = score_cell(clean, test.labels, preds["val"], val.labels, preds["test"], num_classes)
    return {"clean": clean, "by_set": by_set, "cacc": float((clean == test.labels).mean())}



__all__ = ["REFERENCE_EVAL_BATCH", "REFERENCE_MAX_LEN", "RefFinetuned", "TextSplit", "aux_split", "insert_word",
           "load_text_split", "max_positions", "pad_width", "reference_encode", "reference_evaluate",
           "reference_finetune", "reference_logits", "reference_mlm_loss", "reference_predict", "reference_recipe",
           "reference_recipe_on", "static_masks"]
