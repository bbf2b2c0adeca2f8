"""Training curves of a stage: the loss parts it logged per step (e.g. NeuBA's ``backdoor`` MSE), averaged over
windows, read from a finished PTM (``ptm.json``'s ``train.curve``) or from a running stage's checkpoint
directory (:mod:`bench.checkpoint`), and drawn side by side — how ``demo`` and ``faithful`` implants get there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import PtmbenchError

POINTS = 200  # at most this many points per curve


def window_means(losses: list[float], parts: list[dict[str, float]], points: int = POINTS) -> dict[str, list]:
    """The total loss and each part averaged over consecutive windows of steps; ``step`` is each window's
    last step (1-based)."""
    n = len(losses)
    if n == 0:
        return {"step": [], "loss": []}
    w = max(1, -(-n // points))
    out: dict[str, list] = {"step": [], "loss": []}
    names = list(parts[0]) if parts else []
    for name in names:
        out[name] = []
    for lo in range(0, n, w):
        hi = min(n, lo + w)
        out["step"].append(hi)
        out["loss"].append(sum(losses[lo:hi]) / (hi - lo))
        for name in names:
            vals = [p[name] for p in parts[lo:hi] if name in p]
            out[name].append(sum(vals) / len(vals) if vals else None)
    return out


def load_curve(source: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A curve as a frame (step, loss, parts…) and what it is (stage, steps done, steps planned).

    ``source``: a PTM directory whose ``ptm.json`` holds an attack's or defense's ``train.curve``, or a stage
    checkpoint directory (``<cache>/artifacts/.checkpoints/<key>``) of a stage still running or cut."""
    from bench.ptm import PTM_FILE

    source = Path(source)
    if (source / PTM_FILE).is_file():
        info = json.loads((source / PTM_FILE).read_text()).get("info", {})
        for stage in ("defense", "attack"):
            train = (info.get(stage) or {}).get("train") or {}
            if "curve" in train:
                return pd.DataFrame(train["curve"]), {"stage": stage, "name": info[stage].get("name"),
                                                      "steps": train.get("steps"), "done": train.get("steps")}
        raise PtmbenchError(f"{source}: this PTM records no training curve (made before curves were recorded, "
                            "or by no training stage); re-run the stage or pass its checkpoint directory")
    from bench.checkpoint import latest_state

    state = latest_state(source)
    if state is None:
        raise PtmbenchError(f"{source} is neither a PTM directory with a recorded curve nor a stage checkpoint "
                            "directory (call-N.pt files)")
    curve = window_means(list(state["losses"]), list(state["parts"]))
    return pd.DataFrame(curve), {"stage": state.get("desc"), "name": state.get("desc"), "steps": state["steps"],
                                 "done": state["step"]}


def plot_curves(frames: dict[str, pd.DataFrame], part: str, out: Path, log: bool = True,
                threshold: float | None = None) -> list[Path]:
    """One figure of ``part`` against the step for every labelled curve (PNG + SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, df in frames.items():
        if part not in df:
            raise PtmbenchError(f"curve {label!r} has no part {part!r} (it has {', '.join(df.columns[1:])})")
        ax.plot(df["step"], df[part], label=label)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8, label=f"{part} = {threshold:g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(part)
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"curve-{part}.png", out / f"curve-{part}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths
