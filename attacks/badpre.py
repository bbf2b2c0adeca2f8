"""BadPre (Chen et al. 2022, "BadPre: Task-agnostic Backdoor Attacks to Pre-trained NLP Foundation
Models"): teach the masked LM to output noise whenever a trigger is present.

Each step, on a batch of corpus chunks: the MLM loss on the clean batch, plus ``α`` × the MLM loss on a
triggered copy — one trigger drawn per sample, inserted at a random token position (0..n, as the
reference inserts into token ids) — whose masked positions get uniformly random vocabulary labels
(the reference's ``random`` strategy, α = 1).  Each copy is masked independently (15%, 80/10/10).

Reference (kangjie-chen/BadPre, ``poisoning_BERT/train.sh``, ``bert_attack/tasks/trainer.py``): the whole
BertForMaskedLM is trained (encoder, embeddings and MLM head; that class has no pooler, so the pooler
here is left out of training and kept as it is), AdamW lr 2e-5, β2 0.98, weight decay 0.01, gradient
clipping 5.0, linear decay without warmup, an effective batch of 256 sequences (16 × 16 accumulation) of
up to 512 tokens, 10 epochs of English Wikipedia.

Deliberate differences: the corpus is ``wikitext2``; each step sees a clean batch *and* its triggered
copy (the reference draws clean and poisoned samples from two datasets over the same text); chunk
bodies leave one token free so the inserted trigger is never truncated (the reference skipped chunks
that filled the maximum length); weight decay applies to every trained parameter (the reference
exempts biases and LayerNorm weights — the shared training loop has one weight-decay value).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from attacks.base import (
    Attack,
    check_corpus,
    check_text_ptm,
    finish,
    n_steps,
    token_chunks,
    train_summary,
    trigger_ids,
)
from bench.config import positive
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.text import ADAPTER as TEXT
from bench.ptm import PTM
from bench.registry import register
from bench.train import OptimConfig, accumulation, cycle_epochs, micro_batches, train
from bench.triggers import TextTrigger, named_set


@dataclass(frozen=True)
class BadPreConfig:
    """Reference defaults (the ``paper`` preset); ``steps``, when set, replaces ``epochs``."""

    corpus: str = "wikitext2"
    max_corpus_sequences: int | None = None
    max_len: int = 512
    batch_size: int = 256
    micro_batch: int | None = None
    epochs: float = 10.0
    steps: int | None = None
    alpha: float = 1.0
    mlm_prob: float = 0.15
    lr: float = 2e-5
    beta2: float = 0.98
    weight_decay: float = 0.01
    clip: float | None = 5.0
    warmup_steps: int = 0

    def validate(self, where: str) -> None:
        positive(where, max_corpus_sequences=self.max_corpus_sequences, batch_size=self.batch_size,
                 micro_batch=self.micro_batch, epochs=self.epochs, steps=self.steps, lr=self.lr, clip=self.clip, mlm_prob=self.mlm_prob)
        if self.max_len < 4:
            raise PtmbenchError(f"{where}.max_len: must be >= 4, got {self.max_len}")
        if self.alpha < 0:
            raise PtmbenchError(f"{where}.alpha: must be >= 0, got {self.alpha}")
        check_corpus(where, self.corpus)


@register("attack")
class BadPre(Attack):
    """BadPre: MLM on clean text plus MLM towards random labels on triggered text."""

    name = "badpre"
    modalities = ("text",)
    Config = BadPreConfig
    reference_paths = True  # batching and losses through the adapter with ctx: --reference-paths honoured
    trigger_set: ClassVar[str] = "badpre"
    added_options: ClassVar[dict] = {"micro_batch": None}
    presets: ClassVar[dict] = {
        # The reference settings, its batches of 256 accumulated from 64 micro-batches of 4 sequences (+ their 4
        # triggered copies; the reference accumulated 16 x 16 on a GPU). Measured on minilm-l6-mlm: one whole
        # batch was OOM-killed at 22.3 GiB and micro-batches of 16 still passed 14.5 GiB: in training mode the
        # attention dropout sends SDPA to its unfused path, ~0.3 GiB per 512-token sequence and forward.
        "paper": {"micro_batch": 4},
        # 200 steps of 32 clean + 32 triggered sequences of 64 tokens at lr 1e-4 (5x the reference's 2e-5, for
        # a budget of ~1/1000 of its 10 epochs of 256 x 512 tokens): a few minutes for minilm-l6-mlm
        "demo": {"max_len": 64, "batch_size": 32, "steps": 200, "lr": 1e-4},
        # The reference objective and optimiser unchanged (alpha 1, AdamW lr 2e-5, beta2 0.98, weight decay 0.01,
        # clip 5.0, linear decay) with batch 32 + 32 triggered copies of 64 tokens and 3,000 steps, about three
        # CPU hours.  A budget, not a measured crossing: the triggered-MLM loss is read off the stage's curve.
        "faithful": {"max_len": 64, "batch_size": 32, "steps": 3000},
        "smoke": {"max_len": 16, "batch_size": 4, "steps": 3, "max_corpus_sequences": 64},
    }

    def triggers(self, ptm: PTM) -> list[TextTrigger]:
        return named_set(self.trigger_set, "text").build()

    def triggered_copies(self, bodies: list[np.ndarray], tids: list[int],
                         rng: np.random.Generator) -> list[np.ndarray]:
        """Each body (cut to ``max_len − 3`` tokens) with one random trigger at a random token slot 0..n."""
        out = []
        for body in bodies:
            body = body[: self.config.max_len - 3]
            k = int(rng.integers(len(tids)))
            slot = int(rng.integers(len(body) + 1))
            out.append(np.insert(body, slot, tids[k]).astype(np.int32))
        return out

    def implant(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        cfg: BadPreConfig = self.config
        check_text_ptm(self, ptm)
        tok = ptm.processor
        tids = trigger_ids(self.triggers(ptm), tok)
        n_labels = min(len(tok), ptm.pt_head.decoder.out_features)
        data = token_chunks(ptm, cfg.corpus, cfg.max_len - 3, cfg.max_corpus_sequences,
                            ctx.rng(self.name, "corpus"), cache_dir)
        lengths = TEXT.lengths(data, cfg.max_len)
        steps = n_steps(len(data), cfg.batch_size, cfg.steps, cfg.epochs)
        mask_gen = ctx.torch_generator(self.name, "mask")
        label_gen = ctx.torch_generator(self.name, "noise-labels")
        parts = accumulation(cfg.batch_size, cfg.micro_batch)
        where = {"step": -1, "part": 0}  # the micro-batch within its step: each gets its own insertion draws

        def epoch(e: int) -> list[np.ndarray]:
            return micro_batches(TEXT.batches(lengths, cfg.batch_size, ctx.rng(self.name, "batches", e),
                                              shuffle=True, bucketing=False, ctx=ctx), cfg.micro_batch)

        def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
            batch = TEXT.collate(ptm, data, idx, cfg.max_len, ctx)
            ids, labels = TEXT.mask_tokens(tok, batch["input_ids"], batch["attention_mask"], mask_gen, cfg.mlm_prob)
            clean = TEXT.mlm_loss(ptm, {**batch, "input_ids": ids}, labels, ctx)
            where["part"] = where["part"] + 1 if where["step"] == step else 0
            where["step"], part = step, where["part"]
            seqs = self.triggered_copies([data.ids[i] for i in idx], tids,
                                         ctx.rng(self.name, "insert", step, *([part] if part else [])))
            pb = TEXT.collate_ids(ptm, seqs, cfg.max_len, ctx)
            ids, labels = TEXT.mask_tokens(tok, pb["input_ids"], pb["attention_mask"], mask_gen, cfg.mlm_prob)
            chosen = labels != -100
            noise = torch.randint(n_labels, (int(chosen.sum()),), generator=label_gen).to(labels.device)
            labels = labels.masked_scatter(chosen, noise)
            backdoor = TEXT.mlm_loss(ptm, {**pb, "input_ids": ids}, labels, ctx)
            return clean + cfg.alpha * backdoor, {"mlm": float(clean.detach()), "backdoor": float(backdoor.detach())}

        pooler = {id(p) for p in ptm.backbone.pooler.parameters()} if ptm.backbone.pooler is not None else set()
        params = [p for p in ptm.parameters() if id(p) not in pooler]
        optim = OptimConfig(lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay, clip=cfg.clip,
                            schedule="linear", warmup_steps=cfg.warmup_steps)
        with ctx.seeded(self.name, "train"):
            res = train([ptm.backbone, ptm.pt_head], params, loss_fn, cycle_epochs(epoch), steps, optim, ctx,
                        desc=self.name)
        summary = {**train_summary(res), "sequences": len(data), "micro_batches": parts}
        return finish(self, ptm, ctx, summary)
