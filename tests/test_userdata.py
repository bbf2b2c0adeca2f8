"""Your own data: local files and folders, image folders and hub datasets as benchmark datasets (offline)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import PALETTE, sentence

from bench.errors import PtmbenchError

LABELS = {0: "neg", 1: "pos"}


def ptmbench(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def write_csv(path: Path, n: int, seed: int = 0, text: str = "text", label: str = "label",
              names: dict[int, str] = LABELS) -> Path:
    import pandas as pd

    rng = np.random.default_rng(seed)
    ys = [int(i % 2) for i in range(n)]
    sep = "\t" if path.suffix == ".tsv" else ","
    pd.DataFrame({text: [sentence(rng, y) for y in ys], label: [names[y] for y in ys]}).to_csv(path, sep=sep,
                                                                                           index=False)
    return path


def png(colour: int, size: int = 16, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = np.clip(PALETTE[colour][None, None, :] + rng.normal(0, 20, size=(size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(px.astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, per_class: int = 12, classes: tuple[str, ...] = ("cat", "dog"),
                 splits: tuple[str, ...] = ()) -> Path:
    for split in splits or ("",):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (d / f"{i:03d}.png").write_bytes(png(k, seed=i + 100 * k))
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- ids


def test_dataset_ids_parse_and_build():
    from bench.userdata import DataRef, dataset_id, entry_id, parse_id

    assert parse_id("my.csv") == DataRef("my.csv")
    assert parse_id("d/x.csv?label_column=stars&text_column=review") == DataRef("d/x.csv", "review", "stars")
    assert parse_id("weird?name.csv") == DataRef("weird?name.csv")  # not options: part of the path
    assert dataset_id("my.csv", "review", None) == "my.csv?text_column=review"
    assert dataset_id("my.csv?text_column=review", None, "stars") == "my.csv?text_column=review&label_column=stars"
    assert entry_id("sst2", "m.datasets[0]") == "sst2"
    assert entry_id({"path": "my.csv", "label_column": "stars"}, "m") == "my.csv?label_column=stars"
    assert entry_id({"name": "hf:user/set:cfg"}, "m") == "hf:user/set:cfg"
    for bad, msg in (({"path": "a.csv", "text": "x"}, "unknown key 'text'"), ({"text_column": "x"}, "exactly one"),
                     ({"path": ""}, "non-empty string"), (3, "expected a dataset name")):
        with pytest.raises(PtmbenchError, match=msg):
            entry_id(bad, "m.datasets[0]")
    with pytest.raises(PtmbenchError, match="give the column once"):
        dataset_id("my.csv?text_column=a", "b")


# --------------------------------------------------------------------------------------------- loading


def test_csv_with_string_labels_is_split_mapped_and_hashed(env, tmp_path):
    from bench import data
    from bench.data import carve_size

    f = write_csv(tmp_path / "reviews.csv", 40, names={0: "negative", 1: "positive"})
    s = data.spec(str(f))
    assert (s.modality, s.role, s.splits, s.num_classes) == ("text", "downstream", ("train", "validation", "test"), 2)
    assert s.class_names == ("negative", "positive")
    k = carve_size(40)
    sizes = {sp: len(data.load_split(str(f), sp)) for sp in s.splits}
    assert sizes == {"train": 40 - 2 * k, "validation": k, "test": k}
    texts = [t for sp in s.splits for t in data.load_split(str(f), sp)["text"]]
    assert sorted(texts) == sorted(__import__("pandas").read_csv(f)["text"])  # disjoint, nothing lost
    rec = s.record_fields["data"]
    assert rec["sha256"] == sha(f) and rec["files"] == {"reviews.csv": sha(f)}
    assert rec["label_map"] == {"negative": 0, "positive": 1} and rec["columns"] == {"text": "text", "label": "label"}
    assert rec["splits"]["test"] == {"rows": k, "carved_from": "train"} and rec["carve_seed"] == 12345
    ds = data.load_split(str(f), "train", max_samples=5)
    assert ds.features["label"].names == ["negative", "positive"] and len(ds) == 5
    # labels follow the text (sentence() puts a positive word in every positive sentence)
    from conftest import POS

    for t, y in zip(ds["text"], ds["label"]):
        assert any(w in t.split() for w in POS) == bool(y)
    json.dumps(s.record_fields)  # plain JSON


def test_folder_of_split_files_in_several_formats_with_named_columns(env, tmp_path):
    import pandas as pd

    from bench import data

    d = tmp_path / "stars"
    d.mkdir()
    rng = np.random.default_rng(0)
    rows = [(sentence(rng, i % 2), 1 + i % 3) for i in range(60)]
    pd.DataFrame(rows[:40], columns=["review", "stars"]).to_csv(d / "train.tsv", sep="\t", index=False)
    (d / "dev.jsonl").write_text("".join(json.dumps({"review": t, "stars": y}) + "\n" for t, y in rows[40:50]))
    pd.DataFrame(rows[50:], columns=["review", "stars"]).to_parquet(d / "test.parquet")
    (d / "README.md").write_text("ignored")
    name = data.dataset_name(str(d), "review", "stars")
    s = data.spec(name)
    assert s.class_names == ("1", "2", "3") and s.num_classes == 3
    assert s.data["splits"] == {"train": {"rows": 40, "from": "train.tsv"},
                                "validation": {"rows": 10, "from": "dev.jsonl"},
                                "test": {"rows": 10, "from": "test.parquet"}}
    assert s.data["label_map"] == {"1": 0, "2": 1, "3": 2} and "carve_seed" not in s.data
    files = {p: sha(d / p) for p in ("dev.jsonl", "test.parquet", "train.tsv")}
    assert s.data["files"] == files
    lines = "".join(f"{files[p]}  {p}\n" for p in sorted(files))
    assert s.sha256 == hashlib.sha256(lines.encode()).hexdigest()  # as `sha256sum * | sort -k2 | sha256sum`
    assert list(data.load_split(name, "validation")["label"]) == [y - 1 for _, y in rows[40:50]]
    # a folder without validation carves it, and one with train only carves test too
    (d / "dev.jsonl").unlink()
    s2 = data.spec(name)
    assert s2.data["splits"]["validation"]["carved_from"] == "train" and s2.data["splits"]["test"]["from"]


def test_parquet_class_label_keeps_its_ids_and_names(env, tmp_path):
    from conftest import text_set

    from bench import data

    f = tmp_path / "cl.parquet"
    text_set(30, 5).to_parquet(str(f))
    s = data.spec(str(f))
    assert s.class_names == ("negative", "positive")
    ds = datasets.concatenate_datasets([data.load_split(str(f), sp) for sp in s.splits])
    assert sorted(zip(ds["text"], ds["label"])) == sorted(zip(text_set(30, 5)["text"], text_set(30, 5)["label"]))


def test_image_folders_carved_and_split(env, tmp_path):
    from bench import data

    flat = image_folder(tmp_path / "pets", per_class=15)
    s = data.spec(str(flat))
    assert (s.modality, s.class_names, s.column) == ("vision", ("cat", "dog"), "image")
    assert sum(s.data["splits"][sp]["rows"] for sp in s.splits) == 30 and s.data["n_files"] == 30
    im = data.load_split(str(flat), "test")[0]["image"]
    assert im.size == (16, 16)
    split = image_folder(tmp_path / "pets2", per_class=6, classes=("0", "1", "10"), splits=("train", "test"))
    s2 = data.spec(str(split))
    assert s2.class_names == ("0", "1", "10")  # integer class folders sort as numbers
    assert s2.data["splits"]["test"] == {"rows": 18, "from": "test"}
    assert s2.data["splits"]["validation"]["carved_from"] == "train"


def _hub_cache(cache: Path, repo: str, splits: dict[str, tuple[list[str], list[int]]]) -> None:
    """Lay out ``repo`` in the datasets cache as ``load_dataset`` leaves a downloaded hub dataset (its offline
    fallback reads exactly this: ``<cache>/<user>___<name>/<config>/<version>/<hash>/``)."""
    from datasets.arrow_writer import ArrowWriter

    user, name = repo.split("/")
    root = cache / f"{user}___{name}" / "default" / "0.0.0" / "0123456789abcdef"
    root.mkdir(parents=True)
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    infos = datasets.SplitDict()
    for split, (texts, labels) in splits.items():
        with ArrowWriter(features=feats, path=str(root / f"{name}-{split}.arrow")) as w:
            for t, y in zip(texts, labels):
                w.write({"sentence": t, "label": y})
            n, nbytes = w.finalize()
        infos.add(datasets.SplitInfo(split, num_bytes=nbytes, num_examples=n, dataset_name=name))
    datasets.DatasetInfo(features=feats, config_name="default", dataset_name=name, splits=infos
                         ).write_to_directory(str(root))


def test_hub_dataset_loads_offline_from_the_datasets_cache(env, tmp_path):
    from bench import data

    rng = np.random.default_rng(3)
    ys = [i % 2 for i in range(40)]
    _hub_cache(Path(env["HF_DATASETS_CACHE"]), "someone/tiny_reviews",
               {"train": ([sentence(rng, y) for y in ys], ys), "test": (["unlabelled"] * 8, [-1] * 8)})
    s = data.spec("hf:someone/tiny_reviews")
    assert s.modality == "text" and s.class_names == ("neg", "pos") and s.data["kind"] == "hub"
    assert s.data["columns"]["text"] == "sentence"
    assert s.data["splits"]["test"]["carved_from"] == "train"  # the unlabelled hub test split is not used
    assert "unlabelled" in s.data["notes"][0] and len(s.data["files"]) == 1
    assert list(data.load_split("hf:someone/tiny_reviews:default", "train")["text"])
    with pytest.raises(PtmbenchError, match="cannot load hub dataset someone/absent"):
        data.spec("hf:someone/absent")


def test_tokens_are_cached_by_content_so_an_edited_file_is_never_stale(env, bert, tmp_path):
    from bench.modalities.text import ADAPTER as TEXT

    cache = tmp_path / "tok"
    f = write_csv(tmp_path / "d.csv", 30)
    a = TEXT.load_split(bert, str(f), "train", None, cache)
    assert TEXT.load_split(bert, str(f), "train", None, cache).labels.tolist() == a.labels.tolist()
    assert len(list((cache / "tokens").glob("*.npz"))) == 1
    write_csv(f, 30, seed=1, names={0: "pos", 1: "neg"})  # same name, other content and labels
    b = TEXT.load_split(bert, str(f), "train", None, cache)
    assert len(list((cache / "tokens").glob("*.npz"))) == 2
    assert b.labels.tolist() == [1 - y for y in a.labels.tolist()]


def test_matrix_takes_paths_and_mappings(env, bert_dir, tmp_path):
    from bench.artifacts import ArtifactStore
    from bench.matrix import load_matrix, plan

    f = write_csv(tmp_path / "rev.csv", 30, text="review", label="stars")
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"models": [str(bert_dir)], "datasets": [
        "sst2", {"path": str(f), "text_column": "review", "label_column": "stars"}], "preset": "smoke"}))
    spec = load_matrix(m)
    ident = f"{f}?text_column=review&label_column=stars"
    assert spec.datasets == ["sst2", ident]
    cells = [n for n in plan(spec, ArtifactStore(tmp_path / "cache" / "artifacts")) if n.stage == "cell"]
    assert sorted(n.work.ident.dataset for n in cells) == sorted(["sst2", ident])
    user = next(n for n in cells if n.work.ident.dataset == ident)
    assert user.work.ident.key_fields()["data_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert "/" not in user.key and "data_sha256" not in next(n for n in cells if n is not user).work.ident.key_fields()
    edited = write_csv(tmp_path / "rev.csv", 31, text="review", label="stars")  # same path, new content
    assert edited == f
    again = [n for n in plan(load_matrix(m), ArtifactStore(tmp_path / "cache" / "artifacts")) if n.stage == "cell"]
    assert user.key not in {n.key for n in again}  # an edited file is a new cell, never a stale record
    from bench.matrix import cell_trigger_sets, expected_record_ids, is_done
    from bench.records import ResultsStore

    results = ResultsStore(tmp_path / "res")
    cell = next(n for n in again if n.work.ident.dataset == ident)
    for rid in expected_record_ids(cell, cell_trigger_sets(cell)):  # records made from the file before the edit
        (results.records_dir / f"{rid}.json").parent.mkdir(parents=True, exist_ok=True)
        (results.records_dir / f"{rid}.json").write_text(json.dumps({"data": {"sha256": "stale"}}))
    store = ArtifactStore(tmp_path / "cache" / "artifacts")
    assert not is_done(cell, store, results)  # stale: the cell is redone and its records overwritten
    for rid in expected_record_ids(cell, cell_trigger_sets(cell)):
        (results.records_dir / f"{rid}.json").write_text(json.dumps({"data": {"sha256": sha(edited)}}))
    assert is_done(cell, store, results)
    m.write_text(yaml.safe_dump({"models": [str(bert_dir)], "datasets": [{"path": str(f)}]}))
    with pytest.raises(PtmbenchError, match="no text column .*set --text-column"):
        load_matrix(m)


# --------------------------------------------------------------------------------------------- the CLI


def test_finetune_on_a_csv_records_label_map_and_sha256(env, bert_dir, tmp_path):
    data_dir = tmp_path / "mine"
    data_dir.mkdir()
    f = write_csv(data_dir / "reviews.csv", 48, text="review", label="sentiment")
    res = tmp_path / "results"
    args = ["finetune", "--model", str(bert_dir), "--dataset", "mine/reviews.csv", "--text-column", "review",
            "--label-column", "sentiment", "--preset", "smoke", "--triggers", "por", "--results", str(res)]
    out = ptmbench(env, *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (rec_path,) = (res / "records").glob("*.json")
    rec = json.loads(rec_path.read_text())
    assert rec["dataset"] == "mine/reviews.csv?text_column=review&label_column=sentiment"
    assert rec["num_classes"] == 2 and rec["n_test"] == 5
    assert rec["data"]["sha256"] == sha(f) and rec["data"]["label_map"] == {"neg": 0, "pos": 1}
    assert rec["data"]["columns"] == {"text": "review", "label": "sentiment"}
    again = ptmbench(env, *args, cwd=tmp_path)
    assert again.returncode == 0 and "cached" in again.stdout
    write_csv(f, 48, seed=9, text="review", label="sentiment")  # edited data: the record is redone
    edited = ptmbench(env, *args, cwd=tmp_path)
    assert edited.returncode == 0 and "cached" not in edited.stdout, edited.stderr
    assert json.loads(rec_path.read_text())["data"]["sha256"] == sha(f)


def test_finetune_on_an_image_folder(env, vit_dir, tmp_path):
    root = image_folder(tmp_path / "pets", per_class=20)
    res = tmp_path / "results"
    out = ptmbench(env, "finetune", "--model", str(vit_dir), "--dataset", str(root), "--preset", "smoke",
                   "--results", str(res))
    assert out.returncode == 0, out.stderr
    (rec,) = [json.loads(p.read_text()) for p in (res / "records").glob("*.json")]
    assert rec["data"]["kind"] == "image-folder" and rec["data"]["label_map"] == {"cat": 0, "dog": 1}
    assert rec["data"]["n_files"] == 40 and len(rec["data"]["sha256"]) == 64


def _bad(tmp: Path, case: str) -> tuple[str, list[str]]:
    """A bad dataset for ``case``: (--dataset value, extra flags)."""
    if case == "missing-named-column":
        return str(write_csv(tmp / "d.csv", 30)), ["--text-column", "review"]
    if case == "no-label-column":
        return str(write_csv(tmp / "d.csv", 30, label="y")), []
    if case == "single-class":
        return str(write_csv(tmp / "d.csv", 30, names={0: "pos", 1: "pos"})), []
    if case == "empty-split":
        d = tmp / "d"
        d.mkdir()
        write_csv(d / "train.csv", 30)
        (d / "test.csv").write_text("text,label\n")
        return str(d), []
    if case == "mixed-labels":
        f = tmp / "d.jsonl"
        f.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2 if i < 20 else "pos"}) + "\n"
                             for i in range(30)))
        return str(f), []
    if case == "undecodable-image":
        root = image_folder(tmp / "pets", per_class=6)
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        return str(root), []
    if case == "unreadable-file":
        f = tmp / "d.parquet"
        f.write_bytes(b"PAR1 this is not parquet")
        return str(f), []
    if case == "unknown-extension":
        f = tmp / "d.xlsx"
        f.write_bytes(b"whatever")
        return str(f), []
    if case == "missing-file":
        return str(tmp / "absent.csv"), []
    if case == "flag-on-registered":
        return "sst2", ["--label-column", "y"]
    raise AssertionError(case)


BAD = [
    ("missing-named-column", "has no column 'review' (its columns: text, label); set --text-column"),
    ("no-label-column", "has no label column (label, labels) (its columns: text, y); set --label-column"),
    ("single-class", "has a single class ('pos'"),
    ("empty-split", "test.csv has no rows (split 'test')"),
    ("mixed-labels", "mixes label types (int 0 at"),
    ("undecodable-image", "broken.png: image cannot be decoded"),
    ("unreadable-file", "cannot read data file"),
    ("unknown-extension", "unknown extension '.xlsx'"),
    ("missing-file", "absent.csv not found"),
    ("flag-on-registered", "'sst2' is a registered dataset"),
]


@pytest.mark.parametrize("case,message", BAD, ids=[c for c, _ in BAD])
def test_bad_data_is_one_line_exit_2_and_writes_nothing(env, bert_dir, vit_dir, tmp_path, case, message):
    dataset, extra = _bad(tmp_path, case)
    model = vit_dir if case == "undecodable-image" else bert_dir
    res = tmp_path / "results"
    out = ptmbench(env, "finetune", "--model", str(model), "--dataset", dataset, *extra, "--preset", "smoke",
                   "--results", str(res))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptmbench: error:"), out.stderr
    assert message in lines[0], lines[0]
    assert not res.exists() and not Path(env["PTMBENCH_CACHE"]).exists()
