"""Shared pieces of the modality adapters: named parameter groups and length-aware batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

GROUPS = ("ffn_in", "ffn_out", "attn_q", "attn_k", "attn_v", "embeddings", "head")


@runtime_checkable
class Adapter(Protocol):
    """What every modality adapter provides (``ptm.adapter``), and the optional capabilities it declares as
    class attributes instead of being probed for: a method needing one checks the flag and refuses with a
    one-line error, never with an AttributeError half-way.

    * ``masked_lm``: ``mask_tokens``, ``mlm_loss``, ``mlm_logits`` (a masked-LM pretraining objective: text);
    * ``teacher_logits``: ``pretrain_logits`` (the pretraining head's logits, for a label-free L_PT: vision).
    """

    name: ClassVar[str]
    aux_splits: ClassVar[dict[str, str]]
    masked_lm: ClassVar[bool]
    teacher_logits: ClassVar[bool]

    def load_split(self, ptm: Any, dataset: str, split: str, max_samples: int | None, cache_dir: Any) -> Any: ...
    def lengths(self, data: Any, max_len: int) -> np.ndarray: ...
    def batches(self, lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None, shuffle: bool,
                **kwargs: Any) -> list[np.ndarray]: ...
    def collate(self, ptm: Any, data: Any, idx: np.ndarray, max_len: int, device: str, **kwargs: Any) -> Any: ...
    def representation(self, ptm: Any, batch: Any) -> torch.Tensor: ...
    def pretrain_loss(self, ptm: Any, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor: ...
    def param_groups(self, ptm: Any) -> dict[str, list[ParamRef]]: ...
    def hidden_size(self, ptm: Any) -> int: ...
    def layers(self, ptm: Any) -> list[nn.Module]: ...


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
