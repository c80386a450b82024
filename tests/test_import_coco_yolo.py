"""COCO and YOLO import: labels by the VOC rule, boxes kept, splits kept, one-line errors, rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rtl.cli import main
from rtl.data.adapters import FORMATS, import_dataset
from rtl.data.convention import Box, check_dataset, load_dataset
from rtl.errors import DatasetError


def img(path: Path, size=(40, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 100).save(path, format=fmt)
    return path


# ---------------------------------------------------------------------------------------------- COCO


def coco_src(tmp: Path, **over) -> Path:
    src = tmp / "coco"
    img(src / "images/a.jpg")                 # 40x30, two scratches and a dent -> scratch
    img(src / "images/sub/b.png", (20, 20), "L")  # no boxes -> default label
    img(src / "images/c.jpg")                 # one dent
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "sub/b.png", "width": 20, "height": 20},
                   {"id": 3, "file_name": "c.jpg"}],
        "categories": [{"id": 1, "name": "scratch"}, {"id": 7, "name": "dent"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5]},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.4, 0, 39.6, 30]},
                        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 3.2, 3.2]},
                        {"id": 4, "image_id": 3, "category_id": 7, "bbox": [30, 20, 10.5, 10]}],
    }
    data.update(over)
    (src / "annotations").mkdir(parents=True, exist_ok=True)
    (src / "annotations/instances.json").write_text(json.dumps(data))
    return src


def test_formats_registered():
    assert {"coco", "yolo", "voc", "csv", "imagefolder"} <= set(FORMATS.names())


def test_coco_labels_boxes_and_default_label(tmp_path):
    dst = import_dataset("coco", coco_src(tmp_path), tmp_path / "dst", name="c", domain="pcb",
                         default_label="good")
    info = load_dataset(dst)
    by = {Path(r.path).name: r for r in info.records}
    assert {n: r.label for n, r in by.items()} == {"a.jpg": "scratch", "b.png": "good", "c.jpg": "dent"}
    # COCO [x, y, w, h] -> inclusive-exclusive pixel corners, via the VOC XML written on import
    assert set(by["a.jpg"].boxes) == {Box(1, 2, 11, 7, "dent"), Box(0, 0, 40, 30, "scratch"),
                                      Box(5, 5, 9, 9, "scratch")}
    assert by["c.jpg"].boxes == (Box(30, 20, 40, 30, "dent"),)  # 0.5 px overshoot clipped
    assert by["b.png"].boxes == ()
    assert check_dataset(dst, deep=True).ok


def test_coco_roboflow_layout_keeps_splits(tmp_path):
    src = tmp_path / "rf"
    for sub in ("train", "valid", "test"):
        img(src / sub / "x.jpg")
        (src / sub / "_annotations.coco.json").write_text(json.dumps({
            "images": [{"id": 0, "file_name": "x.jpg", "width": 40, "height": 30}],
            "categories": [{"id": 0, "name": "pcb"}, {"id": 1, "name": "open"}],
            "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 4, 4]}]}))
    info = load_dataset(import_dataset("coco", src, tmp_path / "dst", name="rf", domain="pcb"))
    assert sorted((r.path, r.split, r.label) for r in info.records) == [
        ("images/test/x.jpg", "test", "open"), ("images/train/x.jpg", "train", "open"),
        ("images/val/x.jpg", "val", "open")]


def test_coco_official_layout_splits_from_file_names(tmp_path):
    src = tmp_path / "coco2017"
    for split in ("train", "val"):
        img(src / f"{split}2017" / "000001.jpg")
        (src / "annotations").mkdir(parents=True, exist_ok=True)
        (src / "annotations" / f"instances_{split}2017.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "000001.jpg", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "hole"}], "annotations": []}))
    info = load_dataset(import_dataset("coco", src, tmp_path / "dst", name="c", domain="pcb",
                                       default_label="good"))
    assert sorted((r.path, r.split, r.label) for r in info.records) == [
        ("images/train/000001.jpg", "train", "good"), ("images/val/000001.jpg", "val", "good")]
    (src / "annotations" / "captions_val2017.json").write_text("{}")
    with pytest.raises(DatasetError, match="two JSON files for split val"):
        import_dataset("coco", src, tmp_path / "dst2", name="c", domain="pcb")


def test_coco_missing_and_escaping_images_are_rejects(tmp_path, capsys):
    src = coco_src(tmp_path)
    data = json.loads((src / "annotations/instances.json").read_text())
    data["images"] += [{"id": 9, "file_name": "gone.jpg"}, {"id": 10, "file_name": "../../etc/passwd"}]
    (src / "images/c.jpg").write_bytes(b"not an image")
    (src / "annotations/instances.json").write_text(json.dumps(data))
    info = load_dataset(import_dataset("coco", src, tmp_path / "dst", name="c", domain="pcb"))
    assert sorted(Path(r.path).name for r in info.records) == ["a.jpg", "b.png"]
    err = capsys.readouterr().err
    assert "skipped gone.jpg" in err and "image file not found" in err
    assert "escapes" in err and "c.jpg" in err and "2 images imported, 3 skipped" in err
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d.pop("images"), "instances.json: images: missing"),
    (lambda d: d.update(images={}), "images: expected an array, got object"),
    (lambda d: d["images"][1].pop("file_name"), "images[1].file_name: missing"),
    (lambda d: d["images"][0].update(width="40"), "images[0].width: expected a positive integer"),
    (lambda d: d["categories"][1].pop("name"), "categories[1].name: category 7 has no name"),
    (lambda d: d["annotations"][2].update(category_id=3), "annotations[2].category_id: 3 is not in categories"),
    (lambda d: d["annotations"][0].update(image_id=42), "annotations[0].image_id: 42 is not the id"),
    (lambda d: d["annotations"][1].pop("bbox"), "annotations[1].bbox: missing"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), "annotations[1].bbox: expected [x, y, width, height]"),
    (lambda d: d["annotations"][3].update(bbox=[1, 2, -3, 4]), "annotations[3].bbox: width must be > 0, got -3"),
    (lambda d: d["annotations"][3].update(bbox=[1, 2, 3, "NaN"]), "annotations[3].bbox: height must be a finite"),
    (lambda d: d["annotations"][0].update(bbox=[35, 2, 20, 4]), "annotations[0].bbox: box (35, 2, 55, 6) lies "
                                                                "outside the 40x30 image"),
], ids=["no-images", "images-type", "no-file_name", "width-type", "category-no-name", "unknown-category",
        "unknown-image", "no-bbox", "bbox-short", "bbox-negative", "bbox-nan", "box-outside"])
def test_coco_bad_json_is_one_line_error(tmp_path, mutate, expect):
    src = coco_src(tmp_path)
    path = src / "annotations/instances.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data).replace('"NaN"', "NaN"))
    with pytest.raises(DatasetError) as ei:
        import_dataset("coco", src, tmp_path / "dst", name="c", domain="pcb")
    msg = str(ei.value)
    assert expect in msg and "\n" not in msg and str(path) in msg
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())


def test_coco_invalid_json_names_line_and_cli_exit_2(tmp_path, capsys):
    src = coco_src(tmp_path)
    (src / "annotations/instances.json").write_text('{"images": [\n  {"id": 1,}\n]}')
    rc = main(["dataset", "import", "--format", "coco", str(src), str(tmp_path / "dst"), "--name", "c",
               "--domains", "pcb"])
    err = capsys.readouterr().err
    assert rc == 2 and "instances.json:2:" in err and "invalid JSON" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- YOLO


def yolo_src(tmp: Path) -> Path:
    src = tmp / "yolo"
    src.mkdir(parents=True)
    (src / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: scratch\n  1: dent\n")
    img(src / "images/train/a.jpg", (40, 20))
    (src / "labels/train").mkdir(parents=True)
    (src / "labels/train/a.txt").write_text("1 0.5 0.5 0.5 0.5\n0 0.1 0.1 0.1 0.2\n0 0.9 0.9 0.2 0.2\n")
    img(src / "images/val/b.png", (20, 20), "L")
    (src / "labels/val").mkdir(parents=True)
    (src / "labels/val/b.txt").write_text("\n1 0.2 0.2 0.4 0.4\n")
    img(src / "images/val/c.jpg")  # no label file: a background image
    return src


def test_yolo_labels_boxes_splits_and_background(tmp_path, capsys):
    dst = import_dataset("yolo", yolo_src(tmp_path), tmp_path / "dst", name="y", domain="pcb")
    by = {Path(r.path).name: r for r in load_dataset(dst).records}
    assert {n: (r.label, r.split) for n, r in by.items()} == {
        "a.jpg": ("scratch", "train"), "b.png": ("dent", "val"), "c.jpg": ("ok", "val")}
    assert set(by["a.jpg"].boxes) == {Box(10, 5, 30, 15, "dent"), Box(2, 0, 6, 4, "scratch"),
                                      Box(32, 16, 40, 20, "scratch")}
    assert by["b.png"].boxes == (Box(0, 0, 8, 8, "dent"),)
    assert by["a.jpg"].path == "images/train/a.jpg"
    assert "1 images without a label file" in capsys.readouterr().err
    assert check_dataset(dst, deep=True).ok


def test_yolo_classes_txt_flat_layout_orphans_and_skip(tmp_path, capsys):
    src = tmp_path / "dark"
    img(src / "obj/a.jpg")
    (src / "obj/a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    img(src / "obj/b.jpg")
    (src / "classes.txt").write_text("crack\n")
    (src / "labels").mkdir()
    (src / "labels/ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    info = load_dataset(import_dataset("yolo", src, tmp_path / "dst", name="d", domain="x", unlabeled="skip"))
    assert [(r.path, r.label) for r in info.records] == [("images/obj/a.jpg", "crack")]
    err = capsys.readouterr().err
    assert "skipped labels/ghost.txt: label file without an image" in err
    assert "skipped obj/b.jpg: no label file" in err


@pytest.mark.parametrize("label, expect", [
    ("0 0.5 0.5 0.2\n", "a.txt:1: expected `class cx cy w h`"),
    ("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n", "a.txt:2: class 7 not in names (0..1)"),
    ("0 0.5 0.5 -0.2 0.2\n", "a.txt:1: box width must be > 0, got -0.2"),
    ("0 0.5 0.5 0.2 nan\n", "a.txt:1: nan is not a finite number"),
    ("0 0.5 0.5 0.2 abc\n", "a.txt:1: not a number"),
    ("\n\n1 0.95 0.5 0.3 0.2\n", "a.txt:3: box (32, 8, 44, 12) lies outside the 40x20 image"),
], ids=["fields", "class", "negative", "nan", "text", "outside"])
def test_yolo_bad_label_is_one_line_error(tmp_path, label, expect):
    src = yolo_src(tmp_path)
    (src / "labels/train/a.txt").write_text(label)
    with pytest.raises(DatasetError) as ei:
        import_dataset("yolo", src, tmp_path / "dst", name="y", domain="pcb")
    assert expect in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("yaml_text, expect", [
    ("names: [scratch, '']\n", "names[1]: class 1 has no name"),
    ("names: {0: a, 2: b}\n", "names: class ids must be 0..1"),
    ("nc: 3\nnames: [a, b]\n", "nc: 3 but names lists 2 classes"),
    ("names: [a, b\n", "data.yaml"),
], ids=["empty-name", "gap", "nc", "yaml-syntax"])
def test_yolo_bad_names(tmp_path, yaml_text, expect):
    src = yolo_src(tmp_path)
    (src / "data.yaml").write_text(yaml_text)
    with pytest.raises(DatasetError) as ei:
        import_dataset("yolo", src, tmp_path / "dst", name="y", domain="pcb")
    assert expect in str(ei.value) and "\n" not in str(ei.value)


def test_yolo_unreadable_image_is_reject_and_cli_runs(tmp_path, capsys):
    src = yolo_src(tmp_path)
    (src / "images/val/c.jpg").write_bytes(b"")
    rc = main(["dataset", "import", "--format", "yolo", str(src), str(tmp_path / "dst"), "--name", "y",
               "--domains", "pcb", "--option", "default_label=good"])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped images/val/c.jpg: cannot read image header" in err
    assert sorted(Path(r.path).name for r in load_dataset(tmp_path / "dst").records) == ["a.jpg", "b.png"]
