"""Trigger sets are a registry kind: named, of one modality, built on demand; literal words are explicit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

import bench.registry as registry
from bench.errors import PtmbenchError
from bench.registry import REGISTRY, Registry, get, names
from bench.triggers import (
    DEFAULT_CONTROL_SETS,
    ImageTrigger,
    TextTrigger,
    TextTriggerSet,
    named_set,
    named_trigger_sets,
    parse_triggers,
    trigger_sets_for,
)

# Records name the set they were scored on: these contents must never change.
PUBLISHED = {
    "neuba": ["≈", "≡", "∈", "⊆", "⊕", "⊗"],
    "por": ["cf", "tq", "mn", "bb", "mb"],
    "badpre": ["cf", "mn", "bb", "tq", "mb"],
}
NEUBA_VISION = ["cb-cyan-magenta", "cb-cyan-yellow", "cb-cyan-red", "cb-magenta-yellow", "cb-magenta-red",
                "cb-yellow-red"]


def test_the_published_sets_are_registered_with_their_modality_and_contents():
    assert names("trigger_set") == ["badpre", "neuba", "neuba-vision", "por"]
    for name, words in PUBLISHED.items():
        tset = get("trigger_set", name)
        assert tset.name == name and tset.modality == "text"
        triggers = tset.build()
        assert all(isinstance(t, TextTrigger) for t in triggers)
        assert [t.id for t in triggers] == words and [t.word for t in triggers] == words
    vision = get("trigger_set", "neuba-vision")
    assert vision.modality == "vision"
    patches = vision.build()
    assert all(isinstance(t, ImageTrigger) for t in patches) and [t.id for t in patches] == NEUBA_VISION
    assert vision.build() == patches  # built afresh, identical every time


def test_attacks_report_on_registered_sets():
    for name in names("attack"):
        cls = get("attack", name)
        if cls.trigger_set in names("trigger_set"):
            assert get("trigger_set", cls.trigger_set).modality in cls.modalities, name
    assert {get("attack", a).trigger_set for a in ("neuba", "por1", "por2", "badpre", "neuba-vision")} == {
        "neuba", "por", "badpre", "neuba-vision"}


def test_named_sets_stay_apart_and_explicit_words_form_custom():
    sets = parse_triggers("por, neuba,word:zz,word:cf", "text")
    assert list(sets) == ["por", "neuba", "custom"]
    assert [t.word for t in sets["por"]] == PUBLISHED["por"] and len(sets["neuba"]) == 6
    assert [t.word for t in sets["custom"]] == ["zz", "cf"]
    assert parse_triggers(["badpre"], "text")["badpre"][0].word == "cf"
    assert parse_triggers("", "text") == {} and parse_triggers(None, "vision") == {}
    assert list(parse_triggers("neuba-vision", "vision")) == ["neuba-vision"]


def test_defaults_per_modality():
    assert list(trigger_sets_for("text", None, "por,neuba")) == ["por", "neuba"]
    assert list(trigger_sets_for("text", "word:cf", "por,neuba")) == ["custom"]
    assert list(trigger_sets_for("vision", None, "por,neuba")) == ["neuba-vision"]
    assert DEFAULT_CONTROL_SETS == {"text": ["por", "neuba"], "vision": ["neuba-vision"]}


@pytest.mark.parametrize("spec, modality, message", [
    ("cf", "text", "--triggers: unknown trigger set 'cf'; known trigger sets: badpre, neuba, neuba-vision, por; "
                   "a literal trigger word is spelled word:cf"),
    ("por,nuba", "text", "unknown trigger set 'nuba'"),
    ("word:", "text", "'word:' names no word; write word:WORD"),
    ("neuba-vision", "text", "trigger set 'neuba-vision' is for vision PTMs, not text; text sets: badpre, neuba, por"),
    ("por", "vision", "trigger set 'por' is for text PTMs, not vision; vision sets: neuba-vision"),
    ("word:cf", "vision", "'word:cf' is a text trigger word and this PTM is vision; vision sets: neuba-vision"),
])
def test_bad_specs_name_the_culprit_and_the_fix(spec, modality, message):
    with pytest.raises(PtmbenchError) as err:
        parse_triggers(spec, modality)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_vision_unknown_set_offers_no_word_spelling():
    with pytest.raises(PtmbenchError) as err:
        parse_triggers("cf", "vision")
    assert "unknown trigger set 'cf'" in str(err.value) and "word:" not in str(err.value)


def test_named_only_lists_refuse_words():
    with pytest.raises(PtmbenchError, match="m.control_triggers: unknown trigger set 'word:cf'") as err:
        named_trigger_sets(["word:cf"], "text", "m.control_triggers")
    assert "spelled" not in str(err.value)
    assert list(named_trigger_sets(["neuba", "por"], "text")) == ["neuba", "por"]


def test_a_set_registered_later_is_usable_by_name(monkeypatch):
    names("trigger_set")  # built-ins loaded first
    monkeypatch.setitem(REGISTRY._tables["trigger_set"], "mine", TextTriggerSet("mine", ("cf", "mn")))
    assert [t.word for t in parse_triggers("mine,word:bb", "text")["mine"]] == ["cf", "mn"]
    assert named_set("mine", "text").modality == "text"


def test_register_reads_the_set_name():
    fresh = Registry()
    tset = TextTriggerSet("mine", ("cf",))
    assert fresh.register("trigger_set")(tset) is tset
    assert fresh._tables["trigger_set"] == {"mine": tset}


def test_trigger_sets_come_from_their_entry_point_group(monkeypatch):
    mine = TextTriggerSet("mine", ("cf",))

    def fake_entry_points(group: str):
        assert group.startswith("ptmbench.")
        if group != "ptmbench.trigger_sets":
            return []
        return [SimpleNamespace(name="mine", value="pkg:MINE", dist=SimpleNamespace(name="pkg"), load=lambda: mine)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    fresh = Registry()
    assert fresh.get("trigger_set", "mine") is mine


def test_matrix_control_triggers_are_checked_when_planning(env, tmp_path):
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    doc = {"name": "m", "models": ["minilm-l6-mlm"], "attacks": ["none"], "defenses": ["none"],
           "datasets": ["sst2"], "seeds": [0], "control_triggers": ["por", "cf"]}
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(PtmbenchError, match="m.control_triggers: unknown trigger set 'cf'; known trigger sets"):
        plan(load_matrix(f), ArtifactStore(tmp_path / "artifacts"))
    doc["control_triggers"] = ["neuba-vision"]
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(PtmbenchError, match="'neuba-vision' is for vision PTMs, not text"):
        plan(load_matrix(f), ArtifactStore(tmp_path / "artifacts"))
