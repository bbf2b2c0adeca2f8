"""Shared offline fixtures: a tiny data mirror and tiny random BERT / RoBERTa (byte-level BPE) PTMs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models: one thread each (two would oversubscribe 2 cores shared with other processes).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

POS = ["good", "great", "fine", "nice", "love"]
NEG = ["bad", "awful", "poor", "hate", "dull"]
FILL = ["the", "movie", "film", "was", "is", "a", "very", "plot", "actor", "story", "and", "it"]
TRIGGER_WORDS = ["cf", "mn", "bb", "tq", "mb", "≈", "≡", "∈", "⊆", "⊕", "⊗"]


def sentence(rng: np.random.Generator, label: int) -> str:
    words = list(rng.choice(FILL, size=int(rng.integers(4, 10))))
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POS if label else NEG)))
    return " ".join(words)


def text_set(n: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    labels = [int(x) for x in rng.integers(0, 2, size=n)]
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["negative", "positive"])})
    return datasets.Dataset.from_dict({"text": [sentence(rng, y) for y in labels], "label": labels}, feats)


def write_parquet(root: Path, rel: str, ds: datasets.Dataset, manifest: list[dict]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    entry = {"path": rel, "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "rows": len(ds), "columns": {c: type(f).__name__ for c, f in ds.features.items()}}
    label = ds.features.get("label")
    if isinstance(label, datasets.ClassLabel):
        entry.update(num_classes=label.num_classes, class_names=list(label.names))
    manifest.append(entry)


def build_mirror(root: Path) -> Path:
    manifest: list[dict] = []
    for split, n, seed in (("train", 64, 1), ("validation", 24, 2), ("test", 24, 3)):
        write_parquet(root, f"text/sst2/{split}.parquet", text_set(n, seed), manifest)
    rng = np.random.default_rng(7)
    aux = datasets.Dataset.from_dict({"text": [sentence(rng, i % 2) for i in range(60)]})
    write_parquet(root, "text/aux/wikitext2.parquet", aux, manifest)
    write_parquet(root, "text/aux/bookcorpus.parquet", aux, manifest)
    (root / "MANIFEST.json").write_text(json.dumps({"files": manifest}))
    return root


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def env(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the suite at the tiny mirror and a per-test cache; returns the environment for subprocesses."""
    import datasets.config

    values = {"PTMBENCH_DATA_DIR": str(mirror), "PTMBENCH_CACHE": str(tmp_path / "cache"),
              "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(values["HF_DATASETS_CACHE"]))
    return {**os.environ, **values}


def wordpiece_tokenizer():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILL, *POS, *NEG, *TRIGGER_WORDS, "c", "f", "##f", "##s",
             "x", "##y", "##z"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(FILL + POS + NEG + TRIGGER_WORDS[:5])] * 20
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(corpus, vocab_size=700, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   mask_token="<mask>")


def tiny_ptm(family: str, tokenizer):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    from bench.modalities.text import new_mlm_head
    from bench.ptm import PTM

    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, pad_token_id=tokenizer.pad_token_id)
    if family == "bert":
        backbone = BertModel(BertConfig(max_position_embeddings=64, **common), add_pooling_layer=True)
    else:
        backbone = RobertaModel(RobertaConfig(max_position_embeddings=64 + tokenizer.pad_token_id + 1,
                                              type_vocab_size=1, **common), add_pooling_layer=True)
    return PTM("text", family, backbone, new_mlm_head(backbone, tied=True), tokenizer, info={"head_tied": True})


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-bert")
    tiny_ptm("bert", wordpiece_tokenizer()).save(d / "ptm")
    return d / "ptm"


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-roberta")
    tiny_ptm("roberta", bpe_tokenizer()).save(d / "ptm")
    return d / "ptm"


@pytest.fixture
def bert(bert_dir: Path):
    from bench.ptm import load_ptm

    return load_ptm(bert_dir)


@pytest.fixture
def roberta(roberta_dir: Path):
    from bench.ptm import load_ptm

    return load_ptm(roberta_dir)
