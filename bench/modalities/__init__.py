"""Modality adapters: one vocabulary (load/save, pretraining loss, representation, parameter groups)
over BERT, RoBERTa and ViT, so attacks and defenses are written once."""

from __future__ import annotations

from typing import Any

from bench.errors import PtmbenchError

_ADAPTERS = {"text": "bench.modalities.text", "vision": "bench.modalities.vision"}


def get_modality(name: str) -> Any:
    import importlib

    if name not in _ADAPTERS:
        raise PtmbenchError(f"unknown modality {name!r}; known: {', '.join(_ADAPTERS)}")
    return importlib.import_module(_ADAPTERS[name]).ADAPTER
