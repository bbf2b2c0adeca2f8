"""PTM save/load keeps the pooler and the (tied) MLM head; the BERT->RoBERTa conversion is exact."""

from __future__ import annotations

import numpy as np
import torch

from bench.modalities.text import ADAPTER as TEXT
from bench.ptm import load_ptm
from bench.zoo import bert_to_roberta


def _batch(ptm):
    return TEXT.pack(ptm.processor, [np.array([5, 6, 7, 8, 9], dtype=np.int32), np.array([6, 7], dtype=np.int32)], 32)


def test_save_load_roundtrip_keeps_pooler_and_head(bert, tmp_path):
    with torch.no_grad():
        bert.backbone.pooler.dense.weight.add_(0.5)  # a pooler that differs from any fresh init
        bert.pt_head.dense.bias.add_(0.25)
    bert.save(tmp_path / "p")
    again = load_ptm(tmp_path / "p")
    assert torch.equal(again.backbone.pooler.dense.weight, bert.backbone.pooler.dense.weight)
    assert torch.equal(again.pt_head.dense.bias, bert.pt_head.dense.bias)
    assert again.pt_head.decoder.weight is again.backbone.embeddings.word_embeddings.weight
    b = _batch(bert)
    bert.backbone.eval(), again.backbone.eval()
    with torch.no_grad():
        assert torch.allclose(TEXT.representation(bert, b), TEXT.representation(again, b))
    assert list(tmp_path.joinpath("p").glob("*.bin")) == []


def test_untied_head_roundtrip(bert, tmp_path):
    from bench.modalities.text import untie_head

    untie_head(bert)
    with torch.no_grad():
        bert.pt_head.decoder.weight.mul_(2)
    bert.save(tmp_path / "p")
    again = load_ptm(tmp_path / "p")
    assert again.pt_head.decoder.weight is not again.backbone.embeddings.word_embeddings.weight
    assert torch.equal(again.pt_head.decoder.weight, bert.pt_head.decoder.weight)


def test_bert_to_roberta_is_the_same_function(bert):
    rob = bert_to_roberta(bert)
    assert rob.family == "roberta"
    b = _batch(bert)
    bert.backbone.eval(), rob.backbone.eval()
    with torch.no_grad():
        h1 = bert.backbone(**b).last_hidden_state
        h2 = rob.backbone(**b).last_hidden_state
        real = b["attention_mask"].bool()  # padded positions differ by design (RoBERTa's padding position)
        assert torch.allclose(h1[real], h2[real], atol=1e-5)
        assert torch.allclose(TEXT.representation(bert, b), TEXT.representation(rob, b), atol=1e-5)
        labels = torch.full_like(b["input_ids"], -100)
        labels[0, 2] = 6
        assert torch.allclose(TEXT.mlm_logits(bert, b, labels), TEXT.mlm_logits(rob, b, labels), atol=1e-4)


def test_roberta_ptm_roundtrip(roberta, tmp_path):
    roberta.save(tmp_path / "r")
    again = load_ptm(tmp_path / "r")
    assert again.family == "roberta"
    assert torch.equal(again.backbone.pooler.dense.weight, roberta.backbone.pooler.dense.weight)
