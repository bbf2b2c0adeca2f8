"""What ptmbench knows about each model family, in one place: one frozen descriptor per family.

A method never branches on ``ptm.family`` for a fact about the model (where the FFN activation lives, which
position id the first token after ``[CLS]``/``<s>`` gets, how ``transformers`` names the checkpoint); it
asks the adapter (``TEXT.first_token_position(ptm)``, ``ptm.adapter.ffn_modules(ptm)``,
``TEXT.export_layout(ptm)``), which reads the family's descriptor here.  A new family is added here only;
an unknown one is refused with one line naming it and the known ones.

Per-family *method* defaults (e.g. RECIPE's regularised/trainable groups, NeuBA's RoBERTa recipe) are the
methods' published choices, not model facts, and stay with the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from bench.errors import PtmbenchError


@dataclass(frozen=True)
class TextFamily:
    """A ``transformers`` text encoder family (BERT-style layers: ``encoder.layer[i].intermediate`` ...).

    * ``model_class`` / ``config_class`` / ``mlm_class``: the ``transformers`` classes (by name, resolved
      lazily) of the bare encoder, its config and its masked-LM model;
    * ``prefix``: the encoder's key prefix inside a ``*ForMaskedLM`` checkpoint;
    * ``head_prefixes``: checkpoint key prefix of the upstream MLM head -> ptmbench ``MLMHead`` name prefix
      (a whole name when it has no trailing dot: an alias of that tensor);
    * ``ffn_activation``: the per-layer module whose output is the FFN activation (after the nonlinearity);
    * ``positions_after_padding``: position ids start after ``padding_idx`` (RoBERTa), not at 0 (BERT);
    * ``head_act_from_config``: the ``transformers`` MLM head's transform uses ``config.hidden_act`` (BERT)
      rather than a fixed GELU (RoBERTa), as ptmbench's ``MLMHead`` does.
    """

    name: str
    model_class: str
    config_class: str
    mlm_class: str
    prefix: str
    head_prefixes: dict[str, str]
    ffn_activation: str = "intermediate"
    positions_after_padding: bool = False
    head_act_from_config: bool = False

    @property
    def model_cls(self) -> type:
        import transformers

        return getattr(transformers, self.model_class)

    @property
    def config_cls(self) -> type:
        import transformers

        return getattr(transformers, self.config_class)

    def position_offset(self, backbone: Any) -> int:
        """The position id of the first token (``[CLS]``/``<s>``): 0, or ``padding_idx + 1``."""
        return int(backbone.embeddings.padding_idx) + 1 if self.positions_after_padding else 0

    def first_token_position(self, backbone: Any) -> int:
        """The position id of the first token after ``[CLS]``/``<s>``."""
        return self.position_offset(backbone) + 1

    def max_positions(self, backbone: Any) -> int:
        """Longest sequence the position table allows (RoBERTa reserves ``padding_idx + 1`` rows)."""
        return int(backbone.config.max_position_embeddings) - self.position_offset(backbone)

    def ffn_modules(self, layers: list[Any]) -> list[Any]:
        get = attrgetter(self.ffn_activation)
        return [get(layer) for layer in layers]

    def head_names(self) -> dict[str, tuple[str, ...]]:
        """ptmbench ``MLMHead`` state name -> the checkpoint names ``*ForMaskedLM`` gives it (an alias first)."""
        ours = ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "decoder.weight",
                "decoder.bias")
        out: dict[str, tuple[str, ...]] = {}
        for k in ours:
            alias = tuple(p for p, v in self.head_prefixes.items() if not v.endswith(".") and v == k)
            full = tuple(p + k[len(v):] for p, v in self.head_prefixes.items() if v.endswith(".") and k.startswith(v))
            out[k] = alias + full
        return out


@dataclass(frozen=True)
class VisionFamily:
    """A timm vision family: ``ffn_activation`` as :class:`TextFamily`'s (relative to a block)."""

    name: str
    ffn_activation: str

    def ffn_modules(self, layers: list[Any]) -> list[Any]:
        get = attrgetter(self.ffn_activation)
        return [get(layer) for layer in layers]


TEXT_FAMILIES: dict[str, TextFamily] = {f.name: f for f in (
    TextFamily("bert", "BertModel", "BertConfig", "BertForMaskedLM", "bert", {
        "cls.predictions.transform.dense.": "dense.",
        "cls.predictions.transform.LayerNorm.": "layer_norm.",
        "cls.predictions.decoder.": "decoder.",
        "cls.predictions.bias": "decoder.bias",
    }, head_act_from_config=True),
    TextFamily("roberta", "RobertaModel", "RobertaConfig", "RobertaForMaskedLM", "roberta", {
        "lm_head.dense.": "dense.",
        "lm_head.layer_norm.": "layer_norm.",
        "lm_head.decoder.": "decoder.",
        "lm_head.bias": "decoder.bias",
    }, positions_after_padding=True),
)}
VISION_FAMILIES: dict[str, VisionFamily] = {f.name: f for f in (
    VisionFamily("vit", "mlp.act"),
)}
_TABLES: dict[str, dict[str, Any]] = {"text": TEXT_FAMILIES, "vision": VISION_FAMILIES}


def family_of(modality: str, name: str) -> Any:
    """The descriptor of ``name`` among ``modality``'s families; an unknown one is refused in one line."""
    table = _TABLES.get(modality, {})
    if name not in table:
        raise PtmbenchError(f"unknown {modality} model family {name!r}; known {modality} families: "
                            f"{', '.join(table) or 'none'}")
    return table[name]


def text_family(name: str) -> TextFamily:
    return family_of("text", name)


def vision_family(name: str) -> VisionFamily:
    return family_of("vision", name)
