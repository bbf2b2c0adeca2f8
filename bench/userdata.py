"""Your own data as a benchmark dataset: a local file or folder, or a Hugging Face Hub dataset.

Besides a registered name, a dataset id (``ptmbench finetune --dataset``, a matrix's ``datasets:``) can be:

* a file ``my.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet``: validation and test are carved from it;
* a folder of ``train``, ``validation`` and ``test`` files in those formats (``valid``, ``val`` and ``dev`` also
  name validation); a missing validation or test file is carved from train, a missing train is an error;
* an image folder in ImageFolder layout: ``root/<class>/*.png|jpg|jpeg`` (validation and test carved) or
  ``root/<split>/<class>/*``;
* ``hf:NAME[:CONFIG]``: a hub dataset through ``datasets.load_dataset`` (offline: from the datasets cache); a
  split whose labels are all -1 (an unlabelled hub test split) counts as absent and is carved.

A registered name wins over a folder of the same name (write ``./sst2`` for the folder).  Relative paths are
relative to the current directory.  Carving: each missing split takes :func:`bench.data.carve_size` rows (10%
of train, at most 1,000) chosen with the fixed ``CARVE_SEED``, so every run sees the same splits.

Columns are found by name (text: ``text``, ``sentence``, ``content``; image: ``image``, ``img``; label:
``label``, ``labels``; exact names first, then ignoring case) or named: in a dataset id the options follow a
``?``, as in ``my.csv?text_column=review&label_column=stars`` (the CLI's ``--text-column`` /
``--label-column`` and a matrix's ``{path: my.csv, text_column: review}`` build that id).  Labels are strings
or integers (all of one type; in CSV/TSV a column of integers is read as integers) mapped to ids 0..k-1 in
sorted order; a ``ClassLabel`` feature (parquet written by ``datasets``, hub data) keeps its ids and names.

Every file is hashed on load.  The dataset's ``sha256`` is the file's own for a single file, else the sha256 of
the ``sha256sum``-style lines ``<sha256>  <relative path>\\n`` sorted by path.  It goes into each record's
``data`` field and into the split fingerprints that key the token and image caches, so an edited file is never
served from a stale cache.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bench.errors import PtmbenchError
from bench.modality import Modality

if TYPE_CHECKING:
    import datasets

HUB_PREFIX = "hf:"
TABLE_EXTS = (".csv", ".tsv", ".jsonl", ".parquet")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
TEXT_COLUMNS = ("text", "sentence", "content")
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation", "test": "test"}
OPTIONS = ("text_column", "label_column")
FLAGS = {"text_column": "--text-column (text_column in a matrix)",
         "label_column": "--label-column (label_column in a matrix)"}
LOADER_VERSION = "1"  # bump when loading or carving changes, so cached tokens/images are rebuilt
MAX_LISTED_FILES = 20  # records list each file's sha256 up to this many files (image folders: the total only)
_INT_RE = re.compile(r"[+-]?\d+")

Kind = Literal["file", "folder", "image-folder", "hub"]


# --------------------------------------------------------------------------------------------- ids


@dataclass(frozen=True)
class DataRef:
    """A parsed dataset id: where the data is, and the columns the user named."""

    source: str
    text_column: str | None = None
    label_column: str | None = None

    @property
    def id(self) -> str:
        opts = [f"{k}={getattr(self, k)}" for k in OPTIONS if getattr(self, k) is not None]
        return self.source + ("?" + "&".join(opts) if opts else "")


def parse_id(name: str) -> DataRef:
    """``source[?text_column=A&label_column=B]`` -> DataRef; a ``?`` not followed by options is kept in the
    source."""
    source, sep, query = name.rpartition("?")
    if not sep:
        return DataRef(name)
    opts: dict[str, str] = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if not eq or key not in OPTIONS or not value or key in opts:
            return DataRef(name)
        opts[key] = value
    return DataRef(source, **opts)


def dataset_id(source: str, text_column: str | None = None, label_column: str | None = None) -> str:
    """The dataset id of ``source`` with the named columns (options already in ``source`` are kept unless the
    same option is given again with another value, which is an error)."""
    ref = parse_id(source)
    given = {"text_column": text_column, "label_column": label_column}
    merged = {}
    for k in OPTIONS:
        old, new = getattr(ref, k), given[k]
        if old is not None and new is not None and old != new:
            raise PtmbenchError(f"dataset {source!r} names {k}={old} and {FLAGS[k].split()[0]} says {new}; "
                                "give the column once")
        merged[k] = new if new is not None else old
    return DataRef(ref.source, **merged).id


def is_user_dataset(name: str) -> bool:
    """Whether ``name`` (not a registered dataset) is meant as the user's own data: ``hf:...``, options, an
    existing path, a data file extension or a path separator."""
    ref = parse_id(name)
    if ref.source.startswith(HUB_PREFIX) or ref.id != ref.source:
        return True
    p = Path(ref.source).expanduser()
    return p.exists() or p.suffix.lower() in TABLE_EXTS or "/" in ref.source or os.sep in ref.source


def entry_id(entry: Any, where: str) -> str:
    """A matrix ``datasets:`` entry (a name, or a mapping with ``path`` or ``name`` and optional
    ``text_column`` / ``label_column``) as a dataset id."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict):
        raise PtmbenchError(f"{where}: expected a dataset name or path, or a mapping with 'path', got {entry!r}")
    valid = ("path", "name", *OPTIONS)
    unknown = [k for k in entry if k not in valid]
    if unknown:
        raise PtmbenchError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    sources = [k for k in ("path", "name") if k in entry]
    if len(sources) != 1:
        raise PtmbenchError(f"{where}: give the dataset as exactly one of 'path' or 'name', e.g. "
                            "{path: my.csv, text_column: review}")
    for k in (*sources, *OPTIONS):
        if k in entry and (not isinstance(entry[k], str) or not entry[k].strip()):
            raise PtmbenchError(f"{where}.{k}: expected a non-empty string, got {entry[k]!r}")
    return dataset_id(entry[sources[0]], entry.get("text_column"), entry.get("label_column"))


# --------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True, eq=False)
class UserDataset:
    """The user's dataset, loaded and split: the same interface as a registered
    :class:`bench.data.DatasetSpec` (modality, role, splits, num_classes, class_names, column), plus the
    splits themselves and ``data``, the provenance each record carries (sources, sha256, label mapping)."""

    name: str
    modality: Modality
    class_names: tuple[str, ...]
    data: Mapping[str, Any]
    split_data: Mapping[str, datasets.Dataset] = field(repr=False)
    role: Literal["downstream"] = "downstream"

    # registered-spec attributes that have no meaning here
    label_subset = None
    unlabelled: tuple[str, ...] = ()
    hub = None
    carves_validation = False  # carving is done at load time, see ``data["splits"]``

    def __post_init__(self) -> None:
        object.__setattr__(self, "split_data", MappingProxyType(dict(self.split_data)))
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    @property
    def files(self) -> Mapping[str, str]:
        return MappingProxyType({})

    @property
    def column(self) -> str:
        return "text" if self.modality == "text" else "image"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_data)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sha256(self) -> str:
        return str(self.data["sha256"])

    @property
    def record_fields(self) -> dict[str, Any]:
        """What a record of this dataset adds: ``data`` (source, sha256, files, columns, label map, splits)."""
        return {"data": json.loads(json.dumps(self.data, default=dict))}

    def is_labelled(self, split: str) -> bool:
        return True

    def source_split(self, split: str) -> str:
        return split

    def split(self, name: str) -> datasets.Dataset:
        return self.split_data[name]


_MEMO: dict[tuple[Any, ...], UserDataset] = {}


def load(name: str) -> UserDataset:
    """The user's dataset ``name`` (see the module docstring); PtmbenchError on any bad input.

    Loaded once per process while its files are unchanged (same paths, sizes, mtimes)."""
    ref = parse_id(name)
    if ref.source.startswith(HUB_PREFIX):
        key: tuple[Any, ...] = (ref.id, "hub")
    else:
        path = _existing(ref.source)
        key = (ref.id, str(path.resolve()), _signature(path))
    if key not in _MEMO:
        if ref.source.startswith(HUB_PREFIX):
            _MEMO[key] = _load_hub(ref)
        else:
            _MEMO[key] = _load_local(ref, path)
    return _MEMO[key]


def _existing(source: str) -> Path:
    p = Path(source).expanduser()
    if not p.exists():
        what = "file" if p.suffix.lower() in TABLE_EXTS else "path"
        raise PtmbenchError(f"dataset {what} {source} not found (relative to {Path.cwd()}); give an existing "
                            "data file or folder, hf:NAME, or a registered dataset (ptmbench data list)")
    return p


def _signature(path: Path) -> tuple[Any, ...]:
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


# --------------------------------------------------------------------------------------------- reading


@dataclass
class _Table:
    """One split file's columns as Python lists, with HF features where the file stores them."""

    where: str
    columns: dict[str, list[Any]]
    features: dict[str, Any]
    textual: bool  # CSV/TSV: every value is a string; integer-looking labels are integers

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def _sha256(path: Path) -> str:
    from bench.data import _sha256_file

    try:
        return _sha256_file(path)
    except OSError as exc:
        raise PtmbenchError(f"cannot read data file {path} ({exc.strerror or exc}); check its permissions") from exc


def _unreadable(path: Path, exc: Exception) -> PtmbenchError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return PtmbenchError(f"cannot read data file {path} ({type(exc).__name__}: {first}); fix the file or give "
                         f"another one ({', '.join(TABLE_EXTS)})")


def _read_table(path: Path) -> _Table:
    ext = path.suffix.lower()
    if ext not in TABLE_EXTS:
        raise PtmbenchError(f"data file {path} has an unknown extension {ext or '(none)'!r}; use "
                            f"{', '.join(TABLE_EXTS)}, an image folder, or hf:NAME")
    try:
        if ext in (".csv", ".tsv"):
            import pandas as pd

            kw: dict[str, Any] = {"sep": "\t", "quoting": csv.QUOTE_NONE} if ext == ".tsv" else {}
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8", **kw)
            cols = {str(c): df[c].tolist() for c in df.columns}
            return _Table(str(path), cols, {}, textual=True)
        if ext == ".jsonl":
            rows = []
            with path.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise ValueError(f"line {i} is not a JSON object")
                        rows.append(row)
            names: dict[str, None] = {}
            for row in rows:
                names.update(dict.fromkeys(row))
            return _Table(str(path), {c: [r.get(c) for r in rows] for c in names}, {}, textual=False)
        import pyarrow.parquet as pq
        from datasets import Features

        table = pq.read_table(path)
        feats = dict(Features.from_arrow_schema(table.schema))
        return _Table(str(path), {c: table.column(c).to_pylist() for c in table.column_names}, feats, False)
    except Exception as exc:  # OSError, UnicodeDecodeError, JSON, pandas and pyarrow parser errors
        raise _unreadable(path, exc) from exc


def _pick(columns: Iterable[str], wanted: str | None, candidates: tuple[str, ...], option: str | None,
          where: str) -> str | None:
    cols = list(columns)
    if wanted is not None:
        if wanted in cols:
            return wanted
        raise PtmbenchError(f"{where} has no column {wanted!r} (its columns: {', '.join(cols) or 'none'}); "
                            f"set {FLAGS[option or 'text_column']} to one of them")
    for c in candidates:
        if c in cols:
            return c
    lower = {c.lower(): c for c in cols}
    return next((lower[c] for c in candidates if c in lower), None)


@dataclass
class _Raw:
    """The splits as read: inputs and raw labels per split, where they came from, and how they were found."""

    kind: Kind
    modality: Modality
    inputs: dict[str, list[Any]]
    labels: dict[str, list[Any]]
    origin: dict[str, str]  # split -> file, folder or hub split it was read from
    where: dict[str, Any]  # split -> file named in error messages (image folders: a list, one per image)
    hashes: dict[str, str]  # relative path -> sha256
    columns: dict[str, str] = field(default_factory=dict)
    textual: dict[str, bool] = field(default_factory=dict)
    class_label: dict[str, tuple[str, ...] | None] = field(default_factory=dict)  # split -> ClassLabel names
    notes: list[str] = field(default_factory=list)


def _columns(ref: DataRef, tables: dict[str, _Table], kind: Kind, origin: dict[str, str],
             hashes: dict[str, str]) -> _Raw:
    first = next(iter(tables.values()))
    if ref.text_column is not None:
        input_col = _pick(first.columns, ref.text_column, TEXT_COLUMNS, "text_column", first.where)
        modality: Modality = "text"
    else:
        image_col = _pick(first.columns, None, IMAGE_COLUMNS, None, first.where)
        input_col = image_col or _pick(first.columns, None, TEXT_COLUMNS, None, first.where)
        modality = "vision" if image_col else "text"
        if input_col is None:
            raise PtmbenchError(f"{first.where} has no text column ({', '.join(TEXT_COLUMNS)}) or image column "
                                f"({', '.join(IMAGE_COLUMNS)}) (its columns: {', '.join(first.columns) or 'none'}); "
                                f"set {FLAGS['text_column']} to the text column")
    label_col = _pick(first.columns, ref.label_column, LABEL_COLUMNS, "label_column", first.where)
    if label_col is None:
        raise PtmbenchError(f"{first.where} has no label column ({', '.join(LABEL_COLUMNS)}) (its columns: "
                            f"{', '.join(first.columns) or 'none'}); set {FLAGS['label_column']} to the label column")
    raw = _Raw(kind, modality, {}, {}, origin, {}, hashes,
               columns={"text" if modality == "text" else "image": input_col, "label": label_col})
    for split, t in tables.items():
        for col, option in ((input_col, "text_column"), (label_col, "label_column")):
            if col not in t.columns:
                raise PtmbenchError(f"{t.where} has no column {col!r} (its columns: {', '.join(t.columns) or 'none'}"
                                    f"; {first.where} has it); give every split the same columns or set "
                                    f"{FLAGS[option]}")
        if t.rows == 0:
            raise PtmbenchError(f"{t.where} has no rows (split {split!r}); add rows or remove the file")
        raw.where[split] = t.where
        raw.labels[split] = t.columns[label_col]
        raw.textual[split] = t.textual
        feat = t.features.get(label_col)
        raw.class_label[split] = tuple(feat.names) if type(feat).__name__ == "ClassLabel" else None
        values = t.columns[input_col]
        if modality == "text":
            raw.inputs[split] = [_text(v, i, t.where, input_col) for i, v in enumerate(values)]
        else:
            raw.inputs[split] = [_image(v, i, t.where, input_col) for i, v in enumerate(values)]
    return raw


def _text(v: Any, i: int, where: str, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise PtmbenchError(f"{where}: row {i + 1} has no {col!r} value; fill it or drop the row")
    return v if isinstance(v, str) else str(v)


def _image(v: Any, i: int, where: str, col: str) -> bytes:
    b = v.get("bytes") if isinstance(v, dict) else v
    if isinstance(v, dict) and b is None and isinstance(v.get("path"), str) and Path(v["path"]).is_file():
        b = Path(v["path"]).read_bytes()  # a hub image stored by path in the local cache
    if not isinstance(b, (bytes, bytearray)):
        raise PtmbenchError(f"{where}: row {i + 1} of column {col!r} holds {type(b).__name__}, not image bytes; "
                            "store the images in the file (parquet written by datasets) or use an image folder")
    return bytes(b)


def _check_images(raw: _Raw) -> None:
    from PIL import Image

    for split, items in raw.inputs.items():
        for i, b in enumerate(items):
            try:
                with Image.open(io.BytesIO(b)) as im:
                    im.load()
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for undecodable data
                where = raw.where[split] if raw.kind != "image-folder" else raw.where[split][i]
                row = f": row {i + 1}" if raw.kind != "image-folder" else ""
                raise PtmbenchError(f"{where}{row}: image cannot be decoded ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}); fix or remove it") from exc


def _load_local(ref: DataRef, path: Path) -> UserDataset:
    if path.is_file():
        digest = _sha256(path)
        raw = _columns(ref, {"train": _read_table(path)}, "file", {"train": path.name}, {path.name: digest})
        return _finish(ref, raw)
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise PtmbenchError(f"cannot read dataset folder {path} ({exc.strerror or exc})") from exc
    files: dict[str, Path] = {}
    for p in entries:
        if not p.is_file():
            continue
        split = SPLIT_NAMES.get(p.name.split(".", 1)[0].lower())
        if split is None:
            continue  # README, licence, ...
        if p.suffix.lower() not in TABLE_EXTS:
            raise PtmbenchError(f"data file {p} has an unknown extension {p.suffix or '(none)'!r}; use "
                                f"{', '.join(TABLE_EXTS)}")
        if split in files:
            raise PtmbenchError(f"dataset folder {path} has two {split} files ({files[split].name} and {p.name}); "
                                "keep one")
        files[split] = p
    if files:
        if "train" not in files:
            raise PtmbenchError(f"dataset folder {path} has {', '.join(f.name for f in files.values())} but no "
                                f"train file; add train{files[next(iter(files))].suffix}")
        from bench.data import _ordered

        order = _ordered(files)
        tables = {s: _read_table(files[s]) for s in order}
        hashes = {files[s].name: _sha256(files[s]) for s in order}
        return _finish(ref, _columns(ref, tables, "folder", {s: files[s].name for s in order}, hashes))
    return _finish(ref, _image_folder(ref, path, [p for p in entries if p.is_dir()]))


def _image_folder(ref: DataRef, root: Path, subdirs: list[Path]) -> _Raw:
    if not subdirs:
        raise PtmbenchError(f"dataset folder {root} holds no train/validation/test file ({', '.join(TABLE_EXTS)}) "
                            f"and no class folders of images ({', '.join(IMAGE_EXTS)}); see `ptmbench finetune -h`")
    if ref.text_column or ref.label_column:
        raise PtmbenchError(f"{root} is an image folder (labels are its class folders); drop text_column/"
                            "label_column")
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_NAMES}
    if split_dirs:
        others = [d.name for d in subdirs if d.name.lower() not in SPLIT_NAMES]
        if others:
            raise PtmbenchError(f"image folder {root} mixes split folders ({', '.join(d.name for d in split_dirs.values())}) "
                                f"and class folders ({', '.join(others)}); use root/<split>/<class>/ or root/<class>/")
        if "train" not in split_dirs:
            raise PtmbenchError(f"image folder {root} has {', '.join(d.name for d in split_dirs.values())} but no "
                                "train folder; add root/train/<class>/")
    else:
        split_dirs = {"train": root}
    from bench.data import _ordered

    raw = _Raw("image-folder", "vision", {}, {}, {}, {}, {}, columns={"image": "<file>", "label": "<class folder>"})
    for split in _ordered(split_dirs):
        d = split_dirs[split]
        classes = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
        if not classes:
            raise PtmbenchError(f"image folder {d} has no class folders; put images in {d}/<class>/")
        inputs, labels, where = [], [], []
        for c in classes:
            for f in sorted(c.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                if f.suffix.lower() not in IMAGE_EXTS:
                    raise PtmbenchError(f"image file {f} has an unknown extension {f.suffix or '(none)'!r}; use "
                                        f"{', '.join(IMAGE_EXTS)}")
                rel = f.relative_to(root).as_posix()
                try:
                    b = f.read_bytes()
                except OSError as exc:
                    raise PtmbenchError(f"cannot read image file {f} ({exc.strerror or exc})") from exc
                raw.hashes[rel] = hashlib.sha256(b).hexdigest()
                inputs.append(b)
                labels.append(c.name)
                where.append(str(f))
        if not inputs:
            raise PtmbenchError(f"image folder {d} holds no images ({', '.join(IMAGE_EXTS)}) in its class folders "
                                f"({', '.join(c.name for c in classes)}); add images")
        raw.inputs[split], raw.labels[split] = inputs, labels
        raw.where[split] = where
        raw.origin[split] = d.relative_to(root).as_posix() if d != root else "."
        raw.textual[split] = True
        raw.class_label[split] = None
    return raw


def _load_hub(ref: DataRef) -> UserDataset:
    import datasets

    repo, _, config = ref.source[len(HUB_PREFIX):].partition(":")
    if not repo:
        raise PtmbenchError(f"dataset {ref.source!r}: give the hub dataset as hf:NAME or hf:NAME:CONFIG")
    try:
        dd = datasets.load_dataset(repo, config or None)
    except Exception as exc:  # network, missing cache, bad config, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PtmbenchError(f"cannot load hub dataset {repo}{':' + config if config else ''} ({first}); offline it "
                            f"must be in the datasets cache ({datasets.config.HF_DATASETS_CACHE}): load it once "
                            "online, or give a local file") from exc
    if not isinstance(dd, datasets.DatasetDict):
        dd = datasets.DatasetDict({"train": dd})
    tables: dict[str, _Table] = {}
    origin: dict[str, str] = {}
    files: list[str] = []
    notes: list[str] = []
    for hub_split in dd:
        split = SPLIT_NAMES.get(hub_split.lower())
        if split is None or split in tables:
            continue
        ds = dd[hub_split]
        feats = dict(ds.features)
        cols = {}
        for c in ds.column_names:
            col = ds.cast_column(c, datasets.Image(decode=False)) if type(feats[c]).__name__ == "Image" else ds
            cols[c] = list(col[c])
        label = next((c for c in (ref.label_column, *LABEL_COLUMNS) if c and c in cols), None)
        if label and type(feats[label]).__name__ == "ClassLabel" and all(v == -1 for v in cols[label]):
            notes.append(f"hub split {hub_split!r} is unlabelled (labels -1); carved instead")
            continue
        tables[split] = _Table(f"hub dataset {repo} split {hub_split!r}", cols, feats, textual=False)
        origin[split] = hub_split
        files += [f["filename"] for f in ds.cache_files]
    if "train" not in tables:
        raise PtmbenchError(f"hub dataset {repo} has no labelled train split (its splits: {', '.join(dd)}); "
                            "choose a dataset with one")
    from bench.data import _ordered

    tables = {s: tables[s] for s in _ordered(tables)}
    hashes = {Path(f).name: _sha256(Path(f)) for f in sorted(set(files))}
    if not hashes:  # an in-memory dataset: its fingerprints stand in for file contents
        hashes = {f"{s}.fingerprint": dd[origin[s]]._fingerprint for s in tables}
    raw = _columns(ref, tables, "hub", origin, hashes)
    raw.notes += notes
    return _finish(ref, raw)


# --------------------------------------------------------------------------------------------- labels, splits


def _label_key(v: Any, textual: bool) -> tuple[str, Any] | None:
    """(type, value) of a raw label; None when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, (int, np.integer)):
        return ("int", int(v))
    if isinstance(v, float):
        return ("int", int(v)) if v.is_integer() else ("float", v)
    if isinstance(v, str):
        s = v.strip()
        return ("int", int(s)) if textual and _INT_RE.fullmatch(s) else ("str", s)
    return (type(v).__name__, v)


def _labels(raw: _Raw) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, int]]:
    """Integer labels per split, class names and the name -> id map."""
    col = raw.columns["label"]
    kinds = {s: raw.class_label[s] for s in raw.labels}
    if any(k is not None for k in kinds.values()):
        names = next(k for k in kinds.values() if k is not None)
        if any(k != names for k in kinds.values()):
            bad = [f"{raw.origin[s]} ({'ClassLabel ' + str(list(k)) if k else 'plain values'})" for s, k in kinds.items()]
            raise PtmbenchError(f"label column {col!r} mixes label types across splits: {'; '.join(bad)}; give every "
                                "split the same label type")
        out = {}
        for s, values in raw.labels.items():
            arr = np.asarray([-1 if v is None else v for v in values], dtype=np.int64)
            bad_rows = np.flatnonzero((arr < 0) | (arr >= len(names)))
            if bad_rows.size:
                raise PtmbenchError(f"{_where(raw, s, bad_rows[0])}: label {arr[bad_rows[0]]} is missing or outside "
                                    f"the {len(names)} classes of column {col!r}; fix or drop the row")
            out[s] = arr
        return out, names, {n: i for i, n in enumerate(names)}
    keyed: dict[str, list[tuple[str, Any]]] = {}
    first_of: dict[str, tuple[str, int, Any]] = {}
    for s, values in raw.labels.items():
        keys = []
        for i, v in enumerate(values):
            k = _label_key(v, raw.textual[s])
            if k is None:
                raise PtmbenchError(f"{_where(raw, s, i)}: no label in column {col!r}; fill it or drop the row")
            if k[0] not in ("int", "str", "bool"):
                raise PtmbenchError(f"{_where(raw, s, i)}: label {v!r} in column {col!r} is a {k[0]}; labels must "
                                    "be strings or integers")
            first_of.setdefault(k[0], (s, i, v))
            keys.append(k)
        keyed[s] = keys
    if len(first_of) > 1:
        shown = "; ".join(f"{t} {v!r} at {_where(raw, s, i)}" for t, (s, i, v) in first_of.items())
        raise PtmbenchError(f"label column {col!r} mixes label types ({shown}); use one type (all strings or all "
                            "integers)")
    values = sorted({k[1] for keys in keyed.values() for k in keys})
    ids = {v: i for i, v in enumerate(values)}
    names = tuple(str(v) for v in values)
    out = {s: np.asarray([ids[k[1]] for k in keys], dtype=np.int64) for s, keys in keyed.items()}
    return out, names, {n: i for i, n in enumerate(names)}


def _where(raw: _Raw, split: str, i: int) -> str:
    w = raw.where[split]
    return w[i] if isinstance(w, list) else f"{w} row {i + 1}"


def _carve(raw: _Raw, labels: dict[str, np.ndarray], source: str) -> dict[str, dict[str, Any]]:
    """Carve missing validation/test splits from train in place; returns the split provenance."""
    from bench.data import CARVE_SEED, carve_size

    missing = [s for s in ("test", "validation") if s not in raw.inputs]
    info: dict[str, dict[str, Any]] = {}
    if missing:
        n = len(raw.inputs["train"])
        k = carve_size(n)
        order = np.random.default_rng(CARVE_SEED).permutation(n)
        taken = 0
        parts: dict[str, np.ndarray] = {}
        for s in missing:
            parts[s] = np.sort(order[taken:taken + k])
            taken += k
        parts["train"] = np.sort(order[taken:])
        if parts["train"].size == 0:
            raise PtmbenchError(f"dataset {source}: train has {n} rows, too few to carve "
                                f"{' and '.join(missing)} from; add rows or give {'/'.join(missing)} files")
        train_in, train_lab = raw.inputs["train"], labels["train"]
        for s, idx in parts.items():
            raw.inputs[s] = [train_in[i] for i in idx]
            labels[s] = train_lab[idx]
    from bench.data import _ordered

    for s in _ordered(raw.inputs):
        info[s] = {"rows": len(raw.inputs[s])}
        if s in missing:
            info[s]["carved_from"] = "train"
        else:
            info[s]["from"] = raw.origin[s]
    return info


def _finish(ref: DataRef, raw: _Raw) -> UserDataset:
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    from bench.data import CARVE_SEED, _ordered

    labels, names, label_map = _labels(raw)
    if raw.modality == "vision":
        _check_images(raw)
    splits = _carve(raw, labels, ref.source)
    for s in _ordered(raw.inputs):
        if not raw.inputs[s]:
            raise PtmbenchError(f"split {s!r} of dataset {ref.source} is empty; add rows to it")
    used = np.unique(np.concatenate(list(labels.values())))
    if used.size < 2:
        raise PtmbenchError(f"dataset {ref.source} has a single class ({names[int(used[0])]!r} in column "
                            f"{raw.columns['label']!r}); a classification dataset needs at least two")
    if np.unique(labels["train"]).size < 2:
        raise PtmbenchError(f"the train split of dataset {ref.source} has a single class; it needs at least two")
    if len(raw.hashes) == 1:
        sha = next(iter(raw.hashes.values()))
    else:
        lines = "".join(f"{h}  {p}\n" for p, h in sorted(raw.hashes.items()))
        sha = hashlib.sha256(lines.encode()).hexdigest()
    col = "text" if raw.modality == "text" else "image"
    data: dict[str, Any] = {"source": ref.source, "kind": raw.kind, "sha256": sha}
    if len(raw.hashes) <= MAX_LISTED_FILES:
        data["files"] = dict(sorted(raw.hashes.items()))
    else:
        data["n_files"] = len(raw.hashes)
    data["columns"] = dict(raw.columns)
    data["label_map"] = label_map
    data["splits"] = splits
    if any("carved_from" in v for v in splits.values()):
        data["carve_seed"] = CARVE_SEED
    if raw.notes:
        data["notes"] = list(raw.notes)
    feats = datasets.Features({col: datasets.Value("string") if col == "text" else datasets.Image(),
                               "label": datasets.ClassLabel(names=list(names))})
    built = {}
    for s in _ordered(raw.inputs):
        inputs = raw.inputs[s] if col == "text" else [{"bytes": b, "path": None} for b in raw.inputs[s]]
        table = pa.Table.from_pydict(feats.encode_batch({col: inputs, "label": labels[s].tolist()}),
                                     schema=feats.arrow_schema)
        fp = hashlib.sha256(f"userdata|{LOADER_VERSION}|{ref.id}|{sha}|{s}".encode()).hexdigest()[:32]
        built[s] = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=feats),
                                    split=s, fingerprint=fp)
    return UserDataset(ref.id, raw.modality, names, data, built)
