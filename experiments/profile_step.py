"""Where a fine-tuning step's time goes, by operator family (torch.profiler self CPU time), in fp32 and bf16.

A `minilm-l6`-shaped BERT (6 layers, hidden 384, vocabulary 30,522, random weights: the shapes are what
matter) plus a 2-class head, batch 32 x 64 tokens, training mode (dropout on), AdamW over every parameter,
as in the `demo` fine-tuning cells.  Usage (one thread):

    OMP_NUM_THREADS=1 python experiments/profile_step.py > results/perf/profile/step-profile.md
"""

from __future__ import annotations

import collections

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertModel

FAMILIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "dropout RNG": ("aten::bernoulli_",),
    "dtype casts": ("aten::copy_", "aten::_to_copy"),
    "AdamW update": ("aten::sqrt", "aten::addcdiv_", "aten::lerp_", "aten::_foreach_sqrt",
                     "aten::_foreach_addcdiv_", "aten::_foreach_lerp_", "aten::_foreach_mul_",
                     "aten::_foreach_add_", "aten::_foreach_div_", "aten::div_"),
}


def measure(precision: str, steps: int = 3) -> tuple[float, dict[str, float]]:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536)
    model, head = BertModel(cfg), torch.nn.Linear(384, 2)
    model.train()
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-5, foreach=True)
    ids, y = torch.randint(1000, 2000, (32, 64)), torch.randint(0, 2, (32,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
            loss = torch.nn.functional.cross_entropy(head(out).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    self_us = collections.Counter()
    for e in prof.key_averages():
        self_us[e.key] += e.self_cpu_time_total
    total = sum(self_us.values())
    shares = {fam: sum(self_us[k] for k in keys) / total for fam, keys in FAMILIES.items()}
    shares["everything else"] = 1 - sum(shares.values())
    return total / steps / 1e6, shares


def main() -> None:
    rows = {p: measure(p) for p in ("fp32", "bf16")}
    fams = [*FAMILIES, "everything else"]
    print(f"| precision | s / step | {' | '.join(fams)} |")
    print("|---|---:|" + "---:|" * len(fams))
    for p, (sec, sh) in rows.items():
        print(f"| {p} | {sec:.2f} | " + " | ".join(f"{sh[f]:.2f}" for f in fams) + " |")


if __name__ == "__main__":
    main()
