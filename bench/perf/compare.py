"""Reference-style pipelines vs ptmbench's, on the same model, data, epochs and seed, in one process.

Three phases, each timed (``time.perf_counter``) with the peak resident memory sampled from
``/proc/self/statm`` every 50 ms while it runs:

(a) downstream fine-tuning + clean accuracy.  *Reference* = what Hugging Face ``Trainer`` + ``run_glue.py``
    do: every sequence padded to ``max_len`` (128), fp32, shuffled batches without length bucketing, AdamW
    with linear decay (no warmup, clip 1.0), then fp32 inference in fixed order, batch 32, padded to 128.
    *ptmbench* = :func:`bench.finetune.finetune` + :func:`bench.finetune.predict` (dynamic padding, length
    bucketing, bf16 autocast when the run's precision is bf16).
(b) one RECIPE pass.  *Reference* = BertForMaskedLM-style: MLM logits over the whole vocabulary at every
    position, CE with ``ignore_index=-100``, fp32, padded to the recipe's max length (64), static masking,
    same loss (L_MLM + λ Σ‖W‖_F), trainable set, optimiser and steps.  *ptmbench* =
    :meth:`defenses.recipe.Recipe.purify` (logits only at masked positions, batches trimmed to their
    longest sequence, autocast).
(c) trigger evaluation of the ptmbench-fine-tuned classifier.  *Reference* = for every trigger, insert the
    word into the raw text at a word slot, tokenise afresh, pad to 128, fp32 batches of 32 in fixed order.
    *ptmbench* = :func:`bench.evaluate.evaluate` (insertion into cached token ids, length-sorted batches).

``--phases`` (:func:`parse_phases`) runs a subset, e.g. a long converged fine-tuning comparison alone; the
report then lists only those phases.

This module runs the comparison; the reference pipelines live in :mod:`bench.perf.reference`, the timing and
memory meter in :mod:`bench.perf.memory` and the Markdown/JSON report in :mod:`bench.perf.report`.

Both pipelines share one :class:`~bench.context.RunContext`: the same classifier-head init, batch order
(``finetune-batches`` / ``recipe-batches``), static MLM masks and per-sample trigger slots, so their
accuracies and losses are comparable and only the pipeline differs.
"""

from __future__ import annotations

import copy
import platform
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.context import RunContext, cpu_description
from bench.errors import PtmbenchError
from bench.finetune import finetune, get_preset, predict
from bench.perf.memory import Measure, measured
from bench.perf.reference import aux_split, reference_finetune, reference_recipe_on
from bench.ptm import PTM
from bench.reference import (
    REFERENCE_MAX_LEN,
    load_text_split,
    pad_width,
    reference_encode,
    reference_evaluate,
    reference_predict,
)
from bench.train import steps_for

PHASES = ("finetune", "cacc", "recipe", "triggers")  # rows of the report ("cacc" comes with "finetune")
RUN_PHASES = ("finetune", "recipe", "triggers")  # what --phases chooses from: (a), (b), (c)
PHASE_TITLES = {
    "finetune": "(a) fine-tune",
    "cacc": "(a) CACC inference (test)",
    "recipe": "(b) RECIPE",
    "triggers": "(c) trigger evaluation",
}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


# ---------------------------------------------------------------------------------------------- the comparison
@dataclass
class PerfOptions:
    """What ``ptmbench perf compare`` runs; defaults take roughly 10-20 minutes on 2 CPU cores."""

    model: str = "minilm-l6"
    dataset: str = "sst2"
    max_train: int | None = 2000
    max_eval: int | None = None
    epochs: float = 1.0
    recipe_steps: int = 100
    triggers: str = "neuba"
    seed: int = 0
    threads: int | None = None
    phases: tuple[str, ...] = RUN_PHASES

    def validate(self) -> None:
        for key in ("max_train", "max_eval", "recipe_steps", "threads"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise PtmbenchError(f"--{key.replace('_', '-')} must be >= 1, got {v}")
        if not self.epochs > 0:
            raise PtmbenchError(f"--epochs must be > 0, got {self.epochs}")
        parse_phases(",".join(self.phases))

    def command(self, out: Path | None = None) -> str:
        parts = ["ptmbench", "perf", "compare", "--model", self.model, "--dataset", self.dataset]
        for key in ("max_train", "max_eval", "epochs", "recipe_steps", "triggers", "seed", "threads"):
            v = getattr(self, key)
            if v is not None:
                parts += [f"--{key.replace('_', '-')}", str(v)]
        if tuple(self.phases) != RUN_PHASES:
            parts += ["--phases", ",".join(self.phases)]
        if out is not None:
            parts += ["--out", str(out)]
        return shlex.join(parts)


def parse_phases(spec: str) -> tuple[str, ...]:
    """``--phases``: a comma list from finetune, recipe, triggers, returned in run order ((a), (b), (c))."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in names if p not in RUN_PHASES]
    if unknown:
        raise PtmbenchError(f"--phases: unknown phase {unknown[0]!r}; choose from {', '.join(RUN_PHASES)}")
    if not names:
        raise PtmbenchError(f"--phases names no phase; choose from {', '.join(RUN_PHASES)}")
    return tuple(p for p in RUN_PHASES if p in names)


@dataclass
class Comparison:
    """The JSON-ready report plus what the tests look at (predictions of both pipelines)."""

    report: dict[str, Any]
    predictions: dict[str, np.ndarray]


def ensure_mlm_head(ptm: PTM, ctx: RunContext) -> bool:
    """Give a PTM without a pretraining head (e.g. ``minilm-l6``) a fresh, tied MLM head so RECIPE can run;
    True when one was added (the timing is unaffected; the loss values start from an untrained head)."""
    if ptm.pt_head is not None:
        return False
    from bench.modalities.text import new_mlm_head

    with ctx.seeded("perf-mlm-head"):
        ptm.pt_head = new_mlm_head(ptm.backbone, tied=True)
    ptm.pt_head.eval()
    return True


def warm_up(ptm: PTM, ctx: RunContext) -> None:
    """One tiny forward per precision, so one-time kernel set-up is charged to neither pipeline."""
    cls_id, sep_id, _ = ptm.adapter.special_ids(ptm.processor)
    ids = torch.full((2, 16), cls_id, dtype=torch.long, device=ctx.device)
    ids[:, -1] = sep_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        ptm.backbone(**batch)
        with ctx.autocast():
            ptm.backbone(**batch)


def run_compare(ptm: PTM, opts: PerfOptions, ctx: RunContext, model_label: str | None = None,
                log: Callable[[str], None] = lambda s: None) -> Comparison:
    """Run phases (a), (b), (c) (those in ``opts.phases``) for both pipelines on copies of ``ptm`` and return
    the report.  Phase (c) scores ptmbench's fine-tuned classifier; without (a) it is fine-tuned untimed.

    A PTM without an MLM head gets a fresh tied one (see :func:`ensure_mlm_head`); nothing else of it changes.
    """
    from bench import data as bdata
    from bench.evaluate import evaluate
    from bench.registry import get
    from bench.triggers import parse_triggers
    from defenses.base import aux_name

    opts.validate()
    if ptm.modality != "text":
        raise PtmbenchError(f"perf compare covers text PTMs; {model_label or opts.model!r} is {ptm.modality}")
    dspec = bdata.spec(opts.dataset)
    if dspec.modality != "text" or dspec.role != "downstream":
        raise PtmbenchError(f"dataset {opts.dataset!r} is not a labelled text dataset; choose e.g. sst2")
    trigger_sets = parse_triggers(opts.triggers, "text")
    for triggers in trigger_sets.values():  # an unusable trigger fails before any work
        for t in triggers:
            t.token_id(ptm.processor)
    preset = get_preset("text", "paper", epochs=opts.epochs, max_train=opts.max_train, max_eval=opts.max_eval)
    width = pad_width(ptm, REFERENCE_MAX_LEN)
    recipe_cls = get("defense", "recipe")
    n_aux = opts.recipe_steps * recipe_cls.build("paper").config.batch_size  # one pass over the aux set
    recipe = recipe_cls.build("paper", {"steps": opts.recipe_steps, "max_aux": n_aux})
    rcfg = recipe.config
    aux = aux_name(rcfg.aux, ptm)
    head_added = ensure_mlm_head(ptm, ctx)
    warm_up(ptm, ctx)

    phases: dict[str, dict[str, Any]] = {}
    preds: dict[str, np.ndarray] = {}
    quality: dict[str, Any] = {}

    def record(phase: str, ref: Measure, ours: Measure) -> None:
        phases[phase] = {"reference": ref.to_dict(), "ptmbench": ours.to_dict(),
                         "ratio_wall": _round(ratio(ref.wall_s, ours.wall_s)),
                         "ratio_samples_per_s": _round(ratio(ours.samples_per_s, ref.samples_per_s)),
                         "ratio_rss_peak": _round(ratio(ref.rss_peak_bytes, ours.rss_peak_bytes))}
        log(f"{PHASE_TITLES[phase]}: reference {ref.wall_s:.2f}s, ptmbench {ours.wall_s:.2f}s "
            f"(x{phases[phase]['ratio_wall']})")

    run = set(opts.phases)
    n_trig = sum(len(s) for s in trigger_sets.values())
    n_aux_loaded = None
    with tempfile.TemporaryDirectory(prefix="ptmbench-perf-") as tmp:
        cache = Path(tmp)  # a cold token cache: ptmbench tokenises from scratch, like the reference
        log("loading and tokenising the splits")
        train = load_text_split(ptm, opts.dataset, "train", preset.max_train, cache)
        val = load_text_split(ptm, opts.dataset, "validation", preset.max_eval, cache)
        test = load_text_split(ptm, opts.dataset, "test", preset.max_eval, cache)
        n_classes = dspec.num_classes
        steps = steps_for(len(train), preset.batch_size, preset.epochs)
        ft_samples = round(len(train) * preset.epochs)

        ours_ft = None
        if "finetune" in run:  # (a) fine-tuning, then clean accuracy of each pipeline's own model
            ref_train = reference_encode(ptm.processor, train.texts, width)
            ref_test = reference_encode(ptm.processor, test.texts, width)
            log(f"(a) fine-tuning: {steps} steps of batch {preset.batch_size} (reference, then ptmbench)")
            ref_ft, m_ref = measured(ft_samples, reference_finetune, ptm, ref_train, train.labels, n_classes,
                                     preset, ctx)
            ours_ft, m_ours = measured(ft_samples, finetune, ptm, train.tokens, n_classes, preset, ctx)
            record("finetune", m_ref, m_ours)
            preds["ref_cacc"], m_ref = measured(len(test), reference_predict, ref_ft.model, ref_test, ctx.device)
            preds["ours_cacc"], m_ours = measured(len(test), predict, ours_ft.model, test.tokens, preset, ctx)
            record("cacc", m_ref, m_ours)
            quality["finetune"] = {
                "reference": {"cacc": _acc(preds["ref_cacc"], test.labels), "loss_first": ref_ft.losses[0],
                              "loss_last": ref_ft.losses[-1]},
                "ptmbench": {"cacc": _acc(preds["ours_cacc"], test.labels),
                             "loss_first": ours_ft.train.losses[0], "loss_last": ours_ft.train.losses[-1]}}
            del ref_ft, ref_train, ref_test

        if "recipe" in run:  # (b) RECIPE, each on its own copy of the PTM
            log(f"(b) RECIPE: {opts.recipe_steps} steps of batch {rcfg.batch_size} on {aux} "
                "(reference, then ptmbench)")
            rec_samples = opts.recipe_steps * rcfg.batch_size
            n_aux_loaded = len(bdata.load_split(aux, aux_split(ptm), max_samples=rcfg.max_aux))  # verify, warm
            ptm_ref = copy.deepcopy(ptm)
            ref_rec, m_ref = measured(rec_samples, reference_recipe_on, aux, ptm_ref, rcfg, opts.recipe_steps, ctx)
            del ptm_ref
            ptm_ours = copy.deepcopy(ptm)
            purified, m_ours = measured(rec_samples, recipe.purify, ptm_ours, ctx, cache)
            summ = purified.info["defense"]["summary"]
            quality["recipe"] = {"reference": ref_rec,
                                 "ptmbench": {"steps": summ["steps"], "mlm_first": summ.get("pt_first"),
                                              "mlm_last": summ.get("pt_last"), "norm_S_after": summ["norm_S_after"]},
                                 "norm_S_before": summ["norm_S_before"]}
            record("recipe", m_ref, m_ours)
            del purified, ptm_ours

        if "triggers" in run:  # (c) trigger evaluation of the same (ptmbench-fine-tuned) classifier
            if ours_ft is None:  # (a) not asked for: ptmbench's fine-tuning, untimed, gives the classifier
                log(f"fine-tuning the classifier for (c), untimed: {steps} steps of batch {preset.batch_size}")
                ours_ft = finetune(ptm, train.tokens, n_classes, preset, ctx)
            ev_samples = len(test) + n_trig * (len(val) + len(test))
            log(f"(c) trigger evaluation: {n_trig} triggers on {len(val)} validation + {len(test)} test samples")
            ref_ev, m_ref = measured(ev_samples, reference_evaluate, ours_ft.model, val, test, trigger_sets,
                                     n_classes, ctx, width)
            ours_ev, m_ours = measured(ev_samples, evaluate, ours_ft.model, val.tokens, test.tokens, trigger_sets,
                                       n_classes, preset, ctx)
            record("triggers", m_ref, m_ours)
            quality["triggers"] = {
                "reference": {"cacc": ref_ev["cacc"], **{f"aasr_{k}": m.aasr for k, m in ref_ev["by_set"].items()}},
                "ptmbench": {"cacc": ours_ev.cacc, **{f"aasr_{k}": m.aasr for k, m in ours_ev.by_set.items()}}}
            preds["ref_triggers_clean"] = ref_ev["clean"]

    report = {
        "command": opts.command(),
        "model": model_label or opts.model,
        "family": ptm.family,
        "mlm_head": "fresh (the PTM has none)" if head_added else "the PTM's own",
        "dataset": opts.dataset,
        "phases_run": list(opts.phases),
        "sizes": {"train": len(train), "validation": len(val), "test": len(test), "epochs": opts.epochs,
                  "finetune_steps": steps, "batch_size": preset.batch_size, "lr": preset.lr,
                  "recipe_steps": opts.recipe_steps, "recipe_batch_size": rcfg.batch_size, "recipe_lr": rcfg.lr,
                  "aux": aux, "aux_samples": n_aux_loaded, "triggers": opts.triggers, "n_triggers": n_trig,
                  "reference_pad_to": width, "recipe_pad_to": pad_width(ptm, rcfg.max_len),
                  "ptmbench_max_len": preset.max_len},
        "seed": ctx.seed,
        "device": ctx.device,
        "precision": {"reference": "fp32", "ptmbench": ctx.precision},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_description()["model"],
        "order": "each phase runs the reference pipeline first, then ptmbench's, after a shared warm-up",
        "phases": phases,
        "quality": quality,
    }
    return Comparison(report, preds)


def _acc(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(labels)).mean())


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)



__all__ = ["PHASES", "PHASE_TITLES", "RUN_PHASES", "Comparison", "PerfOptions", "ensure_mlm_head", "parse_phases",
           "ratio", "run_compare", "warm_up"]
