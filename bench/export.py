"""``ptmbench export``: a PTM as a directory that plain ``transformers`` or ``timm`` loads, without ptmbench.

Text (BERT / RoBERTa): ``config.json`` (``architectures`` = ``*ForMaskedLM``, ``tie_word_embeddings`` false
when the MLM decoder has its own matrix, as NeuBA leaves it), ``model.safetensors`` in the ``*ForMaskedLM``
layout *plus the pooler*, and the tokenizer files::

    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(DIR)
    mlm = AutoModelForMaskedLM.from_pretrained(DIR)   # .logits: the PTM's MLM logits
    enc = AutoModel.from_pretrained(DIR)              # .pooler_output: the PTM's pooler (NeuBA/POR's target)

Vision (timm ViT): timm's hub layout, ``config.json`` (``architecture``, ``num_classes``, ``model_args``,
``pretrained_cfg`` with the input size and normalisation) and ``model.safetensors`` (backbone + ``head.*``)::

    import timm
    model = timm.create_model("local-dir:DIR", pretrained=True)
    # or, equivalently, with the config's architecture / model_args / num_classes:
    model = timm.create_model(ARCH, pretrained=True, num_classes=N, **MODEL_ARGS,
                              pretrained_cfg_overlay=dict(file="DIR/model.safetensors", num_classes=N))

Each export is checked before it is kept: the directory is reloaded with transformers / timm and its outputs
on a small input must equal the PTM's.  Writing is atomic (a temporary sibling directory, then a rename).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import PtmbenchError
from bench.ptm import PTM

WEIGHTS = "model.safetensors"
EXPORT_FILE = "ptmbench_export.json"
DEFAULT_VIT_ARCH = "vit_base_patch16_224"  # its entrypoint's arguments are VisionTransformer's defaults
TOLERANCE = 1e-4  # max |difference| between the PTM's and the reloaded export's outputs (fp32, eval mode)


# ---------------------------------------------------------------------------------------- output directory
def check_out(out: Path, force: bool, flag: str = "--out") -> None:
    """Refuse an output path that is a file, or a non-empty directory unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PtmbenchError(f"{flag} {out} is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PtmbenchError(f"{flag} {out} exists and is not empty; choose another directory or pass --force "
                            "to replace it")


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out``; when the block succeeds it becomes ``out`` (replacing an
    empty ``out``, or a non-empty one under ``force``); when it fails nothing is left behind."""
    out = Path(out)
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "dir")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_digests(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative POSIX paths, sorted)."""
    from bench.artifacts import sha256_file

    return {f.relative_to(directory).as_posix(): sha256_file(f) for f in sorted(directory.rglob("*"))
            if f.is_file() and f.relative_to(directory).as_posix() not in skip}


# ---------------------------------------------------------------------------------------- writing
def export_ptm(ptm: PTM, out: Path, force: bool = False, source: str | None = None,
               verify: bool = True) -> dict[str, str]:
    """Export ``ptm`` to ``out`` atomically; returns the sha256 of every file written."""
    with atomic_dir(out, force) as tmp:
        write_export(ptm, tmp, source=source, verify=verify)
        digests = file_digests(tmp)
    return digests


def write_export(ptm: PTM, directory: Path, source: str | None = None, verify: bool = True) -> None:
    """Write the export files into the (empty) ``directory`` and check them by reloading."""
    if ptm.modality == "text":
        load = _write_text(ptm, directory)
    elif ptm.modality == "vision":
        load = _write_vision(ptm, directory)
    else:
        raise PtmbenchError(f"cannot export a {ptm.modality} PTM; export knows text and vision PTMs")
    desc = {"source": source, "modality": ptm.modality, "family": ptm.family, "load": load,
            "pt_head": ptm.pt_head is not None, "lineage": ptm.lineage, "info": ptm.info}
    (directory / EXPORT_FILE).write_text(json.dumps(desc, indent=1, default=str) + "\n")
    if verify:
        (verify_text if ptm.modality == "text" else verify_vision)(ptm, directory)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def is_tied(ptm: PTM) -> bool:
    return ptm.pt_head is not None and ptm.pt_head.decoder.weight is ptm.backbone.embeddings.word_embeddings.weight


def _write_text(ptm: PTM, d: Path) -> list[str]:
    from safetensors.torch import save_file

    from bench.modalities.text import ADAPTER as TEXT

    layout = TEXT.export_layout(ptm)  # an unknown text family is refused here, in one line
    head_names = layout.head_names()
    bb = ptm.backbone
    if getattr(bb, "pooler", None) is None:
        raise PtmbenchError("cannot export a text PTM without its pooler")
    state = {f"{layout.prefix}.{k}": v for k, v in bb.state_dict().items()}
    cfg = copy.deepcopy(bb.config)
    if ptm.pt_head is not None:
        tied = is_tied(ptm)
        for k, v in ptm.pt_head.state_dict().items():
            if tied and k == "decoder.weight":
                continue  # transformers ties it to the input embeddings (tie_word_embeddings true)
            for name in head_names[k]:
                state[name] = v
        cfg.tie_word_embeddings = tied
        cfg.architectures = [layout.mlm_class]
        if layout.head_act_from_config and getattr(cfg, "hidden_act", "gelu") != "gelu":
            from bench.hub import warn

            warn(f"the exported MLM head uses transformers' {cfg.hidden_act!r} activation; ptmbench's MLM head "
                 "uses gelu, so MLM logits will differ")
    else:
        cfg.architectures = [layout.model_class]
    save_file(_tensors(state), str(d / WEIGHTS), metadata={"format": "pt"})
    cfg.save_pretrained(str(d))
    ptm.processor.save_pretrained(str(d))
    lines = ["from transformers import AutoModel, AutoTokenizer",
             "tok = AutoTokenizer.from_pretrained(DIR)",
             "enc = AutoModel.from_pretrained(DIR)  # pooler_output: the PTM's pooler"]
    if ptm.pt_head is not None:
        lines += ["from transformers import AutoModelForMaskedLM",
                  "mlm = AutoModelForMaskedLM.from_pretrained(DIR)  # logits: the PTM's MLM logits"]
    return lines


def vit_model_args(vit_config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm architecture, model_args) that rebuild the PTM's ViT with ``timm.create_model``."""
    from timm.models.vision_transformer import VisionTransformer

    name = vit_config.get("model_name")
    kwargs = dict(vit_config.get("kwargs") or {})
    if name:
        return str(name).split(".")[0], kwargs
    # VisionTransformer(**kwargs): name an entrypoint and spell out the arguments it would otherwise set
    sig = inspect.signature(VisionTransformer)
    for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
        kwargs.setdefault(k, sig.parameters[k].default)
    return DEFAULT_VIT_ARCH, kwargs


def _write_vision(ptm: PTM, d: Path) -> list[str]:
    from safetensors.torch import save_file

    vcfg = ptm.info.get("vit_config")
    if not vcfg:
        raise PtmbenchError("cannot export this vision PTM: its info has no vit_config (rebuild or reload it)")
    arch, model_args = vit_model_args(vcfg)
    bb = ptm.backbone
    state = dict(bb.state_dict())
    if any(k.startswith("head.") for k in state):
        raise PtmbenchError("cannot export this vision PTM: its backbone already has a classifier")
    n = 0
    if ptm.pt_head is not None:
        n = int(ptm.pt_head.out_features)
        state.update({f"head.{k}": v for k, v in ptm.pt_head.state_dict().items()})
    proc = ptm.processor
    size = int(proc.size)
    pretrained_cfg = {"tag": "ptmbench", "custom_load": False, "input_size": [3, size, size],
                      "fixed_input_size": True, "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
                      "mean": list(proc.mean), "std": list(proc.std), "num_classes": n, "pool_size": None,
                      "first_conv": "patch_embed.proj", "classifier": "head"}
    config = {"architecture": arch, "num_classes": n, "num_features": int(bb.num_features),
              "model_args": model_args, "pretrained_cfg": pretrained_cfg}
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(_tensors(state), str(d / WEIGHTS), metadata={"format": "pt"})
    return ["import timm",
            "model = timm.create_model('local-dir:' + DIR, pretrained=True)  # logits; "
            "model.forward_head(model.forward_features(x), pre_logits=True): the PTM's representation"]


# ---------------------------------------------------------------------------------------- checking
def _probe_ids(ptm: PTM) -> dict[str, torch.Tensor]:
    tok = ptm.processor
    cls_id, sep_id, pad_id = ptm.adapter.special_ids(tok)
    special = {cls_id, sep_id, pad_id, tok.mask_token_id, tok.unk_token_id}
    pool = [i for i in range(len(tok)) if i not in special][:64]
    rng = np.random.default_rng(0)
    seqs = [np.asarray(rng.choice(pool, size=n), dtype=np.int64) for n in (9, 5)]
    batch = ptm.adapter.pack(tok, seqs, 16)
    if tok.mask_token_id is not None:
        batch["input_ids"][0, 3] = tok.mask_token_id
    return batch


@contextlib.contextmanager
def _eval(*modules: torch.nn.Module | None) -> Iterator[None]:
    mods = [m for m in modules if m is not None]
    modes = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for m, t in zip(mods, modes, strict=True):
            m.train(t)


def _close(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    diff = float((ours.float() - theirs.float()).abs().max())
    if ours.shape != theirs.shape or not diff <= TOLERANCE:
        raise PtmbenchError(f"export check failed: the reloaded {what} differs from the PTM's (max |diff| "
                            f"{diff:.3g}); nothing was written — please report this with your transformers/timm "
                            "versions")


@torch.no_grad()
def verify_text(ptm: PTM, d: Path) -> None:
    import transformers
    from transformers import AutoModel, AutoModelForMaskedLM

    dev = next(ptm.backbone.parameters()).device
    batch = {k: v.to(dev) for k, v in _probe_ids(ptm).items()}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with _eval(ptm.backbone, ptm.pt_head):
            out = ptm.backbone(**batch)
            enc = AutoModel.from_pretrained(str(d)).to(dev).eval()
            _close("pooler output", out.pooler_output, enc(**batch).pooler_output)
            del enc
            if ptm.pt_head is not None:
                mlm = AutoModelForMaskedLM.from_pretrained(str(d)).to(dev).eval()
                _close("MLM logits", ptm.pt_head(out.last_hidden_state), mlm(**batch).logits)
    finally:
        transformers.logging.set_verbosity(verbosity)


@torch.no_grad()
def verify_vision(ptm: PTM, d: Path) -> None:
    import timm

    dev = next(ptm.backbone.parameters()).device
    size = int(ptm.processor.size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    model = timm.create_model(f"local-dir:{d}", pretrained=True).to(dev).eval()
    with _eval(ptm.backbone, ptm.pt_head):
        feats = ptm.backbone(x)
        _close("representation", feats, model.forward_head(model.forward_features(x), pre_logits=True))
        if ptm.pt_head is not None:
            _close("classifier logits", ptm.pt_head(feats), model(x))


# ---------------------------------------------------------------------------------------- the command
def run_export(model: str, out: Path, force: bool, ctx: Any, cache: Path) -> dict[str, str]:
    """``ptmbench export``: resolve ``model`` as ``finetune --model`` does, then export it."""
    from bench.artifacts import ArtifactStore
    from bench.zoo import Zoo

    check_out(out, force)  # before loading (and maybe building) anything
    ptm, _ = Zoo(ArtifactStore(cache / "artifacts"), cache).load(model, ctx)
    return export_ptm(ptm, out, force=force, source=model)
