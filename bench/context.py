"""The run context every stage receives: seed, device, precision, reference paths, progress, cancellation and
the stage checkpoints its training loop writes."""

from __future__ import annotations

import contextlib
import platform
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.checkpoint import DEFAULT_EVERY_S, StageCheckpoints
from bench.errors import PtmbenchError

PRECISIONS = ("fp32", "bf16", "auto")


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX-512 BF16 / AMX); elsewhere bf16 autocast is slow."""
    return cpu_description()["bf16"] != "none"


def cpu_description() -> dict[str, str]:
    """The CPU a stage ran on, as far as results depend on it: its model name and the bf16 matmul path (AMX,
    AVX-512 BF16 or none).  Kernels differ between them, so bf16 results are bit-identical only on the same
    path (with the same thread count), and bf16 speed differs several-fold between them."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        info = ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine() or "unknown")
    bf16 = "amx" if "amx_bf16" in info else "avx512_bf16" if "avx512_bf16" in info else "none"
    return {"model": name, "bf16": bf16, "torch_capability": torch.backends.cpu.get_cpu_capability()}


def stable_hash(*parts: object) -> int:
    """A process-independent 32-bit hash (Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


@dataclass
class RunContext:
    """Explicit random state and execution settings, passed to every stage instead of globals.

    ``reference_paths`` switches every fast path off, for a before/after timing of the same work: text
    batches padded to the max length without length bucketing, masked-LM loss from full-vocabulary logits
    at every position, fp32, and per-trigger re-tokenised evaluation (as ``ptmbench perf compare``'s
    reference pipeline).  The objective is the same; only the cost differs.

    Randomness: :meth:`rng` derives a numpy generator afresh from the seed and a purpose at each call (use one
    per purpose and step or epoch, never one carried across training steps); :meth:`torch_generator` hands out
    a torch generator that may be drawn from across steps — inside :meth:`checkpointed` it is registered, so
    stage checkpoints save and restore it with torch's default generator (:mod:`bench.checkpoint`).
    ``checkpoint_every_s``: seconds between checkpoints of a training call (0: every step; None: never).
    """

    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    progress: bool = False
    threads: int | None = None
    cancel: Callable[[], bool] = field(default=lambda: False, repr=False)
    reference_paths: bool = False
    checkpoint_every_s: float | None = DEFAULT_EVERY_S
    checkpoints: StageCheckpoints | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise PtmbenchError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.reference_paths:
            if self.precision == "bf16":
                raise PtmbenchError("--reference-paths runs in fp32, as the reference implementations do; "
                                    "drop --precision bf16 (or --reference-paths)")
            self.precision = "fp32"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise PtmbenchError(f"device {self.device!r} requested but CUDA is not available; use --device cpu")
        if self.precision == "auto":
            cuda_bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
            cpu_bf16 = self.device == "cpu" and cpu_supports_bf16()
            self.precision = "bf16" if (cuda_bf16 or cpu_bf16) else "fp32"
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.checkpoint_every_s is not None and not self.checkpoint_every_s >= 0:
            raise PtmbenchError(f"checkpoint interval must be >= 0 minutes, got {self.checkpoint_every_s / 60:g}")

    @property
    def regime(self) -> str | None:
        """The numerical regime (:func:`bench.artifacts.regime`): None for bf16 on the fast paths, else the
        marker that keeps this run's artifacts and records apart from the default ones."""
        from bench.artifacts import regime

        return regime(self.precision, self.reference_paths)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when the run asks for it; a no-op in fp32."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)

    def pad_to(self, max_len: int | None) -> int | None:
        """Width to pad a text batch to: ``max_len`` on the reference paths, else None (the batch's longest)."""
        return max_len if self.reference_paths else None

    def rng(self, *keys: object) -> np.random.Generator:
        """A numpy generator derived from the run seed and a purpose, never from global state."""
        return np.random.default_rng([self.seed, *(stable_hash(k) for k in keys)])

    def torch_generator(self, *keys: object) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(int(self.rng(*keys).integers(0, 2**62)))
        if self.checkpoints is not None:
            self.checkpoints.track(keys, g)
        return g

    @contextlib.contextmanager
    def checkpointed(self, directory: Path) -> Iterator[StageCheckpoints | None]:
        """Run one stage with checkpoints in ``directory`` (its content key's): every :func:`bench.train.train`
        call inside saves its state there and resumes from it.  The directory is deleted when the block ends
        without an exception (the stage's output is then written); a failed or killed stage keeps it."""
        if self.checkpoint_every_s is None:
            yield None
            return
        outer = self.checkpoints
        self.checkpoints = StageCheckpoints(Path(directory), self.checkpoint_every_s)
        try:
            yield self.checkpoints
        finally:
            stage, self.checkpoints = self.checkpoints, outer
        stage.clear()

    @contextlib.contextmanager
    def seeded(self, *keys: object) -> Iterator[None]:
        """Seed torch's default generator for code that draws from it (weight init, dropout)."""
        torch.manual_seed(int(self.rng("torch", *keys).integers(0, 2**62)))
        yield

    def check_cancel(self) -> None:
        if self.cancel():
            raise KeyboardInterrupt("cancelled")
