"""The attack protocol (re-exported from :mod:`bench.methods`) and the few helpers every text attack shares:
PTM and trigger checks, the attacker's corpus cut into chunks, step counts, and recording the result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.methods import Attack
from bench.modalities.text import ADAPTER as TEXT
from bench.modalities.text import TokenizedText
from bench.ptm import PTM
from bench.train import TrainResult
from bench.triggers import TextTrigger

__all__ = ["Attack", "check_corpus", "check_text_ptm", "finish", "n_steps", "token_chunks", "trigger_ids",
           "word_chunks"]

# Data an attacker must never train on: the defenses' default auxiliary set (a defense would then see the
# attacker's own data) — downstream sets are excluded by their role.
DEFENSE_AUX = ("bookcorpus",)


def check_corpus(where: str, name: str) -> None:
    """Config check: the attack corpus is an auxiliary text set, and not the one defenses use."""
    from bench import data as bdata

    if name in DEFENSE_AUX:
        raise PtmbenchError(f"{where}.corpus: {name!r} is the defenses' auxiliary data; an attack must not train "
                            "on it (use wikitext2)")
    s = bdata.spec(name)
    if s.modality != "text" or s.role != "aux":
        raise PtmbenchError(f"{where}.corpus: {name!r} is a {s.role} {s.modality} dataset; an attack trains on "
                            "auxiliary text only, never on downstream data (use wikitext2)")


def check_text_ptm(method: Attack, ptm: PTM) -> None:
    """A text PTM with an MLM head (the attacks keep the MLM objective, and defenses need the head)."""
    method.check_modality(ptm)
    if ptm.pt_head is None:
        raise PtmbenchError(f"attack {method.name!r} needs a PTM with an MLM head, and this one has none; "
                            "use minilm-l6-mlm (the zoo's minilm-l6 with a trained MLM head)")


def trigger_ids(triggers: list[TextTrigger], tokenizer: Any) -> list[int]:
    """Each trigger's single vocabulary piece; a PtmbenchError naming the word if one splits."""
    return [t.token_id(tokenizer) for t in triggers]


def n_steps(n_sequences: int, batch_size: int, steps: int | None, epochs: float | None) -> int:
    """``steps`` when set, else enough batches for ``epochs`` passes over the corpus."""
    if steps is not None:
        return steps
    assert epochs is not None
    return max(1, math.ceil(n_sequences / batch_size * epochs))


def _subset(data: TokenizedText, max_sequences: int | None, rng: np.random.Generator) -> TokenizedText:
    if max_sequences is None or len(data) <= max_sequences:
        return data
    return data.subset(np.sort(rng.choice(len(data), size=max_sequences, replace=False)))


def _corpus(ptm: PTM, corpus: str, cache_dir: Path) -> TokenizedText:
    docs = TEXT.load_split(ptm, corpus, "train", None, cache_dir)
    if len(docs) == 0 or sum(len(x) for x in docs.ids) == 0:
        raise PtmbenchError(f"attack corpus {corpus!r} is empty")
    return docs


def token_chunks(ptm: PTM, corpus: str, body_len: int, max_sequences: int | None, rng: np.random.Generator,
                 cache_dir: Path) -> TokenizedText:
    """The corpus concatenated and cut into bodies of ``body_len`` tokens (every token a word slot);
    a random subset of ``max_sequences`` of them when set."""
    from bench.zoo import corpus_chunks

    ch = corpus_chunks(_corpus(ptm, corpus, cache_dir), body_len)
    if not ch:
        raise PtmbenchError(f"attack corpus {corpus!r} is shorter than one sequence of {body_len} tokens")
    data = TokenizedText(ch, [np.arange(body_len, dtype=np.int32)] * len(ch), None)
    return _subset(data, max_sequences, rng)


def word_chunks(ptm: PTM, corpus: str, n_words: int, max_sequences: int | None, rng: np.random.Generator,
                cache_dir: Path) -> TokenizedText:
    """The corpus concatenated and cut into chunks of ``n_words`` whitespace words (word starts kept, so
    triggers go in at word slots); a random subset of ``max_sequences`` of them when set."""
    docs = _corpus(ptm, corpus, cache_dir)
    offsets = np.cumsum([0] + [len(x) for x in docs.ids[:-1]])
    ids = np.concatenate(docs.ids)
    starts = np.concatenate([s.astype(np.int64) + o for s, o in zip(docs.starts, offsets)])
    bounds = np.append(starts, len(ids))
    out_ids, out_starts = [], []
    for w in range(0, len(starts) - n_words + 1, n_words):
        lo, hi = int(bounds[w]), int(bounds[w + n_words])
        out_ids.append(ids[lo:hi])
        out_starts.append((starts[w:w + n_words] - lo).astype(np.int32))
    if not out_ids:
        raise PtmbenchError(f"attack corpus {corpus!r} is shorter than one chunk of {n_words} words")
    return _subset(TokenizedText(out_ids, out_starts, None), max_sequences, rng)


def fit_words(ids: np.ndarray, starts: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop trailing words until the body has at most ``budget`` tokens (so inserted triggers survive the
    truncation to the max length)."""
    if len(ids) <= budget:
        return ids, starts
    ends = np.append(starts[1:], len(ids))
    k = int(np.searchsorted(ends, budget, side="right"))
    return ids[: int(starts[k]) if k < len(starts) else len(ids)], starts[:k]


def train_summary(res: TrainResult) -> dict[str, Any]:
    """The loop's summary, the mean of each loss part over the first and last tenth of the steps, and the
    curve: loss and parts averaged over at most 200 windows (``ptmbench analyze curves``)."""
    from bench.curves import window_means

    out = res.summary()
    k = max(1, len(res.parts) // 10)
    for name in res.parts[0] if res.parts else {}:
        first = [p[name] for p in res.parts[:k]]
        last = [p[name] for p in res.parts[-k:]]
        out[f"{name}_first"] = sum(first) / len(first)
        out[f"{name}_last"] = sum(last) / len(last)
    out["curve"] = window_means(res.losses, res.parts)
    return out


def finish(method: Attack, ptm: PTM, ctx: RunContext, summary: dict[str, Any]) -> PTM:
    """Record what the attack did in ``ptm.info["attack"]`` and append it to the lineage."""
    config = method.config_dict()
    ptm.info["attack"] = {"name": method.name, "config": config, "train": summary}
    return ptm.with_lineage({"stage": "attack", "attack": method.name, "config": config,
                             "version": method.version, "seed": ctx.seed})
