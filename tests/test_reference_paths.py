"""``--reference-paths``: every fast path switched off (padding to the max length without bucketing,
full-vocabulary MLM logits, fp32, re-tokenised trigger evaluation) computes the same quantities, and its
artifacts and records are keyed apart from fast-path ones (fast-path keys unchanged)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_ptm, wordpiece_tokenizer

from bench.artifacts import REFERENCE_MARK, ArtifactStore, content_key, regime
from bench.cli import main
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.finetune import get_preset
from bench.modalities.base import shuffled_batches
from bench.modalities.text import ADAPTER as TEXT
from bench.modalities.text import TextAdapter
from bench.records import record_id

FAST = RunContext(seed=0, precision="fp32")
REF = RunContext(seed=0, precision="fp32", reference_paths=True)


def sst2_tokens(ptm, split: str = "train", n: int = 24):
    return TEXT.load_split(ptm, "sst2", split, n, None)


# ------------------------------------------------------------------------------------------ the context
def test_reference_paths_run_in_fp32():
    assert RunContext(reference_paths=True).precision == "fp32"  # auto -> fp32 even where bf16 exists
    assert RunContext(precision="fp32", reference_paths=True).precision == "fp32"
    with pytest.raises(PtmbenchError, match="fp32"):
        RunContext(precision="bf16", reference_paths=True)
    assert REF.pad_to(64) == 64 and FAST.pad_to(64) is None and REF.pad_to(None) is None


# ------------------------------------------------------------------------------------------ (a) padding, batching
def test_collate_pads_to_max_length_under_the_flag(bert, env):
    data = sst2_tokens(bert)
    idx = np.arange(8)
    fast = TEXT.collate(bert, data, idx, 32, "cpu", pad_to=FAST.pad_to(32))
    ref = TEXT.collate(bert, data, idx, 32, "cpu", pad_to=REF.pad_to(32))
    assert fast["input_ids"].shape[1] < 32 and ref["input_ids"].shape == (8, 32)
    w = fast["input_ids"].shape[1]
    assert torch.equal(ref["input_ids"][:, :w], fast["input_ids"])  # the same tokens, more padding
    assert int(ref["attention_mask"][:, w:].sum()) == 0
    # the context-taking form picks device and width from the context: the same batches as the explicit one
    for ctx, explicit in ((FAST, fast), (REF, ref)):
        batch = TEXT.collate(bert, data, idx, 32, ctx)
        assert batch.keys() == explicit.keys() and all(torch.equal(batch[k], explicit[k]) for k in batch)
    with pytest.raises(TypeError, match="pad_to"):
        TEXT.collate(bert, data, idx, 32, REF, pad_to=32)


def test_batches_drop_bucketing_under_the_flag():
    lengths = np.random.default_rng(0).integers(3, 40, size=50)

    def batches(shuffle, bucketing, ctx=None):
        rng = np.random.default_rng(1) if shuffle else None
        return [b.tolist() for b in TEXT.batches(lengths, 8, rng, shuffle, bucketing, ctx=ctx)]

    for shuffle in (True, False):
        assert batches(shuffle, True, FAST) == batches(shuffle, True) != batches(shuffle, False)
        assert batches(shuffle, True, REF) == batches(shuffle, False) == batches(shuffle, False, FAST)


def test_finetune_and_predict_pad_and_do_not_bucket(bert, env, monkeypatch):
    """Under the flag every batch the fine-tuning and prediction see is max_len wide, training batches are
    plain shuffled ones (no length bucketing) and inference batches go in input order."""
    from bench.finetune import finetune, predict

    seen: list[tuple[np.ndarray, int]] = []
    real = TextAdapter.collate

    def spy(self, ptm, data, idx, max_len, device, pad_to=None):
        batch = real(self, ptm, data, idx, max_len, device, pad_to)
        seen.append((np.asarray(idx).copy(), batch["input_ids"].shape[1]))
        return batch

    monkeypatch.setattr(TextAdapter, "collate", spy)
    data = sst2_tokens(bert, n=20)
    preset = get_preset("text", "smoke", max_train=20)
    ft = finetune(bert, data, 2, preset, REF)
    assert {w for _, w in seen} == {preset.max_len}
    first = shuffled_batches(len(data), preset.batch_size, REF.rng("finetune-batches", 0))
    assert [i.tolist() for i, _ in seen[:len(first)]] == [b.tolist() for b in first]
    seen.clear()
    predict(ft.model, data, preset, REF)
    assert {w for _, w in seen} == {preset.max_len}
    assert np.concatenate([i for i, _ in seen]).tolist() == list(range(len(data)))


# ------------------------------------------------------------------------------------------ (b) MLM loss
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_full_vocab_mlm_loss_equals_masked_only_loss(family, request, env):
    """The reference paths' loss (head over every position of a max_len-padded batch, CE with
    ignore_index) == the fast one (head over masked positions of the trimmed batch): value and gradients."""
    ptm = request.getfixturevalue(family)
    ptm.backbone.eval()
    ptm.pt_head.eval()
    data = sst2_tokens(ptm, n=16)
    idx = np.arange(16)
    padded = TEXT.collate(ptm, data, idx, 32, "cpu", pad_to=REF.pad_to(32))
    ids, labels = TEXT.mask_tokens(ptm.processor, padded["input_ids"], padded["attention_mask"],
                                   torch.Generator().manual_seed(5))
    assert int((labels != -100).sum()) > 5
    w = int(padded["attention_mask"].sum(1).max())
    assert w < 32  # the fast path really works on a narrower batch
    trimmed = {"input_ids": ids[:, :w], "attention_mask": padded["attention_mask"][:, :w]}

    def loss_and_grad(batch, lab, full_vocab):
        ptm.backbone.zero_grad(set_to_none=True)
        ptm.pt_head.zero_grad(set_to_none=True)
        loss = TEXT.mlm_loss(ptm, batch, lab, full_vocab=full_vocab)
        loss.backward()
        return loss.detach(), ptm.pt_head.dense.weight.grad.clone()

    ref, g_ref = loss_and_grad({**padded, "input_ids": ids}, labels, True)
    fast, g_fast = loss_and_grad(trimmed, labels[:, :w], False)
    assert ref.dtype == fast.dtype == torch.float32
    assert abs(ref.item() - fast.item()) < 1e-5
    assert torch.allclose(g_ref, g_fast, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # the context picks the same computation as the explicit switch, bit for bit
        for ctx, full, batch, lab in ((REF, True, {**padded, "input_ids": ids}, labels),
                                      (FAST, False, trimmed, labels[:, :w])):
            assert torch.equal(TEXT.mlm_loss(ptm, batch, lab, ctx), TEXT.mlm_loss(ptm, batch, lab, full_vocab=full))
            assert torch.equal(TEXT.mlm_logits(ptm, batch, lab, ctx),
                               TEXT.mlm_logits(ptm, batch, lab, full_vocab=full))
    with pytest.raises(TypeError, match="full_vocab"):
        TEXT.mlm_loss(ptm, trimmed, labels[:, :w], FAST, full_vocab=True)
    with torch.no_grad():  # the logits the zoo's masked-token accuracy reads agree as well
        a = TEXT.mlm_logits(ptm, {**padded, "input_ids": ids}, labels, full_vocab=True)
        b = TEXT.mlm_logits(ptm, trimmed, labels[:, :w])
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    nothing = torch.full_like(labels, -100)  # no masked token: a finite zero either way
    assert TEXT.mlm_loss(ptm, {**padded, "input_ids": ids}, nothing, full_vocab=True).item() == 0.0


def test_recipe_static_masks_untrimmed_under_the_flag(bert, env):
    from defenses.recipe import StaticMasked

    data = sst2_tokens(bert, n=12)
    static = StaticMasked(bert, data, 32, torch.Generator().manual_seed(3))
    fast, fl = static.batch(np.arange(6), "cpu")
    ref, rl = static.batch(np.arange(6), "cpu", trim=False)
    assert ref["input_ids"].shape == (6, 32) and fast["input_ids"].shape[1] < 32
    assert torch.equal(rl[:, :fl.shape[1]], fl) and bool((rl[:, fl.shape[1]:] == -100).all())
    for ctx, (batch, lab) in ((FAST, (fast, fl)), (REF, (ref, rl))):  # the context decides the trim
        b, lb = static.batch(np.arange(6), ctx)
        assert torch.equal(lb, lab) and all(torch.equal(b[k], batch[k]) for k in batch)


# ------------------------------------------------------------------------------------------ (d) evaluation
def test_reference_evaluation_scores_like_the_fast_one(bert, env, monkeypatch):
    """evaluate() picks the reference evaluation from the context (the stage passes the dataset name)."""
    import bench.reference
    from bench.evaluate import evaluate
    from bench.finetune import finetune
    from bench.triggers import parse_triggers

    preset = get_preset("text", "smoke")
    train = TEXT.load_split(bert, "sst2", "train", preset.max_train, None)
    val = TEXT.load_split(bert, "sst2", "validation", preset.max_eval, None)
    test = TEXT.load_split(bert, "sst2", "test", preset.max_eval, None)
    model = finetune(bert, train, 2, preset, FAST).model
    sets = parse_triggers("neuba", "text")
    fast = evaluate(model, val, test, sets, 2, preset, FAST)
    calls = []
    real = bench.reference.reference_evaluation
    monkeypatch.setattr(bench.reference, "reference_evaluation", lambda *a: calls.append(a[1]) or real(*a))
    ref = evaluate(model, val, test, sets, 2, preset, REF, dataset="sst2")
    assert calls == ["sst2"]  # the re-tokenising evaluation ran, on the named dataset's raw texts
    assert ref.cacc == pytest.approx(fast.cacc)
    assert ref.by_set["neuba"].to_dict()["per_trigger"] == fast.by_set["neuba"].to_dict()["per_trigger"]
    assert evaluate(model, val, test, sets, 2, preset, FAST, dataset="sst2").cacc == fast.cacc and len(calls) == 1
    with pytest.raises(ValueError, match="dataset"):
        evaluate(model, val, test, sets, 2, preset, REF)


# ------------------------------------------------------------------------------------------ cache safety
def test_keys_are_marked_only_under_the_flag(bert_dir, env, tmp_path):
    from bench.matrix import load_matrix, plan

    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"name": "keys", "models": [str(bert_dir)], "attacks": ["none", "neuba"],
                                 "defenses": ["none", "recipe"], "datasets": ["sst2"], "preset": "smoke"}))
    store = ArtifactStore(tmp_path / "cache" / "artifacts")
    spec = load_matrix(m)
    fast = plan(spec, store)
    # the default regime: the plan is the same as ever (keys unmarked, identities without a regime)
    assert [n.key for n in plan(spec, store, None)] == [n.key for n in fast]
    assert not any(n.key.endswith(("-refpaths", "-fp32")) for n in fast)
    assert all(n.work.ident.regime is None and "regime" not in n.work.ident.key_fields()
               for n in fast if n.stage == "cell")
    ref, fp32 = plan(spec, store, "refpaths"), plan(spec, store, "fp32")
    for other, mark in ((ref, REFERENCE_MARK), (fp32, "-fp32")):
        assert [n.stage for n in other] == [n.stage for n in fast]
        assert not {n.key for n in other} & {n.key for n in fast}
        by_key = {n.key for n in other}
        for n in other:
            assert n.key.endswith(mark) and n.work.key == n.key
            assert all(d in by_key for d in n.deps)
            if hasattr(getattr(n.work, "source", None), "key"):  # an upstream artifact
                assert n.work.source.key in by_key
            if n.stage == "cell":
                assert all(v.endswith(mark) for v in n.work.keys.values())
                assert n.work.ident.key_fields()["regime"] == mark[1:]
    assert not {n.key for n in ref} & {n.key for n in fp32}
    plain = content_key("attack", "neuba", {"a": 1}, "zoo-x", 0, "1")
    assert content_key("attack", "neuba", {"a": 1}, "zoo-x", 0, "1", None) == plain
    assert content_key("attack", "neuba", {"a": 1}, "zoo-x", 0, "1", "refpaths") == plain + REFERENCE_MARK
    assert content_key("attack", "neuba", {"a": 1}, "zoo-x", 0, "1", "fp32") == plain + "-fp32"


def test_regime_of_a_run():
    assert regime("bf16") is None and regime("fp32") == "fp32"
    assert regime("fp32", reference_paths=True) == "refpaths"
    assert FAST.regime == "fp32" and REF.regime == "refpaths"
    assert RunContext(precision="bf16").regime is None


def test_record_ids_differ_only_off_the_default_regime():
    rec = {"model": "m", "attack": "none", "defense": "none", "dataset": "sst2", "preset": "smoke", "seed": 0,
           "triggers": "neuba", "attack_config": {}, "defense_config": {}, "finetune_config": {"epochs": 1}}
    assert record_id({**rec, "regime": None}) == record_id(rec)
    ids = {record_id(rec), record_id({**rec, "regime": "refpaths"}), record_id({**rec, "regime": "fp32"})}
    assert len(ids) == 3


def test_zoo_artifact_of_a_reference_run_is_keyed_apart(env, tmp_path):
    """A registered (built and cached) model gets its own marked artifact under the flag; the fast key is
    the one the matrix plan uses, untouched."""
    from bench.registry import get, names, register
    from bench.zoo import ModelSpec, Zoo

    name = "reftest-tiny-bert"
    if name not in names("model"):
        register("model", name)(ModelSpec(name, "text", "bert", "tiny random BERT for tests",
                                          lambda zoo, ctx: tiny_ptm("bert", wordpiece_tokenizer())))
    assert get("model", name).cached
    zoo = Zoo(ArtifactStore(tmp_path / "artifacts"), tmp_path)
    _, k_fast = zoo.load(name, RunContext(seed=0, precision="bf16"))
    _, k_fp32 = zoo.load(name, FAST)
    _, k_ref = zoo.load(name, REF)
    assert k_fast == zoo.key(name) and k_ref == k_fast + REFERENCE_MARK and k_fp32 == k_fast + "-fp32"
    assert k_ref == zoo.key(name, "refpaths")  # what the matrix plans under the flag
    assert all(zoo.store.is_valid(k) for k in (k_fast, k_fp32, k_ref))
    assert zoo.store.meta(k_ref)["regime"] == "refpaths" and zoo.store.meta(k_fp32)["regime"] == "fp32"
    assert "regime" not in zoo.store.meta(k_fast)


# ------------------------------------------------------------------------------------------ the CLI, end to end
def test_cli_finetune_with_reference_paths(bert_dir, env, tmp_path, capsys):
    res = tmp_path / "res"
    args = ["finetune", "--model", str(bert_dir), "--dataset", "sst2", "--preset", "smoke", "--triggers", "word:cf,word:mn",
            "--max-train", "16", "--results", str(res)]
    assert main([*args, "--reference-paths"]) == 0
    (rec_path,) = (res / "records").glob("*.json")
    rec = json.loads(rec_path.read_text())
    assert rec["regime"] == "refpaths" and rec["precision"] == "fp32" and rec["n_train"] == 16
    assert rec_path.name == f"{record_id(rec)}.json"
    assert main([*args, "--reference-paths"]) == 0 and "cached" in capsys.readouterr().out
    # a fast-path run into the same store would mix regimes in its tables: refused before any work
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference-path" in err[0] and "--results" in err[0]
    assert len(list((res / "records").glob("*.json"))) == 1
    fast_res = tmp_path / "fast"
    assert main([*args[:-1], str(fast_res), "--precision", "bf16"]) == 0  # its own store: a different record
    (fast_rec,) = (fast_res / "records").glob("*.json")
    assert fast_rec.name != rec_path.name and "regime" not in json.loads(fast_rec.read_text())
    capsys.readouterr()
    assert main([*args, "--reference-paths", "--precision", "bf16", "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fp32" in err[0]


def test_cli_run_with_reference_paths(bert_dir, env, tmp_path, capsys):
    """A tiny matrix (NeuBA -> RECIPE -> cell) on the reference paths: marked artifacts, marked records."""
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"name": "ref", "models": [str(bert_dir)], "attacks": ["neuba"],
                                 "defenses": ["recipe"], "datasets": ["sst2"], "preset": "smoke",
                                 "precision": "bf16", "finetune": {"max_train": 16}}))
    res, cache = tmp_path / "res", tmp_path / "cache"
    args = ["run", str(m), "--results", str(res), "--cache", str(cache), "--no-progress", "--reference-paths"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 stages, 0 cached, 3 to run" in out
    keys = sorted(p.name for p in (cache / "artifacts").iterdir() if not p.name.startswith("."))
    assert len(keys) == 2 and all(k.endswith(REFERENCE_MARK) for k in keys)
    for k in keys:
        assert json.loads((cache / "artifacts" / k / "meta.json").read_text())["regime"] == "refpaths"
    (rec,) = [json.loads(p.read_text()) for p in (res / "records").glob("*.json")]
    assert rec["regime"] == "refpaths" and rec["precision"] == "fp32"  # the matrix's bf16 is overridden
    assert all(v.endswith(REFERENCE_MARK) for v in rec["keys"].values())
    # resumes like any run: the cell is recorded, so the stages above it are not even checked
    assert main(args) == 0 and "1 cached, 0 to run, 2 not needed" in capsys.readouterr().out
    assert main([*args, "--precision", "bf16"]) == 2
    assert "fp32" in capsys.readouterr().err
    # the fast paths into the same results store: refused in one line before any stage runs
    n_artifacts = len(list((cache / "artifacts").iterdir()))
    assert main(args[:-1]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(res) in err[0] and "--results" in err[0]
    assert len(list((cache / "artifacts").iterdir())) == n_artifacts
    assert len(list((res / "records").glob("*.json"))) == 1
