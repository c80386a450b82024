"""Helpers shared by the box-format importers (`rtl.data.coco`, `rtl.data.yolo`).

Policy of both importers: a malformed annotation file (missing field, wrong type, unknown class id, a
box with a negative/NaN size or lying outside its image) stops the import with one line naming the file
and the JSON path or line; a bad *image* (missing file, unreadable header, path escaping the source
folder) becomes a `rtl.data.adapters.Rejected` item, which `import_dataset` lists on stderr, so one
broken file does not abort a 10k-image import.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtl.data.convention import Box
from rtl.data.safety import safe_source_path
from rtl.errors import DatasetError

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_LISTED = 20  # rejects/notices printed one per line; the rest are counted


def label_from_boxes(boxes: Sequence[Box], default_label: str) -> str:
    """Image label = the most common box class (ties: the first in the file), as for Pascal VOC."""
    if not boxes:
        return default_label
    counts = Counter(b.label for b in boxes)
    top = max(counts.values())
    return next(b.label for b in boxes if counts[b.label] == top)


def safe_image(root: Path, rel: str) -> Path:
    """`root/rel` for an existing image file; DatasetError(reason) when `rel` is absolute, has `..`,
    resolves outside `root`, is missing or not an image (`rtl.data.safety.safe_source_path`)."""
    return safe_source_path(root, rel)


def header_size(path: Path) -> tuple[int, int, int]:
    """(width, height, bands) from the image header only (PIL opens lazily; no pixel decode)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.width, im.height, len(im.getbands())
    except Exception as e:  # noqa: BLE001 - any unreadable header is a reject, never a traceback
        raise DatasetError(f"cannot read image header: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                           ) from None


def pixel_box(x0: float, y0: float, x1: float, y1: float, w: int, h: int, label: str, where: str,
              tol: float = 1.0) -> Box:
    """Float corners -> an integer Box inside a (w, h) image.

    Corners may overshoot the image by `tol` pixels (rounding in exporters) and are clipped; beyond that
    the box is an annotation error (DatasetError naming `where`).
    """
    if x0 < -tol or y0 < -tol or x1 > w + tol or y1 > h + tol:
        raise DatasetError(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}x{h} image")
    eps = 1e-6  # normalised YOLO coordinates times the size land a hair off integers (0.15 * 40 = 6.0000001)
    bx0, by0 = max(0, math.floor(x0 + eps)), max(0, math.floor(y0 + eps))
    bx1, by1 = min(w, math.ceil(x1 - eps)), min(h, math.ceil(y1 - eps))
    bx1, by1 = max(bx1, min(w, bx0 + 1)), max(by1, min(h, by0 + 1))  # a sub-pixel box keeps 1 px
    return Box(bx0, by0, bx1, by1, label)


def finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class ImportLog:
    """Rejected images and notices of one import, printed to stderr as `rtl: <fmt>: ...` lines."""

    fmt: str
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (image or file, reason)
    notices: list[str] = field(default_factory=list)

    def reject(self, what: str, reason: str) -> None:
        self.rejects.append((what, reason))

    def emit(self, n_ok: int) -> None:
        out = sys.stderr
        for what, reason in self.rejects[:MAX_LISTED]:
            print(f"rtl: {self.fmt}: skipped {what}: {reason}", file=out)
        if len(self.rejects) > MAX_LISTED:
            print(f"rtl: {self.fmt}: ... and {len(self.rejects) - MAX_LISTED} more skipped", file=out)
        for n in self.notices:
            print(f"rtl: {self.fmt}: {n}", file=out)
        if self.rejects:
            print(f"rtl: {self.fmt}: {n_ok} images imported, {len(self.rejects)} skipped", file=out)
