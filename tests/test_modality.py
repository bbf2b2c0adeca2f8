"""One modality vocabulary everywhere, and adapters that declare their optional capabilities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.errors import PtmbenchError
from bench.modalities.base import Adapter
from bench.modalities.families import TEXT_FAMILIES
from bench.modalities.text import ADAPTER as TEXT
from bench.modalities.vision import ADAPTER as VISION
from bench.modality import MODALITIES
from bench.registry import get, names


@pytest.mark.parametrize("adapter", [TEXT, VISION], ids=lambda a: a.name)
def test_adapters_meet_the_protocol_and_declare_capabilities(adapter):
    assert isinstance(adapter, Adapter) and adapter.name in MODALITIES
    assert adapter.masked_lm == hasattr(adapter, "mask_tokens")
    assert adapter.teacher_logits == hasattr(adapter, "pretrain_logits")


@pytest.mark.parametrize("kind", ["dataset", "model", "trigger_set"])
def test_every_registered_thing_speaks_the_one_vocabulary(kind):
    for name in names(kind):
        assert get(kind, name).modality in MODALITIES, (kind, name)


@pytest.mark.parametrize("kind", ["attack", "defense"])
def test_every_method_declares_modalities_of_the_vocabulary(kind):
    for name in names(kind):
        assert set(get(kind, name).modalities) <= set(MODALITIES), (kind, name)


# ------------------------------------------------------------------------------------------ family facts
@pytest.mark.parametrize("name", list(TEXT_FAMILIES))
def test_every_text_family_answers_each_fact_for_a_tiny_model_of_it(name, request):
    import transformers
    import transformers.activations

    ptm = request.getfixturevalue(name)  # conftest builds a tiny model of every registered text family
    bb, cfg = ptm.backbone.eval(), ptm.backbone.config
    fam = TEXT.family(ptm)
    assert fam.name == name and type(bb) is fam.model_cls and type(cfg) is fam.config_cls

    # FFN modules: one per layer, whose output is act(ffn_in(x)), the activation after the nonlinearity
    ids = torch.randint(5, len(ptm.processor), (2, 12), generator=torch.Generator().manual_seed(0))
    seen = []
    handles = [m.register_forward_hook(lambda _m, i, o: seen.append((i[0], o))) for m in TEXT.ffn_modules(ptm)]
    with torch.no_grad():
        bb(input_ids=ids)
    for h in handles:
        h.remove()
    act = transformers.activations.ACT2FN[cfg.hidden_act]
    refs = TEXT.param_groups(ptm)["ffn_in"]
    assert len(seen) == len(refs) == cfg.num_hidden_layers
    for (x, out), r in zip(seen, refs, strict=True):
        torch.testing.assert_close(out, act(F.linear(x, r.weight, r.bias)))

    # first token after [CLS]/<s>: its embedding is word + position[first_token_position] + type[0]
    emb, p = bb.embeddings, TEXT.first_token_position(ptm)
    with torch.no_grad():
        got = emb(input_ids=ids)[0, 1]
        want = emb.LayerNorm(emb.word_embeddings.weight[ids[0, 1]] + emb.position_embeddings.weight[p]
                             + emb.token_type_embeddings.weight[0])
    torch.testing.assert_close(got, want)

    # max positions: a sequence that long runs, one token longer does not
    n = TEXT.max_positions(ptm)
    with torch.no_grad():
        assert bb(input_ids=torch.full((1, n), 5)).last_hidden_state.shape[1] == n
        with pytest.raises((IndexError, RuntimeError)):
            bb(input_ids=torch.full((1, n + 1), 5))

    # export layout: transformers' masked-LM class holds the encoder under the prefix and every head name
    layout = TEXT.export_layout(ptm)
    keys = set(getattr(transformers, layout.mlm_class)(cfg).state_dict())
    assert {f"{layout.prefix}.{k}" for k in bb.state_dict() if not k.startswith("pooler.")} <= keys
    names = layout.head_names()
    assert set(names) == set(ptm.pt_head.state_dict()) and {n for ns in names.values() for n in ns} <= keys
    assert getattr(transformers, layout.model_class) is fam.model_cls


def test_vit_family_answers_its_ffn_modules(vit):
    mods = VISION.ffn_modules(vit)
    assert mods == [blk.mlp.act for blk in vit.backbone.blocks] and len(mods) == 2


@pytest.mark.parametrize("fact", ["ffn_modules", "first_token_position", "max_positions", "export_layout"])
def test_an_unknown_family_is_refused_in_one_line_naming_it_and_the_known_ones(bert, vit, fact):
    bert.family = "electra"
    with pytest.raises(PtmbenchError) as e:
        getattr(TEXT, fact)(bert)
    msg = str(e.value)
    assert "\n" not in msg and "'electra'" in msg and all(f in msg for f in TEXT_FAMILIES)
    vit.family = "deit"
    with pytest.raises(PtmbenchError, match="'deit'.*vit"):
        VISION.ffn_modules(vit)
