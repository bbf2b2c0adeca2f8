"""The registry: a class gives its name once (``cls.name``), entry points must agree with it."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

import bench.registry as registry
from bench.errors import PtmbenchError
from bench.methods import Attack, Defense
from bench.registry import Registry, get, names


def test_built_in_methods_are_registered_under_their_class_names():
    for kind in ("attack", "defense"):
        for name in names(kind):
            assert get(kind, name).name == name
    assert {"neuba", "neuba-vision", "por1", "por2", "badpre"} <= set(names("attack"))
    assert {"recipe", "only-pt", "only-reg", "pooler-reinit", "fp", "fp-gm", "fp-ga"} <= set(names("defense"))


def test_a_class_registers_under_its_own_name():
    reg = Registry()

    @reg.register("attack")
    class Mine(Attack):
        name = "mine"

    assert reg._tables["attack"] == {"mine": Mine}
    assert reg.register("attack", "mine")(Mine) is Mine  # the same name twice is harmless


def test_a_class_without_a_name_is_refused_at_import():
    reg = Registry()
    with pytest.raises(TypeError, match="class .*Nameless has no name of its own.*name = "):
        @reg.register("defense")
        class Nameless(Defense):
            pass

    class Parent(Defense):
        name = "parent"

    with pytest.raises(TypeError, match="only inherits 'parent'"):  # would shadow its parent's entry
        @reg.register("defense")
        class Child(Parent):
            pass

    with pytest.raises(TypeError, match="has no name of its own"):
        @reg.register("defense")
        class Empty(Defense):
            name = ""


def test_a_second_different_name_is_refused():
    reg = Registry()

    class Mine(Attack):
        name = "mine"

    with pytest.raises(TypeError, match="own name is 'mine'; drop the second argument"):
        reg.register("attack", "yours")(Mine)


def test_objects_with_or_without_a_name():
    @dataclass(frozen=True)
    class Spec:
        name: str

    reg = Registry()
    spec = Spec("a")
    assert reg.register("dataset")(spec) is spec
    anonymous = object()
    assert reg.register("model", "b")(anonymous) is anonymous
    assert set(reg._tables["dataset"]) == {"a"} and set(reg._tables["model"]) == {"b"}
    with pytest.raises(TypeError, match="object has no name of its own"):
        reg.register("model")(object())
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("dataset")(Spec("a"))
    with pytest.raises(ValueError, match="unknown registry kind"):
        reg.register("metric")


def test_an_entry_point_must_carry_its_objects_name(monkeypatch):
    class Plugin(Defense):
        name = "plugin-defense"

    def fake(group: str):
        if group != "ptmbench.defenses":
            return []
        return [SimpleNamespace(name="other-name", value="pkg:Plugin", dist=SimpleNamespace(name="pkg"),
                                load=lambda: Plugin)]

    monkeypatch.setattr(registry, "entry_points", fake)
    with pytest.raises(PtmbenchError, match="entry point 'other-name' of pkg .*'plugin-defense'; rename"):
        Registry().names("defense")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(PtmbenchError, match="unknown attack 'nope'; known attacks: .*neuba"):
        get("attack", "nope")
    with pytest.raises(PtmbenchError, match="unknown trigger set 'nope'; known trigger sets: badpre"):
        get("trigger_set", "nope")
