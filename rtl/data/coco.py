"""Import COCO detection JSON (`rtl dataset import --format coco`).

COCO (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014) stores one JSON per split:
`images` (id, file_name, width, height), `categories` (id, name) and `annotations` (image_id,
category_id, bbox = [x, y, width, height] in pixels, top-left origin). An image's label follows the VOC
rule of `rtl.data.adapters.voc` (most common box class, ties: first in the file; `default_label` when
it has no boxes) and its boxes are kept as Annotations/*.xml for box-aware patch-cropping.

Accepted SRC: a JSON file; a folder with one JSON (or `annotations/` with one JSON); a folder with
`train/ valid/ test/` sub-folders each holding one JSON and its images (Roboflow export: the splits are
kept); or several `*train*.json / *val*.json / *test*.json` (COCO's `annotations/instances_val2017.json`
next to `val2017/`). Images are looked up under the `images=` option, else next to the JSON, in its
`images/` sub-folder or in the sibling folder named after the JSON (`instances_val2017` -> `val2017/`).

Why plain `json` and not pycocotools: pycocotools' `COCO()` is `json.load` plus index dicts; it does not
validate (a missing `bbox` or unknown `category_id` surfaces later as a KeyError traceback), it needs a
compiled extension, and its value (RLE masks, COCOeval) is not used here. Parsing ourselves lets every
problem be one line with the JSON path, e.g. `val.json: annotations[7].bbox: width must be > 0, got -3`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rtl.data.adapters import FORMATS, Rejected, SourceItem
from rtl.data.convention import Box
from rtl.data.import_common import (
    SPLIT_ALIASES,
    finite,
    header_size,
    label_from_boxes,
    pixel_box,
    safe_image,
)
from rtl.data.safety import printable
from rtl.errors import DatasetError

__all__ = ["coco", "read_coco_json"]


def _type(v: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


def _id(v: object) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(v))


def read_coco_json(path: Path) -> tuple[dict, dict, dict]:
    """Validated (images by id, category names by id, boxes-spec by image id) of one COCO file.

    images: {id: (file_name, width|None, height|None, json_path)}; boxes-spec: {image_id: [(x, y, w, h,
    category name, json_path), ...]}. Raises DatasetError `FILE: json.path: message` on the first problem.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None

    def err(where: str, msg: str) -> DatasetError:
        return DatasetError(f"{path}: {where}: {msg}")

    if not isinstance(data, dict):
        raise err("$", f"expected an object with images, categories, annotations; got {_type(data)}")
    for key in ("images", "categories"):
        if key not in data:
            raise err(key, "missing (a COCO file needs images, categories and annotations)")
    anns = data.get("annotations", [])
    for key, v in (("images", data["images"]), ("categories", data["categories"]), ("annotations", anns)):
        if not isinstance(v, list):
            raise err(key, f"expected an array, got {_type(v)}")

    cats: dict = {}
    for k, c in enumerate(data["categories"]):
        where = f"categories[{k}]"
        if not isinstance(c, dict):
            raise err(where, f"expected an object, got {_type(c)}")
        if not _id(c.get("id")):
            raise err(f"{where}.id", "missing or not an integer/string" if "id" not in c or c["id"] is None
                      else f"expected an integer or string, got {_type(c['id'])}")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            raise err(f"{where}.name", f"category {c['id']} has no name")
        if c["id"] in cats:
            raise err(f"{where}.id", f"category id {c['id']} used twice")
        cats[c["id"]] = name.strip()

    images: dict = {}
    seen_files: dict[str, str] = {}
    for k, im in enumerate(data["images"]):
        where = f"images[{k}]"
        if not isinstance(im, dict):
            raise err(where, f"expected an object, got {_type(im)}")
        if not _id(im.get("id")):
            raise err(f"{where}.id", "missing" if im.get("id") is None else
                      f"expected an integer or string, got {_type(im['id'])}")
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            raise err(f"{where}.file_name", "missing" if fn is None else f"expected a non-empty string, got "
                      f"{_type(fn)}")
        fn = fn.strip().replace("\\", "/")
        size = []
        for key in ("width", "height"):
            v = im.get(key)
            if v is not None and not (finite(v) and v > 0 and float(v).is_integer()):
                raise err(f"{where}.{key}", f"expected a positive integer, got {v!r}")
            size.append(int(v) if v is not None else None)
        if im["id"] in images:
            raise err(f"{where}.id", f"image id {im['id']} used twice")
        if fn in seen_files:
            raise err(f"{where}.file_name", f"{fn} already listed at {seen_files[fn]}")
        seen_files[fn] = where
        images[im["id"]] = (fn, size[0], size[1], where)

    boxes: dict = {}
    for k, a in enumerate(anns):
        where = f"annotations[{k}]"
        if not isinstance(a, dict):
            raise err(where, f"expected an object, got {_type(a)}")
        for key in ("image_id", "category_id", "bbox"):
            if key not in a:
                raise err(f"{where}.{key}", "missing")
        if a["image_id"] not in images:
            raise err(f"{where}.image_id", f"{a['image_id']!r} is not the id of an entry of images")
        if a["category_id"] not in cats:
            ids = sorted(cats, key=str)
            raise err(f"{where}.category_id", f"{a['category_id']!r} is not in categories (ids: "
                      f"{', '.join(map(str, ids[:12]))}{' ...' if len(ids) > 12 else ''})")
        bb = a["bbox"]
        if not isinstance(bb, list) or len(bb) != 4:
            raise err(f"{where}.bbox", f"expected [x, y, width, height], got {json.dumps(bb)[:60]}")
        for name, v in zip(("x", "y", "width", "height"), bb):
            if not finite(v):
                raise err(f"{where}.bbox", f"{name} must be a finite number, got {json.dumps(v)}")
        if bb[2] <= 0 or bb[3] <= 0:
            side = "width" if bb[2] <= 0 else "height"
            raise err(f"{where}.bbox", f"{side} must be > 0, got {bb[2] if bb[2] <= 0 else bb[3]:g}")
        boxes.setdefault(a["image_id"], []).append((*map(float, bb), cats[a["category_id"]], where))
    return images, cats, boxes


def _image_root(path: Path, names: list[str], option: str, base: Path) -> Path:
    """Folder the JSON's file_names are relative to (the first candidate holding the first few files)."""
    if option:
        root = Path(option) if Path(option).is_absolute() else base / option
        if not root.is_dir():
            raise DatasetError(f"images={option}: folder not found (relative to {base})")
        return root
    m = re.match(r"^(?:instances|image_info|annotations?)_(.+)$", path.stem)
    cands = [path.parent, path.parent / "images", path.parent.parent / "images"]
    if m:
        cands += [path.parent.parent / m.group(1), path.parent / m.group(1)]
    probe = names[:5]
    for c in cands:
        if c.is_dir() and probe and any((c / n).is_file() for n in probe):
            return c
    return path.parent


def _find_files(src: Path, split: str) -> list[tuple[Path, str, Path]]:
    """(json, split, base folder for the images= option) for each COCO file of SRC."""
    if src.is_file():
        return [(src, split, src.parent)]
    subs = [p for p in sorted(src.iterdir()) if p.is_dir() and p.name.lower() in SPLIT_ALIASES]
    found = []
    for d in subs:
        js = sorted(d.glob("*.json"))
        if len(js) == 1:
            found.append((js[0], SPLIT_ALIASES[d.name.lower()], src))
        elif len(js) > 1:
            raise DatasetError(f"{d}: several JSON files ({js[0].name}, {js[1].name}); pass one as SRC")
    if found:
        return found
    for d in (src, src / "annotations"):
        js = sorted(d.glob("*.json")) if d.is_dir() else []
        if len(js) == 1:
            return [(js[0], split, src)]
        if len(js) > 1:
            by_split = {}
            for j in js:
                words = [w for w in re.split(r"[^a-z]+", j.stem.lower()) if w in SPLIT_ALIASES]
                if len(words) != 1:
                    raise DatasetError(f"{d}: several JSON files and {j.name} names no single split "
                                       f"(train/val/test); pass one JSON file as SRC")
                s = SPLIT_ALIASES[words[0]]
                if s in by_split:
                    raise DatasetError(f"{d}: two JSON files for split {s} ({by_split[s].name}, {j.name}); "
                                       f"pass one JSON file as SRC")
                by_split[s] = j
            return [(j, s, src) for s, j in by_split.items()]
    raise DatasetError(f"{src}: no COCO JSON file (expected SRC/*.json, SRC/annotations/*.json or "
                       f"SRC/{{train,valid,test}}/*.json)")


@FORMATS.register("coco")
def coco(src: Path, *, images: str = "", default_label: str = "ok", split: str = "") -> list[SourceItem]:
    """COCO JSON -> SourceItems (label by the VOC rule, boxes kept). Options: `images=` folder of the
    file_names (relative to SRC's folder), `default_label=` for images without boxes, `split=` for a
    single file."""
    split = split.strip().lower()
    if split and split not in SPLIT_ALIASES:
        raise DatasetError(f"split={split}: must be one of train, val, test")
    split = SPLIT_ALIASES.get(split, "")
    if not default_label.strip():
        raise DatasetError("default_label: must not be empty")
    items: list[SourceItem | Rejected] = []  # import_dataset lists the Rejected ones and imports the rest
    files = _find_files(src, split)
    for path, fsplit, base in files:
        imgs, _cats, boxes = read_coco_json(path)
        root = _image_root(path, [v[0] for v in imgs.values()], images, base)
        prefix = f"{fsplit}/" if fsplit and len(files) > 1 else ""
        for iid, (fn, w, h, where) in imgs.items():
            try:
                full = safe_image(root, fn)
                hw, hh, depth = header_size(full)
            except DatasetError as e:
                items.append(Rejected(f"{printable(fn)} ({path.name}: {where})", str(e)))
                continue
            if (w, h) != (None, None) and (w, h) != (hw, hh):
                items.append(Rejected(f"{printable(fn)} ({path.name}: {where})",
                                      f"file is {hw}x{hh} but the JSON says {w}x{h}"))
                continue
            bxs: list[Box] = [pixel_box(x, y, x + bw, y + bh, hw, hh, name, f"{path}: {aw}.bbox")
                              for x, y, bw, bh, name, aw in boxes.get(iid, [])]
            items.append(SourceItem(full, prefix + fn, label_from_boxes(bxs, default_label.strip()), fsplit,
                                    tuple(bxs), (hw, hh, depth)))
    return items
