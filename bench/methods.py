"""The base protocol of attacks and defenses: a name, modalities, a typed config with named presets.

A method is one class; its config dataclass holds the reference defaults (the ``paper`` preset) and
``presets`` names scaled-down overrides (``demo``, ``smoke``) that fit a laptop.  Every deviation from
the reference is visible in the config recorded with each result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from bench.config import from_dict
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.ptm import PTM

SCALES = ("paper", "demo", "smoke")  # the suite-wide scale presets every method accepts


class Method:
    """Shared by :class:`attacks.base.Attack` and :class:`defenses.base.Defense`."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    Config: ClassVar[type] = object
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # Options added after results were published, with their defaults: while an option holds its default
    # it is left out of config_dict() (and so of cache keys and record identities), so adding an option
    # never invalidates existing artifacts or results.
    added_options: ClassVar[dict[str, Any]] = {}
    # True: the method routes all its batching, losses and evaluation through the adapter's context-taking
    # entry points (docs/adding-a-method.md, "Numerical regimes"), so ``--reference-paths`` is honoured; a
    # method without it is refused on the reference paths rather than run on fast paths keyed as reference.
    reference_paths: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def build(cls, preset: str = "paper", overrides: dict[str, Any] | None = None, where: str = "") -> Method:
        """The method with ``preset``'s overrides (``paper`` = the reference defaults) plus ``overrides``."""
        where = where or f"{cls.kind} {cls.name}"
        if preset not in SCALES and preset not in cls.presets:  # a scale the method does not shrink = paper
            known = ", ".join(dict.fromkeys([*SCALES, *cls.presets]))
            raise PtmbenchError(f"{where}: unknown preset {preset!r}; known presets: {known}")
        values = {**cls.presets.get(preset, {}), **(overrides or {})}
        return cls(from_dict(cls.Config, values, where))

    def config_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.config)
        for k, default in self.added_options.items():
            if k in d and d[k] == default:
                del d[k]
        return d

    def check_modality(self, ptm: PTM) -> None:
        if ptm.modality not in self.modalities:
            raise PtmbenchError(f"{self.kind} {self.name!r} supports {', '.join(self.modalities)} PTMs, "
                                f"not {ptm.modality}")

    def check_context(self, ctx: RunContext) -> None:
        """Refuse a run context this method does not honour (before any work): the reference paths unless the
        method declares :attr:`reference_paths`."""
        if ctx.reference_paths and not self.reference_paths:
            raise PtmbenchError(f"{self.kind} {self.name!r} does not declare support for --reference-paths; drop "
                                "--reference-paths, or route its batching and losses through the adapter's "
                                "context-taking collate/batches/loss and set reference_paths = True on the class")


class Attack(Method):
    """Implants a task-agnostic backdoor: ``triggers(ptm)`` and ``implant(ptm, ctx, cache_dir) -> PTM``."""

    kind = "attack"

    def triggers(self, ptm: PTM) -> list[Any]:
        raise NotImplementedError

    def implant(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        raise NotImplementedError


class Defense(Method):
    """Purifies a PTM with auxiliary data only: ``purify(ptm, ctx, cache_dir) -> PTM``."""

    kind = "defense"
    stage: ClassVar[str] = "ptm"  # room for input-level or fine-tuned-model defenses later

    def purify(self, ptm: PTM, ctx: RunContext, cache_dir: Path) -> PTM:
        raise NotImplementedError
