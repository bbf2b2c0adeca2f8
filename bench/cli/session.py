"""What a command works with, made from its arguments once: the run context, the cache directory, the
artifact store and the model zoo.  Each is built on first use, so a command still checks its own inputs
(and fails on them) before a context is configured or a model loaded."""

from __future__ import annotations

import argparse
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import PtmbenchError

if TYPE_CHECKING:
    from bench.artifacts import ArtifactStore
    from bench.context import RunContext
    from bench.zoo import Zoo


def checkpoint_seconds(args: argparse.Namespace) -> float:
    """``--checkpoint-every`` in seconds (the default where the command has no such flag or it is unset)."""
    from bench.checkpoint import DEFAULT_EVERY_S

    minutes = getattr(args, "checkpoint_every", None)
    if minutes is None:
        return DEFAULT_EVERY_S
    if not minutes >= 0:
        raise PtmbenchError(f"--checkpoint-every: must be >= 0 minutes, got {minutes:g}")
    return minutes * 60


class Session:
    """One command's run context, cache directory, artifact store and zoo.

    The context takes the seed, device, precision, progress, threads, reference-paths, checkpoint and
    determinism settings from the flags the command has (a command without ``--seed`` runs under seed 0),
    then ``overrides`` (e.g. ``ptmbench run``'s device and precision, which default to the matrix's)."""

    def __init__(self, args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> None:
        self.args = args
        self.overrides = dict(overrides or {})

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> Session:
        return cls(args, overrides)

    @cached_property
    def ctx(self) -> RunContext:
        from bench.context import RunContext

        a = self.args
        settings: dict[str, Any] = {
            "seed": getattr(a, "seed", 0), "device": a.device, "precision": a.precision,
            "progress": getattr(a, "progress", False), "threads": getattr(a, "threads", None),
            "reference_paths": getattr(a, "reference_paths", False), "checkpoint_every_s": checkpoint_seconds(a),
            "deterministic": getattr(a, "deterministic", False)}
        return RunContext(**{**settings, **self.overrides})

    @cached_property
    def cache(self) -> Path:
        from bench.artifacts import default_cache_dir

        return self.args.cache or default_cache_dir()

    @cached_property
    def store(self) -> ArtifactStore:
        from bench.artifacts import ArtifactStore

        return ArtifactStore(self.cache / "artifacts")

    @cached_property
    def zoo(self) -> Zoo:
        from bench.zoo import Zoo

        return Zoo(self.store, self.cache)
