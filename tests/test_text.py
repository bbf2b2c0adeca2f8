"""Text adapter: tokenisation with word starts, packing, trigger insertion, BPE handling, MLM masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import PtmbenchError
from bench.modalities.text import ADAPTER as TEXT
from bench.triggers import TextTrigger


def test_tokenize_records_word_starts(bert):
    tt = TEXT.tokenize(bert.processor, ["the movie was good", "cfs film"], np.array([1, 0]))
    tok = bert.processor
    assert tok.convert_ids_to_tokens(tt.ids[0].tolist()) == ["the", "movie", "was", "good"]
    assert tt.starts[0].tolist() == [0, 1, 2, 3]
    # "cfs" is split into two pieces: the next word starts two tokens later
    assert tok.convert_ids_to_tokens(tt.ids[1].tolist()) == ["cf", "##s", "film"]
    assert tt.starts[1].tolist() == [0, 2]


def test_pack_adds_specials_truncates_and_pads(bert):
    tok = bert.processor
    seqs = [np.arange(10, 20, dtype=np.int32), np.array([11, 12], dtype=np.int32)]
    b = TEXT.pack(tok, seqs, max_len=6)
    ids, mask = b["input_ids"], b["attention_mask"]
    assert ids.shape == (2, 6)
    assert ids[0].tolist() == [tok.cls_token_id, 10, 11, 12, 13, tok.sep_token_id]
    assert ids[1].tolist() == [tok.cls_token_id, 11, 12, tok.sep_token_id, tok.pad_token_id, tok.pad_token_id]
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("position,expected_slot", [("first", 0), ("last", 3)])
def test_trigger_first_and_last(bert, position, expected_slot):
    tok = bert.processor
    tt = TEXT.tokenize(tok, ["cfs movie good"], None)  # starts [0, 2, 3]
    out = TextTrigger("mn", position=position).apply(tt, tok, seed=0)
    pieces = tok.convert_ids_to_tokens(out.ids[0].tolist())
    expected = ["cf", "##s", "movie", "good"]
    expected.insert({0: 0, 3: 4}[expected_slot], "mn")
    assert pieces == expected


def test_trigger_random_slot_is_deterministic_per_sample_and_never_splits_a_word(bert):
    tok = bert.processor
    texts = ["cfs film was good"] * 40
    tt = TEXT.tokenize(tok, texts, None)
    trig = TextTrigger("mn")
    a = trig.apply(tt, tok, seed=3)
    b = trig.apply(tt, tok, seed=3)
    c = trig.apply(tt, tok, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.ids, b.ids))
    assert any(not np.array_equal(x, y) for x, y in zip(a.ids, c.ids))
    positions = set()
    for ids in a.ids:
        pieces = tok.convert_ids_to_tokens(ids.tolist())
        i = pieces.index("mn")
        positions.add(i)
        assert not (i + 1 < len(pieces) and pieces[i + 1].startswith("##"))  # inserted at a word boundary
    assert positions == {0, 2, 3, 4, 5}  # every word slot 0..n is used, never inside "cf ##s"


def test_trigger_copies(bert):
    tok = bert.processor
    tt = TEXT.tokenize(tok, ["the movie was good"], None)
    out = TextTrigger("cf", copies=3).apply(tt, tok, seed=0)
    assert tok.convert_ids_to_tokens(out.ids[0].tolist()).count("cf") == 3
    assert len(out.ids[0]) == 7


def test_multi_piece_trigger_is_refused(bert):
    with pytest.raises(PtmbenchError, match="not a single piece"):
        TextTrigger("cfs").token_id(bert.processor)


def test_bpe_trigger_uses_word_initial_form(roberta):
    tok = roberta.processor
    tid = TextTrigger("cf").token_id(tok)
    assert tok.convert_ids_to_tokens([tid])[0] == "Ġcf"
    tt = TEXT.tokenize(tok, ["the movie was good"], None)
    out = TextTrigger("cf", position="first").apply(tt, tok, seed=0)
    assert out.ids[0][0] == tid


def test_mask_tokens_follows_bert_recipe(bert):
    tok = bert.processor
    ids = torch.full((64, 50), 10)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    mask = torch.ones_like(ids)
    masked, labels = TEXT.mask_tokens(tok, ids, mask, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    share = chosen.float().mean().item()
    assert 0.12 < share < 0.18
    frac_mask = (masked[chosen] == tok.mask_token_id).float().mean().item()
    assert 0.7 < frac_mask < 0.9
    assert (labels[chosen] == 10).all()


def test_mlm_loss_computes_logits_only_at_masked_positions(bert):
    batch = TEXT.pack(bert.processor, [np.array([5, 6, 7, 8], dtype=np.int32)] * 3, max_len=16)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 2] = 7
    labels[2, 1] = 5
    logits = TEXT.mlm_logits(bert, batch, labels)
    assert logits.shape == (2, len(bert.processor))
    assert TEXT.mlm_loss(bert, batch, labels).item() > 0


def test_param_groups_cover_every_layer(bert, roberta):
    for ptm in (bert, roberta):
        g = TEXT.param_groups(ptm)
        for name in ("ffn_in", "ffn_out", "attn_q", "attn_k", "attn_v"):
            assert [r.layer for r in g[name]] == [0, 1]
        assert g["ffn_in"][0].weight.shape == (64, 32)
        assert g["ffn_in"][0].bias.shape == (64,)
