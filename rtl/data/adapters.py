"""Import existing image datasets (class folders, a CSV, Pascal VOC) into the rtl convention.

Each format is an adapter in `FORMATS` that lists `SourceItem`s (and `Rejected` items it refuses);
`import_dataset` then admits every item through the same checks (`rtl.data.safety.safe_source_path` rules,
printable names, a readable image header), copies (or hard-links) the files into a temporary sibling of
`DST`, writes dataset.yaml, labels.csv, splits and Annotations there and renames it into place only when
everything succeeded. Existing splits (VOC ImageSets, `train/ val/ test/` folders, a CSV split column) are
kept; other images get the hash-based stable splits of `convention.make_splits`.

Policy (shared with the coco/yolo importers, see `rtl.data.import_common`): a bad *image* (missing, not
an image, path escaping the source folder, unprintable name) is skipped and listed on stderr; a malformed
*annotation* (CSV row without a label, the same image on two rows, a VOC box out of range) stops the
import with one line naming the file and line.
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
    dataset_meta,
    make_splits,
    read_voc_xml,
    write_dataset_yaml,
    write_labels_csv,
    write_splits,
    write_voc_xml,
)
from rtl.data.import_common import ImportLog
from rtl.data.safety import atomic_destination, check_creatable, name_problem, printable, safe_source_path
from rtl.errors import DatasetError
from rtl.registry import Registry

__all__ = ["FORMATS", "Rejected", "SourceItem", "import_dataset", "safe_source_path"]


@dataclass(frozen=True)
class SourceItem:
    src: Path  # existing image file
    dest: str  # wanted path under images/ (posix); de-duplicated by import_dataset
    label: str
    split: str = ""
    boxes: tuple[Box, ...] = ()
    size: tuple[int, int, int] | None = None  # (width, height, depth) when known (VOC)


@dataclass(frozen=True)
class Rejected:
    """A source item an adapter refuses; `import_dataset` lists it on stderr and imports the rest."""

    what: str  # printable: "list.csv:5: ../x.png" or a path under the source folder
    reason: str


Adapter = Callable[..., list[SourceItem]]  # may also contain `Rejected` items
FORMATS: Registry[Adapter] = Registry("dataset format")


def _candidates(src: Path, top: Path, out: list) -> list[Path]:
    """Image-extension files under `top` (sorted), not following symlinked folders (listed as rejects)."""
    found = []
    for dirpath, dirs, files in os.walk(top, followlinks=False):
        d = Path(dirpath)
        for name in dirs:
            if (d / name).is_symlink():
                out.append(Rejected(printable(_rel(d / name, src)), "symbolic link to a folder: not followed"))
        found += [d / f for f in files if Path(f).suffix.lower() in IMAGE_EXTS and not f.startswith(".")]
    return sorted(found)


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _walked(src: Path, f: Path, out: list) -> Path | None:
    """`safe_source_path` for a file found by walking; a refusal becomes a Rejected item in `out`."""
    try:
        return safe_source_path(src, f)
    except DatasetError as e:
        out.append(Rejected(printable(_rel(f, src)), str(e)))
        return None


@FORMATS.register("imagefolder")
def imagefolder(src: Path) -> list[SourceItem]:
    """`SRC/<class>/**/<image>`; or `SRC/{train,val,test}/<class>/...` to keep given splits."""
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder (imagefolder expects SRC/<class>/<image>)")
    subdirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_layout = bool(subdirs) and all(p.name in SPLITS for p in subdirs)
    groups = [(p.name, p) for p in subdirs] if split_layout else [("", src)]
    items: list = []
    for split, base in groups:
        for cdir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in _candidates(src, cdir, items):
                full = _walked(src, f, items)
                if full is not None:
                    items.append(SourceItem(full, f.relative_to(base).as_posix(), cdir.name, split))
    if not items:
        raise DatasetError(f"{src}: no images in class sub-folders (expected SRC/<class>/<image>)")
    return items


@FORMATS.register("csv")
def csv_format(src: Path, *, path_column: str = "path", label_column: str = "label",
               split_column: str = "split") -> list[SourceItem]:
    """A CSV of `path,label[,split]`; paths relative to the CSV's folder. SRC = the CSV or its folder.

    Rows naming a path outside the CSV's folder (absolute, `..`, a symlink leading out) or a non-image
    are rejects; the same image on two rows (a split leak, or two labels) stops the import.
    """
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
            items: list = []
            first: dict[Path, tuple[int, str]] = {}  # resolved image -> (line, label)
            for row in reader:
                line = reader.line_num
                rel = (row.get(path_column) or "").strip().replace("\\", "/")
                label = (row.get(label_column) or "").strip()
                split = (row.get(split_column) or "").strip().lower()
                if not rel and not label:
                    continue
                if not label:
                    raise DatasetError(f"{src}:{line}: empty label")
                if split and split not in SPLITS:
                    raise DatasetError(f"{src}:{line}: split must be one of {', '.join(SPLITS)}, got {split!r}")
                try:
                    f = safe_source_path(base, rel)
                except DatasetError as e:
                    items.append(Rejected(f"{src}:{line}: {printable(rel)}", str(e)))
                    continue
                key = f.resolve()
                if key in first:
                    l0, lab0 = first[key]
                    how = "a duplicate row" if lab0 == label else f"label {label!r} here, {lab0!r} there"
                    raise DatasetError(f"{src}:{line}: {printable(rel)}: same image as line {l0} ({how}); "
                                       f"list each image once")
                first[key] = (line, label)
                items.append(SourceItem(f, PurePosixPath(rel).as_posix(), label, split))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{src}: cannot read CSV: {e}") from None
    if not items:
        raise DatasetError(f"{src}: no rows")
    return items


def _voc_size(xml: Path) -> tuple[int, int, int] | None:
    """(width, height, depth) of a VOC XML's <size>, or None when absent or unusable."""
    try:
        sz = ET.parse(xml).getroot().find("size")
        if sz is None:
            return None
        w, h, d = (int(float(sz.findtext(k) or 0)) for k in ("width", "height", "depth"))
    except (ET.ParseError, ValueError, OverflowError):
        return None
    return (w, h, d) if w > 0 and h > 0 and d > 0 else None


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
            # ids are file names: decode like the OS does, so undecodable bytes still match their image
            # (which is then rejected for its name) instead of failing the whole import
            text = f.read_bytes().decode("utf-8", "surrogateescape")
            for line in text.split("\n"):
                if line.strip():
                    split_of.setdefault(line.split()[0], s)
    items: list = []
    for f in _candidates(src, img_dir, items):
        full = _walked(src, f, items)
        if full is None:
            continue
        image_id = f.relative_to(img_dir).with_suffix("").as_posix()
        xml = src / "Annotations" / f"{image_id}.xml"
        boxes: tuple[Box, ...] = ()
        size = None
        if xml.is_file():
            boxes = read_voc_xml(xml)
            size = _voc_size(xml)
        if boxes:
            counts = Counter(b.label for b in boxes)
            top = max(counts.values())
            label = next(b.label for b in boxes if counts[b.label] == top)
        else:
            label = default_label
        items.append(SourceItem(full, f.relative_to(img_dir).as_posix(), label, split_of.get(image_id, ""),
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


def _header_size(path: Path) -> tuple[int, int, int]:
    """(width, height, bands) from the image header (no pixel decode); DatasetError when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.width, im.height, len(im.getbands())
    except Exception as e:  # noqa: BLE001 - any unreadable header (not an image, truncated, bomb) is a reject
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"not a readable image ({type(e).__name__}: {printable(msg)})") from None


def _admit(it: SourceItem, src_root: Path) -> SourceItem:
    """The checks every item of every adapter passes before anything is copied (DatasetError = reject)."""
    dest = PurePosixPath(it.dest)
    if not it.dest or dest.is_absolute() or ".." in dest.parts:
        raise DatasetError(f"destination name {printable(it.dest)!r} is not a relative path inside images/")
    problem = name_problem(it.dest)
    if problem:
        raise DatasetError(f"file {problem}")
    problem = name_problem(it.label) or ("empty class name" if not it.label.strip() else None)
    if problem:
        raise DatasetError(f"class {printable(it.label)!r}: {problem.replace('name', 'class name', 1)}")
    safe_source_path(src_root.resolve(), Path(it.src).absolute())  # inside the source folder, a regular image file
    size = _header_size(Path(it.src))
    return it if it.size else replace(it, size=size)


def import_dataset(fmt: str, src: str | Path, dst: str | Path, *, name: str, domain: list[str] | str,
                   description: str = "", license: str = "", link: bool = False, seed: int = 0,
                   **options: object) -> Path:
    """Import `src` (format `fmt`) into a new convention folder `dst`; returns `dst`.

    Image extensions are kept as they are (.JPG, .jpeg, .tif, ...). `options` go to the adapter
    (e.g. `label_column=` for csv, `default_label=` for voc). Rejected images are listed on stderr; when
    nothing is left, or on any error, `dst` is not created (the import is written to a temporary sibling
    and renamed into place at the end).
    """
    adapter = FORMATS.get(fmt)
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DatasetError(f"{src}: source not found")
    check_creatable(dst)
    if dst.is_dir() and any(dst.iterdir()):
        raise DatasetError(f"{dst}: destination exists and is not empty")
    src_root = src if src.is_dir() else src.parent
    if src.is_dir() and src.resolve() in [dst.resolve(), *dst.resolve().parents]:
        raise DatasetError(f"{dst}: destination is inside the source folder {src}")
    dataset_meta(name=name, domain=domain, description=description, license=license)  # before any work
    try:
        items = adapter(src, **options)
    except TypeError as e:
        raise DatasetError(f"format {fmt}: bad option: {e}") from None
    except OSError as e:
        raise DatasetError(f"{src}: cannot read the source: {e.strerror or e}") from None
    log = ImportLog(fmt)
    good: list[SourceItem] = []
    seen: dict[tuple[int, int], str] = {}  # (device, inode) -> first item: one file is one image, one split
    for it in items:
        if isinstance(it, Rejected):
            log.reject(it.what, it.reason)
            continue
        what = printable(_rel(Path(it.src), src_root))
        try:
            ok = _admit(it, src_root)
            st = os.stat(it.src)
            if (st.st_dev, st.st_ino) in seen:
                raise DatasetError(f"same file as {seen[st.st_dev, st.st_ino]} (a link or a repeated entry)")
        except (DatasetError, OSError) as e:
            log.reject(what, str(e) if isinstance(e, DatasetError) else f"cannot access: {e.strerror or e}")
            continue
        seen[st.st_dev, st.st_ino] = what
        good.append(ok)
    log.emit(len(good))
    if not good:
        first = f"; first: {log.rejects[0][0]}: {log.rejects[0][1]}" if log.rejects else ""
        raise DatasetError(f"{src}: no usable images ({len(log.rejects)} skipped{first})")
    with atomic_destination(dst) as tmp:
        write_dataset_yaml(tmp, name=name, domain=domain, description=description, license=license)
        taken: set[str] = set()
        records: list[ImageRecord] = []
        for it in good:
            rel = "images/" + _unique(it.dest, taken)
            try:
                _place(it.src, tmp / rel, link)
            except OSError as e:
                raise DatasetError(f"{printable(it.src)}: cannot copy: {e.strerror or e}") from None
            records.append(ImageRecord(rel, it.label, it.split, it.boxes))
            if it.boxes:
                w, h, d = it.size or _header_size(tmp / rel)
                write_voc_xml(annotation_path(tmp, rel), filename=PurePosixPath(rel).name, width=w, height=h,
                              depth=d, boxes=it.boxes)
        unassigned = [r for r in records if not r.split]
        if unassigned:
            fixed = {r.path: r.split for r in make_splits(unassigned, seed=seed)}
            records = [replace(r, split=fixed.get(r.path, r.split)) for r in records]
        write_labels_csv(tmp, records)
        write_splits(tmp, records)
    return dst


# Box formats live in their own modules; importing them registers "coco" and "yolo" in FORMATS.
import rtl.data.coco  # noqa: E402,F401
import rtl.data.yolo  # noqa: E402,F401
