"""Stage checkpoints: the whole training state of a stage, saved under its content key, so that a killed run
resumes where it stopped and ends in the same artifact an uninterrupted run writes.

A stage that trains (zoo build, attack, defense, fine-tuning cell) runs inside
:meth:`bench.context.RunContext.checkpointed`, which opens a :class:`StageCheckpoints` in the artifact store's
``.checkpoints/<key>/``.  Every :func:`bench.train.train` call of the stage is one numbered *call* there; every
``every_s`` seconds (and when a long call ends) it writes ``call-<i>.pt`` atomically with

* the weights of every module it trains (``state_dict``), the optimiser's and the scheduler's state, and the
  gradient scaler's (fp16 on CUDA; its current loss scale),
* every RNG stream that carries state across steps: torch's default generator (dropout, initialisation) and
  each generator handed out by :meth:`RunContext.torch_generator` (masking, trigger choice, augmentation),
  named by its purpose keys; numpy generators from :meth:`RunContext.rng` are derived afresh from the seed
  and their purpose at each use, so they carry nothing,
* the step (the data position: a resumed call skips that many batches of its deterministic batch iterator),
  the losses so far and the call's wall time,

and ``progress.json`` (call, step, steps, description) for ``ptmbench run --dry-run``.  A resumed stage runs
its code from the start: what precedes a call (data preparation, model surgery, frozen copies) is computed
again exactly as before, a finished call restores its final state instead of training, and the checkpointed
call continues from its step.  When the stage's artifact is written the directory is deleted.

Files are written by this process into its own cache and read with ``torch.load(weights_only=True)``: plain
tensors, numbers and strings, no code.  An unreadable one is refused with the way out (delete it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.artifacts import atomic_write_text
from bench.errors import PtmbenchError

PROGRESS = "progress.json"
DEFAULT_EVERY_S = 300.0  # five minutes: a checkpoint of a small PTM costs well under a second


def progress(directory: Path) -> dict[str, Any] | None:
    """What a partial stage has reached (``{"call", "step", "steps", "desc", "wall_s"}``), or None if it has
    no checkpoint."""
    try:
        return json.loads((directory / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def describe(part: dict[str, Any]) -> str:
    """How far a partial stage's training call is, for ``--dry-run``: its step and, from the wall time it has
    trained so far (over every resume), about how long the rest takes at that pace."""
    text = f"{part['desc']} step {part['step']}/{part['steps']}"
    wall, step = part.get("wall_s"), part["step"]
    if wall and step:
        text += f", {_span(wall)} trained, about {_span(wall / step * (part['steps'] - step))} to go at that pace"
    return text


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def latest_state(directory: Path) -> dict[str, Any] | None:
    """The state of the last training call checkpointed in a stage's ``directory`` (the one a resume continues),
    or None if it holds no ``call-N.pt``; an unreadable file is refused with the way out (delete it)."""
    calls = sorted(Path(directory).glob("call-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not calls:
        return None
    try:
        return torch.load(calls[-1], map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line whatever is wrong with the file
        raise PtmbenchError(f"{calls[-1]}: unreadable stage checkpoint ({str(e).splitlines()[0][:100]}); "
                            f"delete {directory} to run the stage from its start") from e


@dataclass
class StageCheckpoints:
    """The checkpoints of one stage run: its directory, the save interval, and the stateful RNG streams the
    stage has drawn so far (registered by :class:`~bench.context.RunContext` as it hands them out)."""

    directory: Path
    every_s: float = DEFAULT_EVERY_S
    calls: int = 0
    streams: dict[str, torch.Generator] = field(default_factory=dict)

    def track(self, keys: tuple[object, ...], gen: torch.Generator) -> None:
        """Register a generator under its purpose; a second one with the same purpose gets ``#2``, … ."""
        name = "/".join(map(str, keys)) or "-"
        n, base = 1, name
        while name in self.streams:
            n += 1
            name = f"{base}#{n}"
        self.streams[name] = gen

    def next_call(self, desc: str) -> CallCheckpoint:
        call = CallCheckpoint(self, self.calls, desc)
        self.calls += 1
        return call

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class CallCheckpoint:
    """One :func:`~bench.train.train` call's checkpoint file within a stage."""

    stage: StageCheckpoints
    index: int
    desc: str
    last_save: float = field(default_factory=time.monotonic)
    saves: int = 0

    @property
    def path(self) -> Path:
        return self.stage.directory / f"call-{self.index}.pt"

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= self.stage.every_s

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if state.get("format") != 1 or state.get("desc") != self.desc:
                raise ValueError(f"written by another stage ({state.get('desc')!r}, not {self.desc!r})")
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same way out
            raise PtmbenchError(f"stage checkpoint {self.path} cannot be resumed ({str(e).splitlines()[0][:120]}); "
                                f"delete {self.stage.directory} to run the stage from its start") from e
        return state

    def save(self, *, step: int, steps: int, done: bool, modules: list[nn.Module],
             optimizer: torch.optim.Optimizer | None, scheduler: Any, losses: list[float],
             parts: list[dict[str, float]], wall_s: float, scaler: Any = None) -> None:
        state = {
            "format": 1, "desc": self.desc, "step": step, "steps": steps, "done": done,
            "modules": [m.state_dict() for m in modules],
            "optimizer": optimizer.state_dict() if optimizer is not None and not done else None,
            "scheduler": scheduler.state_dict() if scheduler is not None and not done else None,
            "scaler": scaler.state_dict() if scaler is not None and not done else None,
            "rng": rng_state(self.stage.streams), "losses": losses, "parts": parts, "wall_s": wall_s,
        }
        d = self.stage.directory
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_write_text(d / PROGRESS, json.dumps({"call": self.index, "step": step, "steps": steps,
                                                    "desc": self.desc, "done": done, "wall_s": round(wall_s, 1),
                                                    "saved_at_unix": time.time()}))
        self.last_save = time.monotonic()
        self.saves += 1

    def restore(self, state: dict[str, Any], modules: list[nn.Module], optimizer: torch.optim.Optimizer | None,
                scheduler: Any, scaler: Any = None) -> None:
        """Put weights, optimiser, scheduler, gradient scaler and RNG streams back as they were when ``state`` was
        saved."""
        if len(state["modules"]) != len(modules):
            raise PtmbenchError(f"stage checkpoint {self.path} holds {len(state['modules'])} modules and the stage "
                                f"trains {len(modules)}; delete {self.stage.directory} to run it from its start")
        with torch.no_grad():
            for m, sd in zip(modules, state["modules"], strict=True):
                m.load_state_dict(sd)
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.stage.streams, self.path)


def rng_state(streams: dict[str, torch.Generator]) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "streams": {k: g.get_state() for k, g in streams.items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any], streams: dict[str, torch.Generator], where: Path) -> None:
    missing = sorted(set(streams) - set(state["streams"]))
    if missing:
        raise PtmbenchError(f"stage checkpoint {where} has no state for the RNG stream(s) {', '.join(missing)}; "
                            f"it was written by other code: delete {where.parent} to run the stage from its start")
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in streams.items():
        g.set_state(state["streams"][k])


def skip(batches: Iterator[Any], n: int) -> None:
    """Advance a batch iterator by ``n`` batches (the data position of a resumed call)."""
    for _ in range(n):
        next(batches)
