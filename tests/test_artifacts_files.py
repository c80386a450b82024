"""The bottom layer's readers: checkpoint meta, corpus manifest, model folder names (rtl.artifacts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtl.artifacts.checkpoint import (
    META_FILE,
    MODEL_FILE,
    read_checkpoint_meta,
    read_state_dict,
    write_checkpoint,
)
from rtl.artifacts.manifest import MANIFEST_FILE, is_corpus, read_class_table_source, read_manifest
from rtl.errors import RtlError


def test_old_checkpoint_meta_loads_with_defaults(tmp_path: Path) -> None:
    """A meta.json written before head/in_channels/history existed still loads (and builds the model)."""
    import torch

    from rtl.models.backbones import create_model
    from rtl.train.checkpoint import load_checkpoint, read_meta

    net = create_model("small_cnn", 3)
    d = write_checkpoint(tmp_path / "old", net.state_dict(), {"model": "small_cnn", "num_classes": 3,
                                                               "corpus_version": "abc", "custom": [1, 2]})
    m = read_checkpoint_meta(d)
    assert (m.in_channels, m.head, m.history, m.epoch, m.strategy) == (3, "linear", [], None, None)
    raw = read_meta(d)  # dict view: keys on disk (unknown ones kept) + the non-None defaults only
    assert raw["custom"] == [1, 2] and raw["head"] == "linear" and "epoch" not in raw
    model, meta = load_checkpoint(d)
    assert meta["corpus_version"] == "abc"
    x = torch.zeros(1, 3, 32, 32)
    assert torch.equal(model.eval()(x), net.eval()(x))


def test_checkpoint_meta_errors_name_file_and_field(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    d.mkdir()
    (d / META_FILE).write_text(json.dumps({"model": "small_cnn"}))
    with pytest.raises(RtlError, match=r"meta.json lacks 'model' / 'num_classes'"):
        read_checkpoint_meta(d)
    (d / META_FILE).write_text(json.dumps({"model": "small_cnn", "num_classes": "three"}))
    with pytest.raises(RtlError, match=r"meta.json: field 'num_classes'") as e:
        read_checkpoint_meta(d)
    assert "\n" not in str(e.value)
    with pytest.raises(RtlError, match=f"{MODEL_FILE} unreadable"):
        read_state_dict(d)


def test_checkpoint_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    import torch

    write_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {"model": "m", "num_classes": 1, "epoch": 1})
    with pytest.raises(TypeError):  # meta not JSON-serialisable: the old checkpoint stays untouched
        write_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {"model": "m", "num_classes": 1, "x": object()})
    assert read_checkpoint_meta(tmp_path / "ck").epoch == 1
    assert torch.equal(read_state_dict(tmp_path / "ck")["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def _manifest(root: Path, **over) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    doc = {"version": "v1", "classes": [{"id": 0, "dataset": "a", "label": "ok"}], "datasets": {"a": {}},
           "shards": ["shards/part-00000.parquet"]} | over
    (root / MANIFEST_FILE).write_text(json.dumps(doc))
    return root


def test_manifest_reader_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(RtlError, match="corpus folder not found"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert not is_corpus(tmp_path / "empty")
    with pytest.raises(RtlError, match=r"empty: not a corpus \(no manifest.json"):
        read_manifest(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MANIFEST_FILE).write_text("{oops")
    with pytest.raises(RtlError, match=r"bad/manifest.json: cannot read manifest") as e:
        read_manifest(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(RtlError, match="manifest has no 'shards'"):
        read_manifest(_no_key(tmp_path / "c", "shards"))
    with pytest.raises(RtlError, match="is not inside the corpus folder"):
        read_manifest(_manifest(tmp_path / "escape", shards=["../elsewhere.parquet"]))
    good = _manifest(tmp_path / "good")
    assert is_corpus(good) and read_manifest(good)["version"] == "v1"


def _no_key(root: Path, key: str) -> Path:
    _manifest(root)
    doc = json.loads((root / MANIFEST_FILE).read_text())
    del doc[key]
    (root / MANIFEST_FILE).write_text(json.dumps(doc))
    return root


def test_class_table_source_takes_corpus_dir_or_file(tmp_path: Path) -> None:
    good = _manifest(tmp_path / "good")
    assert read_class_table_source(good)["classes"][0]["label"] == "ok"
    assert read_class_table_source(good / MANIFEST_FILE)["version"] == "v1"
    with pytest.raises(RtlError, match="class table not found"):
        read_class_table_source(tmp_path / "nope.json")


def test_artifacts_keep_torch_out_of_module_import() -> None:
    """`rtl --help` imports artifact readers (strategies, tracking): no module-level torch/ray/pyarrow here."""
    import ast

    import rtl.artifacts

    for f in sorted(Path(rtl.artifacts.__file__).parent.glob("*.py")):
        for node in ast.parse(f.read_text()).body:  # module level only; function-local imports are the point
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("torch", "ray", "pyarrow", "mlflow") for n in names), (f.name, names)
