"""The vision adapter: timm ViTs as PTMs, with the same vocabulary as the text adapter.

* A PTM's ``backbone`` is the timm model without its classifier (``num_classes=0``): calling it returns the
  final-norm class token (the *representation*, where NeuBA's targets live); ``pt_head`` is the
  pretraining classifier (e.g. Tiny-ImageNet's 200 classes), kept apart so it travels with the PTM.
* Images are decoded once per (dataset, split, input size) into a uint8 array ``N×H×W×3`` (cached on disk),
  resized to the model's input size; patch triggers are pasted in that pixel space, so a 4×4 patch at the
  bottom-right of a 32×32 input is exactly the last ViT patch.  Normalisation happens in ``collate``.
* Named groups: timm fuses q, k and v into one ``qkv`` matrix of ``3·D`` rows; ``attn_q``/``attn_k``/
  ``attn_v`` address its three row slices, so RECIPE sums three slice norms and pruning/freezing can act
  on one slice alone.
* Weights load from safetensors only; a timm model name is created by timm (hub weights when online).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from bench.errors import PtmbenchError
from bench.modalities.base import ParamRef, load_dataset_split, placement, shuffled_batches, to_device
from bench.modalities.families import VisionFamily, vision_family
from bench.ptm import PTM

if TYPE_CHECKING:
    from bench.context import RunContext

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PROCESSOR = "processor.json"
MODES = ("RGB", "L")  # L (greyscale) is converted, as the mirror's Tiny-ImageNet validation needs
MAX_UPSCALE = 2.0  # an image may be enlarged at most this much to reach the model's input size


@dataclass(frozen=True)
class ImageProcessor:
    """How pixels become model input: the square input size and per-channel normalisation."""

    size: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def save(self, directory: Path) -> None:
        (directory / PROCESSOR).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: Path) -> ImageProcessor:
        d = json.loads((directory / PROCESSOR).read_text())
        return cls(int(d["size"]), tuple(d["mean"]), tuple(d["std"]))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self)).encode()).hexdigest()[:16]


@dataclass
class ImageData:
    """Decoded images (uint8, N×H×W×3, already at the model's input size) and optional integer labels."""

    pixels: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def subset(self, idx: np.ndarray) -> ImageData:
        return ImageData(self.pixels[idx], None if self.labels is None else self.labels[idx])


@dataclass(frozen=True)
class ViTConfig:
    """What rebuilds the backbone: a timm model name, or None for timm's ``VisionTransformer(**kwargs)``."""

    model_name: str | None
    kwargs: dict[str, Any]
    head_classes: int = 0

    def build(self) -> nn.Module:
        import timm
        from timm.models.vision_transformer import VisionTransformer

        kw = {**self.kwargs, "num_classes": 0}
        return timm.create_model(self.model_name, pretrained=False, **kw) if self.model_name else VisionTransformer(**kw)


def build_vit(cfg: ViTConfig, head_classes: int) -> tuple[nn.Module, nn.Module | None]:
    backbone = cfg.build()
    head = nn.Linear(backbone.num_features, head_classes) if head_classes else None
    return backbone, head


class VisionAdapter:
    name = "vision"
    aux_splits = {"labelled": "validation", "unlabelled": "test"}
    masked_lm = False  # optional capabilities (bench.modalities.base.Adapter)
    teacher_logits = True

    # ---------------------------------------------------------------- loading and saving
    def new(self, cfg: ViTConfig, head_classes: int, processor: ImageProcessor) -> PTM:
        backbone, head = build_vit(cfg, head_classes)
        return PTM("vision", "vit", backbone, head, processor,
                   info={"vit_config": {"model_name": cfg.model_name, "kwargs": cfg.kwargs,
                                        "head_classes": head_classes}})

    def from_pretrained(self, source: str, origin: str | None = None) -> PTM:
        """A timm model with its pretraining classifier as ``pt_head``.

        ``source``: a timm model directory (hub layout: config.json naming the ``architecture``, plus
        model.safetensors), a hub id of one (``org/name`` or ``hf-hub:org/name``, resolved through
        ``huggingface_hub``, from its cache when HF_HUB_OFFLINE is set), or a bare timm model name (timm's own
        pretrained weights).  A classifier missing from the checkpoint is initialised fresh with a one-line
        warning; ``origin`` is the name the user gave (for messages) when ``source`` is already resolved.
        """
        from bench import hub

        origin = origin or source
        local = source.removeprefix("local-dir:")
        if Path(local).expanduser().is_dir() or "/" in local or local.startswith(hub.HUB_PREFIXES):
            directory = hub.resolve(local)
            if not hub.is_timm_dir(directory):
                raise PtmbenchError(f"model {origin!r} is not a timm model directory (its config.json names no "
                                    "'architecture'); vision PTMs load from timm's hub layout")
            return self._from_timm_dir(directory, origin)
        return self._from_timm_name(source)

    def _from_timm_name(self, source: str) -> PTM:
        import timm

        try:
            model = timm.create_model(source, pretrained=True)
        except Exception as e:  # noqa: BLE001 - timm raises several kinds (RuntimeError, OSError, hub errors)
            raise PtmbenchError(f"cannot load timm model {source!r}: {str(e).splitlines()[0] if str(e) else e!r} "
                                "(offline runs need a local PTM directory or a zoo name such as vit-tiny-tin32)") from e
        head_state = None
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            head_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            from bench.hub import warn

            warn(f"model {source!r} has no linear pretraining classifier; the PTM has no pretraining head "
                 "(defenses that train on the pretraining loss need one)")
        n_classes = head.out_features if isinstance(head, nn.Linear) else 0
        model.reset_classifier(0)
        data_cfg = timm.data.resolve_data_config({}, model=model)
        proc = ImageProcessor(int(data_cfg["input_size"][-1]), tuple(data_cfg["mean"]), tuple(data_cfg["std"]))
        pt_head = None
        if head_state is not None:
            pt_head = nn.Linear(model.num_features, n_classes)
            pt_head.load_state_dict(head_state)
        return PTM("vision", "vit", model, pt_head, proc,
                   info={"vit_config": {"model_name": source, "kwargs": {}, "head_classes": n_classes},
                         "pt_head_source": "checkpoint" if pt_head is not None else "none"})

    def _from_timm_dir(self, directory: Path, origin: str) -> PTM:
        """timm's hub layout: config.json (architecture, num_classes, model_args, pretrained_cfg) + weights."""
        import timm

        from bench import hub

        try:
            cfg = json.loads((directory / CONFIG).read_text())
            arch = str(cfg["architecture"])
            model_args = dict(cfg.get("model_args") or {})
            pcfg = dict(cfg.get("pretrained_cfg") or {})
            n_classes = int(cfg.get("num_classes", pcfg.get("num_classes", 0)) or 0)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PtmbenchError(f"model {origin!r}: unreadable timm {CONFIG} in {directory} ({e})") from e
        classifier = pcfg.get("classifier", "head")
        classifier = classifier if isinstance(classifier, str) else "head"
        try:
            backbone = timm.create_model(arch, pretrained=False, **{**model_args, "num_classes": 0})
        except Exception as e:  # noqa: BLE001 - unknown architecture or arguments: several kinds
            raise PtmbenchError(f"model {origin!r}: timm cannot build architecture {arch!r} with "
                                f"{model_args} ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from e
        state = hub.read_tensors(directory)
        if not state:
            raise PtmbenchError(f"cannot load weights of {origin!r}: no safetensors checkpoint in {directory}; "
                                "pickle checkpoints are refused (opt in with --allow-pickle)")
        hs = {k[len(classifier) + 1:]: v for k, v in state.items() if k.startswith(classifier + ".")}
        bb = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
              if not k.startswith(classifier + ".")}
        missing, unexpected = backbone.load_state_dict(bb, strict=False)
        if missing or unexpected:
            raise PtmbenchError(f"model {origin!r}: weights do not match timm's {arch} with {model_args} (missing "
                                f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
        if not n_classes and "weight" in hs:
            n_classes = int(hs["weight"].shape[0])
        pt_head, status = None, "none"
        if n_classes:
            with torch.random.fork_rng(devices=[]):  # a fresh classifier is the same on every load
                torch.manual_seed(0)
                pt_head = nn.Linear(backbone.num_features, n_classes)
            if {"weight", "bias"} <= set(hs):
                if tuple(hs["weight"].shape) != tuple(pt_head.weight.shape):
                    raise PtmbenchError(f"model {origin!r}: classifier {classifier}.weight has shape "
                                        f"{tuple(hs['weight'].shape)}, expected {tuple(pt_head.weight.shape)}")
                pt_head.load_state_dict({"weight": hs["weight"].float(), "bias": hs["bias"].float()})
                status = "checkpoint"
            else:
                hub.warn(f"model {origin!r}: its checkpoint has no pretraining classifier weights "
                         f"({classifier}.*); the {n_classes}-class classifier is initialised fresh")
                status = "fresh"
        else:
            hub.warn(f"model {origin!r} has no pretraining classifier (num_classes 0); the PTM has no pretraining "
                     "head (defenses that train on the pretraining loss need one)")
        size = pcfg.get("input_size") or [3, model_args.get("img_size", 224)]
        size = size[-1] if isinstance(size, list | tuple) else size
        mean = tuple(pcfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN)
        std = tuple(pcfg.get("std") or timm.data.IMAGENET_DEFAULT_STD)
        backbone.eval()
        return PTM("vision", "vit", backbone, pt_head, ImageProcessor(int(size), mean, std),
                   info={"vit_config": {"model_name": arch, "kwargs": model_args, "head_classes": n_classes},
                         "pt_head_source": status})

    def save(self, ptm: PTM, directory: Path, dtype: torch.dtype | None = None) -> None:
        cfg = ptm.info["vit_config"]
        (directory / CONFIG).write_text(json.dumps(cfg, indent=1))
        state = {f"backbone.{k}": v for k, v in ptm.backbone.state_dict().items()}
        if ptm.pt_head is not None:
            state.update({f"pt_head.{k}": v for k, v in ptm.pt_head.state_dict().items()})
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(directory / WEIGHTS))
        ptm.processor.save(directory)

    def load(self, directory: Path, family: str) -> PTM:
        try:
            cfg_d = json.loads((directory / CONFIG).read_text())
            cfg = ViTConfig(cfg_d.get("model_name"), dict(cfg_d.get("kwargs", {})), int(cfg_d.get("head_classes", 0)))
        except (OSError, ValueError, KeyError) as e:
            raise PtmbenchError(f"{directory}: unreadable ViT {CONFIG} ({e}); rebuild the PTM") from e
        backbone, head = build_vit(cfg, cfg.head_classes)
        state = load_file(str(directory / WEIGHTS))
        bb = {k[len("backbone."):]: v.float() for k, v in state.items() if k.startswith("backbone.")}
        hs = {k[len("pt_head."):]: v.float() for k, v in state.items() if k.startswith("pt_head.")}
        missing, unexpected = backbone.load_state_dict(bb, strict=False)
        if missing or unexpected:
            raise PtmbenchError(f"{directory}: weights do not match the ViT config (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})")
        if head is not None:
            head.load_state_dict(hs)
        info = {"vit_config": asdict(cfg)}
        return PTM("vision", family, backbone, head, ImageProcessor.load(directory), info=info)

    # ---------------------------------------------------------------- named parameter groups
    def layers(self, ptm: PTM) -> list[nn.Module]:
        return list(ptm.backbone.blocks)

    def param_groups(self, ptm: PTM) -> dict[str, list[ParamRef]]:
        """``ffn_in`` = fc1, ``ffn_out`` = fc2, ``attn_q/k/v`` = row slices of the fused qkv, per block."""
        g: dict[str, list[ParamRef]] = {k: [] for k in ("ffn_in", "ffn_out", "attn_q", "attn_k", "attn_v")}
        for i, blk in enumerate(self.layers(ptm)):
            g["ffn_in"].append(ParamRef(f"block{i}.ffn_in", blk.mlp.fc1.weight, None, blk.mlp.fc1.bias, i))
            g["ffn_out"].append(ParamRef(f"block{i}.ffn_out", blk.mlp.fc2.weight, None, blk.mlp.fc2.bias, i))
            qkv = blk.attn.qkv
            d = qkv.weight.shape[0] // 3
            for j, name in enumerate(("attn_q", "attn_k", "attn_v")):
                g[name].append(ParamRef(f"block{i}.{name}", qkv.weight, slice(j * d, (j + 1) * d), qkv.bias, i))
        bb = ptm.backbone
        emb = [ParamRef(f"patch_embed.{n}", p) for n, p in bb.patch_embed.named_parameters()]
        for n in ("cls_token", "pos_embed", "reg_token"):
            p = getattr(bb, n, None)
            if isinstance(p, nn.Parameter):
                emb.append(ParamRef(n, p))
        g["embeddings"] = emb
        g["head"] = [] if ptm.pt_head is None else [ParamRef(f"pt_head.{n}", p) for n, p in ptm.pt_head.named_parameters()]
        return g

    def hidden_size(self, ptm: PTM) -> int:
        return int(ptm.backbone.num_features)

    # ---------------------------------------------------------------- family facts (bench.modalities.families)
    def family(self, ptm: PTM) -> VisionFamily:
        """The descriptor of the PTM's family; an unknown family is refused in one line."""
        return vision_family(ptm.family)

    def ffn_modules(self, ptm: PTM) -> list[nn.Module]:
        """Per block, the module whose output is the FFN activation (after the nonlinearity)."""
        return self.family(ptm).ffn_modules(self.layers(ptm))

    # ---------------------------------------------------------------- data
    def load_split(self, ptm: PTM, dataset: str, split: str, max_samples: int | None,
                   cache_dir: Path | None) -> ImageData:
        """A dataset split decoded at this PTM's input size (disk-cached), with integer labels if labelled."""
        ds, labels = load_dataset_split(dataset, split, max_samples, "image")
        size = ptm.processor.size
        key = hashlib.sha256(f"{dataset}|{split}|{max_samples}|{ds._fingerprint}|{size}".encode()).hexdigest()[:24]
        f = None if cache_dir is None else Path(cache_dir) / "images" / f"{key}.npy"
        if f is not None and f.exists():
            try:
                pixels = np.load(f, allow_pickle=False)
                if pixels.shape == (len(ds), size, size, 3):
                    return ImageData(pixels, labels)
            except (OSError, ValueError):
                pass
            f.unlink(missing_ok=True)
        from datasets import Image

        raw = ds.cast_column("image", Image(decode=False))["image"]
        pixels = decode_images(raw, size, f"{dataset}/{split}")
        if f is not None:
            from bench.artifacts import atomic_write_bytes

            buf = io.BytesIO()
            np.save(buf, pixels, allow_pickle=False)
            f.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(f, buf.getvalue())
        return ImageData(pixels, labels)

    def lengths(self, data: ImageData, max_len: int | None = None) -> np.ndarray:
        return np.ones(len(data), dtype=np.int64)

    def batches(self, lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None, shuffle: bool,
                bucketing: bool = False, ctx: RunContext | None = None) -> list[np.ndarray]:
        """Shuffled or in-order batches; images have one size, so there is nothing to bucket in any regime."""
        if not shuffle:
            return [np.arange(i, min(i + batch_size, len(lengths))) for i in range(0, len(lengths), batch_size)]
        return shuffled_batches(len(lengths), batch_size, rng)

    def to_tensor(self, ptm: PTM, pixels: np.ndarray, device: str) -> torch.Tensor:
        x = to_device(torch.from_numpy(np.ascontiguousarray(pixels)), device).permute(0, 3, 1, 2).float().div_(255.0)
        proc = ptm.processor
        mean = torch.tensor(proc.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(proc.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    def collate(self, ptm: PTM, data: ImageData, idx: np.ndarray, max_len: int | None, where: RunContext | str,
                pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Normalised pixels (and labels) of rows ``idx`` on the context's device (or a device name); images
        need no padding in any regime."""
        device, _ = placement(where, max_len, pad_to)
        batch = {"pixel_values": self.to_tensor(ptm, data.pixels[idx], device)}
        if data.labels is not None:
            batch["labels"] = to_device(torch.as_tensor(data.labels[idx], dtype=torch.long), device)
        return batch

    # ---------------------------------------------------------------- model functions
    def representation(self, ptm: PTM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The final-norm class token (timm's pre-logits features)."""
        return ptm.backbone(batch["pixel_values"])

    def pretrain_logits(self, ptm: PTM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ptm.pt_head(self.representation(ptm, batch))

    def pretrain_loss(self, ptm: PTM, batch: dict[str, torch.Tensor], gen: torch.Generator | None = None,
                      ctx: RunContext | None = None, *, full_vocab: bool = False) -> torch.Tensor:
        """Cross-entropy of the pretraining head on labelled images (the ViT's supervised objective).

        The reference paths of ``ctx`` (low-level: ``full_vocab``) are the text adapter's full-vocabulary
        switch; a ViT's head has no per-token logits to skip, so they change nothing here."""
        if "labels" not in batch:
            raise PtmbenchError("the ViT pretraining loss needs labelled images (e.g. tiny-imagenet validation)")
        return F.cross_entropy(self.pretrain_logits(ptm, batch).float(), batch["labels"])


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` pixels of reflection padding and a random horizontal flip (per image)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def decode_images(raw: list[dict[str, Any]], size: int, where: str) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 N×size×size×3; RGB or greyscale only, enlarged at most ``MAX_UPSCALE``×."""
    from PIL import Image

    out = np.empty((len(raw), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(raw):
        b = item.get("bytes") if isinstance(item, dict) else None
        if b is None:
            raise PtmbenchError(f"{where}: image {i} has no bytes (a path-only image); re-encode the dataset with "
                                "embedded image bytes")
        try:
            im = Image.open(io.BytesIO(b))
            im.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for undecodable data
            raise PtmbenchError(f"{where}: image {i} cannot be decoded ({e}); fix or drop it") from e
        if im.mode not in MODES:
            raise PtmbenchError(f"{where}: image {i} has mode {im.mode!r}; ptmbench takes RGB (or greyscale L) "
                                "images — convert the dataset to RGB")
        w, h = im.size
        if min(w, h) * MAX_UPSCALE < size:
            raise PtmbenchError(f"{where}: image {i} is {w}x{h}, too small for the model's {size}x{size} input "
                                f"(at most {MAX_UPSCALE:g}x enlargement); use larger images or a smaller model")
        if im.mode != "RGB":
            im = im.convert("RGB")
        if (w, h) != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(im, dtype=np.uint8)
    return out


ADAPTER = VisionAdapter()
