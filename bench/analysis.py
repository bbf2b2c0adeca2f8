"""Selective activation (the observation RECIPE rests on): in a backdoored PTM a few FFN neurons fire far
more at the first token when a trigger is present than on the same clean inputs.

For each PTM: FFN-in pre-activations at position 0 on clean inputs and on the same inputs with each
trigger inserted; per neuron, the mean shift (triggered − clean), averaged over triggers; per layer the
shifts sorted in decreasing order, drawn for clean, backdoored and purified PTMs side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.context import RunContext
from bench.ptm import PTM


def _ffn_in_modules(ptm: PTM) -> list[nn.Module]:
    refs = ptm.adapter.param_groups(ptm)["ffn_in"]
    by_weight = {id(m.weight): m for m in ptm.backbone.modules() if isinstance(m, nn.Linear)}
    return [by_weight[id(r.param)] for r in refs]


@torch.inference_mode()
def first_token_preacts(ptm: PTM, data: Any, max_len: int, ctx: RunContext, batch_size: int = 64) -> np.ndarray:
    """(layers, samples, neurons) FFN-in outputs (before the nonlinearity) at position 0."""
    adapter = ptm.adapter
    mods = _ffn_in_modules(ptm)
    store: list[list[torch.Tensor]] = [[] for _ in mods]
    hooks = [m.register_forward_hook(lambda _m, _i, out, k=k: store[k].append(out[:, 0].float().cpu()))
             for k, m in enumerate(mods)]
    ptm.backbone.eval()
    try:
        for s in range(0, len(data), batch_size):
            idx = np.arange(s, min(s + batch_size, len(data)))
            batch = adapter.collate(ptm, data, idx, max_len, ctx)
            with ctx.autocast():
                adapter.representation(ptm, batch)
    finally:
        for h in hooks:
            h.remove()
    return np.stack([torch.cat(x).numpy() for x in store])


def activation_shift(ptm: PTM, data: Any, triggers: list[Any], max_len: int, ctx: RunContext) -> np.ndarray:
    """(layers, neurons): mean over samples and triggers of pre-activation(triggered) − pre-activation(clean)."""
    clean = first_token_preacts(ptm, data, max_len, ctx)
    shifts = [first_token_preacts(ptm, t.apply(data, ptm.processor, ctx.seed), max_len, ctx) - clean
              for t in triggers]
    return np.mean([s.mean(axis=1) for s in shifts], axis=0)


def shift_frame(label: str, shift: np.ndarray) -> pd.DataFrame:
    rows = []
    for layer, v in enumerate(shift):
        order = np.argsort(-v)
        rows.append(pd.DataFrame({"ptm": label, "layer": layer, "rank": np.arange(len(v)), "neuron": order,
                                  "shift": v[order]}))
    return pd.concat(rows, ignore_index=True)


def selectivity(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per PTM and layer, how many FFN neurons shift by more than the largest shift of the ``reference`` PTM
    (the clean one) in that layer: few for a selective backdoor (RECIPE's premise), many for one spread over
    the layer.  Columns: ptm, layer, neurons, above_reference, reference_max, max_shift."""
    if reference not in set(df["ptm"]):
        from bench.errors import PtmbenchError

        raise PtmbenchError(f"selectivity: no PTM labelled {reference!r} (labels: {', '.join(df['ptm'].unique())})")
    ref_max = df[df["ptm"] == reference].groupby("layer")["shift"].max()
    rows = []
    for (label, layer), g in df.groupby(["ptm", "layer"], sort=False):
        rows.append({"ptm": label, "layer": int(layer), "neurons": len(g),
                     "above_reference": int((g["shift"] > ref_max[layer]).sum()),
                     "reference_max": float(ref_max[layer]), "max_shift": float(g["shift"].max())})
    return pd.DataFrame(rows)


def plot_shifts(df: pd.DataFrame, out: Path, title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(df["layer"].unique())
    cols = min(3, len(layers))
    rows = int(np.ceil(len(layers) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False, layout="constrained")
    for ax, layer in zip(axes.flat, layers):
        part = df[df["layer"] == layer]
        for label, g in part.groupby("ptm", sort=False):
            ax.plot(g["rank"], g["shift"], label=label, lw=1.2)
        ax.set_title(f"layer {layer}")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("neuron rank (by shift)")
        ax.set_ylabel("pre-activation shift")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    from bench.plots import save_figure

    paths = save_figure(fig, out, "selective_activation")
    plt.close(fig)
    return paths
