"""Hostile inputs to the data verbs (issue 12), as a table: each case builds its input under tmp_path, runs
the CLI in-process and checks the one-line message, the exit code (2: input error, 1: `dataset check`
found problems, 0: imported with rejects listed) and that every file the user had is still there, unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from rtl.cli import main
from rtl.data.convention import (
    ImageRecord,
    load_dataset,
    write_dataset_yaml,
    write_labels_csv,
    write_splits,
)

BOX_1E400 = """<annotation><size><width>32</width><height>32</height><depth>3</depth></size>
<object><name>bad</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>1e400</xmax><ymax>9</ymax></bndbox></object>
</annotation>"""


@dataclass
class Case:
    argv: list[str]
    rc: int
    message: str  # regex: the error line (rc 2) or a line of the output (otherwise)
    absent: list[str] = field(default_factory=list)  # paths (relative to tmp_path) that must not exist
    check: object = None  # optional callable(tmp_path) with extra assertions
    ray: bool = False


def img(path: Path, size=(32, 32), value=128, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, value).save(path, format=fmt)
    return path


def imp(fmt: str, src: Path | str, dst: Path | str, *extra: str) -> list[str]:
    return ["dataset", "import", "--format", fmt, str(src), str(dst), "--name", "x", "--domains", "pcb", *extra]


def mini_dataset(root: Path, name: str = "mini") -> Path:
    """A valid convention folder: 2 classes x 2 images of 32 px, all in train/val."""
    recs = []
    for i, lab in enumerate(["ok", "ok", "bad", "bad"]):
        rel = f"images/{lab}/{i}.png"
        img(root / rel, value=40 * i)
        recs.append(ImageRecord(rel, lab, "train" if i % 2 == 0 else "val"))
    write_dataset_yaml(root, name=name, domain=["pcb"])
    write_labels_csv(root, recs)
    write_splits(root, recs)
    return root


def secret(t: Path) -> Path:
    """An image outside every source folder (the thing a hostile path tries to pull in)."""
    return img(t / "secret" / "s.png", value=7)


CASES = []


def case(fn):
    CASES.append(pytest.param(fn, id=fn.__name__))
    return fn


# ----------------------------------------------------------------------------------- 1: synth destination
@case
def synth_into_user_data(t: Path) -> Case:
    (t / "fam/targets/target_pcb").mkdir(parents=True)
    (t / "fam/targets/target_pcb/my_notes.txt").write_text("mine")
    return Case(["synth", str(t / "fam"), "--size", "tiny"], 2, r"not empty and was not written by rtl synth")


@case
def synth_over_other_parameters(t: Path) -> Case:
    (t / "fam").mkdir()
    (t / "fam/.rtl-synth.json").write_text(json.dumps({"params": {"size": "tiny", "seed": 1}}))
    (t / "fam/relations.json").write_text("{}")
    return Case(["synth", str(t / "fam"), "--size", "tiny", "--seed", "0"], 2, r"other parameters.*--force")


# --------------------------------------------------------------------------- 2: CSV duplicate image rows
@case
def csv_same_image_twice(t: Path) -> Case:
    img(t / "src/a.png")
    img(t / "src/b.png")
    (t / "src/list.csv").write_text("path,label,split\na.png,ok,train\nb.png,ok,val\n./a.png,ok,test\n")
    return Case(imp("csv", t / "src/list.csv", t / "dst"), 2,
                r"list.csv:4: \./a.png: same image as line 2 \(a duplicate row\)", absent=["dst"])


@case
def csv_same_image_two_labels(t: Path) -> Case:
    img(t / "src/a.png")
    (t / "src/list.csv").write_text("path,label\na.png,ok\na.png,dent\n")
    return Case(imp("csv", t / "src/list.csv", t / "dst"), 2,
                r"list.csv:3: a.png: same image as line 2 \(label 'dent' here, 'ok' there\)", absent=["dst"])


# ------------------------------------------------------------------------------- 5: paths leaving the source
def _csv_with(t: Path, row: str) -> list[str]:
    img(t / "src/good.png")
    (t / "src/list.csv").write_text(f"path,label\ngood.png,ok\n{row},ok\n")
    return imp("csv", t / "src/list.csv", t / "dst")


def _only_good(t: Path) -> None:
    info = load_dataset(t / "dst")
    assert [Path(r.path).name for r in info.records] == ["good.png"]


@case
def csv_parent_escape(t: Path) -> Case:
    secret(t)
    return Case(_csv_with(t, "../secret/s.png"), 0, r"skipped .*list.csv:3: \.\./secret/s.png: path escapes",
                check=_only_good)


@case
def csv_absolute_path(t: Path) -> Case:
    s = secret(t)
    return Case(_csv_with(t, str(s)), 0, r"skipped .*list.csv:3: .*s.png: absolute path refused", check=_only_good)


@case
def csv_symlink_out(t: Path) -> Case:
    os.makedirs(t / "src")
    os.symlink(secret(t), t / "src/link.png")
    return Case(_csv_with(t, "link.png"), 0, r"skipped .*list.csv:3: link.png: resolves outside the source",
                check=_only_good)


@case
def csv_not_an_image(t: Path) -> Case:
    (t / "src").mkdir()
    (t / "src/passwords.txt").write_text("hunter2")
    return Case(_csv_with(t, "passwords.txt"), 0, r"skipped .*list.csv:3: passwords.txt: not an image file",
                check=_only_good)


def _folder_only_good(t: Path) -> None:
    info = load_dataset(t / "dst")
    assert [r.path for r in info.records] == ["images/ok/good.png"]


@case
def imagefolder_symlink_out_with_link(t: Path) -> Case:
    img(t / "src/ok/good.png")
    os.symlink(secret(t), t / "src/ok/link.png")
    return Case(imp("imagefolder", t / "src", t / "dst", "--link"), 0,
                r"skipped ok/link.png: resolves outside the source folder", check=_folder_only_good)


@case
def imagefolder_class_folder_linked_out(t: Path) -> Case:
    img(t / "src/ok/good.png")
    secret(t)
    os.symlink(t / "secret", t / "src/evil")
    return Case(imp("imagefolder", t / "src", t / "dst"), 0, r"skipped evil/s.png: resolves outside",
                check=_folder_only_good)


# ------------------------------------------------------------------------------------ 11: unprintable names
@case
def imagefolder_name_not_utf8(t: Path) -> Case:
    img(t / "src/ok/good.png")
    d = os.fsencode(t / "src/ok")
    shutil.copyfile(t / "src/ok/good.png", os.path.join(d, b"bad\xff.png"))
    return Case(imp("imagefolder", t / "src", t / "dst"), 0,
                r"skipped ok/bad\\xff.png: file name is not valid UTF-8", check=_folder_only_good)


@case
def imagefolder_name_with_newline(t: Path) -> Case:
    img(t / "src/ok/good.png")
    img(t / "src/ok/a\nb.png")
    return Case(imp("imagefolder", t / "src", t / "dst"), 0,
                r"skipped ok/a\\nb.png: file name contains a line break", check=_folder_only_good)


# ------------------------------------------------------------------------------- 12: tracebacks before
@case
def import_source_is_a_file(t: Path) -> Case:
    img(t / "photo.png")
    return Case(imp("imagefolder", t / "photo.png", t / "dst"), 2, r"photo.png: not a folder", absent=["dst"])


@case
def import_destination_under_a_file(t: Path) -> Case:
    img(t / "src/ok/good.png")
    (t / "notes.txt").write_text("mine")
    return Case(imp("imagefolder", t / "src", t / "notes.txt/dst"), 2, r"notes.txt is a file, not a folder")


def _voc(t: Path, n: int = 2) -> Path:
    for i in range(n):
        img(t / f"voc/JPEGImages/{i}.jpg", fmt="JPEG")
    (t / "voc/ImageSets/Main").mkdir(parents=True)
    return t / "voc"


@case
def voc_split_file_invalid_bytes(t: Path) -> Case:
    voc = _voc(t)
    (voc / "ImageSets/Main/train.txt").write_bytes(b"0\n\xff\xfe junk\n")
    (voc / "ImageSets/Main/val.txt").write_bytes(b"1\n")

    def kept_splits(t: Path) -> None:
        info = load_dataset(t / "dst")
        assert {r.path: r.split for r in info.records} == {"images/0.jpg": "train", "images/1.jpg": "val"}

    return Case(imp("voc", voc, t / "dst"), 0, r"imported .*voc", check=kept_splits)


@case
def voc_non_image_jpg_without_size(t: Path) -> Case:
    voc = _voc(t)
    (voc / "JPEGImages/1.jpg").write_bytes(b"this is not a jpeg")
    (voc / "Annotations").mkdir()
    (voc / "Annotations/1.xml").write_text("<annotation><object><name>dent</name><bndbox><xmin>1</xmin>"
                                            "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
                                            "</annotation>")
    return Case(imp("voc", voc, t / "dst"), 0, r"skipped JPEGImages/1.jpg: not a readable image",
                check=lambda t: [r.path for r in load_dataset(t / "dst").records] == ["images/0.jpg"])


@case
def voc_box_1e400_import(t: Path) -> Case:
    voc = _voc(t)
    (voc / "Annotations").mkdir()
    (voc / "Annotations/1.xml").write_text(BOX_1E400)
    return Case(imp("voc", voc, t / "dst"), 2, r"1.xml: object 'bad' has a bndbox coordinate out of range",
                absent=["dst"])


@case
def check_box_1e400(t: Path) -> Case:
    ds = mini_dataset(t / "ds")
    (ds / "Annotations/bad").mkdir(parents=True)
    (ds / "Annotations/bad/2.xml").write_text(BOX_1E400)
    return Case(["dataset", "check", str(ds)], 1, r"2.xml:0: .*bndbox coordinate out of range")


@case
def check_unlisted_names_not_utf8_or_with_newline(t: Path) -> Case:
    ds = mini_dataset(t / "ds")
    shutil.copyfile(ds / "images/ok/0.png", os.path.join(os.fsencode(ds / "images/ok"), b"b\xff.png"))
    shutil.copyfile(ds / "images/ok/0.png", ds / "images/ok/c\nd.png")
    return Case(["dataset", "check", str(ds)], 1,
                r"(?m)^.*labels.csv:0: images/ok/b\\xff.png: image not listed.*\n.*images/ok/c\\nd.png: image not listed")


@case
def corpus_build_box_1e400(t: Path) -> Case:
    ds = mini_dataset(t / "ds")
    (ds / "Annotations/bad").mkdir(parents=True)
    (ds / "Annotations/bad/2.xml").write_text(BOX_1E400)

    def built(t: Path) -> None:
        m = json.loads((t / "corpus/manifest.json").read_text())
        assert m["n_rows_out"] == 4 and any("out of range" in w for w in m["warnings"])

    return Case(["corpus", "build", str(ds), "--out", str(t / "corpus"), "--min-side", "32", "--max-side", "32",
                 "--quiet"], 0, r"warnings: 1", check=built, ray=True)


# ------------------------------------------------------------------------------- 4, 13: corpus output
@case
def corpus_build_while_another_builds(t: Path) -> Case:
    ds = mini_dataset(t / "ds")
    other = t / "corpus/.building-other/shards"  # the running build's work in progress
    other.mkdir(parents=True)
    (other / "part-00000.parquet").write_bytes(b"half written")
    fh = open(t / "corpus/.build.lock", "a+")  # noqa: SIM115 - the other build holds the lock
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return Case(["corpus", "build", str(ds), "--out", str(t / "corpus"), "--min-side", "32", "--max-side", "32"],
                2, r"corpus: another `rtl corpus build` is writing this corpus.*wait for it",
                absent=["corpus/manifest.json"], check=lambda t: fh.close())


@case
def corpus_out_under_a_file(t: Path) -> Case:
    ds = mini_dataset(t / "ds")
    (t / "notes.txt").write_text("mine")
    return Case(["corpus", "build", str(ds), "--out", str(t / "notes.txt/corpus")], 2,
                r"cannot create the corpus folder: .*notes.txt is a file")


@case
def corpus_info_missing_shard(t: Path) -> Case:
    import pyarrow.parquet as pq

    from rtl.data.corpus_view import SCHEMA

    c = t / "corpus"
    (c / "shards").mkdir(parents=True)
    pq.write_table(SCHEMA.empty_table(), c / "shards/part-00000.parquet")
    (c / "manifest.json").write_text(json.dumps({
        "version": "0123456789abcdef", "params": {"cap": None}, "datasets": {"a": {"domain": ["pcb"]}},
        "classes": [{"id": 0, "dataset": "a", "label": "ok", "domain": ["pcb"]}], "rejects": [],
        "shards": ["shards/part-00000.parquet", "shards/part-00001.parquet"], "n_images_in": 1,
        "n_rows_out": 1}))
    return Case(["corpus", "info", str(c)], 2, r"corpus: shard shards/part-00001.parquet is missing")


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.parametrize("make", CASES)
def test_hostile_input(make, tmp_path, capsys, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    c = make(tmp_path)
    if c.ray:
        request.getfixturevalue("ray_session")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = main(c.argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert rc == c.rc, f"exit {rc}, expected {c.rc}:\n{out}\n{err}"
    if rc == 2:
        errors = [line for line in err.splitlines() if line.startswith("rtl: error:")]
        assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
        assert re.search(c.message, errors[0]), errors[0]
    else:
        assert re.search(c.message, out + err), out + err
    after = _snapshot(tmp_path)
    lost = sorted(p for p, h in before.items() if after.get(p) != h)
    assert not lost, f"user files removed or changed: {lost}"
    for p in c.absent:
        assert not (tmp_path / p).exists(), p
    assert not [p for p in after if ".importing-" in p], "temporary import folder left behind"
    if c.check:
        assert c.check(tmp_path) is not False


# --------------------------------------------------------------------- mechanisms behind the table above
def test_interrupted_import_leaves_nothing_and_the_rerun_works(tmp_path, capsys, monkeypatch):
    """Item 3: Ctrl-C (or any failure) during the copy leaves no half-written destination."""
    for i in range(3):
        img(tmp_path / f"src/ok/{i}.png")
    real_copy, calls = shutil.copyfile, []

    def copy_then_interrupt(a, b, **kw):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_copy(a, b, **kw)

    monkeypatch.setattr(shutil, "copyfile", copy_then_interrupt)
    argv = imp("imagefolder", tmp_path / "src", tmp_path / "out/dst")
    assert main(argv) == 130
    assert not (tmp_path / "out").exists()  # neither the dataset nor the parent folder it created
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    assert main(argv) == 0
    assert len(load_dataset(tmp_path / "out/dst").records) == 3
    assert sorted(os.listdir(tmp_path / "out")) == ["dst"]


def test_corpus_build_resolves_a_relative_out_on_the_driver(tmp_path, monkeypatch):
    """Item 13: Ray workers on other nodes have another cwd; the builder only ever sees an absolute --out."""
    import rtl.data.corpus_build as cb

    seen = {}

    def fake_build(dataset_dirs, out, **kw):
        seen["out"] = out
        raise cb.RtlError("stop here")

    monkeypatch.setattr(cb, "build_corpus", fake_build)
    monkeypatch.chdir(tmp_path)
    assert main(["corpus", "build", "ds", "--out", "rel/corpus"]) == 2
    assert Path(seen["out"]).is_absolute() and Path(seen["out"]) == tmp_path / "rel/corpus"


def test_output_lock_refuses_while_held_and_frees_on_release(tmp_path):
    from rtl.data.safety import exclusive_lock
    from rtl.errors import RtlError

    first = exclusive_lock(tmp_path / "x.lock", "busy")
    with pytest.raises(RtlError, match=rf"busy \(pid {os.getpid()}\); wait for it"):
        exclusive_lock(tmp_path / "x.lock", "busy")
    first.release()
    with exclusive_lock(tmp_path / "x.lock", "busy"):
        pass


def test_synth_marker_allows_a_rerun_with_the_same_parameters_or_force(tmp_path):
    from rtl.data.safety import claim_destination
    from rtl.data.synth import SYNTH_MARKER
    from rtl.errors import RtlError

    out = tmp_path / "fam"
    claim_destination(out, SYNTH_MARKER, {"size": "tiny", "seed": 0})  # empty: claimed, marker written
    (out / "sources").mkdir()
    claim_destination(out, SYNTH_MARKER, {"size": "tiny", "seed": 0})  # our own output: a rerun may write
    with pytest.raises(RtlError, match="other parameters"):
        claim_destination(out, SYNTH_MARKER, {"size": "demo", "seed": 0})
    claim_destination(out, SYNTH_MARKER, {"size": "demo", "seed": 0}, force=True)
    claim_destination(out, SYNTH_MARKER, {"size": "demo", "seed": 0})  # the marker now says demo
    user = tmp_path / "mine"
    (user / "photos").mkdir(parents=True)
    with pytest.raises(RtlError, match="not written by rtl synth"):
        claim_destination(user, SYNTH_MARKER, {"size": "tiny", "seed": 0})
    assert not (user / SYNTH_MARKER).exists()
