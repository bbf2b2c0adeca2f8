"""The reference implementations the core runs itself: the evaluation of a ``--reference-paths`` cell, as
a per-trigger re-tokenising evaluation does it (insert the trigger word into the raw text at a word slot,
tokenise afresh, pad to the max length, fp32 batches of 32 in fixed order), with the encoding and
prediction helpers it needs.  :func:`bench.evaluate.evaluate` dispatches here on the reference paths;
``ptmbench perf compare``'s reference pipelines (:mod:`bench.perf.reference`, above the core) build on
the same pieces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.context import RunContext
from bench.finetune import Classifier, FinetunePreset
from bench.ptm import PTM

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
    return ptm.adapter.max_positions(ptm)


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


def rows(enc: dict[str, torch.Tensor], idx: Any, device: str) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device) for k, v in enc.items()}


# ---------------------------------------------------------------------------------------------- prediction
@torch.inference_mode()
def reference_logits(model: Classifier, enc: dict[str, torch.Tensor], device: str,
                     batch_size: int = REFERENCE_EVAL_BATCH) -> torch.Tensor:
    """fp32 logits in input order, fixed-order batches of ``batch_size`` at the encoding's padded width."""
    model.eval()
    n = enc["input_ids"].shape[0]
    out = [model(rows(enc, slice(s, s + batch_size), device)).float().cpu() for s in range(0, n, batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def reference_predict(model: Classifier, enc: dict[str, torch.Tensor], device: str,
                      batch_size: int = REFERENCE_EVAL_BATCH) -> np.ndarray:
    return reference_logits(model, enc, device, batch_size).argmax(-1).numpy().astype(np.int64)


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


def reference_evaluation(model: Classifier, dataset: str, val: Any, test: Any, trigger_sets: dict[str, list[Any]],
                         num_classes: int, preset: FinetunePreset, ctx: RunContext) -> dict[str, Any]:
    """:func:`~bench.evaluate.evaluate` the reference way (``--reference-paths``): per trigger, insert the word
    into the raw validation/test texts of ``dataset``, re-tokenise, pad to the preset's max length, fp32
    fixed-order batches: ``perf compare``'s reference evaluation, on the same subsets (``val``/``test``, the
    tokenised splits, give the labels) and per-sample trigger slots.  Returns :func:`reference_evaluate`'s
    dict with its ``wall_s``."""
    from bench import data as bdata

    t0 = time.perf_counter()
    splits = []
    for split, tokens in (("validation", val), ("test", test)):
        ds = bdata.load_split(dataset, split, max_samples=preset.max_eval)
        splits.append(TextSplit(list(ds["text"]), np.asarray(tokens.labels, dtype=np.int64), tokens))
    ref = reference_evaluate(model, splits[0], splits[1], trigger_sets, num_classes, ctx,
                             pad_width(model.ptm, preset.max_len))
    return {**ref, "wall_s": time.perf_counter() - t0}


__all__ = ["REFERENCE_EVAL_BATCH", "REFERENCE_MAX_LEN", "TextSplit", "insert_word", "load_text_split",
           "max_positions", "pad_width", "reference_encode", "reference_evaluate", "reference_evaluation",
           "reference_logits", "reference_predict", "rows"]
