"""Content-addressed, atomically written artifacts with sha256-checked files and a meta.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from bench.errors import PtmbenchError

META = "meta.json"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(stage: str, method: str, config: Mapping[str, Any], parent: str | None, seed: int | None,
                version: str, regime: str | None = None) -> str:
    """hash(stage, method, canonical config, parent key, seed, method version) -> a short hex key, computed
    under the numerical ``regime`` (:func:`regime`): unchanged for the default (None), else with
    ``-<regime>`` appended, so artifacts of different regimes never share a key.  Every stage key is made
    here; nothing else marks a key with its regime."""
    payload = canonical_json({"stage": stage, "method": method, "config": config, "parent": parent,
                              "seed": seed, "version": version})
    mark = f"-{regime}" if regime else ""
    return f"{stage}-{method}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}{mark}"


REFERENCE_MARK = "-refpaths"
DEFAULT_PRECISION = "bf16"  # the regime whose keys and record ids carry no marker


def regime(precision: str, reference_paths: bool = False, device: str = "cpu") -> str | None:
    """The numerical regime a stage runs under, as it enters cache keys and record ids: None for the default
    (bf16 autocast on the fast paths), ``"refpaths"`` for the reference paths (fp32 implied), else the
    precision (``"fp32"``).  On a CUDA device the regime is always marked, ``cuda-`` and the precision (or
    ``cuda-refpaths``): GPU kernels round differently from CPU ones, so GPU artifacts and records are kept apart
    from CPU ones (the device index is not part of it).  Artifacts and records of different regimes never
    share a key or an id."""
    name = "refpaths" if reference_paths else None if precision == DEFAULT_PRECISION else precision
    if str(device).startswith("cuda"):
        return f"cuda-{name or precision}"
    return name


def regime_fields(regime_name: str | None) -> dict[str, str]:
    """``{"regime": …}`` off the default regime, ``{}`` on it: what a regime adds to an identity or an
    artifact's meta, so that the default's record ids and metas stay as they were before regimes existed."""
    return {"regime": regime_name} if regime_name else {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_digest(meta: Mapping[str, Any]) -> str | None:
    """A short fingerprint of an artifact's weights: sha256 over the (name, sha256) of its ``*.safetensors``
    files, from its meta.json.  Two builds with the same key hold the same weights exactly when their digests
    agree (the key names what was asked for; bf16 rounding, hence the weights, also depends on the thread
    count and the CPU), so records carry it and a rebuild can be checked against them without re-running a
    cell.  None when the artifact has no weight files."""
    files = {n: d for n, d in meta.get("files", {}).items() if n.endswith(".safetensors")}
    if not files:
        return None
    return hashlib.sha256(canonical_json(files).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("PTMBENCH_CACHE") or Path.home() / ".cache" / "ptmbench")


class ArtifactStore:
    """A directory of artifacts keyed by content hash; a half-written or altered artifact is never used."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "artifacts"

    def path(self, key: str) -> Path:
        return self.root / key

    def checkpoint_dir(self, key: str) -> Path:
        """Where the stage that makes ``key`` keeps its training checkpoints until the artifact is written."""
        return self.root / ".checkpoints" / key

    def lock(self, key: str) -> FileLock:
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".locks" / f"{key}.lock"))

    def is_valid(self, key: str) -> bool:
        """Whole and unaltered: meta.json present and every recorded file matches its sha256."""
        d = self.path(key)
        try:
            meta = json.loads((d / META).read_text())
            files = meta["files"]
        except (OSError, ValueError, KeyError):
            return False
        for name, digest in files.items():
            f = d / name
            if not f.is_file() or sha256_file(f) != digest:
                return False
        return True

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads((self.path(key) / META).read_text())

    def write(self, key: str, writer: Callable[[Path], None], meta: Mapping[str, Any]) -> Path:
        """Run ``writer(tmpdir)``, record sha256 of what it wrote, then rename into place atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        t0 = time.perf_counter()
        try:
            writer(tmp)
            files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            full = {**meta, "key": key, "files": files, "wall_s": round(time.perf_counter() - t0, 2),
                    "written_at_unix": time.time()}
            (tmp / META).write_text(json.dumps(full, indent=1, sort_keys=True, default=str))
            if final.exists():  # an invalid leftover: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def get_or_create(self, key: str, writer: Callable[[Path], None],
                      meta: Mapping[str, Any]) -> tuple[Path, bool]:
        """A valid artifact, computed (once, under a file lock) when missing or corrupt; and whether this
        call computed it (False when it was cached or another runner made it while we waited)."""
        with self.lock(key):
            if self.is_valid(key):
                return self.path(key), False
            return self.write(key, writer, meta), True

    def require(self, key: str) -> Path:
        if not self.is_valid(key):
            raise PtmbenchError(f"artifact {key} in {self.root} is missing or corrupt; re-run the stage that makes it")
        return self.path(key)

    def clean_tmp(self) -> int:
        """Remove temporary directories left by killed runs; returns how many.  A directory whose stage lock is
        held belongs to a runner still writing it (runners share a cache) and is left alone."""
        from filelock import Timeout

        n = 0
        for p in self.root.glob(".tmp-*"):
            key = p.name[len(".tmp-"):].rsplit("-", 1)[0]  # mkdtemp(prefix=f".tmp-{key}-") adds a random tail
            lock = self.lock(key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                shutil.rmtree(p, ignore_errors=True)
                n += 1
            finally:
                lock.release()
        return n


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
