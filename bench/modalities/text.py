"""Text modality adapter: BERT- and RoBERTa-family PTMs with pooler and MLM head, tokenisation with a
disk cache, dynamic padding, MLM masking (loss only at masked positions), and named parameter groups."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from bench.errors import PtmbenchError
from bench.modalities.base import (
    ParamRef,
    bucketed_batches,
    bucketing_of,
    full_vocab_of,
    load_dataset_split,
    placement,
    shuffled_batches,
    sorted_batches,
    to_device,
)
from bench.modalities.families import TEXT_FAMILIES, TextFamily, text_family
from bench.ptm import PTM

if TYPE_CHECKING:
    from bench.context import RunContext

WEIGHTS = "weights.safetensors"


class MLMHead(nn.Module):
    """The masked-LM head of BERT and RoBERTa (dense -> GELU -> LayerNorm -> decoder), one class for both.

    The decoder may share its weight with the input embeddings (``tied``); it is applied only to the
    hidden states of masked positions, never to the whole sequence.
    """

    def __init__(self, hidden: int, vocab: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(h))))


def tie_head(ptm: PTM) -> None:
    ptm.pt_head.decoder.weight = ptm.backbone.embeddings.word_embeddings.weight
    ptm.info["head_tied"] = True


def untie_head(ptm: PTM) -> None:
    """Give the decoder its own copy of the embedding matrix (e.g. before rescaling trigger embeddings)."""
    w = ptm.pt_head.decoder.weight
    ptm.pt_head.decoder.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
    ptm.info["head_tied"] = False


def new_mlm_head(backbone: nn.Module, tied: bool = True) -> MLMHead:
    """A freshly initialised MLM head on the backbone's device (initialised on the CPU, so the draws are the
    same wherever the backbone lives)."""
    cfg = backbone.config
    head = MLMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps)
    head.to(backbone.embeddings.word_embeddings.weight.device)
    head.decoder.bias.data.zero_()
    if tied:
        head.decoder.weight = backbone.embeddings.word_embeddings.weight
    return head


# Checkpoint key prefixes of upstream MLM heads (every text family's) -> our MLMHead names.
_HF_HEAD_KEYS = {p: v for fam in TEXT_FAMILIES.values() for p, v in fam.head_prefixes.items()}


@dataclass
class TokenizedText:
    """Untruncated token ids without special tokens, and where each whitespace word starts.

    Keeping word starts lets triggers be inserted at word slots without re-tokenising; truncation to a
    max length happens when batches are packed, so one cache serves every max length.
    """

    ids: list[np.ndarray]
    starts: list[np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self, max_len: int | None = None) -> np.ndarray:
        n = np.fromiter((len(x) + 2 for x in self.ids), dtype=np.int64, count=len(self.ids))
        return np.minimum(n, max_len) if max_len else n

    def subset(self, idx: np.ndarray) -> TokenizedText:
        return TokenizedText([self.ids[i] for i in idx], [self.starts[i] for i in idx],
                             None if self.labels is None else self.labels[idx])


class TextAdapter:
    name = "text"
    aux_splits = {"labelled": "train", "unlabelled": "train"}  # auxiliary corpora are one unlabelled split
    masked_lm = True  # optional capabilities (bench.modalities.base.Adapter)
    teacher_logits = False

    # ---------------------------------------------------------------- loading and saving
    def from_pretrained(self, source: str, family: str | None = None, with_head: bool = True) -> PTM:
        """An upstream checkpoint (local directory or hub id) with its pooler and, when ``with_head``, the MLM
        head it was pretrained with; safetensors only unless the user opted into pickle (--allow-pickle).

        A hub id is resolved through ``huggingface_hub`` (the local cache when HF_HUB_OFFLINE is set).  A head
        or pooler missing from the checkpoint is initialised fresh, with a one-line warning naming it.  A
        directory holding a timm model (its config.json names an ``architecture``) loads as a vision PTM.
        """
        from bench import hub

        directory = hub.resolve(source)
        if hub.is_timm_dir(directory):
            from bench.modalities.vision import ADAPTER as VISION

            return VISION.from_pretrained(str(directory), origin=source)
        try:
            config = AutoConfig.from_pretrained(str(directory))
        except (OSError, ValueError) as e:
            raise PtmbenchError(f"cannot load model {source!r}: {directory} has no usable config.json "
                                f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from e
        family = family or config.model_type
        if family not in TEXT_FAMILIES:
            raise PtmbenchError(f"model {source!r} has type {family!r}; text families: {', '.join(TEXT_FAMILIES)}")
        model_cls = TEXT_FAMILIES[family].model_cls
        kind, _files = hub.weight_files(directory)
        state: dict[str, torch.Tensor] | None = None
        if kind == "none":
            raise PtmbenchError(f"cannot load weights of {source!r}: no safetensors checkpoint in {directory}; "
                                "pickle checkpoints are refused (opt in with --allow-pickle)")
        if kind == "safetensors":
            with torch.random.fork_rng(devices=[]):  # whatever the checkpoint lacks is initialised the same way
                torch.manual_seed(0)
                backbone, loading = model_cls.from_pretrained(str(directory), add_pooling_layer=True,
                                                              use_safetensors=True, output_loading_info=True)
            missing = sorted(loading["missing_keys"])
        else:
            state = hub.read_tensors(directory)
            backbone, missing = _backbone_from_state(state, model_cls, config, str(_files[0]))
        missing = [m for m in missing if "position_ids" not in m]
        if [m for m in missing if not m.startswith("pooler.")]:
            raise PtmbenchError(f"model {source!r}: its checkpoint does not match its config (missing "
                                f"{[m for m in missing if not m.startswith('pooler.')][:3]}); check the files")
        if missing:
            hub.warn(f"model {source!r}: its checkpoint has no pooler weights; the pooler is initialised fresh")
        tokenizer = self._load_tokenizer(directory, family)
        head, info = None, {"head_tied": False}
        if with_head:
            tensors = state if state is not None else hub.read_tensors(directory, keep=_is_head_key)
            head, info = pretrained_head(backbone, config, tensors, source)
        return PTM("text", family, backbone, head, tokenizer, info=info)

    def _load_tokenizer(self, source: str | Path, family: str) -> Any:
        tok = AutoTokenizer.from_pretrained(str(source))
        if _is_byte_level(tok) and not getattr(tok, "add_prefix_space", False):
            # word-level trigger slots need every word in its word-initial form (e.g. 'Ġcf')
            tok = AutoTokenizer.from_pretrained(str(source), add_prefix_space=True)
        if not tok.is_fast:
            raise PtmbenchError(f"tokenizer of {source} is not a fast tokenizer; ptmbench needs word ids")
        return tok

    def save(self, ptm: PTM, directory: Path) -> None:
        ptm.backbone.config.to_json_file(str(directory / "config.json"))
        state = {f"backbone.{k}": v for k, v in ptm.backbone.state_dict().items()}
        if ptm.pt_head is not None:
            tied = ptm.pt_head.decoder.weight is ptm.backbone.embeddings.word_embeddings.weight
            ptm.info["head_tied"] = tied
            for k, v in ptm.pt_head.state_dict().items():
                if not (tied and k == "decoder.weight"):
                    state[f"pt_head.{k}"] = v
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / WEIGHTS))
        ptm.processor.save_pretrained(str(directory / "tokenizer"))

    def load(self, directory: Path, family: str) -> PTM:
        fam = text_family(family)
        config = fam.config_cls.from_json_file(str(directory / "config.json"))
        backbone = fam.model_cls(config, add_pooling_layer=True)
        state = load_file(str(directory / WEIGHTS))
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        missing, unexpected = backbone.load_state_dict(bb, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            raise PtmbenchError(f"{directory}: weights do not match the config (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})")
        hs = {k[len("pt_head."):]: v for k, v in state.items() if k.startswith("pt_head.")}
        head = None
        info = json.loads((directory / "ptm.json").read_text()).get("info", {}) if (directory / "ptm.json").exists() else {}
        if hs:
            tied = "decoder.weight" not in hs
            head = new_mlm_head(backbone, tied=tied)
            head.load_state_dict(hs, strict=not tied)
            info["head_tied"] = tied
        tok = self._load_tokenizer(directory / "tokenizer", family)
        return PTM("text", family, backbone, head, tok, info=info)

    # ---------------------------------------------------------------- named parameter groups
    def layers(self, ptm: PTM) -> list[nn.Module]:
        return list(ptm.backbone.encoder.layer)

    def param_groups(self, ptm: PTM) -> dict[str, list[ParamRef]]:
        """``ffn_in``/``ffn_out``/``attn_q``/``attn_k``/``attn_v`` per layer, ``embeddings``, ``head``."""
        g: dict[str, list[ParamRef]] = {k: [] for k in ("ffn_in", "ffn_out", "attn_q", "attn_k", "attn_v")}
        for i, layer in enumerate(self.layers(ptm)):
            att = layer.attention.self
            mods = {"ffn_in": layer.intermediate.dense, "ffn_out": layer.output.dense,
                    "attn_q": att.query, "attn_k": att.key, "attn_v": att.value}
            for group, lin in mods.items():
                g[group].append(ParamRef(f"layer{i}.{group}", lin.weight, None, lin.bias, i))
        emb = ptm.backbone.embeddings
        g["embeddings"] = [ParamRef(f"embeddings.{n}", p) for n, p in emb.named_parameters()]
        g["head"] = [] if ptm.pt_head is None else [
            ParamRef(f"pt_head.{n}", p) for n, p in ptm.pt_head.named_parameters()]
        return g

    def hidden_size(self, ptm: PTM) -> int:
        return ptm.backbone.config.hidden_size

    # ---------------------------------------------------------------- family facts (bench.modalities.families)
    def family(self, ptm: PTM) -> TextFamily:
        """The descriptor of the PTM's family; an unknown family is refused in one line."""
        return text_family(ptm.family)

    def ffn_modules(self, ptm: PTM) -> list[nn.Module]:
        """Per layer, the module whose output is the FFN activation (after the nonlinearity)."""
        return self.family(ptm).ffn_modules(self.layers(ptm))

    def first_token_position(self, ptm: PTM) -> int:
        """The position id of the first token after [CLS]/<s> (1 for BERT, ``padding_idx + 2`` for RoBERTa)."""
        return self.family(ptm).first_token_position(ptm.backbone)

    def max_positions(self, ptm: PTM) -> int:
        """Longest sequence the backbone's position table allows (RoBERTa reserves ``padding_idx + 1`` rows)."""
        return self.family(ptm).max_positions(ptm.backbone)

    def export_layout(self, ptm: PTM) -> TextFamily:
        """The family's ``transformers`` layout (``mlm_class``, ``prefix``, ``model_class``, ``head_names()``)."""
        return self.family(ptm)

    # ---------------------------------------------------------------- tokenisation
    def fingerprint(self, tokenizer: Any) -> str:
        blob = tokenizer.backend_tokenizer.to_str() + repr(getattr(tokenizer, "add_prefix_space", None))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def tokenize(self, tokenizer: Any, texts: list[str], labels: np.ndarray | None = None,
                 chunk: int = 2048) -> TokenizedText:
        ids: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        for s in range(0, len(texts), chunk):
            words = [t.split() for t in texts[s:s + chunk]]
            enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
            for i, w in enumerate(words):
                tid = np.asarray(enc["input_ids"][i], dtype=np.int32)
                wid = np.asarray([-1 if x is None else x for x in enc.word_ids(i)], dtype=np.int64)
                ids.append(tid)
                starts.append(np.searchsorted(wid, np.arange(len(w))).astype(np.int32))
        return TokenizedText(ids, starts, labels)

    def encode_texts(self, tokenizer: Any, texts: list[str], labels: np.ndarray | None, cache_key: str | None,
                     cache_dir: Path | None) -> TokenizedText:
        """Tokenise once per (tokenizer, data); later runs read the arrays from the disk cache."""
        if cache_key is None or cache_dir is None:
            return self.tokenize(tokenizer, texts, labels)
        key = hashlib.sha256(f"{self.fingerprint(tokenizer)}|{cache_key}".encode()).hexdigest()[:24]
        f = cache_dir / "tokens" / f"{key}.npz"
        if f.exists():
            try:
                return _load_tokens(f)
            except (OSError, ValueError, KeyError):
                f.unlink(missing_ok=True)
        tt = self.tokenize(tokenizer, texts, labels)
        _save_tokens(f, tt)
        return tt

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return int(cls_id), int(sep_id), int(pad_id)

    def pack(self, tokenizer: Any, seqs: list[np.ndarray], max_len: int,
             pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """[CLS] ids[:max_len-2] [SEP], padded to the longest in the batch (or to ``pad_to``)."""
        cls_id, sep_id, pad_id = self.special_ids(tokenizer)
        body = [s[: max_len - 2] for s in seqs]
        width = pad_to or max(len(b) for b in body) + 2
        out = np.full((len(body), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(body), width), dtype=np.int64)
        for i, b in enumerate(body):
            n = len(b)
            out[i, 0] = cls_id
            out[i, 1:n + 1] = b
            out[i, n + 1] = sep_id
            mask[i, : n + 2] = 1
        return {"input_ids": torch.from_numpy(out), "attention_mask": torch.from_numpy(mask)}

    # ---------------------------------------------------------------- batching (modality-generic names)
    def lengths(self, data: TokenizedText, max_len: int) -> np.ndarray:
        return data.lengths(max_len)

    def batches(self, lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None, shuffle: bool,
                bucketing: bool, ctx: RunContext | None = None) -> list[np.ndarray]:
        """Batch indices: shuffled (training) or in order (inference), by length when ``bucketing`` asks for it
        and ``ctx`` is not on the reference paths (plain shuffled / input-order batches there)."""
        bucketing = bucketing_of(bucketing, ctx)
        if not shuffle:
            return sorted_batches(lengths, batch_size) if bucketing else [
                np.arange(i, min(i + batch_size, len(lengths))) for i in range(0, len(lengths), batch_size)]
        if bucketing:
            return bucketed_batches(lengths, batch_size, rng)
        return shuffled_batches(len(lengths), batch_size, rng)

    def collate(self, ptm: PTM, data: TokenizedText, idx: np.ndarray, max_len: int, where: RunContext | str,
                pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Rows ``idx`` of ``data`` packed (:meth:`pack`) on the context's device, padded as its regime says
        (:func:`~bench.modalities.base.placement`); low-level: a device name and an explicit ``pad_to``."""
        return self.collate_ids(ptm, [data.ids[i] for i in idx], max_len, where, pad_to)

    def collate_ids(self, ptm: PTM, seqs: list[np.ndarray], max_len: int, where: RunContext | str,
                    pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """:meth:`collate` for token-id sequences a method built itself (e.g. with a trigger inserted)."""
        device, width = placement(where, max_len, pad_to)
        batch = self.pack(ptm.processor, seqs, max_len, width)
        return {k: to_device(v, device) for k, v in batch.items()}

    def load_split(self, ptm: PTM, dataset: str, split: str, max_samples: int | None,
                   cache_dir: Path | None) -> TokenizedText:
        """A dataset split, tokenised by this PTM's tokenizer (disk-cached), with integer labels."""
        ds, labels = load_dataset_split(dataset, split, max_samples, "text")
        key = f"{dataset}|{split}|{max_samples}|{ds._fingerprint}"
        return self.encode_texts(ptm.processor, list(ds["text"]), labels, key, cache_dir)

    # ---------------------------------------------------------------- model functions
    def representation(self, ptm: PTM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pooler output (tanh dense over the first token): where NeuBA/POR targets live."""
        return ptm.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output

    def mask_tokens(self, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    gen: torch.Generator, prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT masking: choose ``prob`` of the non-special tokens; 80% [MASK], 10% random, 10% kept."""
        cls_id, sep_id, pad_id = self.special_ids(tokenizer)
        ids = input_ids.clone()
        special = (ids == cls_id) | (ids == sep_id) | (ids == pad_id) | (attention_mask == 0)
        dev = ids.device  # draws come from the (CPU) generator, then move to the batch's device
        chosen = (torch.rand(ids.shape, generator=gen).to(dev) < prob) & ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape, generator=gen).to(dev)
        ids[chosen & (r < 0.8)] = tokenizer.mask_token_id
        rand_pos = chosen & (r >= 0.8) & (r < 0.9)
        ids[rand_pos] = torch.randint(len(tokenizer), (int(rand_pos.sum()),), generator=gen).to(dev)
        return ids, labels

    def mlm_logits(self, ptm: PTM, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                   ctx: RunContext | None = None, *, full_vocab: bool = False) -> torch.Tensor:
        """MLM logits at the masked positions; on the reference paths of ``ctx`` (low-level: ``full_vocab``)
        they are computed at every position first (the reference implementations' cost), then the masked
        ones kept."""
        full_vocab = full_vocab_of(ctx, full_vocab)
        hidden = ptm.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        if full_vocab:
            return ptm.pt_head(hidden)[labels != -100]
        return ptm.pt_head(hidden[labels != -100])

    def mlm_loss(self, ptm: PTM, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                 ctx: RunContext | None = None, *, full_vocab: bool = False) -> torch.Tensor:
        """Cross-entropy over masked positions only (the logits of unmasked positions are never computed).

        On the reference paths of ``ctx`` (low-level: ``full_vocab``), BertForMaskedLM's way: the MLM head
        over every position's hidden state (full-vocabulary logits at every token, padding included), then
        CE with ``ignore_index=-100``.  The same value, at the cost of logits nobody reads.
        """
        if full_vocab_of(ctx, full_vocab):
            hidden = ptm.backbone(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).last_hidden_state
            logits = ptm.pt_head(hidden)
            if not bool((labels != -100).any()):  # nothing masked: HF would give nan; keep the step finite
                return logits.sum() * 0.0
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=-100)
        logits = self.mlm_logits(ptm, batch, labels)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), labels[labels != -100])

    def pretrain_loss(self, ptm: PTM, batch: dict[str, torch.Tensor], gen: torch.Generator,
                      ctx: RunContext | None = None, *, full_vocab: bool = False) -> torch.Tensor:
        """:meth:`mlm_loss` with fresh BERT masks drawn from ``gen``."""
        ids, labels = self.mask_tokens(ptm.processor, batch["input_ids"], batch["attention_mask"], gen)
        return self.mlm_loss(ptm, {**batch, "input_ids": ids}, labels, ctx, full_vocab=full_vocab)


def pickle_allowed() -> bool:
    """The user's explicit opt-in (``ptmbench --allow-pickle`` sets PTMBENCH_ALLOW_PICKLE=1)."""
    from bench.hub import pickle_allowed as allowed

    return allowed()


def _backbone_from_state(state: dict[str, torch.Tensor], model_cls: type, config: Any,
                         where: str) -> tuple[nn.Module, list[str]]:
    """A backbone from an (opted-in, weights-only) pickle state dict; returns it and its missing keys."""
    if not state:
        raise PtmbenchError(f"{where}: the checkpoint holds no tensors")
    prefix = f"{config.model_type}."
    bb = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items() if not _is_head_key(k)}
    model = model_cls(config, add_pooling_layer=True)
    missing, _ = model.load_state_dict(bb, strict=False)
    return model, list(missing)


def _is_byte_level(tok: Any) -> bool:
    return "ByteLevel" in json.dumps(json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer"))


def _is_head_key(key: str) -> bool:
    return key.startswith(tuple(_HF_HEAD_KEYS))


HEAD_KEYS = ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "decoder.bias")


def upstream_head_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MLM-head tensors of an upstream checkpoint, renamed to MLMHead's names.

    Both ``cls.predictions.bias`` and ``cls.predictions.decoder.bias`` name the decoder bias (tied in
    transformers for tied heads, separate for untied ones); the decoder's own wins when both are there.
    """
    out: dict[str, torch.Tensor] = {}
    for k in sorted(tensors):
        for prefix, new in _HF_HEAD_KEYS.items():
            if k.startswith(prefix):
                name = new + k[len(prefix):]
                if k.endswith(("predictions.bias", "lm_head.bias")) and name in out:
                    continue
                out[name] = tensors[k]
    return out


def pretrained_head(backbone: nn.Module, config: Any, tensors: dict[str, torch.Tensor],
                    source: str) -> tuple[MLMHead, dict[str, Any]]:
    """The checkpoint's MLM head (tied to the input embeddings unless the config unties it and the checkpoint
    has its own decoder matrix); whatever the checkpoint lacks is initialised fresh, with a warning."""
    hs = upstream_head_state(tensors)
    tied = bool(getattr(config, "tie_word_embeddings", True)) or "decoder.weight" not in hs
    if tied:
        hs.pop("decoder.weight", None)
    with torch.random.fork_rng(devices=[]):  # a fresh head is the same on every load
        torch.manual_seed(0)
        head = new_mlm_head(backbone, tied=tied)
    expected = HEAD_KEYS if tied else (*HEAD_KEYS, "decoder.weight")
    shapes = head.state_dict()
    bad = [k for k in hs if k in shapes and hs[k].shape != shapes[k].shape]
    if bad:
        raise PtmbenchError(f"model {source!r}: MLM head tensor {bad[0]} has shape {tuple(hs[bad[0]].shape)}, "
                            f"expected {tuple(shapes[bad[0]].shape)}; the checkpoint does not match its config")
    head.load_state_dict({k: v for k, v in hs.items() if k in shapes}, strict=False)
    fresh = [k for k in expected if k not in hs]
    if len(fresh) == len(expected):
        from bench.hub import warn

        warn(f"model {source!r}: its checkpoint has no MLM head weights; the MLM head is initialised fresh "
             "(random transform, decoder tied to the input embeddings)")
        status = "fresh"
    elif fresh:
        from bench.hub import warn

        warn(f"model {source!r}: its checkpoint's MLM head lacks {', '.join(fresh)}; those are initialised fresh")
        status = "partial"
    else:
        status = "checkpoint"
    return head, {"head_tied": tied, "pt_head_source": status}


def _save_tokens(f: Path, tt: TokenizedText) -> None:
    from bench.artifacts import atomic_write_bytes

    lens = np.array([len(x) for x in tt.ids], dtype=np.int64)
    wl = np.array([len(x) for x in tt.starts], dtype=np.int64)
    import io

    buf = io.BytesIO()
    np.savez(buf, ids=np.concatenate(tt.ids) if tt.ids else np.zeros(0, np.int32), lens=lens,
             starts=np.concatenate(tt.starts) if tt.starts else np.zeros(0, np.int32), wlens=wl,
             labels=tt.labels if tt.labels is not None else np.zeros(0, np.int64),
             has_labels=np.array(tt.labels is not None))
    atomic_write_bytes(f, buf.getvalue())


def _load_tokens(f: Path) -> TokenizedText:
    z = np.load(f)
    ids = np.split(z["ids"], np.cumsum(z["lens"])[:-1]) if len(z["lens"]) else []
    starts = np.split(z["starts"], np.cumsum(z["wlens"])[:-1]) if len(z["wlens"]) else []
    labels = z["labels"] if bool(z["has_labels"]) else None
    return TokenizedText(list(ids), list(starts), labels)


ADAPTER = TextAdapter()
