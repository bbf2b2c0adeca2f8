"""Data layer: the registered datasets, the verified offline mirror, and deterministic split loading.

Every split is read from the offline parquet mirror (``$PTMBENCH_DATA_DIR``, see ``MANIFEST.json``) after its
size and sha256 are checked, so a run never trains on a corrupt or substituted file.  A Hugging Face Hub
fallback exists only for online users whose mirror lacks a file; with ``HF_HUB_OFFLINE`` set it is never
tried.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bench.errors import PtmbenchError
from bench.modality import MODALITIES, Modality
from bench.registry import get, register
from bench.registry import names as registered_names
from bench.userdata import UserDataset

if TYPE_CHECKING:
    import datasets

MANIFEST_NAME = "MANIFEST.json"
DATA_DIR_ENV = "PTMBENCH_DATA_DIR"
CACHE_ENV = "PTMBENCH_CACHE"
MIRROR_CANDIDATES = ("data", "../shared/data")  # relative to the working directory, first match wins
SPLIT_ORDER = ("train", "validation", "test")

# Validation carving: fixed, independent of the run seed, so every run sees the same train/validation split.
CARVE_SEED = 12345
CARVE_FRACTION = 0.1
CARVE_MAX = 1000

# verify()/verify_file() statuses.
OK, CACHED, MISSING, CORRUPT, UNLISTED = "ok", "ok (cached)", "missing", "corrupt", "not in manifest"

Role = Literal["downstream", "aux"]


@dataclass(frozen=True)
class HubSource:
    """Best-effort Hugging Face Hub location of a dataset, used only online when the mirror lacks a file."""

    repo: str
    config: str | None = None
    renames: Mapping[str, str] = field(default_factory=dict)  # hub column -> our column
    label_map: Mapping[int, int] = field(default_factory=dict)  # hub label -> our label (others dropped)
    splits: Mapping[str, str] = field(default_factory=dict)  # our split -> hub split, identity otherwise

    def __post_init__(self) -> None:
        for attr in ("renames", "label_map", "splits"):
            object.__setattr__(self, attr, MappingProxyType(dict(getattr(self, attr))))


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: where its split files live in the mirror and how they are shaped."""

    name: str
    modality: Modality
    files: Mapping[str, str]  # split -> parquet path relative to the mirror root
    role: Role = "downstream"
    label_subset: tuple[int, ...] | None = None  # keep these source labels, remapped to 0..k-1 in this order
    unlabelled: tuple[str, ...] = ()  # splits that carry no label column
    hub: HubSource | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"dataset {self.name!r}: modality must be one of {', '.join(MODALITIES)}, "
                             f"not {self.modality!r}")
        if self.role not in ("downstream", "aux"):
            raise ValueError(f"dataset {self.name!r}: role must be 'downstream' or 'aux', not {self.role!r}")
        if self.label_subset is not None and len(set(self.label_subset)) != len(self.label_subset):
            raise ValueError(f"dataset {self.name!r}: label_subset {self.label_subset} repeats a label")
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    @property
    def column(self) -> str:
        """Name of the input column: ``text`` or ``image``."""
        return "text" if self.modality == "text" else "image"

    @property
    def carves_validation(self) -> bool:
        """True when ``validation`` is carved from ``train`` as the mirror has none (downstream sets only)."""
        return self.role == "downstream" and "train" in self.files and "validation" not in self.files

    @property
    def splits(self) -> tuple[str, ...]:
        """Loadable split names, including a carved ``validation``."""
        found = set(self.files) | ({"validation"} if self.carves_validation else set())
        return tuple(_ordered(found))

    def is_labelled(self, split: str) -> bool:
        """Whether ``split`` carries a ``label`` column."""
        return split not in self.unlabelled

    def source_split(self, split: str) -> str:
        """The mirror split a split is read from (``train`` for a carved ``validation``)."""
        return "train" if split == "validation" and self.carves_validation else split

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names from the mirror's MANIFEST.json, after ``label_subset``; empty when unlabelled."""
        return _class_names(self, load_manifest())

    @property
    def num_classes(self) -> int:
        """Number of classes after ``label_subset`` (0 when unlabelled)."""
        return len(self.class_names)

    @property
    def record_fields(self) -> dict[str, Any]:
        """Fields a record of this dataset adds (the user's own data add ``data``); none for the mirror's."""
        return {}


def _files(prefix: str, *splits: str) -> dict[str, str]:
    return {s: f"{prefix}/{s}.parquet" for s in splits}


_CIFAR10_HUB = HubSource("uoft-cs/cifar10", renames={"img": "image"})
_GTSRB_FILES = _files("images/gtsrb", "train", "test")
_CIFAR10_FILES = _files("images/cifar10", "train", "test")

BUILTIN_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "sst2",
        "text",
        _files("text/sst2", "train", "validation", "test"),
        hub=HubSource("stanfordnlp/sst2", renames={"sentence": "text"}),
    ),
    DatasetSpec(
        "offenseval",
        "text",
        _files("text/offenseval", "train", "validation", "test"),
        hub=HubSource("tweet_eval", "offensive"),
    ),
    DatasetSpec("agnews", "text", _files("text/agnews", "train", "test"), hub=HubSource("fancyzhx/ag_news")),
    DatasetSpec(
        "hsol",
        "text",
        _files("text/hsol", "train", "test"),
        hub=HubSource(
            "tdavidson/hate_speech_offensive",
            renames={"tweet": "text", "class": "label"},
            label_map={2: 0, 0: 1, 1: 1},
        ),
    ),
    DatasetSpec("enron", "text", _files("text/enron", "train", "test"), hub=HubSource("SetFit/enron_spam")),
    DatasetSpec(
        "bookcorpus",
        "text",
        {"train": "text/aux/bookcorpus.parquet"},
        role="aux",
        unlabelled=("train",),
        hub=HubSource("bookcorpus"),
    ),
    DatasetSpec(
        "wikitext2",
        "text",
        {"train": "text/aux/wikitext2.parquet"},
        role="aux",
        unlabelled=("train",),
        hub=HubSource("wikitext", "wikitext-2-raw-v1"),
    ),
    DatasetSpec("cifar10", "vision", _CIFAR10_FILES, hub=_CIFAR10_HUB),
    DatasetSpec("gtsrb", "vision", _GTSRB_FILES),
    DatasetSpec("gtsrb-binary", "vision", _GTSRB_FILES, label_subset=(13, 38)),
    DatasetSpec("catdog", "vision", _CIFAR10_FILES, label_subset=(3, 5), hub=_CIFAR10_HUB),
    DatasetSpec(
        "tiny-imagenet",
        "vision",
        _files("images/tiny-imagenet", "train", "validation", "test"),
        role="aux",
        unlabelled=("test",),
        hub=HubSource("zh-plus/tiny-imagenet", splits={"validation": "valid"}),
    ),
)

for _spec in BUILTIN_DATASETS:
    register("dataset", _spec.name)(_spec)
del _spec


def spec(name: str) -> DatasetSpec | UserDataset:
    """The registered DatasetSpec called ``name``, else the user's own data when ``name`` is a data file or
    folder path or ``hf:NAME[:CONFIG]`` (:mod:`bench.userdata`); unknown names fail listing the known ones."""
    from bench import userdata

    if name in registered_names("dataset") or not userdata.is_user_dataset(name):
        try:
            return get("dataset", name)
        except PtmbenchError as exc:
            raise PtmbenchError(f"{exc}; or give a data file (.csv, .tsv, .jsonl, .parquet), a data or image "
                                "folder, or hf:NAME") from None
    return userdata.load(name)


def dataset_name(name: str, text_column: str | None = None, label_column: str | None = None) -> str:
    """The dataset id of ``name`` with the columns named by ``--text-column`` / ``--label-column``, which
    apply only to the user's own data."""
    if text_column is None and label_column is None:
        return name
    if name in registered_names("dataset"):
        raise PtmbenchError(f"--text-column/--label-column name the columns of your own data; {name!r} is a "
                            "registered dataset, drop them")
    from bench.userdata import dataset_id

    return dataset_id(name, text_column, label_column)


def check_splits(name: str, splits: Iterable[str] = ("train", "validation", "test")) -> None:
    """Load one sample of each split of ``name``, so a missing or damaged mirror file (or an unreadable file
    of the user's) fails before any work, naming the file."""
    for split in splits:
        load_split(name, split, max_samples=1)


def has_current_record(store: Any, rec: Mapping[str, Any], dspec: Any) -> bool:
    """Whether ``store`` holds the record of ``rec``'s identity, made from the same data: for the user's own
    data the stored record's ``data.sha256`` must be the files' current one (an edited file is recomputed)."""
    if not store.has(rec):
        return False
    sha = getattr(dspec, "sha256", None)
    if sha is None:
        return True
    try:
        return json.loads(store.path(rec).read_text()).get("data", {}).get("sha256") == sha
    except (OSError, ValueError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------- mirror


def data_dir() -> Path:
    """Root of the offline mirror: ``$PTMBENCH_DATA_DIR``, else the first of ``./data`` and ``../shared/data``
    that holds a MANIFEST.json."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        if not (root / MANIFEST_NAME).is_file():
            raise PtmbenchError(
                f"{DATA_DIR_ENV}={env} has no {MANIFEST_NAME}; "
                f"point {DATA_DIR_ENV} at the offline data mirror folder"
            )
        return root.resolve()
    for candidate in MIRROR_CANDIDATES:
        root = Path(candidate)
        if (root / MANIFEST_NAME).is_file():
            return root.resolve()
    raise PtmbenchError(
        f"no offline data mirror found (looked for {' and '.join(MIRROR_CANDIDATES)} with {MANIFEST_NAME} "
        f"under {Path.cwd()}); set {DATA_DIR_ENV} to the folder holding {MANIFEST_NAME}"
    )


def load_manifest(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The mirror's MANIFEST.json as ``relative path -> entry`` (sha256, bytes, rows, class_names, ...)."""
    path = (root if root is not None else data_dir()) / MANIFEST_NAME
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        return {str(entry["path"]): entry for entry in files}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PtmbenchError(f"cannot read {path} ({exc}); restore the mirror's {MANIFEST_NAME}") from exc


def cache_dir() -> Path:
    """ptmbench's cache folder: ``$PTMBENCH_CACHE`` or ``~/.cache/ptmbench``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ptmbench"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path, size: int, mtime_ns: int, sha256: str) -> tuple[Path, dict[str, Any]]:
    key = {"path": str(path), "size": size, "mtime_ns": mtime_ns, "sha256": sha256}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "verified" / f"{name}.json", key


def _read_stamp(stamp: Path, key: dict[str, Any]) -> bool:
    try:
        return json.loads(stamp.read_text(encoding="utf-8")) == key
    except (OSError, ValueError):
        return False


def _write_stamp(stamp: Path, key: dict[str, Any]) -> None:
    # Best effort: an unwritable cache only costs a re-hash next time.
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(key, sort_keys=True), encoding="utf-8")
        os.replace(tmp, stamp)
    except OSError:
        pass


def verify_file(path: Path, manifest_entry: Mapping[str, Any], *, force: bool = False) -> str:
    """Check ``path``'s size then sha256 against its manifest entry; ``OK``/``CACHED``, else PtmbenchError.

    A success is stamped under ``<cache>/verified/``, keyed by absolute path, size, mtime_ns and expected
    sha256, so an unchanged file is hashed once, not on every run; ``force`` ignores the stamp.
    """
    path = Path(path).absolute()
    expected = str(manifest_entry["sha256"]).lower()
    expected_size = int(manifest_entry["bytes"])
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PtmbenchError(
            f"data file {path} is missing; restore it or set {DATA_DIR_ENV} to a complete offline data mirror"
        ) from None
    stamp, key = _stamp_path(path, st.st_size, st.st_mtime_ns, expected)
    if st.st_size == expected_size and not force and _read_stamp(stamp, key):
        return CACHED
    actual = _sha256_file(path)
    if st.st_size != expected_size or actual != expected:
        raise PtmbenchError(
            f"data file {path} is corrupt ({st.st_size} bytes, expected {expected_size}; sha256 {actual}, "
            f"expected {expected}); refusing to use it, restore it from the offline data mirror"
        )
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # unchanged while hashing
        _write_stamp(stamp, key)
    return OK


def _manifest_entry(manifest: Mapping[str, dict[str, Any]], root: Path, rel: str) -> dict[str, Any]:
    entry = manifest.get(rel)
    if entry is None:
        raise PtmbenchError(
            f"data file {root / rel} is not listed in {root / MANIFEST_NAME}, so it cannot be verified; "
            f"point {DATA_DIR_ENV} at an up-to-date offline data mirror"
        )
    return entry


def verify(names: Iterable[str] | None = None, *, force: bool = False) -> list[tuple[str, str, str]]:
    """``(dataset, file, status)`` for every mirror file of the given (default: all) datasets; never raises on
    a bad file, so ``ptmbench data verify`` can report them all. Status: ok, ok (cached), missing, corrupt,
    not in manifest. Files shared by several datasets are hashed once."""
    specs = [spec(n) for n in (registered_names("dataset") if names is None else names)]
    for s in specs:
        if isinstance(s, UserDataset):
            raise PtmbenchError(f"dataset {s.name!r} is your own data, not a mirror dataset; only registered "
                                "datasets can be verified (`ptmbench data list`)")
    root = data_dir()
    manifest = load_manifest(root)
    seen: dict[str, str] = {}
    rows: list[tuple[str, str, str]] = []
    for s in specs:
        for split in _ordered(s.files):
            rel = s.files[split]
            if rel not in seen:
                if rel not in manifest:
                    seen[rel] = UNLISTED
                elif not (root / rel).is_file():
                    seen[rel] = MISSING
                else:
                    try:
                        seen[rel] = verify_file(root / rel, manifest[rel], force=force)
                    except PtmbenchError:
                        seen[rel] = CORRUPT
            rows.append((s.name, rel, seen[rel]))
    return rows


def _ordered(splits: Iterable[str]) -> list[str]:
    return sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))


def _class_names(s: DatasetSpec, manifest: Mapping[str, dict[str, Any]]) -> tuple[str, ...]:
    labelled = [s.files[sp] for sp in _ordered(s.files) if s.is_labelled(sp)]
    source = next(
        (manifest[rel]["class_names"] for rel in labelled if manifest.get(rel, {}).get("class_names")), None
    )
    if source is None:
        return ()
    if s.label_subset is None:
        return tuple(source)
    bad = [i for i in s.label_subset if not 0 <= i < len(source)]
    if bad:
        raise PtmbenchError(
            f"dataset {s.name!r}: label_subset {bad} outside the {len(source)} source classes"
        )
    return tuple(source[i] for i in s.label_subset)


def carve_size(n: int) -> int:
    """Rows of a carved validation split from an ``n``-row train split."""
    return max(1, min(CARVE_MAX, round(CARVE_FRACTION * n)))


def describe() -> list[dict[str, Any]]:
    """One dict per registered dataset (name, modality, role, splits with manifest row counts, classes) for
    ``ptmbench data list``; rows are None where unknown (no mirror, or a label_subset of the source file)."""
    try:
        manifest = load_manifest()
    except PtmbenchError:
        manifest = {}
    out: list[dict[str, Any]] = []
    for name in registered_names("dataset"):
        s = spec(name)
        splits: dict[str, int | None] = {}
        for split in s.splits:
            rows = manifest.get(s.files[s.source_split(split)], {}).get("rows")
            if rows is not None and s.label_subset is not None:
                rows = None
            if rows is not None and s.carves_validation and split in ("train", "validation"):
                rows = carve_size(rows) if split == "validation" else rows - carve_size(rows)
            splits[split] = rows
        classes = list(_class_names(s, manifest))
        out.append(
            {
                "name": name,
                "modality": s.modality,
                "role": s.role,
                "splits": splits,
                "num_classes": len(classes),
                "classes": classes,
            }
        )
    return out


# --------------------------------------------------------------------------------------------- loading


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def load_split(
    name: str, split: str, *, max_samples: int | None = None, sample_seed: int = 0
) -> datasets.Dataset:
    """One split as a ``datasets.Dataset`` with ``text``/``image`` (+ int ``label`` when labelled).

    A missing ``validation`` is carved from ``train`` with a fixed seed (disjoint, same in every run);
    ``max_samples`` then keeps a ``sample_seed``-determined subset in original order.
    """
    s = spec(name)
    if split not in s.splits:
        raise PtmbenchError(f"dataset {name!r} has no split {split!r}; its splits are: {', '.join(s.splits)}")
    if max_samples is not None and max_samples < 1:
        raise PtmbenchError(
            f"max_samples must be a positive integer or None, got {max_samples} (dataset {name!r})"
        )
    if isinstance(s, UserDataset):  # the user's own data, already split and carved
        ds = s.split(split)
    else:
        ds = _load_source(s, s.source_split(split))
    if s.carves_validation and split in ("train", "validation"):
        n = len(ds)
        order = np.random.default_rng(CARVE_SEED).permutation(n)
        k = carve_size(n)
        ds = ds.select(np.sort(order[:k] if split == "validation" else order[k:]))
    if max_samples is not None and max_samples < len(ds):
        ds = ds.select(np.sort(np.random.default_rng(sample_seed).permutation(len(ds))[:max_samples]))
    return ds


def _load_source(s: DatasetSpec, split: str) -> datasets.Dataset:
    """A whole mirror split (verified) or, online without the mirror file, its hub fallback, shaped."""
    rel = s.files[split]
    use_hub = s.hub is not None and not _hub_offline()
    try:
        root = data_dir()
    except PtmbenchError:
        if use_hub:
            return _load_hub(s, split)
        raise
    path = root / rel
    if not path.exists() and use_hub:
        return _load_hub(s, split)
    verify_file(path, _manifest_entry(load_manifest(root), root, rel))

    import datasets
    import pyarrow.parquet as pq

    try:
        if pq.read_metadata(path).num_rows == 0:  # from_parquet cannot build an empty split
            raise PtmbenchError(
                f"{path} gives no rows for dataset {s.name!r} split {split!r}; restore the file"
            )
        ds = datasets.Dataset.from_parquet(str(path))
    except PtmbenchError:
        raise
    except Exception as exc:  # any reader failure means a bad file
        raise PtmbenchError(
            f"cannot read data file {path} ({type(exc).__name__}: {exc}); restore it"
        ) from exc
    return _shape(s, split, ds, str(path))


def _load_hub(s: DatasetSpec, split: str) -> datasets.Dataset:
    import datasets

    assert s.hub is not None
    hub_split = s.hub.splits.get(split, split)
    where = f"hub dataset {s.hub.repo}{'/' + s.hub.config if s.hub.config else ''} split {hub_split!r}"
    try:
        ds = datasets.load_dataset(s.hub.repo, s.hub.config, split=hub_split)
    except Exception as exc:  # network, auth, missing split, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PtmbenchError(
            f"dataset {s.name!r}: the offline mirror lacks {s.files[split]} and loading {where} failed "
            f"({first}); set {DATA_DIR_ENV} to the offline data mirror"
        ) from exc
    renames = {k: v for k, v in s.hub.renames.items() if k in ds.column_names and k != v}
    if renames:
        ds = ds.remove_columns([v for v in renames.values() if v in ds.column_names]).rename_columns(renames)
    if s.hub.label_map and "label" in ds.column_names:
        ds = _relabel(ds, dict(s.hub.label_map), None)
    return _shape(s, split, ds, where)


def _shape(s: DatasetSpec, split: str, ds: datasets.Dataset, where: str) -> datasets.Dataset:
    """Keep the input column (+ label), apply ``label_subset``, and refuse empty or label-less data."""
    labelled = s.is_labelled(split)
    wanted = [s.column] + (["label"] if labelled else [])
    lacking = [c for c in wanted if c not in ds.column_names]
    if lacking:
        raise PtmbenchError(
            f"{where} lacks column(s) {', '.join(lacking)} (has {', '.join(ds.column_names)}) needed for "
            f"dataset {s.name!r} split {split!r}; restore the file from the offline data mirror"
        )
    if ds.column_names != wanted:
        ds = ds.select_columns(wanted)
    if labelled and s.label_subset is not None:
        feature = ds.features["label"]
        source_names = getattr(feature, "names", None)
        if source_names and max(s.label_subset) >= len(source_names):
            raise PtmbenchError(
                f"dataset {s.name!r}: label_subset {s.label_subset} exceeds the {len(source_names)} classes "
                f"of {where}; fix the dataset's label_subset"
            )
        subset_names = [source_names[i] for i in s.label_subset] if source_names else None
        ds = _relabel(ds, {src: i for i, src in enumerate(s.label_subset)}, subset_names)
    if len(ds) == 0:
        raise PtmbenchError(
            f"{where} gives no rows for dataset {s.name!r} split {split!r}; restore the file from the mirror"
        )
    return ds


def _relabel(
    ds: datasets.Dataset, mapping: dict[int, int], class_names: list[str] | None
) -> datasets.Dataset:
    """Keep rows whose label is in ``mapping`` and replace each label by its image under ``mapping``."""
    import datasets

    labels = ds.with_format("arrow")["label"].to_numpy().astype(np.int64)
    keep = np.flatnonzero(np.isin(labels, list(mapping)))
    lut = np.vectorize(mapping.__getitem__, otypes=[np.int64])
    new = lut(labels[keep]) if keep.size else np.zeros(0, dtype=np.int64)
    feature = datasets.ClassLabel(names=class_names) if class_names else datasets.Value("int64")
    ds = ds.select(keep) if keep.size < len(ds) else ds
    return ds.remove_columns("label").add_column("label", new.tolist(), feature=feature)
