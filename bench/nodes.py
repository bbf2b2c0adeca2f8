"""The stages of a planned matrix as typed values: what :func:`bench.matrix.plan` makes and
:func:`bench.stages.run_node` runs.  Frozen, picklable dataclasses, so that any executor (worker processes,
Ray) can ship them; plain data only (running them is :mod:`bench.stages`'s business)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bench.records import CellIdentity


@dataclass(frozen=True)
class ZooSource:
    """A stage's input PTM when it is a zoo model (built or cached by :class:`bench.zoo.Zoo`)."""

    model: str

    def to_dict(self) -> dict[str, str]:  # as an artifact's meta.json names its source
        return {"kind": "zoo", "model": self.model}


@dataclass(frozen=True)
class ArtifactSource:
    """A stage's input PTM when it is the artifact of an upstream stage."""

    key: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": "artifact", "key": self.key}


Source = ZooSource | ArtifactSource


@dataclass(frozen=True)
class MethodRef:
    """An attack as a cell needs it to build its trigger set: registry name, preset and config overrides."""

    name: str
    preset: str
    config: dict[str, Any]


@dataclass(frozen=True)
class TriggerPlan:
    """The trigger sets a cell scores: those of ``attacks`` (for a no-attack cell, every attack of the matrix:
    the clean-model control) and the registered sets ``named``; ``sets`` names them all (one record each)."""

    attacks: tuple[MethodRef, ...]
    named: tuple[str, ...]
    sets: tuple[str, ...]


@dataclass(frozen=True)
class ZooStage:
    """Build (or find cached) the zoo model ``model`` under ``key``."""

    kind: ClassVar[str] = "zoo"
    key: str
    model: str

    @property
    def seed(self) -> int:
        return 0


@dataclass(frozen=True)
class MethodStage:
    """Apply a registered attack or defense ``method`` (preset, config overrides, seed) to ``source``."""

    kind: ClassVar[str]
    key: str
    method: str
    preset: str
    config: dict[str, Any]
    source: Source
    seed: int

    def apply(self, method: Any, ptm: Any, ctx: Any, cache_dir: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class AttackStage(MethodStage):
    kind: ClassVar[str] = "attack"

    def apply(self, method: Any, ptm: Any, ctx: Any, cache_dir: Any) -> Any:
        return method.implant(ptm, ctx, cache_dir)


@dataclass(frozen=True)
class DefenseStage(MethodStage):
    kind: ClassVar[str] = "defense"

    def apply(self, method: Any, ptm: Any, ctx: Any, cache_dir: Any) -> Any:
        return method.purify(ptm, ctx, cache_dir)


@dataclass(frozen=True)
class CellStage:
    """Fine-tune ``source`` per ``ident`` and score it on each trigger set: one record per set, named by the
    identity with the attack and defense ``labels`` of the matrix (display only: never in a key)."""

    kind: ClassVar[str] = "cell"
    key: str
    ident: CellIdentity
    attack_label: str
    defense_label: str
    source: Source
    triggers: TriggerPlan
    finetune: dict[str, Any]  # the matrix's fine-tune preset overrides
    keys: dict[str, str]  # the zoo, attack and defense keys of its PTM, as its records name them

    @property
    def seed(self) -> int:
        return self.ident.seed

    def record_fields(self) -> dict[str, Any]:
        return self.ident.record_fields(self.attack_label, self.defense_label)

    def record_key(self, triggers: str) -> dict[str, Any]:
        return self.ident.record_key(triggers, self.attack_label, self.defense_label)

    def record_ids(self, trigger_sets: list[str] | tuple[str, ...] | None = None) -> list[str]:
        """The ids of its records (default: one per planned trigger set)."""
        sets = self.triggers.sets if trigger_sets is None else trigger_sets
        return [self.ident.record_id(t, self.attack_label, self.defense_label) for t in sets]


StageNode = ZooStage | AttackStage | DefenseStage | CellStage
