"""Performance tooling: ``compare`` runs reference-style pipelines (Hugging Face Trainer / run_glue,
BertForMaskedLM, per-trigger re-tokenising evaluation) against ptmbench's own on the same model, data and
seed, and reports wall time, throughput and peak resident memory (``ptmbench perf compare``); ``reference``
holds those reference-style pipelines, ``report`` the comparison's report, ``memory`` the time and peak-RSS
meter and ``stage_memory`` the peak memory of every stage (``ptmbench perf memory``)."""

from __future__ import annotations

__all__ = ["compare"]
