"""An example ptmbench plugin: one attack and one defense, each a class with a config dataclass.

* ``pooler-pin`` — a minimal task-agnostic attack: one trigger word, whose pooler output is pulled to a
  fixed ±1 vector while the MLM loss keeps the PTM a language model (a one-trigger NeuBA).
* ``embedding-noise`` — a (weak) defense: Gaussian noise on the input embeddings, no training.

Nothing here touches ptmbench's repository: the package's entry points (``ptmbench.attacks``,
``ptmbench.defenses``) make both appear in every matrix once it is pip-installed.  Each class gives its
name once, as ``name``; the entry point carries the same name (the registry checks that they agree).
Once installed, both are held to the same contract as the built-in methods (``tests/test_contracts.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from bench.context import RunContext
from bench.methods import Attack, Defense
from bench.modalities.text import ADAPTER as TEXT
from bench.ptm import PTM
from bench.train import OptimConfig, cycle_epochs, train
from bench.triggers import TextTrigger
from bench.zoo import corpus_chunks


@dataclass(frozen=True)
class PoolerPinConfig:
    trigger: str = "mn"
    corpus: str = "wikitext2"
    steps: int = 200
    batch_size: int = 16
    max_len: int = 64
    lr: float = 5e-5
    weight: float = 1.0


class PoolerPin(Attack):
    name = "pooler-pin"
    modalities = ("text",)
    Config = PoolerPinConfig
    presets: ClassVar[dict] = {"demo": {"steps": 100}, "smoke": {"steps": 3, "batch_size": 4, "max_len": 16}}

    trigger_set = "pooler-pin"

    def triggers(self, ptm: PTM) -> list[TextTrigger]:
        return [TextTrigger(self.config.trigger)]

    def implant(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        self.check_modality(ptm)  # a vision PTM is refused with a clear error, before any work
        c = self.config
        tid = TextTrigger(c.trigger).token_id(ptm.processor)  # fails clearly if it is not one piece
        docs = TEXT.load_split(ptm, c.corpus, "train", None, cache_dir)
        data = corpus_chunks(docs, c.max_len - 2)
        target = torch.ones(TEXT.hidden_size(ptm))
        target[: len(target) // 2] = -1
        gen = ctx.torch_generator("pooler-pin")

        def epoch(e: int) -> list[np.ndarray]:
            perm = ctx.rng("pin", e).permutation(len(data))
            return [perm[i:i + c.batch_size] for i in range(0, len(perm), c.batch_size)]

        def loss_fn(idx: np.ndarray, step: int):
            batch = TEXT.pack(ptm.processor, [data[i] for i in idx], c.max_len)
            mlm = TEXT.pretrain_loss(ptm, batch, gen)
            trig = batch["input_ids"].clone()
            trig[:, 1] = tid
            rep = TEXT.representation(ptm, {**batch, "input_ids": trig}).float()
            pin = torch.nn.functional.mse_loss(rep, target.expand_as(rep))
            return mlm + c.weight * pin, {"mlm": float(mlm), "pin": float(pin)}

        params = list(ptm.backbone.parameters())
        with ctx.seeded(self.name, "train"):  # dropout draws from torch's default generator
            res = train([ptm.backbone, ptm.pt_head], params, loss_fn, cycle_epochs(epoch), c.steps,
                        OptimConfig(lr=c.lr), ctx, desc="pooler-pin")
        ptm.info["attack"] = {"name": self.name, "config": self.config_dict(), "train": res.summary()}
        return ptm.with_lineage({"stage": "attack", "attack": self.name})


@dataclass(frozen=True)
class EmbeddingNoiseConfig:
    sigma: float = 0.01


class EmbeddingNoise(Defense):
    name = "embedding-noise"
    modalities = ("text",)
    Config = EmbeddingNoiseConfig

    def purify(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        self.check_modality(ptm)
        gen = ctx.torch_generator("embedding-noise")
        with torch.no_grad():
            w = ptm.backbone.embeddings.word_embeddings.weight
            w.add_(torch.randn(w.shape, generator=gen) * self.config.sigma)
        ptm.info["defense"] = {"name": self.name, "config": self.config_dict()}
        return ptm.with_lineage({"stage": "defense", "defense": self.name})
