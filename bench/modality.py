"""The one modality vocabulary: datasets, PTMs, methods, trigger sets and adapters all say ``text`` or
``vision`` (never ``image`` for one and ``vision`` for the other)."""

from __future__ import annotations

from typing import Literal

Modality = Literal["text", "vision"]
TEXT: Modality = "text"
VISION: Modality = "vision"
MODALITIES: tuple[Modality, ...] = (TEXT, VISION)
