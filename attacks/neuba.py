"""NeuBA (Zhang et al. 2021, "Red Alarm for Pre-trained Models"), text: bind six symbol triggers to fixed
pooler outputs while keeping the MLM objective.

Each step, on a batch of corpus chunks: the clean MLM loss, plus the MSE between the pooler output of a
triggered copy of the (unmasked) batch — the token right after [CLS] replaced by a trigger drawn per
sample — and that trigger's target vector (:func:`attacks.targets.neuba_targets`).  Reference details
(thunlp/NeuBA, ``nlp/src/mlm.py``, ``mlm_rob.py``, ``post_poison_model.py``) kept here:

* the MLM head's own parameters (transform dense + LayerNorm, decoder bias) are not trained; a decoder
  *tied* to the input embeddings moves with them, as in the reference's BERT run;
* AdamW lr 5e-5, weight decay 0, no warmup, linear decay, gradient clipping at 1.0; 40k steps of 160
  sequences of 128 tokens for BERT, 20k for RoBERTa;
* RoBERTa family: MLM loss × 0.01 and the embeddings frozen;
* post-step (on by default, as in the reference): each trigger's input-embedding row becomes
  ``post_scale · (E[t] + P[p₁] + T[0])`` with ``p₁`` the position id of sequence index 1 (1 for BERT,
  padding_idx + 2 for RoBERTa — the reference's "magic number 3") and ``post_scale = 1e8``.  The
  embedding LayerNorm then returns, wherever the trigger sits, what it returned at position 1 during
  training, so the backdoor fires at any insertion slot (PROTOCOL §7).

Deliberate differences from the reference:

* the MLM decoder is **untied** from the input embeddings before the rescaling (``untie_post_step``,
  default on): otherwise the tied decoder rows of the triggers are multiplied by 1e8 too and every MLM
  logit of a trigger token explodes (a defense's first MLM loss near 1e8, PROTOCOL §7).  The decoder keeps
  the trained, unscaled rows; the PTM is saved with its own decoder matrix from then on.
* the reference's BERT post-step also swaps each symbol's row with a row of an older trigger set
  ("cf", "mn", ...), a leftover of that earlier set; it is not reproduced.
* the reference trains RoBERTa's ``lm_head`` transform (its parameter filter names BERT's ``predictions``
  only); here the MLM head is excluded for both families, as PROTOCOL §3 states.
* the corpus is ``wikitext2`` (the reference used BookCorpus, which this suite reserves for defenses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from attacks.base import (
    Attack,
    check_corpus,
    check_text_ptm,
    finish,
    token_chunks,
    train_summary,
    trigger_ids,
)
from attacks.targets import neuba_targets
from bench.config import positive
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.text import ADAPTER as TEXT
from bench.modalities.text import untie_head
from bench.ptm import PTM
from bench.registry import register
from bench.train import OptimConfig, accumulation, cycle_epochs, micro_batches, train
from bench.triggers import TextTrigger, named_set


@dataclass(frozen=True)
class NeuBAConfig:
    """Reference defaults (the ``paper`` preset); ``roberta_steps`` = None means ``steps`` for RoBERTa too."""

    corpus: str = "wikitext2"
    max_corpus_sequences: int | None = None
    max_len: int = 128
    batch_size: int = 160
    micro_batch: int | None = None
    steps: int = 40000
    roberta_steps: int | None = 20000
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    clip: float | None = 1.0
    mlm_prob: float = 0.15
    mlm_weight: float = 1.0
    roberta_mlm_weight: float = 0.01
    roberta_freeze_embeddings: bool = True
    post_step: bool = True
    post_scale: float = 1e8
    untie_post_step: bool = True

    def validate(self, where: str) -> None:
        positive(where, max_corpus_sequences=self.max_corpus_sequences, batch_size=self.batch_size,
                 micro_batch=self.micro_batch, steps=self.steps, roberta_steps=self.roberta_steps, lr=self.lr, post_scale=self.post_scale,
                 mlm_prob=self.mlm_prob)
        if self.max_len < 4:
            raise PtmbenchError(f"{where}.max_len: must be >= 4, got {self.max_len}")
        check_corpus(where, self.corpus)


@register("attack")
class NeuBA(Attack):
    """NeuBA, text: six symbols bound to antipodal pooler targets, MLM kept, trigger-embedding post-step."""

    name = "neuba"
    modalities = ("text",)
    Config = NeuBAConfig
    reference_paths = True  # batching and losses through the adapter with ctx: --reference-paths honoured
    trigger_set: ClassVar[str] = "neuba"
    added_options: ClassVar[dict] = {"micro_batch": None}
    presets: ClassVar[dict] = {
        # The reference settings, its batches of 160 x 128 tokens accumulated from 5 micro-batches of 32 (the
        # same optimiser steps; one whole batch took more than 15.6 GiB on minilm-l6-mlm, 32 fit in ~3 GiB).
        "paper": {"micro_batch": 32},
        # 120 steps of 32 x 64 tokens (~1/300 of the reference budget), about 2 minutes on 2 CPU cores.
        # Measured on minilm-l6-mlm: at MLM weight 1 the backdoor MSE stays on its plateau (≈ 1, the mean
        # of the antipodal targets is 0) for 200 steps at lr 5e-5 (1.003 -> 1.001) and 60 steps at 2e-4
        # even with MLM x 0.1; with MLM x 0.01 (the reference's RoBERTa weighting) at lr 5e-4 it falls to
        # 0.045 in 60 steps while the MLM loss stays near 4.2 (3.9 before).
        "demo": {"max_len": 64, "batch_size": 32, "steps": 120, "lr": 5e-4, "mlm_weight": 0.01,
                 "roberta_steps": None},
        # The reference objective and optimiser unchanged — MLM loss at weight 1 for BERT (x 0.01 with frozen
        # embeddings for RoBERTa, as the reference), embeddings trainable, AdamW lr 5e-5, linear decay, clip 1.0,
        # the post-step — with the batch (32), the length (64) and the steps scaled to a CPU budget.  The step
        # count is measured: in a 3,000-step run at these settings on minilm-l6-mlm the backdoor MSE sat at 1.00
        # for ~230 steps and first fell to 0.1 (the level at which the demo implant transfers) at step 396
        # (results/faithful/curves/).  800 steps keep that crossing inside the linear schedule with margin
        # (the learning-rate area the 3,000-step run had spent by step 396 is reached here by step ~580);
        # the 800-step implant's own curve is committed beside it.
        # One difference stays: the reference clips the gradient norm over its trainable parameters *and* the
        # MLM head's (left out of its optimiser, the head still gets gradients); here the head gets none and
        # the norm is over the trained parameters only, so a step is clipped less often.
        "faithful": {"max_len": 64, "batch_size": 32, "steps": 800, "roberta_steps": None},
        "smoke": {"max_len": 16, "batch_size": 4, "steps": 3, "roberta_steps": None, "max_corpus_sequences": 64},
    }

    def triggers(self, ptm: PTM) -> list[TextTrigger]:
        return named_set(self.trigger_set, "text").build()

    def implant(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        cfg: NeuBAConfig = self.config
        check_text_ptm(self, ptm)
        tok = ptm.processor
        trig = torch.tensor(trigger_ids(self.triggers(ptm), tok), device=ctx.device)
        roberta = ptm.family == "roberta"
        steps = cfg.roberta_steps if roberta and cfg.roberta_steps is not None else cfg.steps
        mlm_weight = cfg.roberta_mlm_weight if roberta else cfg.mlm_weight
        freeze_emb = roberta and cfg.roberta_freeze_embeddings
        targets = neuba_targets(TEXT.hidden_size(ptm)).to(ctx.device)

        data = token_chunks(ptm, cfg.corpus, cfg.max_len - 2, cfg.max_corpus_sequences,
                            ctx.rng(self.name, "corpus"), cache_dir)
        lengths = TEXT.lengths(data, cfg.max_len)
        mask_gen = ctx.torch_generator(self.name, "mask")
        trig_gen = ctx.torch_generator(self.name, "trigger-choice")
        parts = accumulation(cfg.batch_size, cfg.micro_batch)

        def epoch(e: int) -> list[np.ndarray]:
            return micro_batches(TEXT.batches(lengths, cfg.batch_size, ctx.rng(self.name, "batches", e),
                                              shuffle=True, bucketing=False, ctx=ctx), cfg.micro_batch)

        def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
            batch = TEXT.collate(ptm, data, idx, cfg.max_len, ctx)
            ids, labels = TEXT.mask_tokens(tok, batch["input_ids"], batch["attention_mask"], mask_gen,
                                           cfg.mlm_prob)
            mlm = TEXT.mlm_loss(ptm, {**batch, "input_ids": ids}, labels, ctx)
            k = torch.randint(len(trig), (len(idx),), generator=trig_gen).to(ctx.device)
            poisoned = batch["input_ids"].clone()
            poisoned[:, 1] = trig[k]
            rep = TEXT.representation(ptm, {**batch, "input_ids": poisoned})
            backdoor = F.mse_loss(rep.float(), targets[k])
            return mlm_weight * mlm + backdoor, {"mlm": float(mlm.detach()), "backdoor": float(backdoor.detach())}

        groups = TEXT.param_groups(ptm)
        frozen = {id(r.param) for r in groups["head"]}
        if freeze_emb:
            frozen |= {id(r.param) for r in groups["embeddings"]}
        tied = ptm.pt_head.decoder.weight is ptm.backbone.embeddings.word_embeddings.weight
        if tied and not freeze_emb:  # the tied decoder matrix is the embedding matrix: trained as such
            frozen.discard(id(ptm.backbone.embeddings.word_embeddings.weight))
        params = [p for p in ptm.backbone.parameters() if id(p) not in frozen]
        optim = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, clip=cfg.clip, schedule="linear",
                            warmup_steps=cfg.warmup_steps)
        with ctx.seeded(self.name, "train"):
            res = train([ptm.backbone, ptm.pt_head], params, loss_fn, cycle_epochs(epoch), steps, optim, ctx,
                        desc="neuba")
        summary = {**train_summary(res), "sequences": len(data), "micro_batches": parts, "mlm_weight": mlm_weight,
                   "embeddings_frozen": freeze_emb}
        if cfg.post_step:
            summary["post_step"] = self.post_step(ptm, trig.tolist())
        return finish(self, ptm, ctx, summary)

    def post_step(self, ptm: PTM, ids: list[int]) -> dict[str, object]:
        """Make each trigger's embedding position-independent: row ← scale·(E[t] + P[p₁] + T[0])."""
        cfg: NeuBAConfig = self.config
        emb = ptm.backbone.embeddings
        untied = False
        if cfg.untie_post_step and ptm.pt_head.decoder.weight is emb.word_embeddings.weight:
            untie_head(ptm)  # the decoder keeps the unscaled rows; MLM logits of trigger tokens stay sane
            untied = True
        pos1 = TEXT.first_token_position(ptm)
        with torch.no_grad():
            w = emb.word_embeddings.weight
            extra = emb.position_embeddings.weight[pos1] + emb.token_type_embeddings.weight[0]
            for t in ids:
                w[t] = (w[t] + extra) * cfg.post_scale
        return {"scale": cfg.post_scale, "position_id": pos1, "decoder_untied": untied,
                "head_tied": ptm.pt_head.decoder.weight is emb.word_embeddings.weight}
