"""Triggers as first-class objects: a stable id, a modality, and a deterministic ``apply``.

Text triggers insert a single-piece token at word slots of an already tokenised sample; the slot is
drawn from a generator seeded by (seed, trigger id, sample index) — never by reseeding global state —
so the same sample gets the same triggered version in every run, stage and process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bench.context import stable_hash
from bench.errors import PtmbenchError

POSITIONS = ("random", "first", "last")

# Named trigger sets of the published attacks (PROTOCOL §3).
TRIGGER_SETS: dict[str, tuple[str, ...]] = {
    "neuba": ("≈", "≡", "∈", "⊆", "⊕", "⊗"),
    "por": ("cf", "tq", "mn", "bb", "mb"),
    "badpre": ("cf", "mn", "bb", "tq", "mb"),
}


class Trigger(Protocol):
    id: str
    modality: str

    def apply(self, data: Any, processor: Any, seed: int) -> Any: ...


def sample_rng(seed: int, trigger_id: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stable_hash(trigger_id), index])


@dataclass(frozen=True)
class TextTrigger:
    """A trigger word inserted ``copies`` times at a random word slot (0..n), the first or the last slot."""

    word: str
    position: str = "random"
    copies: int = 1
    modality: str = "text"

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise PtmbenchError(f"trigger position {self.position!r} is not one of {', '.join(POSITIONS)}")
        if self.copies < 1:
            raise PtmbenchError(f"trigger {self.word!r}: copies must be >= 1, got {self.copies}")

    @property
    def id(self) -> str:
        extra = "" if (self.position, self.copies) == ("random", 1) else f"@{self.position}x{self.copies}"
        return f"{self.word}{extra}"

    def token_id(self, tokenizer: Any) -> int:
        """The trigger's single vocabulary piece (word-initial form for BPE); an error if it splits."""
        enc = tokenizer([[self.word]], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]
        if len(enc) != 1 or enc[0] == tokenizer.unk_token_id:
            pieces = tokenizer.convert_ids_to_tokens(enc)
            raise PtmbenchError(f"trigger {self.word!r} is not a single piece under this tokenizer "
                                f"(it becomes {pieces}); choose a word in the vocabulary")
        return int(enc[0])

    def insert(self, ids: np.ndarray, starts: np.ndarray, tid: int, rng: np.random.Generator) -> np.ndarray:
        n = len(starts)
        if self.position == "first":
            slots = [0] * self.copies
        elif self.position == "last":
            slots = [n] * self.copies
        else:
            slots = sorted(int(s) for s in rng.integers(0, n + 1, size=self.copies))
        bounds = np.append(starts, len(ids))
        out = ids
        for j, slot in enumerate(slots):  # slots ascending; each insertion shifts later ones by one
            pos = int(bounds[slot]) + j
            out = np.insert(out, pos, tid)
        return out

    def apply(self, data: Any, processor: Any, seed: int) -> Any:
        """Triggered copy of a :class:`~bench.modalities.text.TokenizedText` (labels kept)."""
        from bench.modalities.text import TokenizedText

        tid = self.token_id(processor)
        ids = [self.insert(x, s, tid, sample_rng(seed, self.id, i)).astype(np.int32)
               for i, (x, s) in enumerate(zip(data.ids, data.starts))]
        return TokenizedText(ids, data.starts, data.labels)


def parse_text_triggers(spec: str | list[str] | None) -> dict[str, list[TextTrigger]]:
    """``"por,neuba"`` (named sets) or ``"cf,mn"`` (words) -> {set name: triggers}.

    Named sets stay separate (each gets its own AASR/MASR); loose words form the set ``custom``.
    """
    if not spec:
        return {}
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    sets: dict[str, list[TextTrigger]] = {}
    for item in items:
        if item in TRIGGER_SETS:
            sets[item] = [TextTrigger(w) for w in TRIGGER_SETS[item]]
        else:
            sets.setdefault("custom", []).append(TextTrigger(item))
    return sets
