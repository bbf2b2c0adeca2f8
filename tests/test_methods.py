"""The method base class: a method that does not declare it honours ``--reference-paths`` is refused under
them, in one line and before any work, by every entry point that runs methods; the built-in ones declare it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.methods import Defense
from bench.registry import get, names

FAST = RunContext(seed=0, precision="fp32")
REF = RunContext(seed=0, precision="fp32", reference_paths=True)


@dataclass
class NoiseConfig:
    std: float = 0.01


class PluginDefense(Defense):
    """A plugin-style defense that builds its own batches: it says nothing about the reference paths."""

    name = "plugin-noise"
    modalities = ("text",)
    Config = NoiseConfig

    def purify(self, ptm, ctx, cache_dir):
        raise AssertionError("must not run under the reference paths")


class RoutedDefense(PluginDefense):
    name = "plugin-routed"
    reference_paths = True


def test_undeclared_method_is_refused_on_the_reference_paths_only():
    method = PluginDefense.build("smoke")
    method.check_context(FAST)  # the fast paths and plain fp32: nothing to honour
    with pytest.raises(PtmbenchError) as err:
        method.check_context(REF)
    msg = str(err.value)
    assert "\n" not in msg and "'plugin-noise'" in msg
    assert "drop --reference-paths" in msg and "reference_paths = True" in msg
    RoutedDefense.build("smoke").check_context(REF)  # declared: accepted


@pytest.fixture
def plugin_registered(monkeypatch):
    """The two plugin-style defenses in the registry for one test (as an entry point would add them)."""
    from bench.registry import REGISTRY

    names("defense")  # the built-ins and entry points first, as on any lookup
    for cls in (PluginDefense, RoutedDefense):
        monkeypatch.setitem(REGISTRY._tables["defense"], cls.name, cls)


def test_a_matrix_run_refuses_before_the_method_runs(plugin_registered, bert_dir, env, tmp_path, capsys):
    """``ptmbench run --reference-paths`` with an undeclared defense: one line naming it and the fix, and no
    artifact of it (its purify, which would raise AssertionError, never runs)."""
    import yaml

    from bench.cli import main

    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"name": "refuse", "models": [str(bert_dir)], "attacks": ["none"],
                                 "defenses": [PluginDefense.name], "datasets": ["sst2"], "preset": "smoke"}))
    cache = tmp_path / "cache"
    args = ["run", str(m), "--results", str(tmp_path / "res"), "--cache", str(cache), "--no-progress"]
    assert main([*args, "--reference-paths"]) != 0
    err = capsys.readouterr().err
    assert "'plugin-noise' does not declare support for --reference-paths" in err
    assert "drop --reference-paths" in err
    assert not [p for p in (cache / "artifacts").glob("*") if "plugin" in p.name or "defense" in p.name]


def test_purify_refuses_before_loading(monkeypatch, tmp_path):
    from bench import purify

    monkeypatch.setattr(purify, "build_defense", lambda name, preset, config: PluginDefense.build(preset, config))
    with pytest.raises(PtmbenchError, match="plugin-noise"):
        purify.run_purify("no-such-model", "plugin-noise", "smoke", {}, tmp_path / "out", False, REF, tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["attack", "defense"])
def test_built_in_methods_declare_the_reference_paths(kind):
    """Every method shipped here routes its batching and losses through the adapter with the context."""
    import attacks  # noqa: F401  (registers the built-in methods)
    import defenses  # noqa: F401

    built_in = [n for n in names(kind) if get(kind, n).__module__.split(".")[0] in ("attacks", "defenses")]
    assert built_in
    assert [n for n in built_in if not get(kind, n).reference_paths] == []
