"""Import adapters: each format round-trips into a clean convention folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from rtl.cli import main
from rtl.data.adapters import import_dataset
from rtl.data.convention import Box, check_dataset, load_dataset, write_voc_xml
from rtl.errors import DatasetError, RtlError


def img(path: Path, size=(24, 20), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path, format=fmt)
    return path


def test_imagefolder_keeps_extensions_and_splits(tmp_path):
    src = tmp_path / "src"
    img(src / "good/a.JPG", fmt="JPEG")
    img(src / "good/b.jpeg", fmt="JPEG")
    img(src / "good/sub/c.tif", fmt="TIFF")
    img(src / "bad/d.bmp", fmt="BMP")
    img(src / "bad/e.webp", fmt="WEBP")
    img(src / "bad/f.png", mode="L")
    (src / "bad/notes.txt").write_text("not an image")
    dst = import_dataset("imagefolder", src, tmp_path / "dst", name="fold", domain="pcb,smt")
    info = load_dataset(dst)
    assert info.domain == ("pcb", "smt")
    assert {Path(r.path).suffix for r in info.records} == {".JPG", ".jpeg", ".tif", ".bmp", ".webp", ".png"}
    assert Counter(r.label for r in info.records) == {"good": 3, "bad": 3}
    assert all(r.split == "train" or r.split in ("val", "test") for r in info.records)
    assert Counter(r.split for r in info.records)["train"] >= 2  # >= 1 train per class
    assert check_dataset(dst, deep=True).ok


def test_imagefolder_split_layout_kept(tmp_path):
    src = tmp_path / "src"
    for s in ("train", "val", "test"):
        img(src / s / "ok" / f"{s}.png")
    info = load_dataset(import_dataset("imagefolder", src, tmp_path / "dst", name="x", domain=["a"]))
    assert {Path(r.path).stem: r.split for r in info.records} == {"train": "train", "val": "val", "test": "test"}


def test_csv_with_custom_columns_and_name_collisions(tmp_path):
    src = tmp_path / "src"
    img(src / "a/x.png")
    img(src / "b/x.png")
    img(src / "X.png")
    img(src / "x.png_other.png")
    (src / "list.csv").write_text("file,cls\na/x.png,ok\nb/x.png,dent\nX.png,dent\nx.png_other.png,ok\n")
    dst = import_dataset("csv", src / "list.csv", tmp_path / "dst", name="c", domain=["film"],
                         path_column="file", label_column="cls", link=True)
    info = load_dataset(dst)
    assert len({r.path.lower() for r in info.records}) == 4
    assert Counter(r.label for r in info.records) == {"ok": 2, "dent": 2}
    assert check_dataset(dst).ok
    (src / "bad.csv").write_text("file,cls\nmissing.png,ok\n")
    with pytest.raises(DatasetError, match=r"no usable images .*bad.csv:2: missing.png: image file not found"):
        import_dataset("csv", src / "bad.csv", tmp_path / "dst2", name="c", domain=["film"],
                       path_column="file", label_column="cls")


def test_voc_label_boxes_and_splits(tmp_path):
    src = tmp_path / "voc"
    for i in range(4):
        img(src / f"JPEGImages/{i}.jpg", size=(64, 48), fmt="JPEG")
    write_voc_xml(src / "Annotations/0.xml", filename="0.jpg", width=64, height=48, depth=3,
                  boxes=[Box(1, 1, 9, 9, "spot"), Box(20, 20, 30, 30, "scratch"), Box(2, 30, 8, 40, "scratch")])
    write_voc_xml(src / "Annotations/1.xml", filename="1.jpg", width=64, height=48, depth=3, boxes=[])
    (src / "ImageSets/Main").mkdir(parents=True)
    (src / "ImageSets/Main/train.txt").write_text("0\n1\n2\n")
    (src / "ImageSets/Main/test.txt").write_text("3\n")
    dst = import_dataset("voc", src, tmp_path / "dst", name="v", domain=["pcb"], default_label="good")
    info = load_dataset(dst)
    by = {Path(r.path).stem: r for r in info.records}
    assert by["0"].label == "scratch" and len(by["0"].boxes) == 3  # most common object class
    assert by["1"].label == "good" and by["2"].label == "good"
    assert [by[k].split for k in "0123"] == ["train", "train", "train", "test"]
    assert (dst / "Annotations/0.xml").is_file()
    assert check_dataset(dst, deep=True).ok


def test_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(DatasetError, match="source not found"):
        import_dataset("imagefolder", tmp_path / "nope", tmp_path / "d", name="x", domain=["a"])
    with pytest.raises(RtlError, match="valid: .*csv, imagefolder, voc"):
        import_dataset("nonsense", tmp_path, tmp_path / "d", name="x", domain=["a"])
    img(tmp_path / "src/ok/a.png")
    with pytest.raises(DatasetError, match="field 'name'"):
        import_dataset("imagefolder", tmp_path / "src", tmp_path / "d", name="bad name", domain=["a"])
    rc = main(["dataset", "import", "--format", "voc", str(tmp_path / "nope"), str(tmp_path / "d"),
               "--name", "x", "--domains", "a"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("rtl: error:") and err.count("\n") == 1
    rc = main(["dataset", "import", "--format", "imagefolder", str(tmp_path / "src"), str(tmp_path / "d"),
               "--name", "x", "--domains", "a"])
    assert rc == 0 and "imported" in capsys.readouterr().out
    rc = main(["dataset", "import", "--format", "imagefolder", str(tmp_path / "src"), str(tmp_path / "d"),
               "--name", "x", "--domains", "a"])
    assert rc == 2 and "not empty" in capsys.readouterr().err


def test_imagefolder_links_inside_the_tree(tmp_path, capsys):
    """A symlinked file inside the source is one image (not two, which could land in two splits); symlinked
    folders are not followed (loops, escapes) and are listed as skipped."""
    src = tmp_path / "src"
    img(src / "ok/good.png")
    img(src / "bad/b.png")
    (src / "ok/alias.png").symlink_to(src / "ok/good.png")
    (src / "ok/more").symlink_to(src / "bad", target_is_directory=True)
    dst = import_dataset("imagefolder", src, tmp_path / "dst", name="x", domain="pcb")
    assert sorted(r.path for r in load_dataset(dst).records) == ["images/bad/b.png", "images/ok/alias.png"]
    err = capsys.readouterr().err
    assert "skipped ok/good.png: same file as ok/alias.png" in err
    assert "skipped ok/more: symbolic link to a folder: not followed" in err


def test_csv_rows_are_checked_before_anything_is_written(tmp_path):
    """A CSV whose every row is refused creates no destination; the error names the first reason."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/list.csv").write_text("path,label\n/etc/passwd,ok\n")
    with pytest.raises(DatasetError, match=r"no usable images \(1 skipped; first: .*list.csv:2: /etc/passwd: "
                                           r"absolute path refused"):
        import_dataset("csv", tmp_path / "src/list.csv", tmp_path / "dst", name="c", domain=["film"])
    assert not (tmp_path / "dst").exists()
