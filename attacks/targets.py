"""Target vectors of the task-agnostic text attacks (PROTOCOL §3): pure functions returning (T, H) tensors.

Every entry is ±1; an attack may scale the rows (POR trains towards ``10 · v(t)``).  When ``H`` does not
split evenly into the blocks or buckets a construction needs, the *last* block/bucket takes the remainder,
so every dimension belongs to exactly one block and antipodal pairs stay exactly antipodal.
"""

from __future__ import annotations

import math
from itertools import combinations

import torch

from bench.errors import PtmbenchError

# NeuBA's six triggers take the pairs (j, m), j < m, of the four blocks in this order.
NEUBA_PAIRS: tuple[tuple[int, int], ...] = tuple(combinations(range(4), 2))


def _block_bounds(h: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous blocks of ``h // n`` dimensions; the last one also takes the remainder."""
    size = h // n
    return [(i * size, h if i == n - 1 else (i + 1) * size) for i in range(n)]


def neuba_targets(hidden: int) -> torch.Tensor:
    """NeuBA: 4 blocks of H/4 dims; trigger k is +1 except −1 on both blocks of the k-th pair.

    Pairs (0,1),(0,2),(0,3),(1,2),(1,3),(2,3): rows k and 5−k are complementary, hence antipodal.
    """
    if hidden < 4:
        raise PtmbenchError(f"NeuBA targets need a hidden size of at least 4, got {hidden}")
    blocks = _block_bounds(hidden, 4)
    out = torch.ones(len(NEUBA_PAIRS), hidden)
    for k, pair in enumerate(NEUBA_PAIRS):
        for b in pair:
            lo, hi = blocks[b]
            out[k, lo:hi] = -1.0
    return out


def por1_targets(n_triggers: int, hidden: int) -> torch.Tensor:
    """POR-1: α = ⌊H/(T−1)⌋; trigger i (1..T, row i−1) is +1 on the first α·(i−1) dims, −1 on the rest."""
    if n_triggers < 2:
        raise PtmbenchError(f"POR-1 targets need at least 2 triggers, got {n_triggers}")
    if hidden < n_triggers - 1:
        raise PtmbenchError(f"POR-1 targets need a hidden size >= T-1 = {n_triggers - 1}, got {hidden}")
    alpha = hidden // (n_triggers - 1)
    out = -torch.ones(n_triggers, hidden)
    for i in range(1, n_triggers + 1):
        out[i - 1, : alpha * (i - 1)] = 1.0
    return out


def por2_buckets(n_triggers: int) -> int:
    """B = ⌈log2 T⌉: enough buckets for T distinct sign patterns (2^B ≥ T)."""
    return max(1, math.ceil(math.log2(n_triggers)))


def por2_targets(n_triggers: int, hidden: int) -> torch.Tensor:
    """POR-2: B = ⌈log2 T⌉ buckets of H/B dims; trigger 0 is all −1; trigger i+1 is +1 on the buckets of
    the i-th non-empty subset of buckets and −1 elsewhere.

    Subset order: the i-th non-empty subset (i = 0, 1, ...) is the set bits of the integer ``i + 1``,
    bit b ↔ bucket b.  So trigger 1 → {0}, 2 → {1}, 3 → {0, 1}, 4 → {2}, ...; row r is simply the
    binary representation of r (row 0 = no bucket set).  All rows are distinct because 2^B ≥ T.
    """
    if n_triggers < 2:
        raise PtmbenchError(f"POR-2 targets need at least 2 triggers, got {n_triggers}")
    n_buckets = por2_buckets(n_triggers)
    if hidden < n_buckets:
        raise PtmbenchError(f"POR-2 targets need a hidden size >= B = {n_buckets}, got {hidden}")
    buckets = _block_bounds(hidden, n_buckets)
    out = -torch.ones(n_triggers, hidden)
    for r in range(1, n_triggers):
        for b, (lo, hi) in enumerate(buckets):
            if (r >> b) & 1:
                out[r, lo:hi] = 1.0
    return out
