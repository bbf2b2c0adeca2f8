"""Where does a backdoor live?  Swap parameter families between a clean and a backdoored PTM and watch the
trigger response.

The trigger response of a PTM is measured on the representation (pooler / class token): for each
trigger, the backdoored PTM's mean triggered representation is its *reference output* (for NeuBA, about
the target vector).  ``fidelity(m)`` is the mean cosine between m's triggered representations and the
reference outputs, rescaled so the clean PTM scores 0 and the backdoored PTM 1.  Then, per family of
parameters (trigger embedding rows, other embeddings, attention q/k/v, attention output, LayerNorms, FFN-in,
FFN-out, pooler):

* **reset**: the backdoored PTM with that family restored to the clean weights — how much backdoor is left
  without it (low = the family is necessary);
* **transplant**: the clean PTM with only that family taken from the backdoored one — how much backdoor it
  carries alone (high = sufficient);
* **delta**: ‖W_backdoored − W_clean‖_F summed over the family, and, for purified PTMs, how much of that
  delta the defense undid.

No fine-tuning is involved, so it runs in seconds; it explains why a defense that only touches some
families (BERT-RECIPE: FFN-in) can or cannot remove a given backdoor.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.context import RunContext
from bench.ptm import PTM
from bench.triggers import TextTrigger

# family -> regex over backbone parameter names (first match wins; order matters)
FAMILY_PATTERNS = {
    "text": [
        ("embeddings", r"^embeddings\."),
        ("attn_qkv", r"attention\.self\."),
        ("attn_out", r"attention\.output\.dense"),
        ("layernorm", r"LayerNorm"),
        ("ffn_in", r"intermediate\.dense"),
        ("ffn_out", r"output\.dense"),
        ("pooler", r"^pooler\."),
    ],
    "vision": [
        ("embeddings", r"^(patch_embed|cls_token|pos_embed|reg_token)"),
        ("attn_qkv", r"attn\.qkv"),
        ("attn_out", r"attn\.proj"),
        ("layernorm", r"(norm|ln)"),
        ("ffn_in", r"mlp\.fc1"),
        ("ffn_out", r"mlp\.fc2"),
    ],
}
TRIGGER_ROWS = "trigger_rows"


def default_dataset(modality: str) -> str:
    """The inputs a locus analysis triggers when none are named: the test split of sst2 (text) or catdog."""
    return "sst2" if modality == "text" else "catdog"


def family_of(name: str, modality: str) -> str:
    for fam, pat in FAMILY_PATTERNS[modality]:
        if re.search(pat, name):
            return fam
    return "other"


def _word_embedding_name(ptm: PTM) -> str | None:
    return "embeddings.word_embeddings.weight" if ptm.modality == "text" else None


def trigger_token_ids(ptm: PTM, triggers: list[Any]) -> list[int]:
    return [t.token_id(ptm.processor) for t in triggers if isinstance(t, TextTrigger)]


def mixed(base: PTM, donor: PTM, families: set[str], rows: list[int]) -> PTM:
    """A copy of ``base`` whose parameters in ``families`` come from ``donor`` (``trigger_rows``: only the
    trigger tokens' rows of the word embeddings)."""
    out = copy.deepcopy(base)
    donor_state = donor.backbone.state_dict()
    emb = _word_embedding_name(base)
    with torch.no_grad():
        for name, p in out.backbone.state_dict().items():  # state_dict tensors share the parameters' storage
            if name == emb and rows:
                take = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
                if "embeddings" in families:
                    take[:] = True
                take[rows] = TRIGGER_ROWS in families
                p[take] = donor_state[name][take]
            elif family_of(name, base.modality) in families:
                p.copy_(donor_state[name])
    return out


@torch.inference_mode()
def representations(ptm: PTM, data: Any, max_len: int, ctx: RunContext, batch_size: int = 64) -> torch.Tensor:
    adapter = ptm.adapter
    ptm.backbone.eval()
    out = []
    for s in range(0, len(data), batch_size):
        idx = np.arange(s, min(s + batch_size, len(data)))
        batch = adapter.collate(ptm, data, idx, max_len, ctx)
        out.append(adapter.representation(ptm, batch).float().cpu())
    return torch.cat(out)


def trigger_cosines(ptm: PTM, triggered: list[Any], refs: torch.Tensor, max_len: int, ctx: RunContext) -> float:
    """Mean over triggers and samples of cos(representation of the triggered sample, the trigger's reference)."""
    cos = [torch.nn.functional.cosine_similarity(representations(ptm, d, max_len, ctx), r[None], dim=-1).mean()
           for d, r in zip(triggered, refs, strict=True)]
    return float(torch.stack(cos).mean())


def locate(clean: PTM, backdoored: PTM, data: Any, triggers: list[Any], max_len: int, ctx: RunContext,
           purified: dict[str, PTM] | None = None) -> pd.DataFrame:
    """One row per parameter family: delta norm, fidelity after reset and after transplant (see module doc)."""
    triggered = [t.apply(data, backdoored.processor, ctx.seed) for t in triggers]
    refs = torch.stack([representations(backdoored, d, max_len, ctx).mean(0) for d in triggered])
    c0 = trigger_cosines(clean, triggered, refs, max_len, ctx)
    c1 = trigger_cosines(backdoored, triggered, refs, max_len, ctx)

    def fidelity(m: PTM) -> float:
        return (trigger_cosines(m, triggered, refs, max_len, ctx) - c0) / max(c1 - c0, 1e-9)

    rows_ids = trigger_token_ids(backdoored, triggers)
    cs, bs = clean.backbone.state_dict(), backdoored.backbone.state_dict()
    families = [f for f, _ in FAMILY_PATTERNS[clean.modality]]
    if rows_ids:
        families = [TRIGGER_ROWS, *families]
    emb = _word_embedding_name(clean)
    purified = purified or {}
    ps = {k: v.backbone.state_dict() for k, v in purified.items()}
    out = []
    for fam in families:
        if fam == TRIGGER_ROWS:
            names = [emb]

            def part(state: dict[str, torch.Tensor], n: str) -> torch.Tensor:
                return state[n][rows_ids].float()
        else:
            names = [n for n in cs if family_of(n, clean.modality) == fam and cs[n].is_floating_point()]

            def part(state: dict[str, torch.Tensor], n: str) -> torch.Tensor:
                if n == emb and rows_ids:  # the trigger rows are their own family
                    keep = torch.ones(state[n].shape[0], dtype=torch.bool, device=state[n].device)
                    keep[rows_ids] = False
                    return state[n][keep].float()
                return state[n].float()
        delta = float(sum((part(bs, n) - part(cs, n)).norm() ** 2 for n in names) ** 0.5)
        row: dict[str, Any] = {"family": fam, "params": int(sum(part(cs, n).numel() for n in names)),
                               "attack_delta": delta,
                               "reset_fidelity": fidelity(mixed(backdoored, clean, {fam}, rows_ids)),
                               "transplant_fidelity": fidelity(mixed(clean, backdoored, {fam}, rows_ids))}
        for label, st in ps.items():
            left = float(sum((part(st, n) - part(cs, n)).norm() ** 2 for n in names) ** 0.5)
            row[f"{label}_delta_left"] = left
        out.append(row)
    frame = pd.DataFrame(out)
    frame.attrs.update({"cos_clean": c0, "cos_backdoored": c1,
                        **{f"fidelity_{k}": fidelity(v) for k, v in purified.items()}})
    return frame


def to_markdown(frame: pd.DataFrame) -> str:
    head = [f"cos(triggered, reference): clean {frame.attrs['cos_clean']:.3f}, "
            f"backdoored {frame.attrs['cos_backdoored']:.3f}"]
    head += [f"{k}: {v:.3f}" for k, v in frame.attrs.items() if k.startswith("fidelity_")]
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(["* " + h for h in head] + ["", *lines]) + "\n"
