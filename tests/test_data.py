"""Offline tests of bench.data on a tiny fake mirror (plus one light read of the real mirror when present)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from bench import data
from bench.errors import PtmbenchError

REAL_MIRROR = Path("/work/shared/data")
AG_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write(root: Path, rel: str, ds: datasets.Dataset, manifest: list[dict]) -> None:
    """Write ``ds`` as parquet at ``root/rel`` and append its real manifest entry."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    label = ds.features.get("label")
    entry = {
        "path": rel,
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(ds),
        "columns": {c: type(f).__name__ for c, f in ds.features.items()},
    }
    if isinstance(label, datasets.ClassLabel):
        entry.update(num_classes=label.num_classes, class_names=list(label.names))
    manifest.append(entry)


def _text(n: int, names: list[str], prefix: str) -> datasets.Dataset:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict(
        {"text": [f"{prefix} {i}" for i in range(n)], "label": [i % len(names) for i in range(n)]}, features
    )


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake mirror: agnews train/test, sst2 validation, bookcorpus, cifar10 train (4x4 images)."""
    root = tmp_path / "mirror"
    manifest: list[dict] = []
    _write(root, "text/agnews/train.parquet", _text(50, AG_NAMES, "ag-train"), manifest)
    _write(root, "text/agnews/test.parquet", _text(12, AG_NAMES, "ag-test"), manifest)
    _write(root, "text/sst2/validation.parquet", _text(8, ["negative", "positive"], "sst"), manifest)
    _write(
        root, "text/aux/bookcorpus.parquet", datasets.Dataset.from_dict({"text": ["a", "b", "c"]}), manifest
    )
    labels = [i % 10 for i in range(40)]
    images = [Image.new("RGB", (4, 4), (lab * 20, i, 0)) for i, lab in enumerate(labels)]
    cifar = datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR_NAMES)}),
    )
    _write(root, "images/cifar10/train.parquet", cifar, manifest)
    (root / "MANIFEST.json").write_text(json.dumps({"files": manifest}))

    monkeypatch.setenv("PTMBENCH_DATA_DIR", str(root))
    monkeypatch.setenv("PTMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    return root


def _corrupt(path: Path) -> None:
    """Flip one byte (same size) and move mtime on, as a real edit would."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    st = path.stat()
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_load_with_labels_and_class_names(mirror: Path) -> None:
    ds = data.load_split("agnews", "test")
    assert ds.column_names == ["text", "label"]
    assert len(ds) == 12
    assert ds[5] == {"text": "ag-test 5", "label": 1}
    assert isinstance(ds[0]["label"], int)
    s = data.spec("agnews")
    assert s.class_names == tuple(AG_NAMES) and s.num_classes == 4
    assert s.column == "text" and s.splits == ("train", "validation", "test")


def test_unlabelled_split(mirror: Path) -> None:
    ds = data.load_split("bookcorpus", "train")
    assert ds.column_names == ["text"] and len(ds) == 3  # aux sets are not carved
    assert data.spec("bookcorpus").class_names == ()


def test_validation_carving_is_fixed_and_disjoint(mirror: Path) -> None:
    train = data.load_split("agnews", "train")
    val = data.load_split("agnews", "validation")
    assert len(val) == 5 and len(train) == 45  # round(0.1 * 50)
    tr, va = train["text"], val["text"]
    assert not set(tr) & set(va) and len(set(tr) | set(va)) == 50
    expected = np.sort(np.random.default_rng(12345).permutation(50)[:5])
    assert list(va) == [f"ag-train {i}" for i in expected]
    assert list(tr) == sorted(tr, key=lambda t: int(t.split()[1]))  # original order kept
    assert list(data.load_split("agnews", "validation")["text"]) == list(va)


def test_carve_size() -> None:
    assert [data.carve_size(n) for n in (1, 4, 50, 6920, 50000)] == [1, 1, 5, 692, 1000]


def test_max_samples_is_deterministic(mirror: Path) -> None:
    a = list(data.load_split("agnews", "train", max_samples=10, sample_seed=1)["text"])
    b = list(data.load_split("agnews", "train", max_samples=10, sample_seed=1)["text"])
    c = list(data.load_split("agnews", "train", max_samples=10, sample_seed=2)["text"])
    full = list(data.load_split("agnews", "train")["text"])
    assert a == b and a != c and len(a) == 10
    assert set(a) <= set(full) and a == [t for t in full if t in set(a)]
    assert len(data.load_split("agnews", "test", max_samples=1000)) == 12
    with pytest.raises(PtmbenchError, match="max_samples"):
        data.load_split("agnews", "test", max_samples=0)


def test_label_subset_remaps(mirror: Path) -> None:
    s = data.spec("catdog")
    assert s.class_names == ("cat", "dog") and s.num_classes == 2 and s.column == "image"
    ds = datasets.concatenate_datasets(
        [data.load_split("catdog", "train"), data.load_split("catdog", "validation")]
    )
    assert len(ds) == 8  # 4 cats + 4 dogs of 40 rows
    assert ds.features["label"].names == ["cat", "dog"]
    for row in ds:
        red = row["image"].getpixel((0, 0))[0]
        assert (red, row["label"]) in {(3 * 20, 0), (5 * 20, 1)}


def test_corrupt_file_is_refused(mirror: Path) -> None:
    path = mirror / "text/agnews/test.parquet"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    _corrupt(path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(PtmbenchError) as err:
        data.load_split("agnews", "test")
    msg = str(err.value)
    assert str(path) in msg and expected in msg and actual in msg and "\n" not in msg


def test_file_changed_after_verification_is_refused(mirror: Path) -> None:
    data.load_split("agnews", "test")
    _corrupt(mirror / "text/agnews/test.parquet")
    with pytest.raises(PtmbenchError, match="corrupt"):
        data.load_split("agnews", "test")


def test_missing_file_is_clear(mirror: Path) -> None:
    (mirror / "text/agnews/test.parquet").unlink()
    with pytest.raises(PtmbenchError, match="PTMBENCH_DATA_DIR") as err:
        data.load_split("agnews", "test")
    assert "text/agnews/test.parquet" in str(err.value) and "missing" in str(err.value)


def test_verification_stamp_avoids_rehashing(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = data._sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(data, "_sha256_file", counting)
    data.load_split("agnews", "test")
    data.load_split("agnews", "test", max_samples=3)
    assert len(calls) == 1
    assert list((mirror.parent / "cache" / "verified").glob("*.json"))
    entry = data.load_manifest()["text/agnews/test.parquet"]
    assert data.verify_file(mirror / "text/agnews/test.parquet", entry) == data.CACHED
    assert data.verify_file(mirror / "text/agnews/test.parquet", entry, force=True) == data.OK
    assert len(calls) == 2


def test_verify_reports_every_file(mirror: Path) -> None:
    _corrupt(mirror / "text/agnews/test.parquet")
    rows = data.verify(["agnews", "sst2", "catdog", "cifar10"])
    status = {(d, f): s for d, f, s in rows}
    assert status[("agnews", "text/agnews/train.parquet")] == data.OK
    assert status[("agnews", "text/agnews/test.parquet")] == data.CORRUPT
    assert status[("sst2", "text/sst2/train.parquet")] == data.UNLISTED
    assert status[("sst2", "text/sst2/validation.parquet")] == data.OK
    assert status[("catdog", "images/cifar10/train.parquet")] == data.OK
    assert status[("cifar10", "images/cifar10/train.parquet")] == data.OK  # hashed once, reported twice


def test_describe(mirror: Path) -> None:
    rows = {d["name"]: d for d in data.describe()}
    assert {"sst2", "agnews", "cifar10", "gtsrb-binary", "catdog", "tiny-imagenet", "wikitext2"} <= set(rows)
    ag = rows["agnews"]
    assert ag["splits"] == {"train": 45, "validation": 5, "test": 12}
    assert ag["classes"] == AG_NAMES and ag["role"] == "downstream" and ag["modality"] == "text"
    assert rows["catdog"]["classes"] == ["cat", "dog"]
    assert rows["tiny-imagenet"]["splits"] == {"train": None, "validation": None, "test": None}


def test_unknown_names_and_splits(mirror: Path) -> None:
    with pytest.raises(PtmbenchError, match="known datasets: .*agnews.*sst2"):
        data.spec("imagenet-21k")
    with pytest.raises(PtmbenchError, match="known datasets"):
        data.load_split("nope", "train")
    with pytest.raises(PtmbenchError, match="train, validation, test"):
        data.load_split("sst2", "dev")


def test_label_column_missing_or_empty(mirror: Path) -> None:
    manifest = json.loads((mirror / "MANIFEST.json").read_text())["files"]
    _write(mirror, "text/hsol/train.parquet", datasets.Dataset.from_dict({"text": ["x", "y"]}), manifest)
    empty = datasets.Dataset.from_dict(
        {"text": [], "label": []},
        datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["ham", "spam"])}
        ),
    )
    _write(mirror, "text/enron/test.parquet", empty, manifest)
    (mirror / "MANIFEST.json").write_text(json.dumps({"files": manifest}))
    with pytest.raises(PtmbenchError, match=r"text/hsol/train\.parquet lacks column\(s\) label"):
        data.load_split("hsol", "train")
    with pytest.raises(PtmbenchError, match=r"text/enron/test\.parquet gives no rows"):
        data.load_split("enron", "test")


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTMBENCH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PtmbenchError, match="set PTMBENCH_DATA_DIR"):
        data.data_dir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "MANIFEST.json").write_text('{"files": []}')
    assert data.data_dir() == (tmp_path / "data").resolve()
    monkeypatch.setenv("PTMBENCH_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(PtmbenchError, match="has no MANIFEST.json"):
        data.data_dir()


def test_specs_are_frozen() -> None:
    s = data.spec("gtsrb-binary")
    assert s.label_subset == (13, 38) and s.files["train"] == "images/gtsrb/train.parquet"
    with pytest.raises(TypeError):
        s.files["train"] = "x"  # type: ignore[index]
    assert data.spec("tiny-imagenet").is_labelled("validation")
    assert not data.spec("tiny-imagenet").is_labelled("test")


@pytest.mark.skipif(not (REAL_MIRROR / "text/sst2/validation.parquet").is_file(), reason="no real mirror")
def test_real_mirror_sst2_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTMBENCH_DATA_DIR", str(REAL_MIRROR))
    monkeypatch.setenv("PTMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    ds = data.load_split("sst2", "validation")
    assert len(ds) == 872 and ds.column_names == ["text", "label"]
    assert data.spec("sst2").class_names == ("negative", "positive")
