"""Evaluation of a fine-tuned classifier: clean test accuracy and every trigger on validation and test."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.context import RunContext
from bench.finetune import Classifier, FinetunePreset, predict
from bench.metrics import CellMetrics, score_cell


@dataclass
class Evaluation:
    """Metrics per trigger set (the clean accuracy is shared), with the time it took."""

    by_set: dict[str, CellMetrics]
    cacc: float
    wall_s: float


def evaluate(model: Classifier, val: Any, test: Any, trigger_sets: dict[str, list[Any]], num_classes: int,
             preset: FinetunePreset, ctx: RunContext, dataset: str | None = None) -> Evaluation:
    """Score one cell: targets are chosen on validation (never on test), ASR measured on test.

    Each trigger is applied with the cell's seed, so every defense and model sees identical triggered text.
    The context's regime picks the evaluation: on the reference paths a text cell is evaluated the
    reference way (:func:`bench.reference.reference_evaluation`: triggers inserted into the raw texts of
    ``dataset``, which it then needs, and re-tokenised), else on the fast paths below.
    """
    if ctx.reference_paths and model.ptm.modality == "text":
        from bench.reference import reference_evaluation

        if dataset is None:
            raise ValueError("the reference-path evaluation re-tokenises the raw texts: pass the dataset name")
        ref = reference_evaluation(model, dataset, val, test, trigger_sets, num_classes, preset, ctx)
        return Evaluation(ref["by_set"], ref["cacc"], ref["wall_s"])
    t0 = time.perf_counter()
    processor = model.ptm.processor
    clean = predict(model, test, preset, ctx)
    by_set: dict[str, CellMetrics] = {}
    for set_name, triggers in (trigger_sets or {"none": []}).items():
        val_trig: dict[str, np.ndarray] = {}
        test_trig: dict[str, np.ndarray] = {}
        for trig in triggers:
            val_trig[trig.id] = predict(model, trig.apply(val, processor, ctx.seed), preset, ctx)
            test_trig[trig.id] = predict(model, trig.apply(test, processor, ctx.seed), preset, ctx)
        by_set[set_name] = score_cell(clean, np.asarray(test.labels), val_trig, np.asarray(val.labels),
                                      test_trig, num_classes)
    cacc = float((clean == np.asarray(test.labels)).mean())
    return Evaluation(by_set, cacc, time.perf_counter() - t0)
