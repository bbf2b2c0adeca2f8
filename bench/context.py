"""The run context every stage receives: seed, device, precision, reference paths, progress, cancellation and
the stage checkpoints its training loop writes."""

from __future__ import annotations

import contextlib
import os
import platform
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.checkpoint import DEFAULT_EVERY_S, StageCheckpoints
from bench.errors import PtmbenchError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to be deterministic (CUDA's reproducibility notes)


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


def parse_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against this machine; anything else is a PtmbenchError."""
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise PtmbenchError(f"device {device!r} is not one of cpu, cuda, cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PtmbenchError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise PtmbenchError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return str(device)


def set_deterministic() -> None:
    """Deterministic kernels from here on (process-wide, as torch's settings are): cuBLAS's fixed workspace,
    cuDNN's deterministic algorithms without autotuning, and :func:`torch.use_deterministic_algorithms`, which
    makes an op without a deterministic kernel raise instead of running."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def determinism(device: str) -> dict[str, Any]:
    """The settings that decide whether a rerun is bit-identical, as a record carries them; on CUDA also the
    GPU (name, compute capability) and the CUDA/cuDNN versions, since kernels differ between them."""
    out: dict[str, Any] = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        major, minor = torch.cuda.get_device_capability(index)
        out["gpu"] = {"name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}",
                      "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return out


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

    Device and precision (docs/gpu.md): ``auto`` is bf16 autocast where the hardware has native bf16 (a CPU
    with AVX-512 BF16/AMX, a CUDA GPU of compute capability 8.0 or newer), else fp16 autocast with a gradient
    scaler on older GPUs and fp32 on other CPUs; ``fp16`` is for CUDA only.  ``deterministic`` switches
    deterministic kernels on for the whole process (:func:`set_deterministic`); every record carries the
    settings it ran under (:func:`determinism`).
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
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise PtmbenchError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.reference_paths:
            if self.precision in ("bf16", "fp16"):
                raise PtmbenchError("--reference-paths runs in fp32, as the reference implementations do; "
                                    f"drop --precision {self.precision} (or --reference-paths)")
            self.precision = "fp32"
        cuda = parse_device(self.device).startswith("cuda")
        if self.precision == "fp16" and not cuda:
            raise PtmbenchError("precision fp16 (autocast with a gradient scaler) is for CUDA devices; on the CPU "
                                "use bf16 or fp32")
        if self.precision == "auto":
            if cuda:  # native bf16 only: emulated bf16 on an older GPU is slow, fp16 with loss scaling is not
                self.precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
            else:
                self.precision = "bf16" if cpu_supports_bf16() else "fp32"
        if self.deterministic:
            set_deterministic()
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.checkpoint_every_s is not None and not self.checkpoint_every_s >= 0:
            raise PtmbenchError(f"checkpoint interval must be >= 0 minutes, got {self.checkpoint_every_s / 60:g}")

    @property
    def regime(self) -> str | None:
        """The numerical regime (:func:`bench.artifacts.regime`): None for bf16 on the fast paths, else the
        marker that keeps this run's artifacts and records apart from the default ones."""
        from bench.artifacts import regime

        return regime(self.precision, self.reference_paths, self.device)

    def determinism(self) -> dict[str, Any]:
        """The determinism settings this run's records carry (:func:`determinism`)."""
        return determinism(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 (or, on CUDA, fp16) autocast when the run asks for it; a no-op in fp32."""
        if self.precision not in ("bf16", "fp16"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The loss scaler fp16 training needs (its small exponent range underflows gradients); None otherwise."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.split(":")[0])

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
