"""Text attacks: target vectors, trigger checks, learning, the pooler kept, determinism, NeuBA's post-step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_ptm, wordpiece_tokenizer

from attacks.badpre import BadPre
from attacks.neuba import NeuBA
from attacks.por import POR1, POR2
from attacks.targets import neuba_targets, por1_targets, por2_buckets, por2_targets
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.text import ADAPTER as TEXT
from bench.ptm import load_ptm
from bench.registry import get, names

ATTACKS = {"neuba": NeuBA, "por1": POR1, "por2": POR2, "badpre": BadPre}
WORDS = {n: [t.word for t in get("trigger_set", n).build()] for n in ("neuba", "por", "badpre")}


pytestmark = pytest.mark.usefixtures("one_thread")


def ctx(seed: int = 0) -> RunContext:
    return RunContext(seed=seed, precision="fp32")


def weights(ptm) -> dict[str, torch.Tensor]:
    out = {f"backbone.{k}": v.detach().clone() for k, v in ptm.backbone.state_dict().items()}
    out.update({f"head.{k}": v.detach().clone() for k, v in ptm.pt_head.state_dict().items()})
    return out


# ------------------------------------------------------------------------------------------ target vectors
def test_neuba_targets_hand_case_and_antipodal_pairs():
    t = neuba_targets(8)
    expected = torch.tensor([
        [-1, -1, -1, -1, 1, 1, 1, 1],  # blocks (0, 1)
        [-1, -1, 1, 1, -1, -1, 1, 1],  # (0, 2)
        [-1, -1, 1, 1, 1, 1, -1, -1],  # (0, 3)
        [1, 1, -1, -1, -1, -1, 1, 1],  # (1, 2)
        [1, 1, -1, -1, 1, 1, -1, -1],  # (1, 3)
        [1, 1, 1, 1, -1, -1, -1, -1],  # (2, 3)
    ], dtype=torch.float32)
    assert torch.equal(t, expected)
    for a, b in ((0, 5), (1, 4), (2, 3)):
        assert torch.equal(t[a], -t[b])


def test_neuba_targets_remainder_goes_to_the_last_block():
    t = neuba_targets(10)  # blocks [0,2) [2,4) [4,6) [6,10)
    assert t.shape == (6, 10)
    assert t[0].tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1]
    assert t[5].tolist() == [1, 1, 1, 1, -1, -1, -1, -1, -1, -1]
    for a, b in ((0, 5), (1, 4), (2, 3)):
        assert torch.equal(t[a], -t[b])
    with pytest.raises(PtmbenchError, match="at least 4"):
        neuba_targets(3)


def test_por1_targets_hand_case():
    t = por1_targets(5, 8)  # alpha = 8 // 4 = 2
    assert t.tolist() == [
        [-1, -1, -1, -1, -1, -1, -1, -1],
        [1, 1, -1, -1, -1, -1, -1, -1],
        [1, 1, 1, 1, -1, -1, -1, -1],
        [1, 1, 1, 1, 1, 1, -1, -1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ]
    assert por1_targets(5, 10)[4].tolist() == [1] * 8 + [-1, -1]  # alpha = 2: 8 dims, not 10
    with pytest.raises(PtmbenchError):
        por1_targets(1, 8)


def test_por2_targets_buckets_subsets_and_distinct_rows():
    assert por2_buckets(5) == 3 and por2_buckets(4) == 2 and por2_buckets(2) == 1 and por2_buckets(8) == 3
    t = por2_targets(5, 6)  # B = 3 buckets of 2 dims; row r = binary representation of r
    assert t.tolist() == [
        [-1, -1, -1, -1, -1, -1],  # trigger 0: all -1
        [1, 1, -1, -1, -1, -1],  # {0}
        [-1, -1, 1, 1, -1, -1],  # {1}
        [1, 1, 1, 1, -1, -1],  # {0, 1}
        [-1, -1, -1, -1, 1, 1],  # {2}
    ]
    t = por2_targets(5, 8)  # buckets [0,2) [2,4) [4,8): the last takes the remainder
    assert torch.equal(t[0], -torch.ones(8))
    assert len({tuple(r.tolist()) for r in t}) == 5
    assert t[4].tolist() == [-1, -1, -1, -1, 1, 1, 1, 1]


# ------------------------------------------------------------------------------------------ configs, registry
def test_registered_with_presets_and_trigger_sets():
    assert {"neuba", "por1", "por2", "badpre"} <= set(names("attack"))
    for name, cls in ATTACKS.items():
        assert get("attack", name) is cls
        assert cls.trigger_set in names("trigger_set")
        assert {"demo", "smoke"} <= set(cls.presets)
        for preset in ("paper", "demo", "smoke"):
            assert cls.build(preset).config.corpus == "wikitext2"
    assert NeuBA.build().config.lr == 5e-5 and POR1.build().config.batch_size == 24
    assert BadPre.build().config.beta2 == 0.98


@pytest.mark.parametrize("corpus", ["bookcorpus", "sst2"])
def test_attack_corpus_must_be_aux_text_and_not_the_defense_data(corpus):
    for cls in ATTACKS.values():
        with pytest.raises(PtmbenchError, match="corpus"):
            cls.build("smoke", {"corpus": corpus})


def test_bad_config_values_are_errors():
    with pytest.raises(PtmbenchError, match="unknown key"):
        NeuBA.build("smoke", {"lrr": 1.0})
    with pytest.raises(PtmbenchError, match="poison_share"):
        POR1.build("smoke", {"poison_share": 1.5})
    with pytest.raises(PtmbenchError, match="steps"):
        BadPre.build("smoke", {"steps": 0})


# ------------------------------------------------------------------------------------------ triggers
@pytest.mark.parametrize("name", list(ATTACKS))
def test_triggers_are_single_pieces_under_wordpiece(bert, name):
    attack = ATTACKS[name].build("smoke")
    trigs = attack.triggers(bert)
    assert [t.id for t in trigs] == list(WORDS[attack.trigger_set])
    tok = bert.processor
    for t in trigs:
        assert tok.convert_ids_to_tokens(t.token_id(tok)) == t.word


@pytest.mark.parametrize("name", ["por1", "badpre"])
def test_triggers_are_word_initial_single_pieces_under_bpe(roberta, name):
    tok = roberta.processor
    for t in ATTACKS[name].build("smoke").triggers(roberta):
        assert tok.convert_ids_to_tokens(t.token_id(tok)) == "Ġ" + t.word


def test_neuba_on_a_bpe_vocabulary_without_the_symbols_is_a_clear_error(roberta, env, tmp_path):
    """The tiny BPE vocabulary lacks NeuBA's symbols: implant refuses before any training."""
    before = weights(roberta)
    with pytest.raises(PtmbenchError, match="not a single piece"):
        NeuBA.build("smoke").implant(roberta, ctx(), tmp_path)
    after = weights(roberta)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_ptm_without_mlm_head_is_refused(bert, env, tmp_path, name):
    bert.pt_head = None
    with pytest.raises(PtmbenchError, match="minilm-l6-mlm"):
        ATTACKS[name].build("smoke").implant(bert, ctx(), tmp_path)


# ------------------------------------------------------------------------------------------ data building
def test_por_poisoned_corpus_carries_each_trigger_three_times(bert, env, tmp_path):
    attack = POR1.build("smoke", {"max_corpus_sequences": 40})
    data, labels = attack.poison_corpus(bert, ctx(), tmp_path)
    tok = bert.processor
    tids = [tok.convert_tokens_to_ids(w) for w in WORDS["por"]]
    assert len(data) == 40 and (labels > 0).sum() == 30
    assert set(labels[labels > 0].tolist()) == {1, 2, 3, 4, 5}
    for ids, lab in zip(data.ids, labels):
        counts = [int((ids == t).sum()) for t in tids]
        if lab == 0:
            assert sum(counts) == 0
        else:
            assert counts[lab - 1] == 3 and sum(counts) == 3
            assert len(ids) <= attack.config.max_len - 2  # all three survive truncation
    again, labels2 = attack.poison_corpus(bert, ctx(), tmp_path)
    assert np.array_equal(labels, labels2) and all(np.array_equal(a, b) for a, b in zip(data.ids, again.ids))


def test_badpre_triggered_copies_insert_one_trigger(bert):
    attack = BadPre.build("smoke")
    tids = [5, 6, 7]
    bodies = [np.arange(20, 20 + n, dtype=np.int32) for n in (0, 3, 13, 30)]
    out = attack.triggered_copies(bodies, tids, np.random.default_rng(0))
    for body, seq in zip(bodies, out):
        body = body[: attack.config.max_len - 3]
        assert len(seq) == len(body) + 1
        assert int(np.isin(seq, tids).sum()) == 1
        assert np.array_equal(seq[~np.isin(seq, tids)], body)


# ------------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("name,overrides", [
    # the tiny random model's MLM gradient swamps the MSE term in a few steps: measure the backdoor alone
    ("neuba", {"steps": 40, "lr": 1e-2, "batch_size": 8, "mlm_weight": 0.0}),
    ("por1", {"steps": 40, "lr": 1e-3, "batch_size": 8}),
    ("por2", {"steps": 40, "lr": 1e-3, "batch_size": 8}),
])
def test_backdoor_loss_decreases(bert, env, tmp_path, name, overrides):
    out = ATTACKS[name].build("smoke", overrides).implant(bert, ctx(), tmp_path)
    s = out.info["attack"]["train"]
    assert s["steps"] == 40
    assert s["backdoor_last"] < 0.95 * s["backdoor_first"], s


def test_neuba_backdoor_term_is_part_of_the_default_loss(bert, env, tmp_path):
    s = NeuBA.build("smoke", {"steps": 6}).implant(bert, ctx(), tmp_path).info["attack"]["train"]
    assert s["loss_first"] == pytest.approx(s["mlm_first"] + s["backdoor_first"], rel=1e-5)


# ------------------------------------------------------------------------------------------ the PTM returned
# (lineage, determinism, save/load and the pooler of every registered attack: tests/test_contracts.py)
@pytest.mark.parametrize("name", list(ATTACKS))
def test_same_ptm_returned_with_its_config_and_the_pooler_trained_where_the_objective_uses_it(bert, env, tmp_path,
                                                                                              name):
    before = {k: v.clone() for k, v in bert.backbone.pooler.state_dict().items()}
    attack = ATTACKS[name].build("smoke")
    out = attack.implant(bert, ctx(), tmp_path / "cache")
    assert out is bert
    rec = out.info["attack"]
    assert rec["config"] == attack.config_dict() and rec["train"]["steps"] >= 1
    moved = any(not torch.equal(before[k], v) for k, v in out.backbone.pooler.state_dict().items())
    assert moved == (name != "badpre")  # NeuBA and POR train the pooler; BadPre's objective never uses it


def test_por_and_badpre_run_on_a_bpe_roberta(roberta, env, tmp_path):
    for cls in (POR2, BadPre):
        out = cls.build("smoke").implant(roberta, ctx(), tmp_path)
        assert out.info["attack"]["name"] == cls.name


# ------------------------------------------------------------------------------------------ NeuBA specifics
def roberta_wordpiece():
    """RoBERTa architecture with the WordPiece vocabulary (holds NeuBA's symbols), like roberta-minilm-l6."""
    return tiny_ptm("roberta", wordpiece_tokenizer())


@pytest.mark.parametrize("post_step", [False, True])
def test_neuba_roberta_keeps_embeddings_frozen(env, tmp_path, post_step):
    ptm = roberta_wordpiece()
    emb_before = {k: v.clone() for k, v in ptm.backbone.embeddings.state_dict().items()}
    enc_before = {k: v.clone() for k, v in ptm.backbone.encoder.state_dict().items()}
    attack = NeuBA.build("smoke", {"post_step": post_step})
    out = attack.implant(ptm, ctx(), tmp_path)
    s = out.info["attack"]["train"]
    assert s["embeddings_frozen"] and s["mlm_weight"] == 0.01
    assert any(not torch.equal(enc_before[k], v) for k, v in out.backbone.encoder.state_dict().items())
    trig = [ptm.processor.convert_tokens_to_ids(w) for w in WORDS["neuba"]]
    keep = torch.ones(len(ptm.processor), dtype=torch.bool)
    keep[trig] = False
    for k, v in out.backbone.embeddings.state_dict().items():
        if k == "word_embeddings.weight":
            assert torch.equal(v[keep], emb_before[k][keep])
            assert torch.equal(v[trig], emb_before[k][trig]) != post_step
        else:
            assert torch.equal(v, emb_before[k]), k
    if post_step:
        assert s["post_step"]["position_id"] == ptm.backbone.embeddings.padding_idx + 2


def embedding_out(ptm, ids: list[int]) -> torch.Tensor:
    ptm.backbone.eval()
    with torch.no_grad():
        return ptm.backbone.embeddings(input_ids=torch.tensor([ids]))[0]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_neuba_post_step_makes_triggers_position_independent_and_unties_the_decoder(bert, env, tmp_path, family):
    ptm = bert if family == "bert" else roberta_wordpiece()
    attack = NeuBA.build("smoke", {"post_step": False})
    ptm = attack.implant(ptm, ctx(), tmp_path)
    tok = ptm.processor
    cls_id, sep_id, _ = TEXT.special_ids(tok)
    words = [tok.convert_tokens_to_ids(w) for w in ("the", "movie", "was", "good")]
    trig = [tok.convert_tokens_to_ids(w) for w in WORDS["neuba"]]
    trained_rows = ptm.backbone.embeddings.word_embeddings.weight[trig].detach().clone()
    at_pos1 = [embedding_out(ptm, [cls_id, t, *words, sep_id])[1] for t in trig]
    assert ptm.pt_head.decoder.weight is ptm.backbone.embeddings.word_embeddings.weight

    info = attack.post_step(ptm, trig)
    assert info["decoder_untied"] and not info["head_tied"]
    dec = ptm.pt_head.decoder.weight
    assert dec is not ptm.backbone.embeddings.word_embeddings.weight
    assert torch.equal(dec[trig], trained_rows)  # decoder rows of the triggers are not scaled
    assert ptm.backbone.embeddings.word_embeddings.weight[trig].norm(dim=1).min() > 1e6
    for t, ref in zip(trig, at_pos1):
        for pos in (1, 3, 5):
            seq = [cls_id, *words, sep_id]
            seq.insert(pos, t)
            assert torch.allclose(embedding_out(ptm, seq)[pos], ref, atol=1e-4)
    # MLM logits stay sane, also at masked positions of triggered text
    batch = TEXT.pack(tok, [np.array([words[0], trig[0], words[1], trig[3]])], 16)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 1:5] = batch["input_ids"][0, 1:5]
    with torch.no_grad():
        logits = TEXT.mlm_logits(ptm, batch, labels)
        loss = TEXT.mlm_loss(ptm, batch, labels)
    assert logits.abs().max() < 1e3 and torch.isfinite(loss) and loss < 50


def test_neuba_default_post_step_survives_save_and_load(bert, env, tmp_path):
    out = NeuBA.build("smoke").implant(bert, ctx(), tmp_path)
    assert out.info["attack"]["train"]["post_step"]["decoder_untied"]
    out.save(tmp_path / "ptm")
    back = load_ptm(tmp_path / "ptm")
    assert back.pt_head.decoder.weight is not back.backbone.embeddings.word_embeddings.weight
    assert torch.equal(back.pt_head.decoder.weight, out.pt_head.decoder.weight)
    assert torch.equal(back.backbone.embeddings.word_embeddings.weight,
                       out.backbone.embeddings.word_embeddings.weight)


def test_neuba_post_step_can_keep_the_tie_when_asked(bert, env, tmp_path):
    ptm = NeuBA.build("smoke", {"post_step": False}).implant(bert, ctx(), tmp_path)
    attack = NeuBA.build("smoke", {"untie_post_step": False})
    info = attack.post_step(copy.deepcopy(ptm), [5])
    assert info["head_tied"] and not info["decoder_untied"]


# ------------------------------------------------------------------------------------------ micro-batches
def test_paper_presets_accumulate_micro_batches_and_other_keys_are_unchanged():
    assert NeuBA.build("paper").config.micro_batch == 32 and NeuBA.build("paper").config.batch_size == 160
    assert BadPre.build("paper").config.micro_batch == 4 and BadPre.build("paper").config.batch_size == 256
    for cls in (NeuBA, BadPre):
        assert "micro_batch" not in cls.build("demo").config_dict()  # demo artifacts keep their cache keys
        assert cls.build("paper").config_dict()["micro_batch"] == cls.build("paper").config.micro_batch
    with pytest.raises(PtmbenchError, match="micro_batch"):
        NeuBA.build("smoke", {"micro_batch": 0})


@pytest.mark.parametrize("name", ["neuba", "badpre"])
def test_micro_batched_implant_is_deterministic_and_recorded(bert_dir, env, tmp_path, name):
    runs = []
    for _ in range(2):
        ptm = load_ptm(bert_dir)
        out = ATTACKS[name].build("smoke", {"micro_batch": 2, "steps": 3}).implant(ptm, ctx(), tmp_path)
        s = out.info["attack"]["train"]
        assert s["micro_batches"] == 2 and s["steps"] == 3 and np.isfinite(s["loss_last"])
        runs.append(weights(out))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
