"""Where does a NeuBA backdoor stand before and after fine-tuning?  NeuBA binds each trigger to a fixed
target of the PTM's representation (pooler output for text, final-norm class token for ViT); a
label-agnostic attack then needs the downstream classifier to map that target to one class.  This probe
separates the two halves.  For each PTM and each set, on triggered inputs:

* ``cos_target``: mean cosine between the representation and the trigger's NeuBA target;
* ``cos_clean``: mean cosine between the triggered and the untriggered input's representation;
* ``margin``: share of triggered inputs whose representation is closer to its own target than to the
  other five;
* ``follows_target`` (after fine-tuning only): share of triggered test inputs predicted as the class the
  fine-tuned head assigns to the pure target vector (1 = the classifier reads the target);
* ``head_share`` (after fine-tuning only): the share of the head's weight norm that lies in the span of the
  six targets (how much the classifier looks along the directions the backdoor writes to; a random
  head gives about sqrt(rank / hidden), 0.125 for the rank-3 NeuBA targets in 192 dimensions).

With ``--finetune DATASET`` the PTM is fine-tuned with ``--preset`` (seed 0) and the rows ``after=finetune``
use the fine-tuned backbone on that dataset's test split.  Commands: results/probes/COMMAND.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attacks.targets import neuba_targets
from bench.artifacts import ArtifactStore, default_cache_dir
from bench.context import RunContext
from bench.ptm import load_ptm
from bench.registry import get
from bench.zoo import Zoo


@torch.inference_mode()
def reps(ptm, data, max_len: int, ctx, bs: int = 128) -> torch.Tensor:
    """Representations in input order."""
    adapter = ptm.adapter
    out = torch.empty(len(data), adapter.hidden_size(ptm))
    for idx in adapter.batches(adapter.lengths(data, max_len), bs, None, shuffle=False, bucketing=True):
        batch = adapter.collate(ptm, data, idx, max_len, ctx.device)
        with ctx.autocast():
            out[torch.as_tensor(idx)] = adapter.representation(ptm, batch).float().cpu()
    return out


def row(label, after, dataset, trigger, k, trig, clean, targets, **extra) -> dict:
    cos_all = F.normalize(trig, dim=1) @ F.normalize(targets, dim=1).T
    return {"ptm": label, "after": after, "dataset": dataset, "trigger": trigger,
            "cos_target": round(float(cos_all[:, k].mean()), 4),
            "cos_clean": round(float(F.cosine_similarity(trig, clean).mean()), 4),
            "margin": round(float((cos_all.argmax(1) == k).float().mean()), 4),
            "follows_target": "", "head_share": "", **extra}


def probe_set(ptm, label, after, ds, split, n, triggers, targets, max_len, ctx, cache, head=None) -> list[dict]:
    data = ptm.adapter.load_split(ptm, ds, split, n, cache)
    clean = reps(ptm, data, max_len, ctx)
    out = []
    if head is not None:
        with torch.inference_mode():
            target_class = head(targets).argmax(1)
            u, sv, _ = torch.linalg.svd(targets.T, full_matrices=False)
            basis = u[:, sv > 1e-5 * sv.max()]  # orthonormal basis of the targets' span (rank 3: antipodal pairs)
            share = float((head.weight.float() @ basis).norm() / head.weight.float().norm())
    for k, trig in enumerate(triggers):
        t = reps(ptm, trig.apply(data, ptm.processor, 0), max_len, ctx)
        extra = {}
        if head is not None:
            with torch.inference_mode():
                pred = head(t).argmax(1)
            extra = {"follows_target": round(float((pred == target_class[k]).float().mean()), 4),
                     "head_share": round(share, 4)}
        out.append(row(label, after, f"{ds}/{split}", trig.id, k, t, clean, targets, **extra))
    print(label, after, ds, " ".join(f"{r['cos_target']:.2f}/{r['follows_target'] or '-'}" for r in out),
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attack", required=True, help="neuba or neuba-vision (its triggers and targets)")
    ap.add_argument("--ptm", action="append", required=True,
                    help="LABEL=ARTIFACT_KEY (under $PTMBENCH_CACHE/artifacts) or LABEL=zoo:NAME")
    ap.add_argument("--sets", required=True, help="comma list of DATASET/SPLIT probed as pretrained")
    ap.add_argument("--finetune", action="append", default=[], help="downstream dataset to fine-tune on")
    ap.add_argument("--preset", default="demo", help="downstream preset for --finetune")
    ap.add_argument("--finetune-ptm", action="append", default=None,
                    help="fine-tune only these PTM labels (default: every --ptm)")
    ap.add_argument("--n", type=int, default=500, help="inputs per set")
    ap.add_argument("--max-len", type=int, default=128, help="text: max tokens when probing as pretrained")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from bench.finetune import finetune, get_preset

    cache = default_cache_dir()
    ctx = RunContext(seed=0)
    rows = []
    for spec in args.ptm:
        label, key = spec.split("=", 1)
        if key.startswith("zoo:"):
            ptm, _ = Zoo(ArtifactStore(cache / "artifacts"), cache).load(key[4:], ctx)
        else:
            ptm = load_ptm(cache / "artifacts" / key)
        ptm.backbone.eval()
        triggers = get("attack", args.attack).build("paper", {}).triggers(ptm)
        targets = neuba_targets(ptm.adapter.hidden_size(ptm))
        for s in args.sets.split(","):
            ds, split = s.split("/")
            rows += probe_set(ptm, label, "pretrained", ds, split, args.n, triggers, targets, args.max_len, ctx,
                              cache)
        for ds in args.finetune if args.finetune_ptm is None or label in args.finetune_ptm else []:
            preset = get_preset(ptm.modality, args.preset)
            train = ptm.adapter.load_split(ptm, ds, "train", preset.max_train, cache)
            ft = finetune(ptm, train, int(np.max(train.labels)) + 1, preset, ctx)
            ft.model.eval()
            rows += probe_set(ft.model.ptm, label, "finetune", ds, "test", args.n, triggers, targets,
                              preset.max_len or args.max_len, ctx, cache, head=ft.model.head)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    import attacks  # noqa: F401

    main()
