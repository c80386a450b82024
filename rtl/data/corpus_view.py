"""Read a corpus: `open_corpus` returns a view (rows filtered by dataset/domain/split), never a copy.

A sub-corpus for a pretraining candidate ("only the PCB datasets", "everything but dataset x") is a
pyarrow.dataset filter expression over the same Parquet shards, so trying many subsets costs no decode
and no disk. Class ids are those of the full corpus; `num_classes` is always the full table size so a
model's output k means the same class in every checkpoint made from this corpus.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from rtl.artifacts.manifest import read_manifest
from rtl.errors import RtlError

if TYPE_CHECKING:
    import pyarrow.dataset as pds


def _pds():
    """pyarrow.dataset, imported on first use: ~1 s of import that corpus-build workers (which only need
    SCHEMA) and `rtl corpus build` itself would otherwise pay at start (issue 13)."""
    import pyarrow.dataset

    return pyarrow.dataset


__all__ = ["SCHEMA", "CorpusView", "open_corpus", "decode_row"]

SCHEMA = pa.schema([
    ("pixels", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("channels", pa.int32()),
    ("class_id", pa.int32()),
    ("dataset", pa.string()),
    ("label", pa.string()),
    ("source_path", pa.string()),
    ("patch", pa.int32()),
    ("split", pa.string()),
])


def decode_row(pixels: bytes, h: int, w: int, c: int) -> np.ndarray:
    """The (H, W, C) uint8 image of a corpus row (a read-only view on the bytes, no copy)."""
    h, w, c = int(h), int(w), int(c)
    if len(pixels) != h * w * c:
        raise ValueError(f"pixels has {len(pixels)} bytes, expected {h}x{w}x{c}={h * w * c}")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(h, w, c)


class CorpusView:
    """Rows of a corpus restricted to some datasets and splits (see module docstring)."""

    def __init__(self, root: Path, manifest: dict, datasets: list[str], splits: list[str] | None,
                 filtered: bool) -> None:
        self.root = root
        self.manifest = manifest
        self.datasets = datasets
        self.splits = splits
        self._filtered = filtered

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def class_ids(self) -> list[int]:
        """Ids of the classes of this view's datasets (ids of the full table, sorted)."""
        keep = set(self.datasets)
        return sorted(int(c["id"]) for c in self.manifest["classes"] if c["dataset"] in keep)

    @property
    def files(self) -> list[str]:
        return [str(self.root / s) for s in self.manifest.get("shards", [])]

    @cached_property
    def filter_expr(self) -> pds.Expression:
        """pyarrow.dataset expression selecting the view's rows (usable with Ray Data's read_parquet)."""
        pds = _pds()
        expr = pds.scalar(True)
        if self._filtered:
            expr = pds.field("dataset").isin(self.datasets)
        if self.splits is not None:
            expr = expr & pds.field("split").isin(self.splits)
        return expr

    def dataset(self) -> pds.Dataset:
        """The shards as one pyarrow dataset; RtlError (one line) when a shard is missing or unreadable."""
        for rel, f in zip(self.manifest.get("shards", []), self.files):
            if not Path(f).is_file():
                raise RtlError(f"{self.root}: shard {rel} is missing (damaged corpus; rebuild it with "
                               f"`rtl corpus build`)")
        try:
            return _pds().dataset(self.files, schema=SCHEMA, format="parquet")
        except (OSError, pa.ArrowException) as e:
            raise RtlError(f"{self.root}: cannot read the shards: {_first_line(e)}") from None

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """Rows of the view (filters applied), all columns unless `columns` is given."""
        if not self.files:
            t = SCHEMA.empty_table()
            return t.select(columns) if columns else t
        ds = self.dataset()
        try:
            return ds.to_table(columns=columns, filter=self.filter_expr)
        except (OSError, pa.ArrowException) as e:
            raise RtlError(f"{self.root}: cannot read the shards: {_first_line(e)}") from None

    def class_counts(self) -> dict[int, int]:
        """Rows per class id in this view (classes of the view with no rows are listed with 0)."""
        ids = self.table(columns=["class_id"]).column("class_id").to_numpy()
        counts = {i: 0 for i in self.class_ids}
        vals, n = np.unique(ids, return_counts=True)
        counts.update({int(v): int(k) for v, k in zip(vals, n)})
        return counts

    def __len__(self) -> int:
        if not self.files:
            return 0
        ds = self.dataset()
        try:
            return ds.count_rows(filter=self.filter_expr)
        except (OSError, pa.ArrowException) as e:
            raise RtlError(f"{self.root}: cannot read the shards: {_first_line(e)}") from None

    def __repr__(self) -> str:
        return (f"CorpusView({self.root}, version={self.version}, datasets={self.datasets}, "
                f"splits={self.splits})")


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def open_corpus(path: str | Path, *, datasets: list[str] | None = None, domains: list[str] | None = None,
                splits: list[str] | None = None) -> CorpusView:
    """A view of the corpus at `path`; `datasets` and `domains` intersect, `splits` filters rows.

    Unknown dataset/domain/split names raise RtlError listing the valid ones.
    """
    root = Path(path)
    manifest = read_manifest(root)
    all_ds: dict[str, dict] = manifest["datasets"]
    chosen = sorted(all_ds)
    filtered = False
    if datasets is not None:
        bad = [d for d in datasets if d not in all_ds]
        if bad:
            raise RtlError(f"unknown dataset(s) {', '.join(bad)}; corpus has: {', '.join(sorted(all_ds))}")
        chosen = [d for d in chosen if d in set(datasets)]
        filtered = True
    if domains is not None:
        valid = sorted({t for d in all_ds.values() for t in d.get("domain", [])})
        bad = [t for t in domains if t not in valid]
        if bad:
            raise RtlError(f"unknown domain(s) {', '.join(bad)}; corpus has: {', '.join(valid)}")
        chosen = [d for d in chosen if set(all_ds[d].get("domain", [])) & set(domains)]
        filtered = True
    if splits is not None:
        bad = [s for s in splits if s not in ("train", "val", "test", "")]
        if bad:
            raise RtlError(f"unknown split(s) {', '.join(bad)}; valid: train, val, test")
        splits = list(splits)
    return CorpusView(root, manifest, chosen, splits, filtered)
