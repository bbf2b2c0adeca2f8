"""Where an upstream model's files are: a local directory, or a Hugging Face hub repository resolved through
``huggingface_hub`` (its cache first when offline, the hub otherwise), and what its checkpoint holds.

Both modalities load from the directory this returns, so a hub id and a local copy of the same repository
bring the same weights, pretraining heads included.  Weights are safetensors; pickle checkpoints are
fetched and read only under the user's ``--allow-pickle`` opt-in (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from bench.errors import PtmbenchError

LOG = logging.getLogger("ptmbench")
# Top-level files a model needs: configs, tokenizer files, weights (sub-folders such as onnx/ are skipped).
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]
PICKLE_EXTS = ("bin", "pt", "pth", "pkl")
HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def warn(message: str) -> None:
    """One line on stderr (through the ``ptmbench`` logger, so tests and embedding code can capture it)."""
    LOG.warning(message.replace("\n", " "))


def pickle_allowed() -> bool:
    """The user's explicit opt-in (``ptmbench --allow-pickle`` sets PTMBENCH_ALLOW_PICKLE=1)."""
    return os.environ.get("PTMBENCH_ALLOW_PICKLE") == "1"


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES",
                                                                                            "TRUE")


def resolve(source: str) -> Path:
    """A local directory holding ``source``'s files: the directory itself, or the hub repository's snapshot.

    Offline (HF_HUB_OFFLINE) only the local Hugging Face cache is consulted; online the safetensors weights,
    configs and tokenizer files are downloaded into it (pickle weights too, when the repository has no
    safetensors and the user opted in with --allow-pickle).
    """
    p = Path(source).expanduser()
    if p.is_dir():
        return p
    repo_id = source
    for prefix in HUB_PREFIXES:
        repo_id = repo_id.removeprefix(prefix)
    d = _snapshot(source, repo_id, HUB_FILES)
    if not has_weights(d, pickle=False) and pickle_allowed():
        d = _snapshot(source, repo_id, [f"*.{e}" for e in PICKLE_EXTS])
    return d


def _snapshot(source: str, repo_id: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    off = offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=["*/*"],
                                      local_files_only=off))
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as e:
        where = ("not in the local Hugging Face cache (HF_HUB_OFFLINE is set: download it once online, or pass "
                 "a local directory)" if off else "not found on the Hugging Face hub nor in its cache")
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise PtmbenchError(f"cannot load model {source!r}: not a local directory, and {where}; {first}") from e


def weight_files(directory: Path, pickle: bool | None = None) -> tuple[str, list[Path]]:
    """(``safetensors`` | ``pickle`` | ``none``, files) of a model directory; pickle only when allowed."""
    sharded = directory / "model.safetensors.index.json"
    if sharded.is_file():
        shards = sorted(set(json.loads(sharded.read_text()).get("weight_map", {}).values()))
        files = [directory / s for s in shards if (directory / s).is_file()]
        if files:
            return "safetensors", files
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return "safetensors", files
    if pickle if pickle is not None else pickle_allowed():
        files = [f for ext in PICKLE_EXTS for f in sorted(directory.glob(f"*.{ext}"))]
        if files:
            return "pickle", files
    return "none", []


def has_weights(directory: Path, pickle: bool | None = None) -> bool:
    return weight_files(directory, pickle)[0] != "none"


def read_tensors(directory: Path, keep: Any = None) -> dict[str, torch.Tensor]:
    """Tensors of a directory's checkpoint whose names satisfy ``keep`` (all when None).

    Safetensors files are read key by key (only what is kept is loaded); pickle files, opted into, through
    ``torch.load(weights_only=True)`` only.
    """
    kind, files = weight_files(directory)
    out: dict[str, torch.Tensor] = {}
    if kind == "safetensors":
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), "pt") as sf:
                for k in sf.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if keep is None or keep(k):
                        out[k] = sf.get_tensor(k)
    elif kind == "pickle":
        for f in files:
            out.update({k: v for k, v in _torch_load(f).items() if keep is None or keep(k)})
    return out


def _torch_load(f: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        state = torch.load(f, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
        raise PtmbenchError(f"{f}: refused by torch.load(weights_only=True): "
                            f"{str(e).splitlines()[0][:200]}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PtmbenchError(f"{f}: not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def is_timm_dir(directory: Path) -> bool:
    """A timm model directory (hub layout: config.json with ``architecture``, no ``model_type``)."""
    f = directory / "config.json"
    if not f.is_file():
        return False
    try:
        cfg = json.loads(f.read_text())
    except ValueError:
        return False
    return isinstance(cfg, dict) and "architecture" in cfg and "model_type" not in cfg
