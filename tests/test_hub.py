"""Hub models bring their pretraining heads: tiny models placed in a temporary Hugging Face cache under fake hub
ids, loaded offline through the zoo's model resolution (text: MLM head; timm ViT: its classifier)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.errors import PtmbenchError

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline, for this process (constants) and its subprocesses (env)."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def hub_repo(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` at REV in the cache layout, with refs/main pointing at it."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / REV
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REV)
    return snap


def _zoo_load(name: str, tmp_path: Path):
    from bench.artifacts import ArtifactStore
    from bench.context import RunContext
    from bench.zoo import Zoo

    cache = tmp_path / "ptmbench-cache"
    return Zoo(ArtifactStore(cache / "artifacts"), cache).load(name, RunContext(precision="fp32"))[0]


def _bert_config(vocab: int, **kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **kw)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _bert_mlm_repo(snap: Path, tie: bool = True):
    from conftest import wordpiece_tokenizer
    from transformers import BertForMaskedLM

    tok = wordpiece_tokenizer()
    torch.manual_seed(1)
    model = BertForMaskedLM(_bert_config(len(tok), tie_word_embeddings=tie))
    _randomise(model.cls, 7)  # a head that no fresh initialisation would produce
    model.save_pretrained(str(snap))
    tok.save_pretrained(str(snap))
    # as bert-base-uncased's checkpoint (BertForPreTraining's), the file also holds the pooler
    pooler = torch.nn.Linear(32, 32)
    _randomise(pooler, 11)
    state = {**load_file(str(snap / "model.safetensors")), "bert.pooler.dense.weight": pooler.weight.detach(),
             "bert.pooler.dense.bias": pooler.bias.detach()}
    save_file(state, str(snap / "model.safetensors"), metadata={"format": "pt"})
    model.pooler = pooler
    return model


def test_hub_bert_brings_its_pretrained_mlm_head(hf_cache, tmp_path, caplog):
    upstream = _bert_mlm_repo(hub_repo(hf_cache, "acme/tiny-bert"))
    with caplog.at_level(logging.WARNING, logger="ptmbench"):
        ptm = _zoo_load("acme/tiny-bert", tmp_path)
    assert not [r for r in caplog.records if r.name == "ptmbench"], caplog.text
    head, up = ptm.pt_head, upstream.cls.predictions
    assert torch.equal(head.dense.weight, up.transform.dense.weight)
    assert torch.equal(head.dense.bias, up.transform.dense.bias)
    assert torch.equal(head.layer_norm.weight, up.transform.LayerNorm.weight)
    assert torch.equal(head.layer_norm.bias, up.transform.LayerNorm.bias)
    assert torch.equal(head.decoder.bias, up.bias)
    assert head.decoder.weight is ptm.backbone.embeddings.word_embeddings.weight  # tied, as upstream
    assert torch.equal(head.decoder.weight, up.decoder.weight)
    assert ptm.info["pt_head_source"] == "checkpoint" and ptm.info["head_tied"]
    assert torch.equal(ptm.backbone.pooler.dense.weight, upstream.pooler.weight)
    # the PTM's MLM logits are the checkpoint's
    ids = torch.tensor([[2, 7, 8, 4, 9, 3]])
    with torch.no_grad():
        ours = ptm.pt_head(ptm.backbone(input_ids=ids).last_hidden_state)
        theirs = upstream.eval()(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_hub_untied_roberta_head_stays_untied(hf_cache, tmp_path):
    from conftest import bpe_tokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM

    snap = hub_repo(hf_cache, "acme/tiny-roberta")
    tok = bpe_tokenizer()
    torch.manual_seed(2)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=70, type_vocab_size=1,
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    upstream = RobertaForMaskedLM(cfg)
    _randomise(upstream.lm_head, 8)
    upstream.save_pretrained(str(snap))
    tok.save_pretrained(str(snap))
    ptm = _zoo_load("acme/tiny-roberta", tmp_path)
    assert ptm.family == "roberta" and not ptm.info["head_tied"]
    assert ptm.pt_head.decoder.weight is not ptm.backbone.embeddings.word_embeddings.weight
    assert torch.equal(ptm.pt_head.decoder.weight, upstream.lm_head.decoder.weight)
    assert torch.equal(ptm.pt_head.decoder.bias, upstream.lm_head.decoder.bias)
    assert torch.equal(ptm.pt_head.dense.weight, upstream.lm_head.dense.weight)


def test_checkpoint_without_head_warns_once_and_is_deterministic(hf_cache, tmp_path, caplog):
    from conftest import wordpiece_tokenizer
    from transformers import BertModel

    snap = hub_repo(hf_cache, "acme/headless")
    tok = wordpiece_tokenizer()
    BertModel(_bert_config(len(tok)), add_pooling_layer=True).save_pretrained(str(snap))
    tok.save_pretrained(str(snap))
    with caplog.at_level(logging.WARNING, logger="ptmbench"):
        a = _zoo_load("acme/headless", tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "ptmbench"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "acme/headless" in warnings[0] and "MLM head" in warnings[0] and "fresh" in warnings[0]
    assert a.info["pt_head_source"] == "fresh"
    b = _zoo_load("acme/headless", tmp_path)
    assert torch.equal(a.pt_head.dense.weight, b.pt_head.dense.weight)  # a fresh head is seeded


def test_pickle_only_directory_brings_its_head_when_opted_in(tmp_path, monkeypatch):
    from conftest import wordpiece_tokenizer
    from transformers import BertForMaskedLM

    d = tmp_path / "pickled"
    d.mkdir()
    tok = wordpiece_tokenizer()
    model = BertForMaskedLM(_bert_config(len(tok)))
    _randomise(model.cls, 9)
    model.config.to_json_file(str(d / "config.json"))
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    tok.save_pretrained(str(d))
    with pytest.raises(PtmbenchError, match="pickle"):
        _zoo_load(str(d), tmp_path)
    monkeypatch.setenv("PTMBENCH_ALLOW_PICKLE", "1")
    ptm = _zoo_load(str(d), tmp_path)
    assert torch.equal(ptm.pt_head.dense.weight, model.cls.predictions.transform.dense.weight)
    assert torch.equal(ptm.pt_head.decoder.bias, model.cls.predictions.bias)
    assert torch.equal(ptm.backbone.encoder.layer[0].intermediate.dense.weight,
                       model.bert.encoder.layer[0].intermediate.dense.weight)


def _timm_repo(snap: Path, with_head: bool = True):
    import timm

    args = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **args).eval()
    _randomise(model.head, 10)
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": 10, "num_features": 32, "model_args": args,
           "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                              "num_classes": 10, "classifier": "head", "fixed_input_size": True}}
    (snap / "config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if with_head or not k.startswith("head.")}
    save_file(state, str(snap / "model.safetensors"))
    return model


@pytest.mark.parametrize("name", ["acme/tiny-vit", "hf-hub:acme/tiny-vit", "timm/tiny-vit"])
def test_hub_vit_brings_its_classifier(hf_cache, tmp_path, name):
    repo = name.removeprefix("hf-hub:")
    upstream = _timm_repo(hub_repo(hf_cache, repo))
    ptm = _zoo_load(name, tmp_path)
    assert ptm.modality == "vision" and ptm.info["pt_head_source"] == "checkpoint"
    assert torch.equal(ptm.pt_head.weight, upstream.head.weight) and torch.equal(ptm.pt_head.bias, upstream.head.bias)
    assert ptm.processor.size == 16 and tuple(ptm.processor.std) == (0.25, 0.25, 0.25)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ptm.pt_head(ptm.backbone.eval()(x)), upstream(x), atol=1e-5)


def test_hub_vit_without_classifier_warns(hf_cache, tmp_path, caplog):
    _timm_repo(hub_repo(hf_cache, "acme/vit-nohead"), with_head=False)
    with caplog.at_level(logging.WARNING, logger="ptmbench"):
        ptm = _zoo_load("acme/vit-nohead", tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "ptmbench"]
    assert len(warnings) == 1 and "classifier" in warnings[0] and "fresh" in warnings[0]
    assert ptm.info["pt_head_source"] == "fresh" and ptm.pt_head.out_features == 10


def test_uncached_hub_id_offline_is_one_clear_error(hf_cache, tmp_path):
    with pytest.raises(PtmbenchError, match="not in the local Hugging Face cache"):
        _zoo_load("acme/not-there", tmp_path)


def test_cli_export_of_a_hub_id_uses_hf_home_and_warns_on_stderr(env, hf_cache, tmp_path):
    """Through the real CLI: the cache is found from HF_HOME alone, and a missing head is one stderr line."""
    from conftest import wordpiece_tokenizer
    from transformers import BertModel

    _bert_mlm_repo(hub_repo(hf_cache, "acme/tiny-bert"))
    snap = hub_repo(hf_cache, "acme/headless")
    tok = wordpiece_tokenizer()
    BertModel(_bert_config(len(tok)), add_pooling_layer=True).save_pretrained(str(snap))
    tok.save_pretrained(str(snap))
    sub_env = {k: v for k, v in {**env, "HF_HOME": str(hf_cache.parent), "HF_HUB_OFFLINE": "1"}.items()
               if k != "HF_HUB_CACHE"}
    ok = subprocess.run([sys.executable, "-m", "bench.cli", "export", "acme/tiny-bert", "--out", str(tmp_path / "a")],
                        env=sub_env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert "fresh" not in ok.stderr and (tmp_path / "a" / "model.safetensors").is_file()
    warn = subprocess.run([sys.executable, "-m", "bench.cli", "export", "acme/headless", "--out",
                           str(tmp_path / "b")], env=sub_env, capture_output=True, text=True, timeout=600)
    assert warn.returncode == 0, warn.stderr
    lines = [x for x in warn.stderr.splitlines() if "MLM head" in x]
    assert len(lines) == 1 and "acme/headless" in lines[0] and "initialised fresh" in lines[0]
