"""Import YOLO txt labels (`rtl dataset import --format yolo`).

YOLO (Redmon et al., "You Only Look Once", CVPR 2016; the Darknet / Ultralytics file layout) keeps one
text file per image, one object per line: `class cx cy w h`, all normalised to [0, 1] by the image size
(Ultralytics segmentation lines `class x1 y1 x2 y2 ...` are read as the polygon's bounding box). Class
names come from `data.yaml` (`names:` list or {id: name} map; any *.yaml in SRC with `names`),
`classes.txt` or `*.names`, or the `names=` option.

Layouts: `images/{train,val,test}/x.jpg` + `labels/{train,val,test}/x.txt` (Ultralytics),
`{train,valid,test}/images/x.jpg` + `.../labels/x.txt` (Roboflow) or the label next to its image (Darknet):
the label of `.../images/.../x.jpg` is `.../labels/.../x.txt` (last `images` folder swapped, as in
Ultralytics), else `x.txt` beside the image. Split = a `train`/`val`/`valid`/`test` folder on the path.
Image label by the VOC rule (most common box class; `default_label` without boxes). An image without a
label file is a YOLO background image (`default_label`; `unlabeled=skip` skips it instead); label files
without an image are listed. Pixel boxes need the image size, so each image header is read (no decode).
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

from rtl.data.adapters import FORMATS, Rejected, SourceItem
from rtl.data.convention import IMAGE_EXTS, Box
from rtl.data.import_common import (
    MAX_LISTED,
    SPLIT_ALIASES,
    ImportLog,
    header_size,
    label_from_boxes,
    pixel_box,
    safe_image,
)
from rtl.data.safety import printable
from rtl.errors import DatasetError
from rtl.yamlio import parse_yaml

__all__ = ["read_names", "read_yolo_labels", "yolo"]


def _names_from_yaml(path: Path) -> list[str] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    data = parse_yaml(text, path, DatasetError)
    if not isinstance(data, dict) or "names" not in data:
        return None
    names = data["names"]
    if isinstance(names, dict):
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in names):
            raise DatasetError(f"{path}: names: keys must be class ids 0..n-1")
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: names: class ids must be 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: names: expected a non-empty list or {{id: name}} map")
    for i, n in enumerate(names):
        if not isinstance(n, (str, int)) or isinstance(n, bool) or not str(n).strip():
            raise DatasetError(f"{path}: names[{i}]: class {i} has no name")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{path}: nc: {nc} but names lists {len(names)} classes")
    return [str(n).strip() for n in names]


def _names_from_txt(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for i, n in enumerate(lines, 1):
        if not n.strip():
            raise DatasetError(f"{path}:{i}: class {i - 1} has no name (empty line)")
    if not lines:
        raise DatasetError(f"{path}: no class names")
    return [n.strip() for n in lines]


def read_names(src: Path, option: str = "") -> tuple[list[str], Path]:
    """Class names (index = YOLO class id) and the file they came from."""
    if option:
        p = Path(option) if Path(option).is_absolute() else src / option
        if not p.is_file():
            raise DatasetError(f"names={option}: file not found (relative to {src})")
        names = _names_from_yaml(p) if p.suffix.lower() in (".yaml", ".yml") else _names_from_txt(p)
        if names is None:
            raise DatasetError(f"{p}: no `names:` key")
        return names, p
    for p in sorted(src.glob("*.y*ml"), key=lambda q: (q.stem != "data", q.name)):
        names = _names_from_yaml(p)
        if names is not None:
            return names, p
    for p in [src / "classes.txt", *sorted(src.glob("*.names")), src / "labels" / "classes.txt"]:
        if p.is_file():
            return _names_from_txt(p), p
    raise DatasetError(f"{src}: no class names (expected data.yaml with `names:`, classes.txt or *.names; "
                       f"or pass --option names=FILE)")


def read_yolo_labels(path: Path, names: list[str], width: int, height: int) -> list[Box]:
    """Boxes of one label file in pixels; DatasetError `FILE:LINE: message` on the first bad line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    boxes = []
    tol = max(1.0, 0.005 * max(width, height))
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        where = f"{path}:{n}"
        if len(f) != 5 and (len(f) < 7 or len(f) % 2 == 0):
            raise DatasetError(f"{where}: expected `class cx cy w h` (or `class x1 y1 x2 y2 ...`), got "
                               f"{len(f)} fields")
        try:
            cls_f = float(f[0])
            vals = [float(v) for v in f[1:]]
        except ValueError:
            raise DatasetError(f"{where}: not a number in {line.strip()[:60]!r}") from None
        if not cls_f.is_integer() or not 0 <= cls_f < len(names):
            raise DatasetError(f"{where}: class {f[0]} not in names (0..{len(names) - 1})")
        bad = next((v for v in vals if not math.isfinite(v)), None)
        if bad is not None:
            raise DatasetError(f"{where}: {bad} is not a finite number")
        if len(f) == 5:
            cx, cy, bw, bh = vals
            if bw <= 0 or bh <= 0:
                side = "width" if bw <= 0 else "height"
                raise DatasetError(f"{where}: box {side} must be > 0, got {bw if bw <= 0 else bh:g}")
            x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        else:
            xs, ys = vals[0::2], vals[1::2]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            if x1 <= x0 or y1 <= y0:
                raise DatasetError(f"{where}: polygon has zero width or height")
        boxes.append(pixel_box(x0 * width, y0 * height, x1 * width, y1 * height, width, height,
                               names[int(cls_f)], where, tol=tol))
    return boxes


def _label_path(rel: PurePosixPath) -> PurePosixPath:
    parts = list(rel.parts)
    idx = [i for i, p in enumerate(parts[:-1]) if p == "images"]
    if idx:
        parts[idx[-1]] = "labels"
    return PurePosixPath(*parts).with_suffix(".txt")


def _split_of(rel: PurePosixPath) -> str:
    return next((SPLIT_ALIASES[p.lower()] for p in rel.parts[:-1] if p.lower() in SPLIT_ALIASES), "")


@FORMATS.register("yolo")
def yolo(src: Path, *, names: str = "", default_label: str = "ok", unlabeled: str = "background"
         ) -> list[SourceItem]:
    """YOLO txt labels -> SourceItems (label by the VOC rule, boxes in pixels kept). Options: `names=`
    file of class names, `default_label=` for images without boxes, `unlabeled=background|skip` for
    images without a label file."""
    if not src.is_dir():
        raise DatasetError(f"{src}: expected a folder (images/ + labels/ + data.yaml or classes.txt)")
    if unlabeled not in ("background", "skip"):
        raise DatasetError(f"unlabeled={unlabeled}: must be background or skip")
    if not default_label.strip():
        raise DatasetError("default_label: must not be empty")
    class_names, _ = read_names(src, names)
    log = ImportLog("yolo")  # notices only; rejects are Rejected items, listed by import_dataset
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() or p.is_symlink())
    fileset = set(files)
    used_labels: set[str] = set()
    no_label: list[str] = []
    items: list[SourceItem | Rejected] = []
    for rel in files:
        prel = PurePosixPath(rel)
        if prel.suffix.lower() not in IMAGE_EXTS or prel.name.startswith(".") or "labels" in prel.parts[:-1]:
            continue
        lrel = _label_path(prel).as_posix()
        try:
            full = safe_image(src, rel)
            w, h, depth = header_size(full)
        except DatasetError as e:
            items.append(Rejected(printable(rel), str(e)))
            used_labels.add(lrel)
            continue
        boxes: list[Box] = []
        if lrel in fileset:
            used_labels.add(lrel)
            boxes = read_yolo_labels(src / lrel, class_names, w, h)
        else:
            no_label.append(rel)
            if unlabeled == "skip":
                items.append(Rejected(printable(rel), "no label file"))
                continue
        dest = PurePosixPath(*[p for p in prel.parts if p != "images"]).as_posix()
        items.append(SourceItem(full, dest, label_from_boxes(boxes, default_label.strip()), _split_of(prel),
                                tuple(boxes), (w, h, depth)))
    orphans = [r for r in files if r.endswith(".txt") and "labels" in PurePosixPath(r).parts[:-1]
               and r not in used_labels and PurePosixPath(r).name != "classes.txt"]
    for r in orphans:
        items.append(Rejected(printable(r), "label file without an image"))
    if no_label and unlabeled == "background":
        shown = ", ".join(no_label[:MAX_LISTED // 4])
        log.notices.append(f"{len(no_label)} images without a label file imported as {default_label.strip()!r} "
                           f"(YOLO background images; --option unlabeled=skip to skip them): {shown}"
                           f"{' ...' if len(no_label) > MAX_LISTED // 4 else ''}")
    log.emit(len(items))
    return items
