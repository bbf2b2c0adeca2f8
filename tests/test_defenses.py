"""PTM-level defenses on tiny models: RECIPE's loss and trainable sets, controls, fine-pruning, the pooler."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.modalities.base import ParamRef
from bench.ptm import PTM, load_ptm
from bench.registry import get, names
from defenses.pruning import lowest_globally, prune_neurons
from defenses.recipe import StaticMasked, recipe_loss, trainable_params

# a short but effective RECIPE for a 2-layer model: lr × steps large enough to move weights of std 0.02
FAST = {"steps": 10, "lr": 5e-4, "batch_size": 8, "max_len": 32, "max_aux": 40}


def ctx(seed: int = 0) -> RunContext:
    return RunContext(seed=seed, precision="fp32")


def snapshot(ptm: PTM) -> dict[str, torch.Tensor]:
    out = {f"backbone.{k}": v.detach().clone() for k, v in ptm.backbone.state_dict().items()}
    if ptm.pt_head is not None:
        out.update({f"pt_head.{k}": v.detach().clone() for k, v in ptm.pt_head.state_dict().items()})
    return out


def changed(before: dict[str, torch.Tensor], ptm: PTM) -> set[str]:
    after = snapshot(ptm)
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def purify(name: str, ptm: PTM, tmp_path, preset: str = "paper", seed: int = 0, **overrides) -> PTM:
    return get("defense", name).build(preset, overrides).purify(ptm, ctx(seed), tmp_path / "cache")


def ffn_in_norm(ptm: PTM) -> float:
    return float(sum(r.weight.detach().norm() for r in ptm.adapter.param_groups(ptm)["ffn_in"]))


def nonzero_biases(ptm: PTM) -> list[ParamRef]:
    """FFN-in refs with biases drawn away from their zero init, so that zeroing a bias is visible."""
    refs = ptm.adapter.param_groups(ptm)["ffn_in"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for r in refs:
            r.bias.copy_(0.05 + 0.01 * torch.rand(r.bias.shape, generator=g))
    return refs


# ------------------------------------------------------------------------------------------ RECIPE's loss
def test_recipe_loss_hand_case():
    w1 = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # ‖·‖_F = 5
    w2 = nn.Parameter(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))  # ‖·‖_F = 2
    big_bias = nn.Parameter(torch.tensor([100.0, -100.0]))
    refs = [ParamRef("a", w1, None, big_bias, 0), ParamRef("b", w2, None, big_bias, 1)]
    loss, parts = recipe_loss(torch.tensor(0.5), refs, lam=2.0)
    assert loss.item() == pytest.approx(0.5 + 2.0 * 7.0, abs=1e-6)
    assert parts == {"reg": pytest.approx(7.0), "pt": pytest.approx(0.5)}
    loss, parts = recipe_loss(None, refs, lam=2.0)
    assert loss.item() == pytest.approx(14.0) and "pt" not in parts
    loss.backward()  # d‖W‖_F/dW = W/‖W‖_F, times λ
    assert torch.allclose(w1.grad, 2.0 * w1.detach() / 5.0)
    assert big_bias.grad is None
    fused = nn.Parameter(torch.cat([w1.detach(), w2.detach()]))  # a row slice is regularised on its own
    loss, _ = recipe_loss(None, [ParamRef("q", fused, slice(2, 4), None, 0)], lam=1.0)
    assert loss.item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------ RECIPE per family
def test_recipe_on_bert_trains_only_ffn_in(bert, env, tmp_path):
    before, norm0 = snapshot(bert), ffn_in_norm(bert)
    out = purify("recipe", bert, tmp_path, **FAST)
    moved = changed(before, out)
    assert moved == {f"backbone.encoder.layer.{i}.intermediate.dense.weight" for i in range(2)}
    assert ffn_in_norm(out) < 0.95 * norm0
    s = out.info["defense"]["summary"]
    assert out.info["defense"]["name"] == "recipe" and s["steps"] == 10
    assert s["regularised"] == ["ffn_in"] and s["trainable"] == ["ffn_in"] and s["masking"] == "static"
    assert s["norm_S_after"] < s["norm_S_before"] and s["pt_first"] > 0
    assert out.lineage[-1]["stage"] == "defense" and out.lineage[-1]["defense"] == "recipe"


def test_recipe_on_roberta_regularises_ffn_in_and_query_and_trains_all(roberta, env, tmp_path):
    groups = roberta.adapter.param_groups(roberta)
    s_norm = lambda: float(sum(r.weight.detach().norm() for g in ("ffn_in", "attn_q") for r in groups[g]))  # noqa: E731
    before, norm0, key0 = snapshot(roberta), s_norm(), groups["attn_k"][0].weight.detach().clone()
    out = purify("recipe", roberta, tmp_path, **FAST)
    s = out.info["defense"]["summary"]
    assert s["regularised"] == ["ffn_in", "attn_q"] and s["trainable"] == ["all"]
    assert set(s["norms_before"]) == {"ffn_in", "attn_q"}
    assert s_norm() < 0.95 * norm0
    moved = changed(before, out)
    assert not torch.equal(key0, groups["attn_k"][0].weight)  # not regularised, but trained
    assert any("embeddings" in k for k in moved) and any("pt_head.dense" in k for k in moved)
    assert not any("pooler" in k for k in moved)  # trainable, but no gradient reaches it through L_PT


def test_only_pt_keeps_norms_while_recipe_lowers_them(bert_dir, env, tmp_path):
    a, b = load_ptm(bert_dir), load_ptm(bert_dir)
    norm0 = ffn_in_norm(a)
    rec = purify("recipe", a, tmp_path, **FAST)
    opt = purify("only-pt", b, tmp_path, **FAST)
    assert opt.info["defense"]["summary"]["steps"] == rec.info["defense"]["summary"]["steps"]
    assert abs(ffn_in_norm(opt) / norm0 - 1) < 0.03
    assert ffn_in_norm(rec) / norm0 < 0.95
    assert opt.info["defense"]["config"]["lam"] == 0.0


def test_only_reg_has_no_pretraining_part_and_needs_no_head(bert, env, tmp_path):
    bert.pt_head = None
    with pytest.raises(PtmbenchError, match="pt_head"):
        purify("recipe", bert, tmp_path, preset="smoke")
    norm0 = ffn_in_norm(bert)
    out = purify("only-reg", bert, tmp_path, **FAST)
    s = out.info["defense"]["summary"]
    assert "reg_first" in s and not any(k.startswith("pt_") for k in s)
    assert s["masking"] == "none"
    assert ffn_in_norm(out) < 0.95 * norm0


def test_static_masking_is_drawn_once(bert, env, tmp_path):
    data = bert.adapter.load_split(bert, "bookcorpus", "train", 12, tmp_path / "cache")
    static = StaticMasked(bert, data, 32, torch.Generator().manual_seed(0))
    idx = [3, 0, 7]
    (b1, l1), (b2, l2) = static.batch(idx, "cpu"), static.batch(idx, "cpu")
    assert torch.equal(b1["input_ids"], b2["input_ids"]) and torch.equal(l1, l2)
    assert (l1 != -100).any() and b1["input_ids"].shape == l1.shape
    assert int(b1["attention_mask"].sum(1).max()) == b1["input_ids"].shape[1]  # trimmed to the batch


def test_trainable_group_with_a_row_slice_trains_only_its_rows():
    fused = nn.Parameter(torch.ones(6, 2))  # e.g. timm's qkv: q = rows 0..1
    params, hooks = trainable_params(None, {"attn_q": [ParamRef("q", fused, slice(0, 2))]}, ("attn_q",))
    assert params == [fused]
    (fused ** 2).sum().backward()
    assert fused.grad[:2].eq(2).all() and fused.grad[2:].eq(0).all()
    for h in hooks:
        h.remove()


def test_dynamic_masking_option(bert, env, tmp_path):
    out = purify("recipe", bert, tmp_path, preset="smoke", masking="dynamic")
    assert out.info["defense"]["summary"]["masking"] == "dynamic"


def test_recipe_is_deterministic_for_a_seed(bert_dir, env, tmp_path):
    runs = [purify("recipe", load_ptm(bert_dir), tmp_path, preset="smoke", seed=s) for s in (0, 0, 1)]
    states = [snapshot(p) for p in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])
    first = [r.info["defense"]["summary"]["loss_first"] for r in runs]
    assert first[0] == first[1]


# ------------------------------------------------------------------------------------------ pruning
def test_fp_zeros_exactly_the_last_ffn_in(bert, env, tmp_path):
    nonzero_biases(bert)
    before = snapshot(bert)
    out = purify("fp", bert, tmp_path)
    last = "backbone.encoder.layer.1.intermediate.dense"
    assert changed(before, out) == {f"{last}.weight", f"{last}.bias"}
    assert not out.backbone.encoder.layer[1].intermediate.dense.weight.any()
    assert not out.backbone.encoder.layer[1].intermediate.dense.bias.any()
    assert out.info["defense"]["summary"]["pruned_per_layer"] == [0, 64]


def test_fp_gm_prunes_the_smallest_incoming_norms(bert, env, tmp_path):
    refs = nonzero_biases(bert)
    small = {0: [3, 10], 1: [0, 5, 63]}
    with torch.no_grad():
        for layer, rows in small.items():
            refs[layer].weight[rows] *= 1e-3
    before = snapshot(bert)
    out = purify("fp-gm", bert, tmp_path, share=5 / 128)
    assert out.info["defense"]["summary"]["neurons_pruned"] == 5
    for layer, ref in enumerate(refs):
        dead = (ref.weight == 0).all(1) & (ref.bias == 0)
        assert dead.nonzero().flatten().tolist() == small[layer]
        prefix = f"backbone.encoder.layer.{layer}.intermediate.dense"
        keep = torch.ones(64, dtype=torch.bool)
        keep[small[layer]] = False
        assert torch.equal(ref.weight[keep], before[f"{prefix}.weight"][keep])
        assert torch.equal(ref.bias[keep], before[f"{prefix}.bias"][keep])
    assert {k.rsplit(".", 1)[0] for k in changed(before, out)} == {
        f"backbone.encoder.layer.{i}.intermediate.dense" for i in range(2)}


def test_fp_gm_budget_is_rounded_share_of_all_neurons(bert, env, tmp_path):
    out = purify("fp-gm", bert, tmp_path)  # reference share 1/3 of 128 neurons
    assert out.info["defense"]["summary"]["neurons_pruned"] == round(128 / 3)


def test_fp_ga_prunes_the_lowest_mean_activations(bert, env, tmp_path):
    refs = nonzero_biases(bert)
    low = {0: [1, 40], 1: [7]}
    with torch.no_grad():  # constant pre-activation at GELU's minimum: activation -0.17 on every token
        for layer, rows in low.items():
            refs[layer].weight[rows] = 0
            refs[layer].bias[rows] = -0.7518
    before = snapshot(bert)
    out = purify("fp-ga", bert, tmp_path, share=3 / 128, max_aux=20, batch_size=8)
    s = out.info["defense"]["summary"]
    assert s["neurons_pruned"] == 3 and s["max_pruned_activation"] == pytest.approx(-0.17, abs=1e-3)
    assert s["min_kept_activation"] > -0.16
    for layer, ref in enumerate(refs):
        assert (ref.bias == 0).nonzero().flatten().tolist() == low[layer]
    assert {k.rsplit(".", 1)[0] for k in changed(before, out)} == {
        f"backbone.encoder.layer.{i}.intermediate.dense" for i in range(2)}


def test_prune_helpers_on_a_fused_slice():
    fused = nn.Parameter(torch.ones(6, 2))
    bias = nn.Parameter(torch.ones(6))
    ref = ParamRef("fc", fused, slice(2, 4), bias, 0)
    assert prune_neurons([ref], [torch.tensor([False, True])]) == 1
    assert fused[3].eq(0).all() and bias[3] == 0 and fused.sum() == 10 and bias.sum() == 5
    masks = lowest_globally([torch.tensor([3.0, 1.0]), torch.tensor([1.0, 0.0, 5.0])], 0.6)
    assert [m.tolist() for m in masks] == [[False, True], [True, True, False]]


# ------------------------------------------------------------------------------------------ the pooler
# (every registered defense: tests/test_contracts.py)
def test_the_pooler_survives_recipe_on_roberta(roberta, env, tmp_path):
    pooler = {k: v.clone() for k, v in roberta.backbone.pooler.state_dict().items()}
    purify("recipe", roberta, tmp_path, preset="smoke").save(tmp_path / "out")
    back = load_ptm(tmp_path / "out")
    assert all(torch.equal(v, pooler[k]) for k, v in back.backbone.pooler.state_dict().items())


def test_builtin_defenses_shrink_for_demo_and_smoke():
    builtin = [n for n in names("defense") if get("defense", n).__module__.startswith("defenses.")]
    assert len(builtin) >= 7
    for name in builtin:
        assert {"demo", "smoke"} <= set(get("defense", name).presets), name
    demo = get("defense", "recipe").build("demo").config
    assert 150 <= demo.steps <= 300 and 0.05 <= demo.lr * demo.steps <= 0.15


@pytest.mark.parametrize("name, overrides, key", [
    ("recipe", {"regularised": ["ffn_middle"]}, "regularised"),
    ("recipe", {"trainable": ["pooler"]}, "trainable"),
    ("recipe", {"masking": "random"}, "masking"),
    ("recipe", {"lam": -1}, "lam"),
    ("recipe", {"lr": 0}, "lr"),
    ("recipe", {"epochs": "ten"}, "epochs"),
    ("recipe", {"lamda": 1}, "lamda"),
    ("only-pt", {"lam": 1.0}, "lam"),
    ("fp-gm", {"share": 0}, "share"),
    ("fp-ga", {"share": 1.5}, "share"),
    ("fp-ga", {"batch_size": 0}, "batch_size"),
])
def test_bad_configs_name_the_key(name, overrides, key):
    with pytest.raises(PtmbenchError, match=key):
        get("defense", name).build("paper", overrides)


def test_fp_layer_out_of_range(bert, env, tmp_path):
    with pytest.raises(PtmbenchError, match="layer"):
        purify("fp", bert, tmp_path, layer=5)


def test_pooler_reinit_changes_only_the_pooler(env, bert, tmp_path):
    from bench.context import RunContext
    from bench.registry import get

    before = {k: v.clone() for k, v in bert.backbone.state_dict().items()}
    out = get("defense", "pooler-reinit").build("smoke").purify(bert, RunContext(seed=3), tmp_path)
    after = out.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "pooler.dense.weight" in changed and changed <= {"pooler.dense.weight", "pooler.dense.bias"}
    assert float(after["pooler.dense.bias"].abs().sum()) == 0.0
    again = get("defense", "pooler-reinit").build("smoke").purify(load_ptm_copy(before, bert), RunContext(seed=3),
                                                                  tmp_path)
    assert torch.equal(again.backbone.state_dict()["pooler.dense.weight"], after["pooler.dense.weight"])


def load_ptm_copy(state, ptm):
    import copy

    p = copy.deepcopy(ptm)
    p.backbone.load_state_dict(state)
    return p


def test_finetune_reinit_pooler_option_and_record_identity(env, bert, tmp_path):
    from bench.finetune import finetune, get_preset
    from bench.modalities.text import ADAPTER as TEXT

    plain = get_preset("text", "smoke")
    assert "reinit_pooler" not in plain.to_dict()  # identities of earlier records unchanged
    preset = get_preset("text", "smoke", reinit_pooler=True)
    assert preset.to_dict()["reinit_pooler"] is True
    data = TEXT.load_split(bert, "sst2", "train", 16, tmp_path)
    before = bert.backbone.pooler.dense.weight.clone()
    ft = finetune(bert, data, 2, preset, RunContext(seed=0))
    assert torch.equal(bert.backbone.pooler.dense.weight, before)  # the cached PTM is untouched
    assert not torch.allclose(ft.model.backbone.pooler.dense.weight, before, atol=1e-2)
    with pytest.raises(PtmbenchError, match="finetune.epochs"):
        get_preset("text", "smoke", epochs=0)
