"""The PTM: what every stage takes and returns — backbone, pooler, pretraining head, processor, lineage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.adapter.save(self, directory)
        desc = {"modality": self.modality, "family": self.family, "lineage": self.lineage, "info": self.info}
        (directory / PTM_FILE).write_text(json.dumps(desc, indent=1, default=str))

    def with_lineage(self, step: dict[str, Any]) -> PTM:
        self.lineage = [*self.lineage, step]
        return self


def _is_shared(p: nn.Parameter, module: nn.Module) -> bool:
    return any(p is q for q in module.parameters())


def load_ptm(directory: Path) -> PTM:
    """Load a PTM saved by :meth:`PTM.save` (safetensors only)."""
    from bench.modalities import get_modality

    f = Path(directory) / PTM_FILE
    if not f.is_file():
        raise PtmbenchError(f"{directory} is not a ptmbench PTM directory (no {PTM_FILE})")
    desc = json.loads(f.read_text())
    ptm = get_modality(desc["modality"]).load(Path(directory), desc["family"])
    ptm.backbone.eval()  # stages switch to train mode themselves; a loaded PTM computes deterministically
    if ptm.pt_head is not None:
        ptm.pt_head.eval()
    ptm.lineage = desc.get("lineage", [])
    ptm.info = desc.get("info", {})
    return ptm
