"""``ptmbench purify``: one model (zoo name, directory or hub id) through one registered defense, on the
defense's auxiliary data, exported as plain transformers / timm files with a JSON report ``purify.json``.

The inputs (defense, preset, config, output directory) are checked before the model is loaded; the export
and the report are written to a temporary directory that is renamed into place only when everything worked.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.errors import PtmbenchError
from bench.ptm import PTM

REPORT = "purify.json"


def parse_config(items: list[str] | None) -> dict[str, Any]:
    """``K=V`` pairs; values are read as YAML (``steps=3`` → 3, ``trainable=[ffn_in,attn_q]`` → a list)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PtmbenchError(f"--config {item!r}: expected KEY=VALUE (e.g. --config steps=100)")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise PtmbenchError(f"--config {item!r}: unreadable value ({str(e).splitlines()[0]})") from e
    return out


def build_defense(name: str, preset: str, config: dict[str, Any]) -> Any:
    """The registered defense ``name`` with ``preset``'s settings and ``config``'s overrides (all checked)."""
    from bench.registry import get

    cls = get("defense", name)  # unknown name: the error lists the registered defenses
    return cls.build(preset, config, where=f"defense {name}")  # unknown preset or key, bad value: an error


def all_group_norms(ptm: PTM) -> dict[str, float]:
    """Σ ‖W‖_F of every named parameter group the PTM has (``ffn_in`` … ``embeddings``, ``head``)."""
    from defenses.base import group_norms

    groups = ptm.adapter.param_groups(ptm)
    return group_norms(groups, tuple(g for g, refs in groups.items() if refs))


def losses(summary: dict[str, Any]) -> dict[str, Any]:
    """The training losses a defense reported (``loss_first``/``loss_last`` and its parts' ``*_first/_last``)."""
    out = {"loss_first": summary.get("loss_first"), "loss_last": summary.get("loss_last")}  # None: no training
    out.update({k: v for k, v in summary.items() if k.endswith(("_first", "_last")) and not k.startswith("norm")})
    return out


def run_purify(model: str, defense: str, preset: str, config: dict[str, Any], out: Path, force: bool,
               ctx: Any, cache: Path, command: str | None = None, log: Any = None) -> dict[str, Any]:
    """Check the inputs, load ``model``, purify it, export it with ``purify.json``; returns the report."""
    from bench.artifacts import ArtifactStore
    from bench.export import atomic_dir, check_out, file_digests, write_export
    from bench.zoo import Zoo

    method = build_defense(defense, preset, config)
    method.check_context(ctx)  # before loading anything
    check_out(out, force)
    t_all = time.perf_counter()
    ptm, key = Zoo(ArtifactStore(cache / "artifacts"), cache).load(model, ctx)
    method.check_modality(ptm)
    norms_before = all_group_norms(ptm)
    if log:
        log(f"{defense} ({preset}) on {model}: {ptm.modality} {ptm.family} PTM")
    t0 = time.perf_counter()
    purified = method.purify(ptm, ctx, cache)
    wall = time.perf_counter() - t0
    purified.info["defense_wall_s"] = round(wall, 2)
    purified.info["defense_threads"] = torch.get_num_threads()
    norms_after = all_group_norms(purified)
    summary = dict(purified.info.get("defense", {}).get("summary", {}))
    report: dict[str, Any] = {
        "model": model, "model_key": key, "modality": purified.modality, "family": purified.family,
        "defense": defense, "preset": preset, "config": method.config_dict(), "overrides": config,
        "version": method.version, "seed": ctx.seed, "device": ctx.device, "precision": ctx.precision,
        "threads": torch.get_num_threads(),
        "group_norms": {"before": norms_before, "after": norms_after,
                        "change": {g: round(norms_after[g] - norms_before[g], 6)
                                   for g in norms_before if g in norms_after}},
        "losses": losses(summary), "summary": summary,
        "wall_s": round(wall, 2),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, **_lib_versions()},
    }
    if command:
        report["command"] = command
    import json

    with atomic_dir(out, force) as tmp:
        write_export(purified, tmp, source=model)
        report["total_wall_s"] = round(time.perf_counter() - t_all, 2)
        report["files"] = file_digests(tmp)  # every output file but the report itself
        (tmp / REPORT).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def _lib_versions() -> dict[str, str]:
    out = {}
    for name in ("transformers", "timm", "safetensors"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out
