"""What the subcommands' parsers share: the one-line-error parser and the flags several commands take."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import PtmbenchError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too; keep it short)
        raise PtmbenchError(f"{self.prog}: {message}")


REFERENCE_PATHS_HELP = ("switch every fast path off, for a before/after timing: text batches padded to the max "
                        "length without length bucketing, full-vocabulary MLM logits, fp32, per-trigger "
                        "re-tokenised evaluation; artifacts and records are keyed apart from fast-path ones")

DETERMINISTIC_HELP = ("deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, "
                      "CUBLAS_WORKSPACE_CONFIG): bit-identical reruns on a GPU, at some speed; an op without a "
                      "deterministic kernel then stops the run (docs/gpu.md)")


def common(p: argparse.ArgumentParser, reference_paths: bool = True) -> None:
    p.add_argument("--cache", type=Path, default=None, help="artifact and token cache (default $PTMBENCH_CACHE "
                   "or ~/.cache/ptmbench)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", default="auto", help="fp32, bf16 (autocast), fp16 (autocast with a gradient "
                   "scaler; CUDA only) or auto (bf16 where the hardware has it; on older GPUs fp16; else fp32)")
    if reference_paths:
        p.add_argument("--reference-paths", action="store_true", help=REFERENCE_PATHS_HELP)
    p.add_argument("--progress", action="store_true", help="show progress bars")


def checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=float, default=None, metavar="MINUTES",
                   help="save each training stage's whole state this often, so a killed run resumes from it "
                        "(default 5; 0: after every step)")
