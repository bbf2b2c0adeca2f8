"""A defense whose protocol depends on the attack it faces: ``by_attack`` overrides in a matrix entry."""

from __future__ import annotations

import pytest
import yaml

from bench.artifacts import ArtifactStore
from bench.errors import PtmbenchError
from bench.matrix import load_matrix, plan


def _matrix(tmp_path, model, defenses):
    doc = {"name": "ba", "models": [str(model)], "datasets": ["sst2"], "seeds": [0], "preset": "smoke",
           "attacks": ["none", "neuba", {"name": "por1", "label": "por"}], "defenses": defenses}
    f = tmp_path / "ba.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


def test_by_attack_overrides_apply_to_their_attack_only(env, bert_dir, tmp_path):
    spec = load_matrix(_matrix(tmp_path, bert_dir, ["none", {"name": "fp-ga", "by_attack": {
        "neuba": {"share": 0.667}, "por": {"share": 0.25}}}]))
    nodes = plan(spec, ArtifactStore(tmp_path / "artifacts"))
    shares = {n.label: n.work.config.get("share") for n in nodes if n.stage == "defense"}
    assert shares == {f"defense fp-ga <- none on {bert_dir}": None, f"defense fp-ga <- neuba on {bert_dir}": 0.667,
                      f"defense fp-ga <- por on {bert_dir}": 0.25}
    cells = {n.work.ident.attack: n for n in nodes if n.stage == "cell" and n.work.ident.defense == "fp-ga"}
    assert cells["neuba"].work.ident.defense_config["share"] == 0.667
    assert cells["none"].work.ident.defense_config["share"] == 0.5
    assert {n.work.defense_label for n in cells.values()} == {"fp-ga"}


def test_by_attack_naming_no_attack_of_the_matrix_is_an_error(env, bert_dir, tmp_path):
    with pytest.raises(PtmbenchError, match=r"by_attack: 'badpre' is no attack of this matrix"):
        load_matrix(_matrix(tmp_path, bert_dir, [{"name": "recipe", "by_attack": {"badpre": {"epochs": 8}}}]))
    with pytest.raises(PtmbenchError, match="expected a mapping of config overrides"):
        load_matrix(_matrix(tmp_path, bert_dir, [{"name": "recipe", "by_attack": {"neuba": 8}}]))
