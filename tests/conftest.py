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


PALETTE = np.random.default_rng(99).integers(0, 256, size=(200, 3))


def jpeg(pixels: np.ndarray, mode: str = "RGB") -> dict:
    import io

    from PIL import Image

    im = Image.fromarray(pixels.astype(np.uint8), "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG" if mode in ("RGB", "L", "CMYK") else "PNG", quality=95)
    return {"bytes": buf.getvalue(), "path": None}


def image_set(n: int, seed: int, size: int, classes: list[int] | int | None, n_names: int = 10,
              grey_every: int = 0) -> datasets.Dataset:
    """Images whose colour is their class's palette colour plus noise (learnable by a tiny ViT)."""
    rng = np.random.default_rng(seed)
    pool = list(range(classes)) if isinstance(classes, int) else classes
    labels = [int(x) for x in rng.choice(pool, size=n)] if pool is not None else [0] * n
    images = []
    for i, y in enumerate(labels):
        px = np.clip(PALETTE[y][None, None, :] + rng.normal(0, 20, size=(size, size, 3)), 0, 255)
        images.append(jpeg(px, "L" if grey_every and i % grey_every == 0 else "RGB"))
    cols: dict = {"image": images}
    feats: dict = {"image": datasets.Image()}
    if pool is not None:
        cols["label"] = labels
        feats["label"] = datasets.ClassLabel(names=[f"c{k}" for k in range(n_names)])
    return datasets.Dataset.from_dict(cols, datasets.Features(feats))


def build_mirror(root: Path) -> Path:
    manifest: list[dict] = []
    for split, n, seed in (("train", 60, 11), ("test", 30, 12)):
        write_parquet(root, f"images/cifar10/{split}.parquet", image_set(n, seed, 32, [0, 1, 2, 3, 5]), manifest)
        write_parquet(root, f"images/gtsrb/{split}.parquet",
                      image_set(n, seed + 10, 35, [13, 38, 13, 38, 1], n_names=43), manifest)
    write_parquet(root, "images/tiny-imagenet/train.parquet", image_set(64, 21, 32, 8, n_names=200), manifest)
    write_parquet(root, "images/tiny-imagenet/validation.parquet",
                  image_set(32, 22, 64, 8, n_names=200, grey_every=5), manifest)
    write_parquet(root, "images/tiny-imagenet/test.parquet", image_set(24, 23, 64, None, grey_every=7), manifest)
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


def tiny_vit():
    from bench.modalities.vision import ADAPTER as VISION
    from bench.modalities.vision import ImageProcessor, ViTConfig

    torch.manual_seed(0)
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
    return VISION.new(ViTConfig(None, kwargs, 200), 200, ImageProcessor(16))


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-vit")
    tiny_vit().save(d / "ptm")
    return d / "ptm"


@pytest.fixture
def vit(vit_dir: Path):
    from bench.ptm import load_ptm

    return load_ptm(vit_dir)


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


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and the CI box is shared); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cancel_after(n: int):
    """A ``RunContext.cancel`` that lets ``n`` training steps start, then cancels (a cut at a known step)."""
    count = {"n": 0}

    def cancel() -> bool:
        count["n"] += 1
        return count["n"] > n

    return cancel
