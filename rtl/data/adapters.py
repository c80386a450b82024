"""Import existing image datasets (class folders, a CSV, Pascal VOC) into the rtl convention.

Each format is an adapter in `FORMATS` that lists `SourceItem`s; `import_dataset` then copies (or
hard-links) the files into `DST/images/`, writes dataset.yaml, labels.csv, splits and Annotations.
Existing splits (VOC ImageSets, `train/ val/ test/` folders, a CSV split column) are kept; other images
get the hash-based stable splits of `convention.make_splits`.
"""

from __future__ import annotations

import csv
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from rtl.data.convention import (
    IMAGE_EXTS,
    SPLITS,
    Box,
    ImageRecord,
    annotation_path,
    make_splits,
    read_voc_xml,
    write_dataset_yaml,
    write_labels_csv,
    write_splits,
    write_voc_xml,
)
from rtl.errors import DatasetError
from rtl.registry import Registry


@dataclass(frozen=True)
class SourceItem:
    src: Path  # existing image file
    dest: str  # wanted path under images/ (posix); de-duplicated by import_dataset
    label: str
    split: str = ""
    boxes: tuple[Box, ...] = ()
    size: tuple[int, int, int] | None = None  # (width, height, depth) when known (VOC)


Adapter = Callable[..., list[SourceItem]]
FORMATS: Registry[Adapter] = Registry("dataset format")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


@FORMATS.register("imagefolder")
def imagefolder(src: Path) -> list[SourceItem]:
    """`SRC/<class>/**/<image>`; or `SRC/{train,val,test}/<class>/...` to keep given splits."""
    subdirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_layout = bool(subdirs) and all(p.name in SPLITS for p in subdirs)
    groups = [(p.name, p) for p in subdirs] if split_layout else [("", src)]
    items = []
    for split, base in groups:
        for cdir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(cdir.rglob("*")):
                if _is_image(f):
                    items.append(SourceItem(f, f.relative_to(base).as_posix(), cdir.name, split))
    if not items:
        raise DatasetError(f"{src}: no images in class sub-folders (expected SRC/<class>/<image>)")
    return items


@FORMATS.register("csv")
def csv_format(src: Path, *, path_column: str = "path", label_column: str = "label",
               split_column: str = "split") -> list[SourceItem]:
    """A CSV of `path,label[,split]`; paths relative to the CSV's folder. SRC = the CSV or its folder."""
    if src.is_dir():
        cands = sorted(src.glob("*.csv"))
        if len(cands) != 1:
            raise DatasetError(f"{src}: expected exactly one .csv file in the folder, found {len(cands)}")
        src = cands[0]
    base = src.parent
    try:
        with open(src, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            for c in (path_column, label_column):
                if c not in cols:
                    raise DatasetError(f"{src}:1: no column {c!r} (columns: {', '.join(cols)})")
            items = []
            for row in reader:
                line = reader.line_num
                rel = (row.get(path_column) or "").strip().replace("\\", "/")
                label = (row.get(label_column) or "").strip()
                split = (row.get(split_column) or "").strip().lower()
                if not rel and not label:
                    continue
                if not label:
                    raise DatasetError(f"{src}:{line}: empty label")
                f = Path(rel) if Path(rel).is_absolute() else base / rel
                if not f.is_file():
                    raise DatasetError(f"{src}:{line}: image not found: {rel}")
                if split and split not in SPLITS:
                    raise DatasetError(f"{src}:{line}: split must be one of {', '.join(SPLITS)}, got {split!r}")
                parts = PurePosixPath(rel).parts
                dest = rel if rel and not PurePosixPath(rel).is_absolute() and ".." not in parts else f.name
                items.append(SourceItem(f, dest, label, split))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{src}: cannot read CSV: {e}") from None
    if not items:
        raise DatasetError(f"{src}: no rows")
    return items


@FORMATS.register("voc")
def voc(src: Path, *, default_label: str = "ok") -> list[SourceItem]:
    """Pascal VOC: JPEGImages/, Annotations/*.xml, ImageSets/Main/{train,val,test}.txt.

    Image label = the most common object class (ties: the first in the file); `default_label` when the
    image has no objects. Boxes are kept as Annotations.
    """
    img_dir = src / "JPEGImages"
    if not img_dir.is_dir():
        raise DatasetError(f"{src}: not a VOC folder (no JPEGImages/)")
    split_of: dict[str, str] = {}
    for s in SPLITS:
        f = src / "ImageSets" / "Main" / f"{s}.txt"
        if f.is_file():
            for line in f.read_text(encoding="utf-8").split("\n"):
                if line.strip():
                    split_of.setdefault(line.split()[0], s)
    items = []
    for f in sorted(img_dir.rglob("*")):
        if not _is_image(f):
            continue
        image_id = f.relative_to(img_dir).with_suffix("").as_posix()
        xml = src / "Annotations" / f"{image_id}.xml"
        boxes: tuple[Box, ...] = ()
        size = None
        if xml.is_file():
            boxes = read_voc_xml(xml)
            try:
                sz = ET.parse(xml).getroot().find("size")
                if sz is not None:
                    size = tuple(int(sz.findtext(k) or 0) for k in ("width", "height", "depth"))
            except (ET.ParseError, ValueError):
                size = None
        if boxes:
            counts = Counter(b.label for b in boxes)
            top = max(counts.values())
            label = next(b.label for b in boxes if counts[b.label] == top)
        else:
            label = default_label
        items.append(SourceItem(f, f.relative_to(img_dir).as_posix(), label, split_of.get(image_id, ""),
                                boxes, size))
    if not items:
        raise DatasetError(f"{img_dir}: no images")
    return items


def _unique(dest: str, taken: set[str]) -> str:
    """`dest`, or `stem_1.ext`, `stem_2.ext`... so no two images collide (case-insensitively)."""
    p = PurePosixPath(dest)
    cand, k = dest, 0
    while cand.lower() in taken:
        k += 1
        cand = str(p.with_name(f"{p.stem}_{k}{p.suffix}"))
    taken.add(cand.lower())
    return cand


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # other filesystem / no permission: fall back to a copy
    shutil.copyfile(src, dst)


def import_dataset(fmt: str, src: str | Path, dst: str | Path, *, name: str, domain: list[str] | str,
                   description: str = "", license: str = "", link: bool = False, seed: int = 0,
                   **options: object) -> Path:
    """Import `src` (format `fmt`) into a new convention folder `dst`; returns `dst`.

    Image extensions are kept as they are (.JPG, .jpeg, .tif, ...). `options` go to the adapter
    (e.g. `label_column=` for csv, `default_label=` for voc).
    """
    adapter = FORMATS.get(fmt)
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DatasetError(f"{src}: source not found")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DatasetError(f"{dst}: destination exists and is not empty")
    # validate metadata before copying anything
    write_dataset_yaml(dst, name=name, domain=domain, description=description, license=license)
    try:
        items = adapter(src, **options)
    except TypeError as e:
        shutil.rmtree(dst, ignore_errors=True)
        raise DatasetError(f"format {fmt}: bad option: {e}") from None
    except DatasetError:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    taken: set[str] = set()
    records: list[ImageRecord] = []
    for it in items:
        rel = "images/" + _unique(it.dest, taken)
        try:
            _place(it.src, dst / rel, link)
        except OSError as e:
            raise DatasetError(f"{it.src}: cannot copy: {e}") from None
        records.append(ImageRecord(rel, it.label, it.split, it.boxes))
        if it.boxes:
            w, h, d = it.size or _header_size(dst / rel)
            write_voc_xml(annotation_path(dst, rel), filename=PurePosixPath(rel).name, width=w, height=h,
                          depth=d, boxes=it.boxes)
    unassigned = [r for r in records if not r.split]
    if unassigned:
        fixed = {r.path: r.split for r in make_splits(unassigned, seed=seed)}
        records = [replace(r, split=fixed.get(r.path, r.split)) for r in records]
    write_labels_csv(dst, records)
    write_splits(dst, records)
    return dst


def _header_size(path: Path) -> tuple[int, int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.width, im.height, len(im.getbands())
