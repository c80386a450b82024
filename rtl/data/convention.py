"""The on-disk dataset convention: one folder per dataset, readable by a person and by `rtl`.

```
DATASET/
  dataset.yaml                      name, domain tags, description, license (validated with pydantic)
  images/...                        image files, any sub-folders
  labels.csv                        `image,label`; image = path relative to DATASET
  ImageSets/Main/{train,val,test}.txt   one image path per line (same strings as labels.csv)
  Annotations/<image-id>.xml        optional Pascal VOC boxes (image-id = path under images/ w/o extension)
```

The layout borrows Pascal VOC's ImageSets/Annotations (Everingham et al., IJCV 2010) so existing tools
read it, and adds a flat `labels.csv` because most inspection datasets are image-level classification.
`load_dataset` never opens pixels; `check_dataset` reports every problem as `file:line: message`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rtl.data.names import printable
from rtl.errors import DatasetError
from rtl.yamlio import parse_yaml

SPLITS = ("train", "val", "test")
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"})
MAX_COORD = 1_000_000  # VOC box coordinates beyond this are not pixels of any real image
YAML_NAME, LABELS_NAME, SPLIT_DIR, ANN_DIR, IMAGES_DIR = (
    "dataset.yaml", "labels.csv", "ImageSets/Main", "Annotations", "images")


@dataclass(frozen=True)
class Box:
    """A labelled box in pixel coordinates, inclusive-exclusive (`xmax - xmin` = width)."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int
    label: str


@dataclass(frozen=True)
class ImageRecord:
    path: str  # relative to dataset root, posix separators
    label: str
    split: str  # "train" | "val" | "test" | "" (unassigned)
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    domain: tuple[str, ...]
    description: str
    license: str
    root: Path
    records: tuple[ImageRecord, ...]

    def classes(self) -> list[str]:
        """Sorted label names."""
        return sorted({r.label for r in self.records})

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return printable(f"{self.file}:{self.line}: {self.message}")  # one line, whatever the file names


class DatasetMeta(BaseModel):
    """Schema of dataset.yaml."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    domain: list[str] = Field(min_length=1)
    description: str = ""
    license: str = ""

    @field_validator("domain", mode="before")
    @classmethod
    def _split_domain(cls, v: object) -> object:
        if isinstance(v, str):  # `domain: pcb` or `domain: pcb,film` are accepted as a convenience
            v = [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("description", "license", mode="before")
    @classmethod
    def _none_is_empty(cls, v: object) -> object:
        return "" if v is None else v


# ----------------------------------------------------------------------------------------------- paths


def resolve_image_path(root: str | Path, rel: str) -> Path:
    """`root/rel`, refusing absolute paths, `..` escapes and symlinks resolving outside `root`."""
    if not rel or not rel.strip():
        raise DatasetError("empty image path")
    norm = rel.replace("\\", "/")  # string tests = the PurePosix/PureWindowsPath ones, without the objects
    if norm.startswith("/") or (len(rel) > 1 and rel[1] == ":" and rel[0].isascii() and rel[0].isalpha()):
        raise DatasetError(f"absolute image path refused: {rel}")
    if ".." in norm.split("/"):
        raise DatasetError(f"image path escapes the dataset folder: {rel}")
    # os.path with the root resolved once, not pathlib: this runs per listed image (issue 13: 3x faster)
    root_s = os.fspath(root)
    root_r = _realpath_cached(root_s, "" if os.path.isabs(root_s) else os.getcwd())
    full = os.path.realpath(os.path.join(root_r, rel))
    if full != root_r and not full.startswith(root_r.rstrip(os.sep) + os.sep):
        raise DatasetError(f"image path resolves outside the dataset folder (symlink?): {rel}")
    return Path(root) / rel


@functools.lru_cache(maxsize=256)
def _realpath_cached(root: str, cwd: str) -> str:  # cwd: part of the key for a relative root
    return os.path.realpath(root)


def annotation_path(root: str | Path, image_rel: str) -> Path:
    """Annotations/<image-id>.xml for `images/a/001.png` -> `Annotations/a/001.xml`."""
    p = PurePosixPath(image_rel)
    if p.parts and p.parts[0] == IMAGES_DIR:
        p = PurePosixPath(*p.parts[1:])
    return Path(root) / ANN_DIR / p.with_suffix(".xml")


# ------------------------------------------------------------------------------------------------ YAML


def read_dataset_yaml(root: str | Path) -> DatasetMeta:
    path = Path(root) / YAML_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (every dataset needs a dataset.yaml)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    data = parse_yaml(text, path, DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}:1: expected a mapping with name, domain, description, license")
    try:
        return DatasetMeta.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        line = _yaml_key_line(text, key)
        where = f"{path}:{line}" if line else str(path)
        raise DatasetError(f"{where}: field '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


def _yaml_key_line(text: str, key: str) -> int | None:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    for k, _v in getattr(node, "value", []) or []:
        if getattr(k, "value", None) == key:
            return k.start_mark.line + 1
    return None


def dataset_meta(*, name: str, domain: Sequence[str] | str, description: str = "", license: str = ""
                 ) -> DatasetMeta:
    """Validated dataset.yaml content (DatasetError naming the field), without writing anything."""
    try:
        return DatasetMeta(name=name, domain=domain, description=description, license=license)
    except ValidationError as e:
        err = e.errors()[0]
        raise DatasetError(f"dataset.yaml: field '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


def write_dataset_yaml(root: str | Path, *, name: str, domain: Sequence[str] | str,
                       description: str = "", license: str = "") -> Path:
    """Validate and write dataset.yaml (raises DatasetError for a bad name/domain)."""
    meta = dataset_meta(name=name, domain=domain, description=description, license=license)
    path = Path(root) / YAML_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(meta.model_dump(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ labels/splits


def write_labels_csv(root: str | Path, records: Iterable[ImageRecord]) -> Path:
    path = Path(root) / LABELS_NAME
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "label"])
    for r in records:
        w.writerow([r.path, r.label])
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def write_splits(root: str | Path, records: Iterable[ImageRecord]) -> None:
    """Write ImageSets/Main/{train,val,test}.txt (all three, possibly empty) from `record.split`."""
    d = Path(root) / SPLIT_DIR
    d.mkdir(parents=True, exist_ok=True)
    by: dict[str, list[str]] = {s: [] for s in SPLITS}
    for r in records:
        if r.split in by:
            by[r.split].append(r.path)
    for s, paths in by.items():
        (d / f"{s}.txt").write_text("".join(p + "\n" for p in paths), encoding="utf-8")


def _unit_hash(seed: int, path: str) -> float:
    h = hashlib.blake2b(f"{seed}\0{path}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def make_splits(records: Iterable[ImageRecord], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                seed: int = 0) -> list[ImageRecord]:
    """Assign train/val/test per class by a hash of (seed, image path), in the order given.

    Why a hash and not a seeded shuffle: a shuffle re-deals every image when one image is added, so
    yesterday's test images leak into today's train set. With hash thresholds an image's split depends
    only on its own path, so a growing dataset keeps every existing assignment (the standard trick of
    e.g. TFDS/`hash(id) % 100` splits). Per class (stratified) fix-ups guarantee >= 1 train image when a
    class has >= 1 image and >= 1 val and test image when it has >= 3; these move only the image whose
    hash is nearest the missing split, so they disturb at most a couple of images of tiny classes.
    """
    recs = list(records)
    total = sum(fractions)
    if total <= 0 or any(f < 0 for f in fractions):
        raise DatasetError(f"split fractions must be non-negative and not all zero, got {fractions}")
    t1 = fractions[0] / total
    t2 = t1 + fractions[1] / total
    bounds = {"train": (0.0, t1), "val": (t1, t2), "test": (t2, 1.0)}
    u = [_unit_hash(seed, r.path) for r in recs]
    split = ["train" if x < t1 else "val" if x < t2 else "test" for x in u]
    by_class: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        by_class.setdefault(r.label, []).append(i)

    def dist(x: float, s: str) -> float:
        lo, hi = bounds[s]
        return 0.0 if lo <= x < hi else min(abs(x - lo), abs(x - hi))

    for idx in by_class.values():
        need = ["train"] + (["val", "test"] if len(idx) >= 3 else [])
        for s in need:
            if any(split[i] == s for i in idx):
                continue
            counts = Counter(split[i] for i in idx)
            # take from splits that can spare one (never empty a required split)
            donors = [i for i in idx if counts[split[i]] > 1 or split[i] not in need]
            if not donors:
                continue
            j = min(donors, key=lambda i: (dist(u[i], s), recs[i].path))
            split[j] = s
    return [replace(r, split=s) for r, s in zip(recs, split)]


# ---------------------------------------------------------------------------------------------- VOC XML


def write_voc_xml(path: str | Path, *, filename: str, width: int, height: int, depth: int,
                  boxes: Iterable[Box], folder: str = "images") -> Path:
    """Write a Pascal VOC annotation file."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = filename
    size = ET.SubElement(ann, "size")
    for k, v in (("width", width), ("height", height), ("depth", depth)):
        ET.SubElement(size, k).text = str(int(v))
    for b in boxes:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = b.label
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # VOC stores 1-based inclusive corners; Box is 0-based inclusive-exclusive.
        for k, v in (("xmin", b.xmin + 1), ("ymin", b.ymin + 1), ("xmax", b.xmax), ("ymax", b.ymax)):
            ET.SubElement(bb, k).text = str(int(v))
    ET.indent(ann)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(path, encoding="utf-8", xml_declaration=True)
    return path


def read_voc_xml(path: str | Path) -> tuple[Box, ...]:
    """Boxes of a VOC annotation file (raises DatasetError naming the file when malformed)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DatasetError(f"{path}: cannot read VOC XML: {e}") from None
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise DatasetError(f"{path}: object without name or bndbox")
        try:
            vals = [float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise DatasetError(f"{path}: object {name!r} has a non-numeric bndbox") from None
        if not all(abs(v) <= MAX_COORD for v in vals):  # also NaN and inf (e.g. `1e400`)
            raise DatasetError(f"{path}: object {name!r} has a bndbox coordinate out of range "
                               f"({', '.join(f'{v:g}' for v in vals)}; limit +-{MAX_COORD})")
        x0, y0, x1, y1 = (int(round(v)) for v in vals)
        boxes.append(Box(x0 - 1, y0 - 1, x1, y1, name))
    return tuple(boxes)


# ------------------------------------------------------------------------------------------ load & check


@dataclass
class CheckReport:
    """Every problem of a dataset folder plus a printable summary."""

    root: Path
    info: DatasetInfo | None
    problems: list[Problem] = field(default_factory=list)
    sizes: list[tuple[int, int]] | None = None  # (width, height) per opened image, --deep only
    modes: Counter | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        info = self.info
        if info is None:
            return f"{self.root}: not loaded"
        lines = [f"dataset {info.name}  domain={','.join(info.domain)}  images={len(info.records)}  "
                 f"classes={len(info.classes())}  problems={len(self.problems)}"]
        counts = Counter((r.label, r.split or "-") for r in info.records)
        cols = [*SPLITS, "-"] if any(r.split == "" for r in info.records) else list(SPLITS)
        w = max([5, *(len(c) for c in info.classes())])
        lines.append(f"  {'class':<{w}} " + " ".join(f"{c:>6}" for c in cols) + f" {'total':>6}")
        for c in info.classes():
            row = [counts[(c, s)] for s in cols]
            lines.append(f"  {c:<{w}} " + " ".join(f"{n:>6}" for n in row) + f" {sum(row):>6}")
        if self.sizes:
            ws = sorted(s[0] for s in self.sizes)
            hs = sorted(s[1] for s in self.sizes)
            lines.append(f"  sizes: width {ws[0]}..{ws[-1]} (median {ws[len(ws) // 2]}), "
                         f"height {hs[0]}..{hs[-1]} (median {hs[len(hs) // 2]})")
        if self.modes:
            lines.append("  modes: " + ", ".join(f"{m}={n}" for m, n in sorted(self.modes.items())))
        return "\n".join(lines)


def _scan(root: Path, *, strict: bool) -> tuple[DatasetInfo, list[Problem]]:
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    meta = read_dataset_yaml(root)
    problems: list[Problem] = []

    def report(file: Path | str, line: int, msg: str) -> None:
        p = Problem(str(file), line, msg)
        if strict:
            raise DatasetError(str(p))
        problems.append(p)

    lpath = root / LABELS_NAME
    try:
        text = lpath.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{lpath}: missing (header `image,label`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{lpath}: cannot read: {e}") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if "image" not in header or "label" not in header:
        raise DatasetError(f"{lpath}:1: header must be `image,label`, got {','.join(header) or 'nothing'}")
    ci, cl = header.index("image"), header.index("label")
    rows: dict[str, tuple[str, int]] = {}  # path -> (label, line)
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(ci, cl):
            report(lpath, line, f"expected {len(header)} columns, got {len(row)}")
            continue
        rel, label = row[ci].strip().replace("\\", "/"), row[cl].strip()
        if not label:
            report(lpath, line, f"{rel}: empty label")
            continue
        try:
            full = resolve_image_path(root, rel)
        except DatasetError as e:
            report(lpath, line, str(e))
            continue
        if rel in rows:
            report(lpath, line, f"{rel}: duplicate row (first at line {rows[rel][1]})")
            continue
        if not full.is_file():
            report(lpath, line, f"{rel}: image file not found")
            continue
        rows[rel] = (label, line)

    split_of: dict[str, str] = {}
    have_splits = False
    for s in SPLITS:
        spath = root / SPLIT_DIR / f"{s}.txt"
        if not spath.is_file():
            continue
        have_splits = True
        try:
            lines = spath.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{spath}: cannot read: {e}") from None
        for n, entry in enumerate(lines, 1):
            entry = entry.strip().replace("\\", "/")
            if not entry or entry.startswith("#"):
                continue
            if entry not in rows:
                report(spath, n, f"{entry}: not a (valid) image of labels.csv")
            elif entry in split_of:
                report(spath, n, f"{entry}: already in split {split_of[entry]!r}")
            else:
                split_of[entry] = s
    if not have_splits and rows:
        report(root / SPLIT_DIR, 0, "no split files (train.txt/val.txt/test.txt); all images unassigned")

    records = []
    for rel, (label, line) in rows.items():
        split = split_of.get(rel, "")
        if have_splits and not split:
            report(lpath, line, f"{rel}: image is in no split")
        boxes: tuple[Box, ...] = ()
        apath = annotation_path(root, rel)
        if apath.is_file():
            try:
                boxes = read_voc_xml(apath)
            except DatasetError as e:
                report(apath, 0, str(e).split(": ", 1)[-1])
        records.append(ImageRecord(rel, label, split, boxes))

    listed = set(rows)
    img_dir = root / IMAGES_DIR
    if img_dir.is_dir():
        for dirpath, _dirs, files in os.walk(img_dir):
            for f in sorted(files):
                rel = (Path(dirpath) / f).relative_to(root).as_posix()
                if Path(f).suffix.lower() in IMAGE_EXTS and rel not in listed and not strict:
                    problems.append(Problem(str(lpath), 0, f"{rel}: image not listed in labels.csv"))

    info = DatasetInfo(meta.name, tuple(meta.domain), meta.description, meta.license, root, tuple(records))
    return info, problems


def load_dataset(root: str | Path, *, strict: bool = False) -> DatasetInfo:
    """Read a dataset folder. Rows with problems are dropped (or raise when `strict`). Never opens pixels."""
    return _scan(Path(root), strict=strict)[0]


def check_dataset(root: str | Path, *, deep: bool = False) -> CheckReport:
    """Every problem of a dataset folder. `deep` opens each image header with PIL (lazy, no decode)."""
    root = Path(root)
    info, problems = _scan(root, strict=False)
    report = CheckReport(root=root, info=info, problems=problems)
    if deep:
        from PIL import Image, UnidentifiedImageError

        report.sizes, report.modes = [], Counter()
        for r in info.records:
            try:
                with Image.open(root / r.path) as im:  # reads the header only
                    report.sizes.append(im.size)
                    report.modes[im.mode] += 1
                    w, h = im.size
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
                report.problems.append(Problem(str(root / r.path), 0, f"cannot open image: {e}"))
                continue
            for b in r.boxes:
                if not (0 <= b.xmin < b.xmax <= w and 0 <= b.ymin < b.ymax <= h):
                    report.problems.append(Problem(str(annotation_path(root, r.path)), 0,
                                                   f"box {b} outside the {w}x{h} image"))
    return report
