"""The contract of every registered attack and defense, plugins included (the cases come from the registry).

For each method, on the tiny test model of each modality it supports, at the ``smoke`` preset:

* it builds at every scale preset (paper, demo, smoke);
* it changes the weights, and the same seed gives the same weights twice (an attack: another seed, others);
* it appends one lineage step naming it, records itself in ``info``, and survives save and load bit for bit;
* on a text PTM the pooler survives: still there, the same module, and — for a defense, unless the class
  sets ``changes_pooler = True`` — unchanged;
* a PTM of a modality it does not support is refused with a one-line error, before any weight moves.

A newly registered method (built in, or a pip-installed plugin) is picked up here with no edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.methods import SCALES
from bench.ptm import PTM, load_ptm
from bench.registry import get, names

MODALITIES = ("text", "vision")
KINDS = ("attack", "defense")


def cases(supported: bool) -> list[Any]:
    """(kind, name, modality) for every registered method and every modality it supports (or does not)."""
    out = []
    for kind in KINDS:
        for name in names(kind):
            for modality in MODALITIES:
                if (modality in get(kind, name).modalities) == supported:
                    out.append(pytest.param(kind, name, modality, id=f"{kind}-{name}-{modality}"))
    return out


SUPPORTED = cases(True)
UNSUPPORTED = cases(False)
METHODS = [pytest.param(kind, name, id=f"{kind}-{name}") for kind in KINDS for name in names(kind)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(bert_dir: Path, vit_dir: Path):
    """A fresh tiny PTM of a modality (each call loads a new copy)."""
    return lambda modality: load_ptm(bert_dir if modality == "text" else vit_dir)


def apply(kind: str, name: str, ptm: PTM, tmp_path: Path, seed: int = 0) -> PTM:
    method = get(kind, name).build("smoke")
    run = method.implant if kind == "attack" else method.purify
    return run(ptm, RunContext(seed=seed, precision="fp32"), tmp_path / "cache")


def weights(ptm: PTM) -> dict[str, torch.Tensor]:
    out = {f"backbone.{k}": v.detach().clone() for k, v in ptm.backbone.state_dict().items()}
    if ptm.pt_head is not None:
        out.update({f"pt_head.{k}": v.detach().clone() for k, v in ptm.pt_head.state_dict().items()})
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind, name", METHODS)
def test_builds_at_every_scale_preset(kind, name):
    cls = get(kind, name)
    assert cls.name == name and cls.kind == kind and set(cls.modalities) <= set(MODALITIES)
    for preset in SCALES:
        assert isinstance(cls.build(preset), cls)


@pytest.mark.parametrize("kind, name, modality", SUPPORTED)
def test_changes_the_weights_and_is_deterministic_for_a_seed(kind, name, modality, tiny, env, tmp_path):
    before = weights(tiny(modality))
    first = weights(apply(kind, name, tiny(modality), tmp_path, seed=0))
    again = weights(apply(kind, name, tiny(modality), tmp_path, seed=0))
    assert not same(before, first), f"{kind} {name} changed no weight"
    assert same(first, again), f"{kind} {name}: two runs with one seed differ"
    if kind == "attack":  # every attack trains from seeded draws; a defense may be deterministic (pruning)
        other = weights(apply(kind, name, tiny(modality), tmp_path, seed=1))
        assert not same(first, other), f"attack {name}: seeds 0 and 1 gave the same weights"


@pytest.mark.parametrize("kind, name, modality", SUPPORTED)
def test_lineage_appended_and_the_output_survives_save_and_load(kind, name, modality, tiny, env, tmp_path):
    ptm = tiny(modality)
    lineage = list(ptm.lineage)
    out = apply(kind, name, ptm, tmp_path)
    assert out.lineage[:-1] == lineage and len(out.lineage) == len(lineage) + 1
    assert out.lineage[-1]["stage"] == kind and out.lineage[-1][kind] == name
    assert out.info[kind]["name"] == name
    out.save(tmp_path / "out")
    back = load_ptm(tmp_path / "out")
    assert same(weights(out), weights(back))
    assert back.lineage == out.lineage and back.info[kind]["name"] == name


@pytest.mark.parametrize("kind, name, modality", [c for c in SUPPORTED if c.values[2] == "text"])
def test_the_pooler_survives(kind, name, modality, tiny, env, tmp_path):
    ptm = tiny(modality)
    pooler = ptm.backbone.pooler
    before = {k: v.clone() for k, v in pooler.state_dict().items()}
    out = apply(kind, name, ptm, tmp_path)
    assert out.backbone.pooler is pooler, f"{kind} {name} dropped or replaced the pooler"
    if kind == "defense" and not getattr(get(kind, name), "changes_pooler", False):
        for k, v in out.backbone.pooler.state_dict().items():
            assert torch.equal(v, before[k]), f"defense {name} changed the pooler's {k}"


@pytest.mark.parametrize("kind, name, modality", UNSUPPORTED)
def test_an_unsupported_modality_is_refused_before_any_work(kind, name, modality, tiny, env, tmp_path):
    ptm = tiny(modality)
    before = weights(ptm)
    method = get(kind, name).build("smoke")
    with pytest.raises(PtmbenchError, match=f"{kind} '{name}' supports .* not {modality}") as err:
        method.check_modality(ptm)
    assert "\n" not in str(err.value)
    with pytest.raises(PtmbenchError, match=f"not {modality}"):
        apply(kind, name, ptm, tmp_path)
    assert same(before, weights(ptm))
