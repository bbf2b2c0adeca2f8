"""Content-addressed artifacts: stable keys, atomic writes, corruption detected and recomputed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.artifacts import ArtifactStore, content_key, weights_digest


def test_content_key_is_canonical_and_sensitive():
    a = content_key("attack", "neuba", {"lr": 1e-4, "steps": 3}, "p", 0, "1")
    assert a == content_key("attack", "neuba", {"steps": 3, "lr": 1e-4}, "p", 0, "1")
    assert a != content_key("attack", "neuba", {"steps": 4, "lr": 1e-4}, "p", 0, "1")
    assert a != content_key("attack", "neuba", {"steps": 3, "lr": 1e-4}, "q", 0, "1")
    assert a != content_key("attack", "neuba", {"steps": 3, "lr": 1e-4}, "p", 1, "1")
    assert a != content_key("attack", "neuba", {"steps": 3, "lr": 1e-4}, "p", 0, "2")
    assert a.startswith("attack-neuba-")


def test_write_is_atomic_and_validated(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def writer(d):
        calls.append(1)
        (d / "w.txt").write_text("hello")

    p, computed = store.get_or_create("k1", writer, {"stage": "x"})
    assert computed
    assert (p / "w.txt").read_text() == "hello"
    assert store.is_valid("k1")
    assert store.get_or_create("k1", writer, {"stage": "x"}) == (p, False)
    assert len(calls) == 1  # cached
    (p / "w.txt").write_text("tampered")
    assert not store.is_valid("k1")
    store.get_or_create("k1", writer, {"stage": "x"})
    assert len(calls) == 2 and (p / "w.txt").read_text() == "hello"


def test_failed_writer_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom(d):
        (d / "half.txt").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.get_or_create("k2", boom, {})
    assert not store.path("k2").exists()
    assert list(tmp_path.glob(".tmp-*")) == []


def test_half_artifact_without_meta_is_invalid(tmp_path):
    store = ArtifactStore(tmp_path)
    (tmp_path / "k3").mkdir()
    (tmp_path / "k3" / "weights.safetensors").write_bytes(b"123")
    assert not store.is_valid("k3")


def test_weights_digest_follows_the_weight_files_only(tmp_path):
    store = ArtifactStore(tmp_path)

    def writer(weights: bytes, info: str):
        def w(d):
            (d / "weights.safetensors").write_bytes(weights)
            (d / "ptm.json").write_text(info)  # wall times and the like: not the weights
        return w

    a = weights_digest(store.meta(store.write("a", writer(b"w1", "run 1"), {})))
    b = weights_digest(store.meta(store.write("b", writer(b"w1", "run 2"), {})))
    c = weights_digest(store.meta(store.write("c", writer(b"w2", "run 1"), {})))
    assert a == b and a != c and len(a) == 16 and int(a, 16) >= 0
    assert weights_digest(store.meta(store.write("d", lambda d: (d / "x.txt").write_text("1"), {}))) is None


def test_clean_tmp_leaves_a_directory_whose_stage_is_still_being_written(tmp_path):
    """Runners share a cache: one starting must not delete the temporary directory another is writing into."""
    import tempfile

    store = ArtifactStore(tmp_path)
    live = Path(tempfile.mkdtemp(prefix=".tmp-attack-neuba-0123456789abcdef-", dir=tmp_path))
    stale = Path(tempfile.mkdtemp(prefix=".tmp-zoo-minilm-l6-mlm-fedcba9876543210-fp32-", dir=tmp_path))
    with store.lock("attack-neuba-0123456789abcdef"):
        assert store.clean_tmp() == 1
        assert live.is_dir() and not stale.exists()
    assert store.clean_tmp() == 1 and not live.exists()
