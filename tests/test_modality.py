"""One modality vocabulary everywhere, and adapters that declare their optional capabilities."""

from __future__ import annotations

import pytest

from bench.modalities.base import Adapter
from bench.modalities.text import ADAPTER as TEXT
from bench.modalities.vision import ADAPTER as VISION
from bench.modality import MODALITIES
from bench.registry import get, names


@pytest.mark.parametrize("adapter", [TEXT, VISION], ids=lambda a: a.name)
def test_adapters_meet_the_protocol_and_declare_capabilities(adapter):
    assert isinstance(adapter, Adapter) and adapter.name in MODALITIES
    assert adapter.masked_lm == hasattr(adapter, "mask_tokens")
    assert adapter.teacher_logits == hasattr(adapter, "pretrain_logits")


@pytest.mark.parametrize("kind", ["dataset", "model", "trigger_set"])
def test_every_registered_thing_speaks_the_one_vocabulary(kind):
    for name in names(kind):
        assert get(kind, name).modality in MODALITIES, (kind, name)


@pytest.mark.parametrize("kind", ["attack", "defense"])
def test_every_method_declares_modalities_of_the_vocabulary(kind):
    for name in names(kind):
        assert set(get(kind, name).modalities) <= set(MODALITIES), (kind, name)
