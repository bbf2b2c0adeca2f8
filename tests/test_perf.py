"""``ptmbench perf compare`` on tiny models: both pipelines run and report, and the reference-style
computations (full-vocabulary MLM loss, padding to 128, raw-text trigger insertion) compute the same
objective and inputs as ptmbench's fast paths.  Timings are reported, never asserted."""

from __future__ import annotations

import gc
import json
import math
import time

import numpy as np
import pytest
import torch
from conftest import sentence, wordpiece_tokenizer
from transformers import BertConfig, BertModel

from bench.cli import main
from bench.context import RunContext
from bench.errors import PtmbenchError
from bench.finetune import Classifier
from bench.modalities.text import ADAPTER as TEXT
from bench.modalities.text import new_mlm_head
from bench.perf.compare import PHASES, RUN_PHASES, PerfOptions, parse_phases, run_compare
from bench.perf.memory import PeakRss, release_memory
from bench.perf.reference import reference_mlm_loss, static_masks
from bench.perf.report import write_report
from bench.ptm import PTM
from bench.reference import insert_word, pad_width, reference_encode, reference_logits


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sentence(rng, i % 2) for i in range(n)]


def strip(enc: dict[str, torch.Tensor]) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]


# ------------------------------------------------------------------------------------------ the whole comparison
def test_run_compare_on_tiny_bert(bert, env, tmp_path):
    before = {k: v.clone() for k, v in bert.backbone.state_dict().items()}
    opts = PerfOptions(model="tiny-bert", max_train=64, max_eval=24, epochs=1, recipe_steps=2, triggers="neuba")
    comp = run_compare(bert, opts, RunContext(seed=0, precision="fp32"), model_label="tiny-bert")
    after = bert.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # both pipelines work on copies

    for key in ("ref_cacc", "ours_cacc", "ref_triggers_clean"):
        p = comp.predictions[key]
        assert p.shape == (24,) and set(np.unique(p)) <= {0, 1}
    rep = comp.report
    assert rep["sizes"]["train"] == 64 and rep["sizes"]["test"] == 24 and rep["sizes"]["n_triggers"] == 6
    assert rep["sizes"]["reference_pad_to"] == 64  # 128 capped by the tiny model's 64 positions
    assert rep["precision"] == {"reference": "fp32", "ptmbench": "fp32"}
    assert rep["phases"]["triggers"]["reference"]["samples"] == 24 + 6 * (24 + 24)

    md, js = write_report(rep, tmp_path / "perf")
    assert md.exists() and js.exists() and not list((tmp_path / "perf").glob(".*"))  # no temp files left
    data = json.loads(js.read_text())
    assert list(data["phases"]) == list(PHASES)
    for name, ph in data["phases"].items():
        for pipe in ("reference", "ptmbench"):
            assert ph[pipe]["wall_s"] > 0 and ph[pipe]["samples_per_s"] > 0, (name, pipe)
            assert ph[pipe]["rss_peak_mib"] >= ph[pipe]["rss_start_mib"] > 0
        for r in ("ratio_wall", "ratio_samples_per_s", "ratio_rss_peak"):
            assert isinstance(ph[r], float) and math.isfinite(ph[r]) and ph[r] > 0
    q = data["quality"]
    for pipe in ("reference", "ptmbench"):
        assert 0.0 <= q["finetune"][pipe]["cacc"] <= 1.0
        assert q["recipe"][pipe]["norm_S_after"] != q["recipe"]["norm_S_before"]  # RECIPE moved S in both
    # (c): same model, same triggered token ids, both fp32 -> the same clean accuracy
    assert q["triggers"]["reference"]["cacc"] == pytest.approx(q["triggers"]["ptmbench"]["cacc"])
    text = md.read_text()
    assert "| (b) RECIPE |" in text and "torch " + torch.__version__ in text and "threads:" in text


def test_cli_perf_compare(env, bert_dir, tmp_path, capsys):
    out = tmp_path / "perf"
    rc = main(["perf", "compare", "--model", str(bert_dir), "--max-train", "16", "--max-eval", "8",
               "--recipe-steps", "1", "--triggers", "word:cf", "--precision", "fp32", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["command"].startswith("ptmbench perf compare --model") and "--out" in data["command"]
    assert (out / "compare.md").read_text().startswith("# ptmbench perf compare")
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, culprit", [
    (["--recipe-steps", "0"], "--recipe-steps"),
    (["--epochs", "0"], "--epochs"),
    (["--dataset", "bookcorpus"], "bookcorpus"),
    (["--dataset", "nope"], "nope"),
    (["--phases", "finetune,bogus"], "unknown phase 'bogus'"),
    (["--phases", ","], "--phases names no phase"),
])
def test_cli_perf_bad_input(env, tmp_path, capsys, args, culprit):
    out = tmp_path / "perf"
    assert main(["perf", "compare", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert culprit in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_parse_phases():
    assert parse_phases("finetune,recipe,triggers") == RUN_PHASES
    assert parse_phases(" triggers , finetune") == ("finetune", "triggers")  # run order, whatever the order given
    assert parse_phases("recipe,recipe") == ("recipe",)
    for bad, msg in (("cacc", "unknown phase 'cacc'"), ("", "names no phase"), ("finetune,,x", "'x'")):
        with pytest.raises(PtmbenchError, match=msg):
            parse_phases(bad)
    with pytest.raises(PtmbenchError, match="unknown phase"):
        PerfOptions(phases=("finetune", "nope")).validate()
    assert "--phases" not in PerfOptions().command()
    assert PerfOptions(phases=("finetune",)).command().endswith("--phases finetune")


def test_run_compare_only_the_phases_asked_for(bert, env, tmp_path):
    """``--phases triggers``: only (c) is timed and reported (its classifier fine-tuned untimed)."""
    opts = PerfOptions(model="tiny-bert", max_train=16, max_eval=8, epochs=1, recipe_steps=1, triggers="word:cf",
                       phases=("triggers",))
    rep = run_compare(bert, opts, RunContext(seed=0, precision="fp32"), model_label="tiny-bert").report
    assert list(rep["phases"]) == ["triggers"] and list(rep["quality"]) == ["triggers"]
    assert rep["phases_run"] == ["triggers"] and rep["command"].endswith("--phases triggers")
    md = write_report(rep, tmp_path / "perf")[0].read_text()
    assert "| (c) trigger evaluation |" in md and "(c) AASR" in md
    assert "(a)" not in md and "(b)" not in md and "RECIPE" not in md


# ------------------------------------------------------------------------------------------ same objective
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_full_vocab_mlm_loss_equals_masked_only(family, request):
    """BertForMaskedLM's loss (head over every position, padded to 64) == ptmbench's (head over masked
    positions only, batch trimmed to its longest sequence) on the same batch and masks, in fp32."""
    from defenses.recipe import StaticMasked

    ptm: PTM = request.getfixturevalue(family)
    ptm.backbone.eval()
    ptm.pt_head.eval()
    raw = texts(12)
    width = pad_width(ptm, 64)
    enc = reference_encode(ptm.processor, raw, width)
    tokens = TEXT.tokenize(ptm.processor, raw)
    assert strip(enc) == strip(TEXT.pack(ptm.processor, tokens.ids, width))  # same token ids

    ids, labels = static_masks(ptm, enc, torch.Generator().manual_seed(3))
    static = StaticMasked(ptm, tokens, width, torch.Generator().manual_seed(3))
    assert torch.equal(static.ids, ids) and torch.equal(static.labels, labels)  # identical masks
    assert int((labels != -100).sum()) > 5

    idx = np.arange(len(raw))
    fast_batch, fast_labels = static.batch(idx, "cpu")
    assert fast_batch["input_ids"].shape[1] < width  # the fast path really trims padding
    with torch.no_grad():
        ref = reference_mlm_loss(ptm, {"input_ids": ids, "attention_mask": enc["attention_mask"]}, labels)
        fast = TEXT.mlm_loss(ptm, fast_batch, fast_labels)
    assert ref.dtype == fast.dtype == torch.float32
    assert abs(ref.item() - fast.item()) < 1e-5


def test_padding_to_128_is_invariant():
    """Classifier logits of sequences padded to 128 (reference) == dynamically padded ones (ptmbench)."""
    tok = wordpiece_tokenizer()
    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                    pad_token_id=tok.pad_token_id), add_pooling_layer=True)
    ptm = PTM("text", "bert", backbone, new_mlm_head(backbone), tok)
    model = Classifier(ptm, 2).eval()
    raw = texts(40, seed=5)
    assert pad_width(ptm, 128) == 128
    enc = reference_encode(tok, raw, 128)
    assert enc["input_ids"].shape == (40, 128)
    ref = reference_logits(model, enc, "cpu")
    tokens = TEXT.tokenize(tok, raw)
    with torch.no_grad():
        batch = TEXT.collate(ptm, tokens, np.arange(40), 128, "cpu")
        assert batch["input_ids"].shape[1] < 20
        fast = model(batch)
    assert ref.shape == fast.shape == (40, 2)
    assert torch.allclose(ref, fast, atol=1e-4, rtol=0)


def test_raw_text_insertion_matches_token_insertion(bert):
    """The reference's raw-text trigger insertion, re-tokenised, gives ptmbench's triggered token ids."""
    from bench.triggers import TextTrigger, sample_rng

    raw = texts(30, seed=9)
    tokens = TEXT.tokenize(bert.processor, raw)
    for trig in (TextTrigger("cf"), TextTrigger("≈"), TextTrigger("mn", position="last", copies=2)):
        ours = trig.apply(tokens, bert.processor, 7)
        theirs = TEXT.tokenize(bert.processor, [
            insert_word(t, trig.word, sample_rng(7, trig.id, i), trig.position, trig.copies) for i, t in enumerate(raw)])
        assert [x.tolist() for x in ours.ids] == [x.tolist() for x in theirs.ids]


# ------------------------------------------------------------------------------------------ measuring
def test_peak_rss_sees_a_transient_allocation():
    release_memory()
    with PeakRss(interval=0.01) as mem:
        a = np.ones(50_000_000, dtype=np.float32)  # 200 MB, touched
        time.sleep(0.15)
        del a
        gc.collect()
        time.sleep(0.05)
    assert mem.start is not None and mem.peak is not None
    assert mem.peak - mem.start > 150 * 2**20  # only the sampling thread saw it: it is gone at exit


def test_cli_perf_memory_covers_every_stage(env, bert_dir, tmp_path, capsys):
    from bench.registry import get, names

    out = tmp_path / "mem"
    rc = main(["perf", "memory", "--model", str(bert_dir), "--preset", "smoke", "--steps", "2", "--dataset", "sst2",
               "--precision", "fp32", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / f"memory-{bert_dir.name}-smoke.json").read_text())
    stages = {(r["kind"], r["method"].split(" ")[0]) for r in report["rows"]}
    for kind in ("attack", "defense"):
        for name in names(kind):
            if "text" in get(kind, name).modalities:
                assert (kind, name) in stages
    assert ("cell", "finetune") in stages and not any(m == "neuba-vision" for _, m in stages)
    assert all(r["peak_mib"] >= r["start_mib"] > 0 for r in report["rows"])
    assert report["max_peak_mib"] == max(r["peak_mib"] for r in report["rows"])
    assert "Largest peak" in capsys.readouterr().out


def test_cli_perf_memory_bad_input(env, bert_dir, tmp_path, capsys):
    out = tmp_path / "mem"
    assert main(["perf", "memory", "--model", str(bert_dir), "--dataset", "cifar10", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cifar10" in err and len(err.splitlines()) == 1
    assert main(["perf", "memory", "--model", str(bert_dir), "--steps", "0", "--out", str(out)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert not out.exists()
