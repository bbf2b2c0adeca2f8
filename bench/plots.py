"""Comparison plots from a results store: ASR vs CACC per defense, and grouped AASR bars (PNG + SVG)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.records import summary_frame


def save_figure(fig, out: Path, name: str) -> list[Path]:
    """PNG + SVG (SVG without a date and with fixed clip-path ids, so re-runs give identical files)."""
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "ptmbench"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=130, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths.append(p)
    return paths


def plot_all(cells: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every comparison plot for the cells of one matrix; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary_frame(cells)
    s = s[s["aasr_mean"].notna()]
    paths: list[Path] = []
    if s.empty:
        return paths
    # 1. ASR vs CACC, one panel per defense, points per (attack, dataset)
    defenses = list(dict.fromkeys(s["defense"]))
    fig, axes = plt.subplots(1, len(defenses), figsize=(4 * len(defenses), 3.6), squeeze=False, sharey=True)
    markers = dict(zip(sorted(set(s["attack"])), "os^Dv<>p*h"))
    for ax, d in zip(axes[0], defenses):
        part = s[s["defense"] == d]
        for (attack, dataset), g in part.groupby(["attack", "dataset"]):
            bar = ax.errorbar(g["cacc_mean"], g["aasr_mean"], xerr=g["cacc_std"].fillna(0),
                              yerr=g["aasr_std"].fillna(0), fmt=markers[attack], label=f"{attack} · {dataset}",
                              capsize=2)
            if "collapsed" in g and (g["collapsed"] > 0).any():  # a collapsed classifier: hollow marker
                bar[0].set_markerfacecolor("none")
        ax.set_title(f"defense: {d}")
        ax.set_xlabel("CACC (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AASR (%)")
    if "collapsed" in s and (s["collapsed"] > 0).any():
        fig.text(0.5, -0.02, "hollow: the classifier collapsed to the majority class in at least one seed "
                 "(collapse.md)", ha="center", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="best")
    paths += save_figure(fig, out, "asr_vs_cacc")
    plt.close(fig)
    # 2. grouped bars: AASR per attack (groups) and defense (bars), averaged over datasets
    g = s.groupby(["attack", "defense"], sort=False)["aasr_mean"].mean().unstack("defense")
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(g.index) * max(1, len(g.columns)) / 3, 3.6))
    g.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("AASR (%), mean over datasets")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="defense", fontsize=7)
    paths += save_figure(fig, out, "aasr_bars")
    plt.close(fig)
    return paths
