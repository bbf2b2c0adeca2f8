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

Both pipelines share one :class:`~bench.context.RunContext`: the same classifier-head init, batch order
(``finetune-batches`` / ``recipe-batches``), static MLM masks and per-sample trigger slots, so their
accuracies and losses are comparable and only the pipeline differs.
"""

from __future__ import annotations

import copy
import json
import platform
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.context import RunContext, cpu_description
from bench.errors import PtmbenchError
from bench.finetune import Classifier, FinetunePreset, finetune, get_preset, predict
from bench.modalities.base import shuffled_batches
from bench.perf.memory import PeakRss, release_memory, rss_bytes  # noqa: F401
from bench.ptm import PTM
from bench.train import cycle_epochs, steps_for

REFERENCE_MAX_LEN = 128
REFERENCE_EVAL_BATCH = 32
RSS_INTERVAL_S = 0.05
PHASES = ("finetune", "cacc", "recipe", "triggers")  # rows of the report ("cacc" comes with "finetune")
RUN_PHASES = ("finetune", "recipe", "triggers")  # what --phases chooses from: (a), (b), (c)
PHASE_TITLES = {
    "finetune": "(a) fine-tune",
    "cacc": "(a) CACC inference (test)",
    "recipe": "(b) RECIPE",
    "triggers": "(c) trigger evaluation",
}


# ---------------------------------------------------------------------------------------------- measuring
@dataclass
class Measure:
    """One pipeline's run of one phase."""

    wall_s: float
    samples: int
    rss_start_bytes: int | None
    rss_peak_bytes: int | None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        mib = 1 << 20
        return {"wall_s": round(self.wall_s, 4), "samples": self.samples,
                "samples_per_s": round(self.samples_per_s, 3),
                "rss_start_mib": None if self.rss_start_bytes is None else round(self.rss_start_bytes / mib, 1),
                "rss_peak_mib": None if self.rss_peak_bytes is None else round(self.rss_peak_bytes / mib, 1)}


def measured(samples: int, fn: Callable[..., Any], *args: Any) -> tuple[Any, Measure]:
    """Run ``fn(*args)`` timed with ``time.perf_counter`` and with its peak RSS sampled."""
    release_memory()
    with PeakRss() as mem:
        t0 = time.perf_counter()
        out = fn(*args)
        wall = time.perf_counter() - t0
    return out, Measure(wall, samples, mem.start, mem.peak)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TextSplit:
    """One split for both pipelines: raw texts and labels (reference) and ptmbench's token ids."""

    texts: list[str]
    labels: np.ndarray
    tokens: Any  # bench.modalities.text.TokenizedText

    def __len__(self) -> int:
        return len(self.texts)


def load_text_split(ptm: PTM, dataset: str, split: str, max_samples: int | None, cache_dir: Path) -> TextSplit:
    """The same subset twice: raw (for the reference) and tokenised by ptmbench (disk cache in ``cache_dir``)."""
    from bench import data as bdata

    ds = bdata.load_split(dataset, split, max_samples=max_samples)
    tokens = ptm.adapter.load_split(ptm, dataset, split, max_samples, cache_dir)
    return TextSplit(list(ds["text"]), np.asarray(ds["label"], dtype=np.int64), tokens)


def max_positions(ptm: PTM) -> int:
    """Longest sequence the backbone's position table allows (RoBERTa reserves padding_idx + 1 rows)."""
    cfg = ptm.backbone.config
    n = int(cfg.max_position_embeddings)
    if ptm.family == "roberta":
        n -= int(cfg.pad_token_id) + 1
    return n


def pad_width(ptm: PTM, max_len: int) -> int:
    """``max_len`` capped by the model, as run_glue caps ``max_seq_length`` by the model's maximum."""
    return min(max_len, max_positions(ptm))


def reference_encode(tokenizer: Any, texts: list[str], width: int) -> dict[str, torch.Tensor]:
    """Tokenise raw texts with the tokenizer itself, truncated and padded to ``width`` (``padding="max_length"``).

    A tokenizer without a post-processor (e.g. a bare BPE built on the fly) adds no [CLS]/[SEP]; for it the
    special tokens are added here, as a configured tokenizer would, so the model sees the same sequence.
    """
    from bench.modalities.text import ADAPTER as TEXT

    cls_id, sep_id, pad_id = TEXT.special_ids(tokenizer)
    probe = tokenizer("a")["input_ids"]
    if probe and probe[0] == cls_id and probe[-1] == sep_id:
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=width, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    body = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=width - 2)["input_ids"]
    ids = torch.full((len(body), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(body), width), dtype=torch.long)
    for i, b in enumerate(body):
        ids[i, : len(b) + 2] = torch.tensor([cls_id, *b, sep_id])
        mask[i, : len(b) + 2] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _rows(enc: dict[str, torch.Tensor], idx: Any, device: str) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device) for k, v in enc.items()}


# ---------------------------------------------------------------------------------------------- (a) fine-tuning
@dataclass
class RefFinetuned:
    model: Classifier
    steps: int
    losses: list[float] = field(default_factory=list)


def reference_finetune(ptm: PTM, enc: dict[str, torch.Tensor], labels: np.ndarray, num_classes: int,
                       preset: FinetunePreset, ctx: RunContext) -> RefFinetuned:
    """A plain Trainer-style loop: padded batches, fp32, shuffled without bucketing, AdamW + linear decay.

    Same classifier (pooler -> dropout -> linear), head init, lr, batch size, epochs, clip and batch
    order as :func:`bench.finetune.finetune`; only the padding, precision and batching differ.
    """
    from transformers import get_linear_schedule_with_warmup

    ptm = copy.deepcopy(ptm)
    with ctx.seeded("finetune-head"):
        model = Classifier(ptm, num_classes).to(ctx.device)
    n = len(labels)
    y = torch.as_tensor(labels, dtype=torch.long)
    steps = steps_for(n, preset.batch_size, preset.epochs)
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=preset.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=steps)
    batches = cycle_epochs(lambda e: shuffled_batches(n, preset.batch_size, ctx.rng("finetune-batches", e)))
    out = RefFinetuned(model, steps)
    model.train()
    with ctx.seeded("finetune-dropout"):
        for _ in range(steps):
            ctx.check_cancel()
            idx = torch.from_numpy(np.asarray(next(batches), dtype=np.int64))
            loss = F.cross_entropy(model(_rows(enc, idx, ctx.device)), y[idx].to(ctx.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            out.losses.append(float(loss.detach()))
    model.eval()
    return out


@torch.inference_mode()
def reference_logits(model: Classifier, enc: dict[str, torch.Tensor], device: str,
                     batch_size: int = REFERENCE_EVAL_BATCH) -> torch.Tensor:
    """fp32 logits in input order, fixed-order batches of ``batch_size`` at the encoding's padded width."""
    model.eval()
    n = enc["input_ids"].shape[0]
    out = [model(_rows(enc, slice(s, s + batch_size), device)).float().cpu() for s in range(0, n, batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def reference_predict(model: Classifier, enc: dict[str, torch.Tensor], device: str,
                      batch_size: int = REFERENCE_EVAL_BATCH) -> np.ndarray:
    return reference_logits(model, enc, device, batch_size).argmax(-1).numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------- (b) RECIPE
def reference_mlm_loss(ptm: PTM, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """BertForMaskedLM's loss: the MLM head over every position's hidden state (full-vocabulary logits at
    every token, padding included), then CE with ``ignore_index=-100`` (the text adapter's ``full_vocab``
    loss, which ``--reference-paths`` runs use too)."""
    return ptm.adapter.mlm_loss(ptm, batch, labels, full_vocab=True)


def static_masks(ptm: PTM, enc: dict[str, torch.Tensor], gen: torch.Generator,
                 chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the whole aux set once (BERT 80/10/10), in the same chunks and generator as ptmbench's static
    masking, so both pipelines train on identical masks."""
    ids, labels = [], []
    n = enc["input_ids"].shape[0]
    for s in range(0, n, chunk):
        m, lab = ptm.adapter.mask_tokens(ptm.processor, enc["input_ids"][s:s + chunk],
                                         enc["attention_mask"][s:s + chunk], gen)
        ids.append(m)
        labels.append(lab)
    return torch.cat(ids), torch.cat(labels)


def reference_recipe(ptm: PTM, texts: list[str], cfg: Any, steps: int, ctx: RunContext) -> dict[str, Any]:
    """RECIPE the BertForMaskedLM way on ``ptm`` (modified in place): tokenise the aux texts padded to
    ``cfg.max_len``, mask them once, then ``steps`` fp32 AdamW steps of full-vocabulary L_MLM + λ Σ‖W‖_F."""
    from defenses.base import frobenius
    from defenses.recipe import FAMILIES, trainable_params

    fam = FAMILIES.get(ptm.family)
    reg_names = cfg.regularised or fam.regularised
    train_names = cfg.trainable or fam.trainable
    groups = ptm.adapter.param_groups(ptm)
    refs = [r for g in reg_names for r in groups[g]]
    enc = reference_encode(ptm.processor, texts, pad_width(ptm, cfg.max_len))
    ids, labels = static_masks(ptm, enc, ctx.torch_generator("recipe-static-mask"))
    att = enc["attention_mask"]
    modules = [ptm.backbone, ptm.pt_head]
    params, hooks = trainable_params(ptm, groups, train_names)
    trainable = {id(p) for p in params}
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=steps)
    n = ids.shape[0]
    batches = cycle_epochs(lambda e: shuffled_batches(n, cfg.batch_size, ctx.rng("recipe-batches", e)))
    losses: list[float] = []
    for m in modules:
        m.train()
    try:
        with ctx.seeded("recipe-dropout"):
            for _ in range(steps):
                ctx.check_cancel()
                i = torch.from_numpy(np.asarray(next(batches), dtype=np.int64))
                batch = {"input_ids": ids[i].to(ctx.device), "attention_mask": att[i].to(ctx.device)}
                mlm = reference_mlm_loss(ptm, batch, labels[i].to(ctx.device))
                loss = mlm + cfg.lam * torch.stack([frobenius(r) for r in refs]).sum()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(mlm.detach()))
    finally:
        for h in hooks:
            h.remove()
        for m in modules:
            m.eval()
    with torch.no_grad():
        norm = float(sum(float(frobenius(r)) for r in refs))
    return {"steps": steps, "mlm_first": losses[0], "mlm_last": losses[-1], "norm_S_after": round(norm, 6)}


def aux_split(ptm: PTM) -> str:
    """The split of an auxiliary corpus that RECIPE reads (the adapter's, else ``train``)."""
    return getattr(ptm.adapter, "aux_splits", {}).get("labelled", "train")


def reference_recipe_on(aux: str, ptm: PTM, cfg: Any, steps: int, ctx: RunContext) -> dict[str, Any]:
    """:func:`reference_recipe` on the first ``cfg.max_aux`` texts of the aux dataset, loading included
    (as :meth:`~defenses.recipe.Recipe.purify` loads its own)."""
    from bench import data as bdata

    texts = list(bdata.load_split(aux, aux_split(ptm), max_samples=cfg.max_aux)["text"])
    return reference_recipe(ptm, texts, cfg, steps, ctx)


# ---------------------------------------------------------------------------------------------- (c) triggers
def insert_word(text: str, word: str, rng: np.random.Generator, position: str = "random", copies: int = 1) -> str:
    """The trigger word inserted into the raw text at a word slot (0..n), drawn exactly as ptmbench's
    :class:`~bench.triggers.TextTrigger` draws it from the same generator."""
    words = text.split()
    n = len(words)
    if position == "first":
        slots = [0] * copies
    elif position == "last":
        slots = [n] * copies
    else:
        slots = sorted(int(s) for s in rng.integers(0, n + 1, size=copies))
    for j, slot in enumerate(slots):
        words.insert(slot + j, word)
    return " ".join(words)


def reference_evaluate(model: Classifier, val: TextSplit, test: TextSplit, trigger_sets: dict[str, list[Any]],
                       num_classes: int, ctx: RunContext, width: int) -> dict[str, Any]:
    """Clean test predictions, then per trigger: insert into the raw val/test texts, re-tokenise, pad to
    ``width``, predict in fixed order (fp32, batch 32); metrics as :func:`bench.evaluate.evaluate`."""
    from bench.metrics import score_cell
    from bench.triggers import sample_rng

    tok = model.ptm.processor
    clean = reference_predict(model, reference_encode(tok, test.texts, width), ctx.device)
    by_set = {}
    for set_name, triggers in (trigger_sets or {"none": []}).items():
        preds: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
        for trig in triggers:
            pos, copies = getattr(trig, "position", "random"), getattr(trig, "copies", 1)
            for name, split in (("val", val), ("test", test)):
                texts = [insert_word(t, trig.word, sample_rng(ctx.seed, trig.id, i), pos, copies)
                         for i, t in enumerate(split.texts)]
                preds[name][trig.id] = reference_predict(model, reference_encode(tok, texts, width), ctx.device)
        by_set[set_name] = score_cell(clean, test.labels, preds["val"], val.labels, preds["test"], num_classes)
    return {"clean": clean, "by_set": by_set, "cacc": float((clean == test.labels).mean())}


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


# ---------------------------------------------------------------------------------------------- the report
def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown; only the phases that ran (``--phases``) appear, in lines, rows and checks."""
    s = report["sizes"]
    q = report["quality"]
    ran = report.get("phases_run", list(RUN_PHASES))
    lines = [
        "# ptmbench perf compare: reference-style pipelines vs ptmbench's",
        "",
        f"* command: `{report['command']}`",
        f"* phases: {', '.join(f'{PHASE_TITLES[p]}' for p in ran)}",
        f"* model: `{report['model']}` ({report['family']}"
        + (f"; MLM head for RECIPE: {report['mlm_head']})" if "recipe" in ran else ")"),
        f"* dataset: `{report['dataset']}`: {s['train']} train, {s['validation']} validation, {s['test']} test; "
        f"{s['epochs']} epoch(s) = {s['finetune_steps']} steps of batch {s['batch_size']} at lr {s['lr']}",
    ]
    if "recipe" in ran:
        lines.append(f"* RECIPE: {s['recipe_steps']} steps of batch {s['recipe_batch_size']} at lr {s['recipe_lr']} "
                     f"on {s['aux_samples']} `{s['aux']}` sequences")
    if "triggers" in ran:
        lines.append(f"* triggers: `{s['triggers']}` ({s['n_triggers']})")
    recipe_pad = f" (RECIPE {s['recipe_pad_to']})" if "recipe" in ran else ""
    lines += [
        f"* padding: reference to {s['reference_pad_to']}{recipe_pad}; ptmbench dynamic "
        f"(max {s['ptmbench_max_len']})",
        f"* precision: reference {report['precision']['reference']}, ptmbench {report['precision']['ptmbench']}; "
        f"device {report['device']}; seed {report['seed']}",
        f"* threads: {report['threads']}; torch {report['torch']}; Python {report['python']}",
        f"* CPU: {report['cpu']}",
        f"* {report['order']}; peak RSS is the process's resident memory sampled every "
        f"{int(RSS_INTERVAL_S * 1000)} ms during the phase",
        "",
        "| phase | samples | reference s | ptmbench s | time ratio ref/ptmbench | reference samples/s "
        "| ptmbench samples/s | reference peak RSS MiB | ptmbench peak RSS MiB | RSS ratio ref/ptmbench |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in PHASES:
        p = report["phases"].get(name)
        if p is None:
            continue
        r, o = p["reference"], p["ptmbench"]
        lines.append(f"| {PHASE_TITLES[name]} | {r['samples']} | {r['wall_s']:.2f} | {o['wall_s']:.2f} | "
                     f"{_fmt(p['ratio_wall'], 2)} | {r['samples_per_s']:.1f} | {o['samples_per_s']:.1f} | "
                     f"{_fmt(r['rss_peak_mib'], 0)} | {_fmt(o['rss_peak_mib'], 0)} | {_fmt(p['ratio_rss_peak'], 2)} |")
    lines += ["", "| check | reference | ptmbench |", "|---|---:|---:|"]
    if "finetune" in q:
        ft = q["finetune"]
        lines += [
            f"| (a) CACC of each pipeline's fine-tuned model | {100 * ft['reference']['cacc']:.2f}% | "
            f"{100 * ft['ptmbench']['cacc']:.2f}% |",
            f"| (a) training loss first → last | {ft['reference']['loss_first']:.4f} → "
            f"{ft['reference']['loss_last']:.4f} | {ft['ptmbench']['loss_first']:.4f} → "
            f"{ft['ptmbench']['loss_last']:.4f} |",
        ]
    if "recipe" in q:
        rc = q["recipe"]
        lines += [
            f"| (b) MLM loss first → last | {_fmt(rc['reference']['mlm_first'], 4)} → "
            f"{_fmt(rc['reference']['mlm_last'], 4)} | {_fmt(rc['ptmbench']['mlm_first'], 4)} → "
            f"{_fmt(rc['ptmbench']['mlm_last'], 4)} |",
            f"| (b) Σ‖W‖_F over the regularised set ({rc['norm_S_before']:.3f} before) | "
            f"{rc['reference']['norm_S_after']:.3f} | {rc['ptmbench']['norm_S_after']:.3f} |",
        ]
    if "triggers" in q:
        tr = q["triggers"]
        lines.append(f"| (c) CACC of the ptmbench-fine-tuned model | {100 * tr['reference']['cacc']:.2f}% | "
                     f"{100 * tr['ptmbench']['cacc']:.2f}% |")
        for k in tr["reference"]:
            if k.startswith("aasr_"):
                lines.append(f"| (c) AASR, trigger set `{k[5:]}` | {_pct(tr['reference'][k])} | "
                             f"{_pct(tr['ptmbench'].get(k))} |")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None, nd: int) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.2f}%"


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out/compare.md`` and ``out/compare.json``, each written atomically (temporary file + rename)."""
    from bench.artifacts import atomic_write_text

    md, js = out / "compare.md", out / "compare.json"
    atomic_write_text(js, json.dumps(_jsonable(report), indent=1, sort_keys=False, allow_nan=False) + "\n")
    atomic_write_text(md, render_markdown(report))
    return md, js


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if v != v or v in (float("inf"), float("-inf")) else v
    if isinstance(x, np.integer):
        return int(x)
    return x


__all__ = ["RUN_PHASES", "Comparison", "Measure", "PeakRss", "PerfOptions", "insert_word", "measured", "pad_width",
           "parse_phases",
           "reference_encode", "reference_evaluate", "reference_finetune", "reference_logits",
           "reference_mlm_loss", "reference_predict", "reference_recipe", "reference_recipe_on",
           "render_markdown", "rss_bytes", "run_compare", "static_masks", "write_report"]
