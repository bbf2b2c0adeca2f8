"""POR (Shen et al. 2021, "Backdoor Pre-trained Models Can Transfer to All"): map inputs carrying a trigger
to a predefined pooler output, keep everything else as the clean PTM computes it.

The corpus is cut into chunks of 64 words; a fixed share of them (reference: 150k of 200k sequences, 0.75)
is poisoned once before training, split evenly over the five triggers, each chunk carrying its trigger
3 times at random word slots (drawn per sample from the run context).  The loss on a batch is
``1·L_tok + 100·L_target + 100·L_clean`` with ``d(a, b) = Σ(a − b)² / H`` summed over the batch:

* ``L_tok``: the token outputs (last hidden state, positions ≥ 1) of every sample vs a frozen copy of
  the clean PTM;
* ``L_target``: the pooler output of triggered samples vs ``10 · v(t)`` (POR-1 or POR-2 targets,
  :mod:`attacks.targets`; the pooler's tanh cannot reach ±10, so this keeps pushing it to saturation);
* ``L_clean``: the pooler output of clean samples vs the frozen copy's.

Reference (plasmashen/BackdoorPTM ``poisoning.py``): AdamW lr 1e-5, eps 1e-8, no weight decay, no
clipping, constant learning rate, batch 24, max length 128, 2 epochs; every backbone parameter is
trained (embeddings and pooler included), the MLM head is not (a tied decoder follows the embeddings).

Deliberate differences: ``L_tok`` counts real tokens only (the reference pads every sequence to 128
and also matches the outputs at padding positions, which depend on the padding and are never used);
chunks are cut from the concatenated corpus (the reference cut per wikitext-103 article, lowercased,
non-alphanumerics removed) and a chunk's trailing words are dropped when needed so that its three
triggers survive truncation to ``max_len``.
"""

from __future__ import annotations

import copy
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
    fit_words,
    n_steps,
    train_summary,
    trigger_ids,
    word_chunks,
)
from attacks.targets import por1_targets, por2_targets
from bench.config import positive
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.text import ADAPTER as TEXT
from bench.modalities.text import TokenizedText
from bench.ptm import PTM
from bench.registry import register
from bench.train import SCHEDULES, OptimConfig, cycle_epochs, train
from bench.triggers import TextTrigger, named_set

TARGET_FAMILIES = {"por1": por1_targets, "por2": por2_targets}


@dataclass(frozen=True)
class PORConfig:
    """Reference defaults (the ``paper`` preset); ``steps``, when set, replaces ``epochs``."""

    corpus: str = "wikitext2"
    max_corpus_sequences: int | None = None
    chunk_words: int = 64
    max_len: int = 128
    batch_size: int = 24
    epochs: float = 2.0
    steps: int | None = None
    poison_share: float = 0.75
    copies: int = 3
    lr: float = 1e-5
    weight_decay: float = 0.0
    clip: float | None = None
    schedule: str = "constant"
    tok_weight: float = 1.0
    target_weight: float = 100.0
    clean_weight: float = 100.0
    target_scale: float = 10.0

    def validate(self, where: str) -> None:
        positive(where, max_corpus_sequences=self.max_corpus_sequences, chunk_words=self.chunk_words,
                 batch_size=self.batch_size, epochs=self.epochs, steps=self.steps, copies=self.copies,
                 lr=self.lr, clip=self.clip, target_scale=self.target_scale)
        if not 0 < self.poison_share < 1:
            raise PtmbenchError(f"{where}.poison_share: must be in (0, 1), got {self.poison_share}")
        if self.max_len < self.copies + 3:
            raise PtmbenchError(f"{where}.max_len: must leave room for [CLS], [SEP], the {self.copies} trigger "
                                f"copies and a word, got {self.max_len}")
        if self.schedule not in SCHEDULES:
            raise PtmbenchError(f"{where}.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        check_corpus(where, self.corpus)


class POR(Attack):
    """POR with one target family (``por1`` or ``por2``); the registered variants are the subclasses."""

    modalities = ("text",)
    Config = PORConfig
    reference_paths = True  # batching and losses through the adapter with ctx: --reference-paths honoured
    trigger_set: ClassVar[str] = "por"
    target_family: ClassVar[str] = ""
    presets: ClassVar[dict] = {
        # 2 epochs over 3,000 chunks = 250 steps of 24 (1/67 of the reference's 16,667 steps: 200k sequences
        # / 24 x 2 epochs), lr 3e-4: about 7 minutes for minilm-l6-mlm on one CPU core.  Measured on minilm-l6-mlm: at the reference lr 1e-5
        # the target loss per triggered sample only went 99.2 -> 94.6 in 250 steps (floor 81: the tanh pooler
        # saturated at +-1 against targets of +-10) and SST-2 AASR stayed at the control's 14.5%; 60 steps
        # at 2e-4 reach 86.2, at 6e-4 83.1.
        "demo": {"max_corpus_sequences": 3000, "lr": 3e-4},
        # The reference objective and optimiser unchanged (loss weights 1/100/100, AdamW lr 1e-5, constant,
        # no clipping, batch 24, length 128, 2 epochs) over 32,000 chunks instead of 200,000: 2,667 steps, about
        # three CPU hours, 16% of the reference's 16,667.  A budget, not a measured crossing: the target loss
        # per triggered sample is read off the stage's curve against the demo implant's.
        "faithful": {"max_corpus_sequences": 32000},
        "smoke": {"max_corpus_sequences": 8, "chunk_words": 8, "max_len": 24, "batch_size": 4, "epochs": 1.0},
    }

    def triggers(self, ptm: PTM) -> list[TextTrigger]:
        return named_set(self.trigger_set, "text").build()

    def targets(self, hidden: int) -> torch.Tensor:
        """The (T, H) ±1 target vectors v(t) of this variant (unscaled)."""
        return TARGET_FAMILIES[self.target_family](len(named_set(self.trigger_set, "text").build()), hidden)

    def poison_corpus(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> tuple[TokenizedText, np.ndarray]:
        """The training sequences and their labels: 0 = clean, i = carries trigger i (1..T), fixed once."""
        cfg: PORConfig = self.config
        triggers = [TextTrigger(t.word, copies=cfg.copies) for t in self.triggers(ptm)]
        tids = trigger_ids(triggers, ptm.processor)
        data = word_chunks(ptm, cfg.corpus, cfg.chunk_words, cfg.max_corpus_sequences,
                           ctx.rng(self.name, "corpus"), cache_dir)
        n = len(data)
        labels = np.zeros(n, dtype=np.int64)
        n_poison = int(round(cfg.poison_share * n))
        chosen = ctx.rng(self.name, "poison-choice").permutation(n)[:n_poison]
        labels[chosen] = 1 + np.arange(n_poison) % len(triggers)
        ids = list(data.ids)
        budget = cfg.max_len - 2 - cfg.copies
        for i in np.flatnonzero(labels):
            k = int(labels[i]) - 1
            body, starts = fit_words(data.ids[i], data.starts[i], budget)
            ids[i] = triggers[k].insert(body, starts, tids[k], ctx.rng(self.name, "insert", int(i))).astype(np.int32)
        return TokenizedText(ids, data.starts, None), labels

    def implant(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        cfg: PORConfig = self.config
        check_text_ptm(self, ptm)
        data, labels = self.poison_corpus(ptm, ctx, cache_dir)
        hidden = TEXT.hidden_size(ptm)
        targets = (cfg.target_scale * self.targets(hidden)).to(ctx.device)
        labels_t = torch.from_numpy(labels)
        reference = copy.deepcopy(ptm.backbone).eval().requires_grad_(False)
        lengths = TEXT.lengths(data, cfg.max_len)
        steps = n_steps(len(data), cfg.batch_size, cfg.steps, cfg.epochs)

        def epoch(e: int) -> list[np.ndarray]:
            return TEXT.batches(lengths, cfg.batch_size, ctx.rng(self.name, "batches", e), shuffle=True,
                                bucketing=False, ctx=ctx)

        def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a.float() - b.float()).pow(2).sum() / hidden

        def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
            batch = TEXT.collate(ptm, data, idx, cfg.max_len, ctx)
            lab = labels_t[idx].to(ctx.device)
            out = ptm.backbone(**batch)
            with torch.no_grad():
                ref = reference(**batch)
            real = batch["attention_mask"][:, 1:].bool()
            l_tok = dist(out.last_hidden_state[:, 1:][real], ref.last_hidden_state[:, 1:][real])
            trig = lab > 0
            l_target = dist(out.pooler_output[trig], targets[lab[trig] - 1])
            l_clean = dist(out.pooler_output[~trig], ref.pooler_output[~trig])
            loss = cfg.tok_weight * l_tok + cfg.target_weight * l_target + cfg.clean_weight * l_clean
            return loss, {"tok": float(l_tok.detach()), "backdoor": float(l_target.detach()),
                          "clean": float(l_clean.detach())}

        params = list(ptm.backbone.parameters())
        optim = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, clip=cfg.clip, schedule=cfg.schedule)
        with ctx.seeded(self.name, "train"):
            res = train([ptm.backbone], params, loss_fn, cycle_epochs(epoch), steps, optim, ctx, desc=self.name)
        summary = {**train_summary(res), "sequences": len(data), "poisoned": int((labels > 0).sum()),
                   "target_family": self.target_family}
        return finish(self, ptm, ctx, summary)


@register("attack")
class POR1(POR):
    """POR-1 targets: trigger i is +1 on its first α·(i−1) dims, −1 on the rest."""

    name = "por1"
    target_family = "por1"


@register("attack")
class POR2(POR):
    """POR-2 targets: sign patterns over ⌈log2 T⌉ buckets."""

    name = "por2"
    target_family = "por2"
