"""Shared pieces of the modality adapters: named parameter groups and length-aware batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from bench.context import RunContext

GROUPS = ("ffn_in", "ffn_out", "attn_q", "attn_k", "attn_v", "embeddings", "head")


@runtime_checkable
class Adapter(Protocol):
    """What every modality adapter provides (``ptm.adapter``), and the optional capabilities it declares as
    class attributes instead of being probed for: a method needing one checks the flag and refuses with a
    one-line error, never with an AttributeError half-way.

    * ``masked_lm``: ``mask_tokens``, ``mlm_loss``, ``mlm_logits`` (a masked-LM pretraining objective: text);
    * ``teacher_logits``: ``pretrain_logits`` (the pretraining head's logits, for a label-free L_PT: vision).

    The numerical regime is the run context's, and the adapter reads it: ``collate(ptm, data, idx, max_len,
    ctx)`` takes the device and the padding width from ``ctx`` (:func:`placement`), ``batches(..., ctx=ctx)``
    drops length bucketing and ``pretrain_loss``/``mlm_loss``/``mlm_logits(..., ctx)`` compute the
    full-vocabulary logits under ``ctx.reference_paths``, so a method that routes its batching and losses
    through these entry points runs the regime it is keyed as without ever branching on it.  The explicit
    low-level forms (a device name with ``pad_to``, ``full_vocab=``) stay for code that needs a fixed layout.
    """

    name: ClassVar[str]
    aux_splits: ClassVar[dict[str, str]]
    masked_lm: ClassVar[bool]
    teacher_logits: ClassVar[bool]

    def load_split(self, ptm: Any, dataset: str, split: str, max_samples: int | None, cache_dir: Any) -> Any: ...
    def lengths(self, data: Any, max_len: int) -> np.ndarray: ...
    def batches(self, lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None, shuffle: bool,
                bucketing: bool = ..., ctx: RunContext | None = None) -> list[np.ndarray]: ...
    def collate(self, ptm: Any, data: Any, idx: np.ndarray, max_len: int | None, where: RunContext | str,
                pad_to: int | None = None) -> Any: ...
    def representation(self, ptm: Any, batch: Any) -> torch.Tensor: ...
    def pretrain_loss(self, ptm: Any, batch: Any, gen: torch.Generator | None = ..., ctx: RunContext | None = None,
                      *, full_vocab: bool = False) -> torch.Tensor: ...
    def param_groups(self, ptm: Any) -> dict[str, list[ParamRef]]: ...
    def hidden_size(self, ptm: Any) -> int: ...
    def layers(self, ptm: Any) -> list[nn.Module]: ...
    def ffn_modules(self, ptm: Any) -> list[nn.Module]: ...  # the family's (bench.modalities.families)


@dataclass
class ParamRef:
    """One matrix of a named group: a parameter, or a row slice of one (timm's fused qkv).

    ``bias`` is the matching bias (same row slice); ``layer`` is the block index, or None.
    """

    name: str
    param: nn.Parameter
    rows: slice | None = None
    bias: nn.Parameter | None = None
    layer: int | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.param if self.rows is None else self.param[self.rows]

    @property
    def bias_view(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return self.bias if self.rows is None else self.bias[self.rows]


def placement(where: RunContext | str | torch.device, max_len: int | None,
              pad_to: int | None = None) -> tuple[str | torch.device, int | None]:
    """(device, padding width) of a batch.  ``where`` is the run context, whose regime decides: its device,
    and ``max_len`` on the reference paths, else None (the batch's longest).  The low-level form passes a
    device name and, if it wants a fixed width, ``pad_to``; with a context ``pad_to`` is an error, since the
    context already decides it."""
    if isinstance(where, (str, torch.device)):
        return where, pad_to
    if pad_to is not None:
        raise TypeError("pad_to is the run context's to decide; pass a device name to set it explicitly")
    return where.device, where.pad_to(max_len)


def bucketing_of(bucketing: bool, ctx: RunContext | None) -> bool:
    """Length bucketing as asked, and never on the reference paths of ``ctx``."""
    return bool(bucketing) and not (ctx is not None and ctx.reference_paths)


def full_vocab_of(ctx: RunContext | None, full_vocab: bool) -> bool:
    """Full-vocabulary MLM logits: the context's reference paths, else the explicit low-level switch."""
    if ctx is None:
        return bool(full_vocab)
    if full_vocab:
        raise TypeError("full_vocab is the run context's to decide; pass no context to set it explicitly")
    return bool(ctx.reference_paths)


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """A host tensor on ``device``: bound for CUDA it is copied through pinned (page-locked) memory without
    blocking, so the copy overlaps the GPU's work; on the CPU it is returned as it is."""
    if str(device).startswith("cuda") and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def load_dataset_split(dataset: str, split: str, max_samples: int | None, column: str) -> tuple[Any, np.ndarray | None]:
    """A mirror split that must carry ``column`` (``text`` / ``image``), and its integer labels if labelled."""
    from bench import data as bdata
    from bench.errors import PtmbenchError

    ds = bdata.load_split(dataset, split, max_samples=max_samples)
    if column not in ds.column_names:
        raise PtmbenchError(f"dataset {dataset!r} has no {column!r} column; it is not a{'n' if column == 'image' else ''} "
                            f"{column} dataset")
    labels = np.asarray(ds["label"], dtype=np.int64) if "label" in ds.column_names else None
    return ds, labels


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     bucket_batches: int = 50, drop_last: bool = False) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort within chunks of ``bucket_batches`` batches,
    cut into batches, shuffle the batch order.  Less padding, same epoch coverage."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * max(1, bucket_batches)
    batches: list[np.ndarray] = []
    for s in range(0, len(perm), chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator, drop_last: bool = False) -> list[np.ndarray]:
    perm = rng.permutation(n)
    out = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and out and len(out[-1]) < batch_size:
        out = out[:-1]
    return out


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches by decreasing length (minimal padding); callers scatter results back by index."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
