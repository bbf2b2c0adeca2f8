"""The PTM: what every stage takes and returns — backbone, pooler, pretraining head, processor, lineage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import PtmbenchError

PTM_FILE = "ptm.json"


@dataclass
class PTM:
    """A pre-trained model as one object; the modality adapter knows how to run, save and load it.

    ``backbone`` includes the pooler (text) or final norm (vision); ``pt_head`` is the pretraining
    head (MLM head for text, the supervised classifier for ViT) and travels with the PTM through every stage.
    """

    modality: str
    family: str
    backbone: nn.Module
    pt_head: nn.Module | None
    processor: Any
    lineage: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def adapter(self):  # noqa: ANN201 - returns a Modality
        from bench.modalities import get_modality

        return get_modality(self.modality)

    def parameters(self):  # noqa: ANN201
        yield from self.backbone.parameters()
        if self.pt_head is not None:
            yield from (p for p in self.pt_head.parameters() if not _is_shared(p, self.backbone))

    def to(self, device: str) -> PTM:
        """Move the weights (backbone with its pooler, and the pretraining head) to ``device``, in place.  A head
        parameter shared with the backbone (a decoder tied to the input embeddings) stays shared: torch moves a
        parameter's data in place between CPU and CUDA, and where it makes a new parameter instead (e.g. to
        the meta device) the head is tied to the backbone's new one again."""
        if self.pt_head is None:
            self.backbone.to(device)
            return self
        in_backbone = {id(p): n for n, p in self.backbone.named_parameters()}
        tied = {n: in_backbone[id(p)] for n, p in self.pt_head.named_parameters(remove_duplicate=False)
                if id(p) in in_backbone}
        self.backbone.to(device)
        self.pt_head.to(device)
        for name, target in tied.items():
            owner, _, attr = name.rpartition(".")
            module = self.pt_head.get_submodule(owner)
            shared = self.backbone.get_parameter(target)
            if getattr(module, attr) is not shared:
                setattr(module, attr, shared)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def save(self, directory: Path) -> None:
        """Write the PTM's files; the adapters write CPU copies of the weights, wherever the PTM lives."""
        directory.mkdir(parents=True, exist_ok=True)
        self.adapter.save(self, directory)
        desc = {"modality": self.modality, "family": self.family, "lineage": self.lineage, "info": self.info}
        (directory / PTM_FILE).write_text(json.dumps(desc, indent=1, default=str))

    def with_lineage(self, step: dict[str, Any]) -> PTM:
        self.lineage = [*self.lineage, step]
        return self


def _is_shared(p: nn.Parameter, module: nn.Module) -> bool:
    return any(p is q for q in module.parameters())


def check_weights(directory: Path) -> None:
    """One line naming the file when a ``*.safetensors`` file of ``directory`` is not whole: a damaged header or
    a file shorter than its header declares.  Reads the headers only (no tensor data): cheap enough to run
    before any work is planned."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as h:
                h.keys()
        except (SafetensorError, OSError) as e:
            raise PtmbenchError(f"{f}: not a readable safetensors file ({_first_line(e)}); restore the model "
                                "directory or rebuild it") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_description(directory: Path) -> dict[str, Any]:
    """The ``ptm.json`` of a PTM directory (modality, family, lineage, info), checked to be one."""
    f = Path(directory) / PTM_FILE
    if not f.is_file():
        raise PtmbenchError(f"{directory} is not a ptmbench PTM directory (no {PTM_FILE})")
    try:
        desc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PtmbenchError(f"{f}: unreadable ({_first_line(e)}); restore the PTM directory or rebuild it") from e
    if not isinstance(desc, dict) or not isinstance(desc.get("modality"), str) or not isinstance(desc.get("family"),
                                                                                                  str):
        raise PtmbenchError(f"{f}: not a PTM description (needs 'modality' and 'family'); restore the PTM "
                            "directory or rebuild it")
    return desc


def load_ptm(directory: Path) -> PTM:
    """Load a PTM saved by :meth:`PTM.save` (safetensors only); a damaged directory is a PtmbenchError."""
    from safetensors import SafetensorError

    from bench.modalities import get_modality

    desc = read_description(directory)
    check_weights(directory)
    try:
        ptm = get_modality(desc["modality"]).load(Path(directory), desc["family"])
    except (SafetensorError, FileNotFoundError) as e:
        raise PtmbenchError(f"{directory}: cannot load the PTM's weights ({_first_line(e)}); restore the PTM "
                            "directory or rebuild it") from e
    ptm.backbone.eval()  # stages switch to train mode themselves; a loaded PTM computes deterministically
    if ptm.pt_head is not None:
        ptm.pt_head.eval()
    ptm.lineage = desc.get("lineage", [])
    ptm.info = desc.get("info", {})
    return ptm
