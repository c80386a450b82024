"""Dataset convention: load/check good and bad folders, path safety, stable stratified splits."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from rtl.cli import main
from rtl.data.convention import (
    Box,
    ImageRecord,
    annotation_path,
    check_dataset,
    load_dataset,
    make_splits,
    read_voc_xml,
    resolve_image_path,
    write_dataset_yaml,
    write_labels_csv,
    write_splits,
    write_voc_xml,
)
from rtl.errors import DatasetError


def make_ds(root: Path, n_per_class: dict[str, int] | None = None, mode: str = "RGB") -> list[ImageRecord]:
    n_per_class = n_per_class or {"ok": 4, "scratch": 3}
    recs = []
    for label, n in n_per_class.items():
        for i in range(n):
            rel = f"images/{label}/{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new(mode, (40 + i, 32)).save(root / rel)
            recs.append(ImageRecord(rel, label, ""))
    recs = make_splits(recs, seed=0)
    write_dataset_yaml(root, name="demo_ds", domain=["pcb"], description="d", license="CC0")
    write_labels_csv(root, recs)
    write_splits(root, recs)
    return recs


def test_good_dataset_loads_and_checks_clean(tmp_path):
    recs = make_ds(tmp_path)
    write_voc_xml(annotation_path(tmp_path, recs[0].path), filename="000.png", width=40, height=32, depth=3,
                  boxes=[Box(1, 2, 10, 12, "scratch")])
    info = load_dataset(tmp_path)
    assert info.name == "demo_ds" and info.domain == ("pcb",)
    assert info.classes() == ["ok", "scratch"]
    assert len(info.records) == 7
    assert info.records[0].boxes == (Box(1, 2, 10, 12, "scratch"),)
    assert sum(len(info.split(s)) for s in ("train", "val", "test")) == 7
    rep = check_dataset(tmp_path, deep=True)
    assert rep.ok, rep.problems
    s = rep.summary()
    assert "scratch" in s and "modes: RGB=7" in s and "width 40..43" in s


def test_voc_xml_round_trip(tmp_path):
    boxes = (Box(0, 0, 5, 6, "a"), Box(3, 4, 30, 31, "b"))
    p = write_voc_xml(tmp_path / "x.xml", filename="x.png", width=32, height=32, depth=1, boxes=boxes)
    assert read_voc_xml(p) == boxes
    p.write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="x.xml"):
        read_voc_xml(p)


@pytest.mark.parametrize("coord", ["1e400", "-inf", "nan", "2e6"])
def test_voc_box_coordinates_out_of_range_are_one_line_errors(tmp_path, coord):
    """Not pixels of any image: `1e400` used to raise OverflowError in import, check and corpus build."""
    p = tmp_path / "x.xml"
    p.write_text(f"<annotation><object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{coord}</xmax>"
                 "<ymax>5</ymax></bndbox></object></annotation>")
    with pytest.raises(DatasetError, match=r"x.xml: object 'a' has a bndbox coordinate out of range"):
        read_voc_xml(p)


@pytest.mark.parametrize(
    "text, where",
    [("name: [oops\n", "dataset.yaml:2"),           # YAML syntax error: line named
     ("name: bad name\ndomain: [pcb]\n", "dataset.yaml:1: field 'name'"),
     ("name: ok\n", "field 'domain'"),               # missing field
     ("name: ok\ndomain: [pcb]\ncolour: red\n", "dataset.yaml:3: field 'colour'")],
)
def test_bad_yaml_is_one_line_error(tmp_path, text, where):
    make_ds(tmp_path)
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert where in str(e.value) and "\n" not in str(e.value)


def test_missing_folder_and_bad_header(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope")
    make_ds(tmp_path)
    (tmp_path / "labels.csv").write_text("file,class\nimages/ok/000.png,ok\n")
    with pytest.raises(DatasetError, match=r"labels.csv:1: header"):
        load_dataset(tmp_path)


def test_bad_rows_are_named_with_file_and_line(tmp_path):
    make_ds(tmp_path, {"ok": 3})
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    Image.new("L", (8, 8)).save(outside)
    os.symlink(outside, tmp_path / "images" / "link.png")
    (tmp_path / "labels.csv").write_text(
        "image,label\n"
        "images/ok/000.png,ok\n"        # 2 fine
        "images/ok/000.png,ok\n"        # 3 duplicate
        "images/ok/001.png,\n"          # 4 empty label
        "images/missing.png,ok\n"       # 5 missing file
        "../etc/passwd,ok\n"            # 6 escape
        "/etc/passwd,ok\n"              # 7 absolute
        "images/link.png,ok\n"          # 8 symlink outside
        "images/ok/002.png,ok\n"        # 9 fine but in no split (below)
    )
    (tmp_path / "ImageSets/Main/train.txt").write_text("images/ok/000.png\nimages/unknown.png\n")
    (tmp_path / "ImageSets/Main/val.txt").write_text("")
    (tmp_path / "ImageSets/Main/test.txt").write_text("")
    rep = check_dataset(tmp_path)
    got = {(Path(p.file).name, p.line) for p in rep.problems}
    for line in (3, 4, 5, 6, 7, 8, 9):
        assert ("labels.csv", line) in got, (line, [str(p) for p in rep.problems])
    assert ("train.txt", 2) in got
    assert not rep.ok
    info = load_dataset(tmp_path)  # bad rows dropped, not fatal
    assert {r.path for r in info.records} == {"images/ok/000.png", "images/ok/002.png"}
    with pytest.raises(DatasetError, match="labels.csv:3"):
        load_dataset(tmp_path, strict=True)


def test_resolve_image_path_refuses_escapes(tmp_path):
    (tmp_path / "images").mkdir()
    assert resolve_image_path(tmp_path, "images/a.png") == tmp_path / "images/a.png"
    for bad in ("../x.png", "images/../../x.png", "/etc/passwd", "C:\\x.png", ""):
        with pytest.raises(DatasetError):
            resolve_image_path(tmp_path, bad)
    os.symlink("/", tmp_path / "images" / "root")
    with pytest.raises(DatasetError, match="outside"):
        resolve_image_path(tmp_path, "images/root/etc/passwd")


def _recs(n: int, label: str = "a", start: int = 0) -> list[ImageRecord]:
    return [ImageRecord(f"images/{label}/{i}.png", label, "") for i in range(start, start + n)]


def test_splits_are_stable_when_the_dataset_grows():
    before = {r.path: r.split for r in make_splits(_recs(200) + _recs(100, "b"), seed=3)}
    after = {r.path: r.split for r in make_splits(_recs(400) + _recs(150, "b") + _recs(20, "c"), seed=3)}
    assert all(after[p] == s for p, s in before.items())
    other_seed = {r.path: r.split for r in make_splits(_recs(200) + _recs(100, "b"), seed=4)}
    assert other_seed != before


def test_splits_are_stratified_and_small_classes_covered():
    recs = make_splits(_recs(400, "big") + _recs(1, "one") + _recs(2, "two") + _recs(3, "three"), seed=0)
    by = Counter((r.label, r.split) for r in recs)
    assert 0.62 < by[("big", "train")] / 400 < 0.78
    assert 0.09 < by[("big", "val")] / 400 < 0.21 and 0.09 < by[("big", "test")] / 400 < 0.21
    assert by[("one", "train")] == 1
    assert by[("two", "train")] >= 1
    assert all(by[("three", s)] == 1 for s in ("train", "val", "test"))
    assert make_splits(recs, seed=0) == make_splits(recs, seed=0)


def test_cli_check_exit_codes(tmp_path, capsys):
    make_ds(tmp_path / "good")
    assert main(["dataset", "check", str(tmp_path / "good"), "--deep"]) == 0
    assert "demo_ds" in capsys.readouterr().out
    make_ds(tmp_path / "bad")
    (tmp_path / "bad/images/ok/000.png").unlink()
    assert main(["dataset", "check", str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    assert "labels.csv:2: images/ok/000.png: image file not found" in out
    assert main(["dataset", "check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtl: error:") and err.count("\n") == 1
    (tmp_path / "good/dataset.yaml").write_text("name: [\n")
    assert main(["dataset", "check", str(tmp_path / "good")]) == 2
    assert "dataset.yaml:" in capsys.readouterr().err
