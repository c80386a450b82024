"""Map-style torch Dataset over a corpus view (Parquet rows of raw pixels) for pretraining.

Why a Dataset + our sampler and not Ray Data's ``iter_torch_batches``: the ``weighted`` strategy needs
*exact* class-weighted sampling, i.e. an index-level draw with replacement over the whole view, made
once per epoch and split across workers without duplication (``rtl.train.samplers``). Ray Data
streams and shards blocks per worker; per-shard reweighting gives only approximately the right class
mix (a class may live in one worker's shard only), cannot draw with replacement across shards, and
gives no common global order, which we also rely on for 1-vs-N-worker reproducibility. The unweighted
strategies use the same path so every strategy has identical input pipelines (Ray Data would have
to beat this by a margin to justify two code paths; the demo corpus fits in memory, see
benchmarks/train_throughput.py).

Memory: only the five columns needed to rebuild an image (``pixels, height, width, channels,
class_id``) of the view's rows are read, once per training process, into one contiguous Arrow
buffer. ``__getitem__`` slices that buffer zero-copy. DataLoader worker processes started by fork
share it copy-on-write (Arrow memory is not touched by Python refcounting, so pages stay shared).

Augmentation (CONTRACTS.md "Training input from the corpus"): train = random ``crop``-square crop +
horizontal flip; eval = centre crop; normalisation = `rtl.train.target_data.mean_std` (ImageNet statistics),
identical to the fine-tuning inputs. When the sampler yields ``(row, key)`` pairs the crop/flip RNG
is seeded from ``(seed, key)``, so augmentation depends only on the global draw position, not on the
number of workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from rtl.data.transforms import DecodeError, decode_image, fit_size, to_channels
from rtl.errors import RtlError
from rtl.train.target_data import mean_std

PIXEL_COLUMNS = ["pixels", "height", "width", "channels", "class_id"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}


def read_view_table(view: Any, columns: list[str] = PIXEL_COLUMNS) -> pa.Table:
    """The view's rows (filters applied), only `columns`, in a deterministic order (files, then rows)."""
    import pyarrow.dataset as pads

    try:
        ds = pads.dataset(list(view.files), format="parquet")
        table = ds.to_table(columns=columns, filter=view.filter_expr)
    except (OSError, pa.ArrowInvalid) as e:
        raise RtlError(f"cannot read corpus shards: {e}".splitlines()[0]) from None
    return table


class CorpusDataset(Dataset):
    """Rows of an Arrow table with the corpus pixel schema -> ``(x (C,H,W) float32 normalised, class_id)``.

    Args:
        table: at least ``PIXEL_COLUMNS``.
        crop: output side (the corpus ``min_side``).
        in_channels: model input channels (1 or 3); images are converted with ``to_channels``.
        train: random crop + flip (True) or centre crop (False).
        seed: base of the per-draw augmentation seed (used with ``(row, key)`` indices).
    """

    def __init__(self, table: pa.Table, *, crop: int, in_channels: int = 3, train: bool = True, seed: int = 0) -> None:
        missing = [c for c in PIXEL_COLUMNS if c not in table.column_names]
        if missing:
            raise RtlError(f"corpus table lacks columns {missing}")
        pixels = table.column("pixels").combine_chunks()
        if pa.types.is_binary(pixels.type):
            off_dtype = np.int32
        elif pa.types.is_large_binary(pixels.type):
            off_dtype = np.int64
        else:
            raise RtlError(f"corpus column 'pixels' has type {pixels.type}, expected binary")
        _, offsets, data = pixels.buffers()
        n = len(pixels)
        self._offsets = np.frombuffer(offsets, dtype=off_dtype)[pixels.offset: pixels.offset + n + 1]
        self._data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        self._keep = pixels  # keeps the Arrow buffers alive
        self._shape = np.stack([table.column(c).to_numpy().astype(np.int64)
                                for c in ("height", "width", "channels")], axis=1)  # (N, 3)
        self.class_ids = table.column("class_id").to_numpy().astype(np.int64)  # (N,)
        self.crop, self.in_channels, self.train, self.seed = int(crop), int(in_channels), train, int(seed)
        self._mean, self._std = mean_std(self.in_channels)  # (C, 1, 1): same as the fine-tuning inputs

    def __len__(self) -> int:
        return len(self.class_ids)

    def image(self, row: int) -> np.ndarray:
        """Raw (H, W, C) uint8 of `row` (a zero-copy view)."""
        h, w, c = self._shape[row]
        start, end = self._offsets[row], self._offsets[row + 1]
        return self._data[start:end].reshape(h, w, c)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        row, key = (item if isinstance(item, tuple) else (item, None))
        img = self.image(row)  # (H, W, C) uint8
        rng = np.random.default_rng([self.seed, key]) if (self.train and key is not None) else None
        img = self._crop(img, rng)
        img = _to_channels(img, self.in_channels)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)  # (C, s, s)
        x = (x - self._mean) / self._std
        return x, int(self.class_ids[row])

    def _crop(self, img: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        s = self.crop
        h, w = img.shape[:2]
        if h < s or w < s:  # corpus guarantees sides >= min_side; pad defensively
            pad = np.zeros((max(h, s), max(w, s), img.shape[2]), np.uint8)
            pad[:h, :w] = img
            img, (h, w) = pad, pad.shape[:2]
        if not self.train:
            y, x = (h - s) // 2, (w - s) // 2
            return img[y: y + s, x: x + s]
        if rng is None:  # no draw key: unseeded (still random) augmentation
            y, x, flip = np.random.randint(h - s + 1), np.random.randint(w - s + 1), np.random.rand() < 0.5
        else:
            y, x = int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1))
            flip = bool(rng.random() < 0.5)
        out = img[y: y + s, x: x + s]
        return out[:, ::-1] if flip else out


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    if img.shape[2] == channels:
        return img
    return to_channels(img, channels)


def load_joint_dir(root: str | Path, *, first_class_id: int, min_side: int, max_side: int
                   ) -> tuple[pa.Table, list[dict[str, Any]]]:
    """An ImageNet-style ``root/<class>/<image>`` folder as extra corpus rows for the ``joint`` strategy.

    Classes (sorted folder names) get ids ``first_class_id, first_class_id + 1, ...``; images are decoded
    with ``decode_image`` and fit to the corpus sides with ``fit_size``. Loaded fully in memory (meant
    for small auxiliary sets). -> (table with ``PIXEL_COLUMNS``, class-table entries).
    """
    root = Path(root)
    if not root.is_dir():
        raise RtlError(f"joint dir {root} not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise RtlError(f"joint dir {root} has no class sub-folders (expected {root}/<class>/<image>)")
    cols: dict[str, list] = {c: [] for c in PIXEL_COLUMNS}
    classes = []
    for i, d in enumerate(class_dirs):
        cid = first_class_id + i
        classes.append({"id": cid, "dataset": f"joint:{root.name}", "label": d.name, "domain": []})
        for f in sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
            try:
                img = fit_size(decode_image(f), min_side, max_side)  # (H, W, C) uint8
            except DecodeError:
                continue  # unreadable auxiliary images are skipped like corpus rejects
            h, w, c = img.shape
            for k, v in zip(PIXEL_COLUMNS, (np.ascontiguousarray(img).tobytes(), h, w, c, cid)):
                cols[k].append(v)
    if not cols["pixels"]:
        raise RtlError(f"joint dir {root} holds no readable images")
    schema = pa.schema([("pixels", pa.binary())] + [(c, pa.int32()) for c in PIXEL_COLUMNS[1:]])
    return pa.table(cols, schema=schema), classes


def concat_tables(a: pa.Table, b: pa.Table) -> pa.Table:
    """Concatenate two pixel tables with possibly different integer widths / binary kinds."""
    b = b.select(a.column_names).cast(a.schema)
    return pa.concat_tables([a, b])
