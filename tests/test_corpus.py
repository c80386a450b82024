"""Corpus build (Ray tasks, local) and read-back views, on tiny synthetic and deliberately broken datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtl.data import corpus_build
from rtl.data.convention import ImageRecord, write_dataset_yaml, write_labels_csv, write_splits
from rtl.data.corpus import build_corpus, decode_row, open_corpus
from rtl.errors import RtlError

SIDES = {"min_side": 32, "max_side": 40, "progress": False}


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _dataset(root: Path, name: str, domain: str, files: dict[str, bytes], labels: list[tuple[str, str]]) -> Path:
    """Write a convention folder directly: `files` rel->bytes, `labels` (rel, label) rows (may be bogus)."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    write_dataset_yaml(root, name=name, domain=[domain])
    recs = [ImageRecord(p, lab, "train") for p, lab in labels]
    write_labels_csv(root, recs)
    write_splits(root, [r for r in recs if (root / r.path).is_file() and ".." not in r.path
                        and not r.path.startswith("/")])
    return root


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from rtl.data.synth import generate_family

    out = tmp_path_factory.mktemp("fam")
    generate_family(out, size="tiny", seed=0)
    return out


def _rgb(h, w, v=0):
    return np.random.default_rng(v).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_bad_inputs_are_rejects_not_crashes(tmp_path, ray_session):
    good = _png(_rgb(50, 60))
    trunc = _png(_rgb(64, 64, 1))
    a = _dataset(tmp_path / "a", "a", "pcb", {
        "images/ok/good.png": good,
        "images/ok/UPPER.PNG": _png(_rgb(40, 44, 2)),
        "images/ok/zero.png": b"",
        "images/ok/trunc.png": trunc[: len(trunc) // 2],
        "images/ok/text.png": b"not an image at all",
        "images/ok/bomb.png": _png(np.zeros((100, 100), np.uint8)),
        "images/ok/cmyk.jpg": _cmyk(),
        "images/ok/deep.png": _png(np.full((30, 30), 4000, np.uint16)),
        "images/dent/only.png": b"",  # the only image of class dent is broken -> empty class
    }, [("images/ok/good.png", "ok"), ("images/ok/UPPER.PNG", "ok"), ("images/ok/zero.png", "ok"),
        ("images/ok/trunc.png", "ok"), ("images/ok/text.png", "ok"), ("images/ok/bomb.png", "ok"),
        ("images/ok/cmyk.jpg", "ok"), ("images/ok/deep.png", "ok"), ("images/dent/only.png", "dent"),
        ("images/ok/missing.png", "ok"), ("../a/images/ok/good.png", "ok"), ("/etc/hostname", "ok")])
    b = _dataset(tmp_path / "b", "b", "film", {"images/ok/good.png": _png(_rgb(70, 50, 3))},
                 [("images/ok/good.png", "ok")])  # same file name as in dataset a
    m = build_corpus([a, b], tmp_path / "c", cap=None, max_pixels=5000, **SIDES)
    why = {(r["dataset"], r["path"]): r["reason"] for r in m["rejects"]}
    assert why[("a", "images/ok/zero.png")] == "zero-byte file"
    assert why[("a", "images/ok/trunc.png")] == "truncated image"
    assert why[("a", "images/ok/text.png")] == "not an image"
    assert why[("a", "images/ok/bomb.png")] == "decompression bomb"
    assert why[("a", "images/dent/only.png")] == "zero-byte file"
    label_rows = " | ".join(r["reason"] for r in m["rejects"] if r["path"].startswith("labels.csv:"))
    for bit in ("missing.png: image file not found", "escapes the dataset folder", "absolute image path"):
        assert bit in label_rows
    dent = next(c["id"] for c in m["classes"] if c["label"] == "dent")
    assert m["empty_classes"] == [dent]
    t = open_corpus(tmp_path / "c").table()
    keys = sorted(zip(t["dataset"].to_pylist(), t["source_path"].to_pylist()))
    assert keys == [("a", "images/ok/UPPER.PNG"), ("a", "images/ok/cmyk.jpg"), ("a", "images/ok/deep.png"),
                    ("a", "images/ok/good.png"), ("b", "images/ok/good.png")]
    for row in t.to_pylist():
        img = decode_row(row["pixels"], row["height"], row["width"], row["channels"])
        assert 32 <= img.shape[0] <= 40 and 32 <= img.shape[1] <= 40
        if row["source_path"] == "images/ok/deep.png":
            assert img.shape[2] == 1 and img.max() > 200  # 12-bit data scaled to 8 bit
    assert m["n_images_in"] == 10 and m["n_rows_out"] == 5


def _cmyk() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (36, 36), (0, 200, 200, 0)).save(buf, format="JPEG")
    return buf.getvalue()


def test_missing_dataset_dir_is_one_line_error(tmp_path):
    with pytest.raises(RtlError, match="dataset folder not found") as e:
        build_corpus([tmp_path / "nope"], tmp_path / "c", **SIDES)
    assert "\n" not in str(e.value)
    (tmp_path / "notacorpus").mkdir()
    (tmp_path / "notacorpus" / "thesis.tex").write_text("x")
    with pytest.raises(RtlError, match="not a corpus"):
        build_corpus([tmp_path], tmp_path / "notacorpus", **SIDES)


def test_family_build_read_back_and_views(family, tmp_path, ray_session):
    sources = sorted(p for p in (family / "sources").iterdir() if p.is_dir())
    out = tmp_path / "corpus"
    # max_side 32 < 160/4: the synth's large boxed images are patch-cropped
    m = build_corpus(sources, out, min_side=24, max_side=32, cap=2, seed=0, progress=False)
    assert m["rejects"] == [] and (out / "manifest.json").is_file()
    view = open_corpus(out)
    t = view.table()
    assert t.num_rows == m["n_rows_out"] == sum(m["counts_after"].values())
    assert view.num_classes == len(m["classes"])
    imgs: dict[int, set] = {}
    for cid, ds, path in zip(t["class_id"].to_pylist(), t["dataset"].to_pylist(), t["source_path"].to_pylist()):
        imgs.setdefault(cid, set()).add((ds, path))
    assert max(len(v) for v in imgs.values()) == 2  # cap: images per class (patches add rows, not images)
    assert sum(map(len, imgs.values())) == m["n_images_kept"]
    by_id = {c["id"]: c for c in m["classes"]}
    for row in t.slice(0, 40).to_pylist():
        img = decode_row(row["pixels"], row["height"], row["width"], row["channels"])
        assert 24 <= img.shape[0] <= 32 and 24 <= img.shape[1] <= 32
        assert (by_id[row["class_id"]]["dataset"], by_id[row["class_id"]]["label"]) == (row["dataset"],
                                                                                         row["label"])
        gray = m["datasets"][row["dataset"]]["domain"][0] in ("film", "semiconductor")
        assert img.shape[2] == (1 if gray else 3)
    pcb = open_corpus(out, domains=["pcb"])
    assert set(pcb.table(columns=["dataset"])["dataset"].to_pylist()) == {"pcb_a", "pcb_b"}
    assert pcb.num_classes == view.num_classes and set(pcb.class_ids) < set(view.class_ids)
    one = open_corpus(out, datasets=["film_a"], splits=["train"])
    tt = one.table(columns=["dataset", "split"])
    assert tt.num_rows > 0 and set(tt["dataset"].to_pylist()) == {"film_a"}
    assert set(tt["split"].to_pylist()) == {"train"}
    with pytest.raises(RtlError, match="corpus has: .*pcb_a"):
        open_corpus(out, datasets=["pcb_z"])
    with pytest.raises(RtlError, match="unknown domain"):
        open_corpus(out, domains=["bakery"])
    # rebuilding with the same inputs is reproducible (same content hash)
    m2 = build_corpus(sources, tmp_path / "again", min_side=24, max_side=32, cap=2, seed=0, progress=False)
    assert m2["version"] == m["version"]


def test_patches_for_large_images(family, tmp_path, ray_session):
    src = family / "sources" / "pcb_b"  # has one large (160 px) image with boxed defects
    m = build_corpus([src], tmp_path / "c", min_side=16, max_side=24, cap=None, progress=False)
    t = open_corpus(tmp_path / "c").table(columns=["source_path", "patch", "height", "width"])
    patched = [r for r in t.to_pylist() if r["patch"] > 0]
    assert patched and all(r["height"] == r["width"] == 24 for r in patched)
    assert m["n_rows_out"] > m["n_images_ok"]


def test_class_table_kept_when_dataset_added(family, tmp_path, ray_session):
    src = family / "sources"
    out = tmp_path / "c"
    m1 = build_corpus([src / "pcb_a"], out, cap=2, **SIDES)
    m2 = build_corpus([src / "film_a", src / "pcb_a"], out, cap=2, **SIDES)  # film_a sorts first
    assert m2["classes"][: len(m1["classes"])] == m1["classes"]
    assert {c["dataset"] for c in m2["classes"][len(m1["classes"]):]} == {"film_a"}
    assert m2["version"] != m1["version"]
    assert not list(out.glob(".building-*"))
    assert len(open_corpus(out).files) == len(m2["shards"])


def test_interrupted_build_leaves_no_manifest(family, tmp_path, ray_session, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "c"
    with monkeypatch.context() as mp:
        mp.setattr(corpus_build, "_manifest", boom)  # after all shards are written
        with pytest.raises(KeyboardInterrupt):
            build_corpus([family / "sources" / "pcb_a"], out, cap=2, **SIDES)
    assert not out.exists()  # an interrupted first build leaves no folder behind
    with pytest.raises(RtlError, match="not found"):
        open_corpus(out)
    m = build_corpus([family / "sources" / "pcb_a"], out, cap=2, **SIDES)
    monkeypatch.setattr(corpus_build, "_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        build_corpus([family / "sources" / "pcb_a", family / "sources" / "film_a"], out, cap=2, **SIDES)
    # an interrupted rebuild keeps the previous corpus readable as it was
    assert open_corpus(out).version == m["version"] and not list(out.glob(".building-*"))


def test_cli_build_and_info(family, tmp_path, ray_session, capsys):
    from rtl.cli import main

    out = tmp_path / "c"
    rc = main(["corpus", "build", str(family / "sources" / "pcb_a"), str(family / "sources" / "film_a"),
               "--out", str(out), "--min-side", "24", "--max-side", "32", "--cap", "3", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] in text and "rejects: 0" in text
    assert main(["corpus", "info", str(out), "--domains", "film"]) == 0
    text = capsys.readouterr().out
    assert "film_a" in text.split("view:")[1] and "pcb_a" not in text.split("view:")[1]
    assert main(["corpus", "info", str(out), "--datasets", "nope"]) == 2
    assert "corpus has: film_a, pcb_a" in capsys.readouterr().err


def test_units_cover_every_image_once_and_batch_small_images():
    rows = [[f"d{i}"] for i in range(20000)]
    headers = [f"h{i}" for i in range(700)]
    small = corpus_build._units(rows, headers, 2, max_side=72)
    big = corpus_build._units(rows, headers, 2, max_side=256)
    for units in (small, big):
        assert [r for u in units for r in u["decode"]] == rows  # each image once, in order
        assert sorted(h for u in units for h in u["headers"]) == sorted(headers)
        assert len(units) >= 2 * 2  # work for every CPU, with some tail balance
    # small outputs: few big tasks (per-task cost amortised); large outputs: shards of <= ~32 MB
    assert max(len(u["decode"]) for u in small) > 4 * max(len(u["decode"]) for u in big)
    assert max(len(u["decode"]) for u in big) * 3 * 256 * 256 <= 33 << 20


def test_bad_labels_fail_in_one_line_and_leave_no_folder(tmp_path, ray_session):
    d = tmp_path / "d"
    write_dataset_yaml(d, name="d", domain=["pcb"])
    (d / "labels.csv").write_text("file,class\n")
    with pytest.raises(RtlError, match="labels.csv:1: header must be") as e:
        build_corpus([d], tmp_path / "c", **SIDES)
    assert "\n" not in str(e.value) and not (tmp_path / "c").exists()
