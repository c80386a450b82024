"""Synthetic family: reproducible bytes, grayscale + RGB, spread sizes, consistent ground truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from rtl.cli import main
from rtl.data.convention import check_dataset, load_dataset
from rtl.data.synth import generate_family


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    out = tmp_path_factory.mktemp("fam")
    return out, generate_family(out, size="tiny", seed=0)


def test_same_seed_same_bytes(family, tmp_path):
    out, _ = family
    generate_family(tmp_path / "again", size="tiny", seed=0)
    assert _digest(out) == _digest(tmp_path / "again")


def test_family_layout_modes_sizes_and_boxes(family):
    out, res = family
    sources = sorted(p.name for p in (out / "sources").iterdir())
    targets = sorted(p.name for p in (out / "targets").iterdir())
    assert len(sources) >= 10 and 3 <= len(targets) <= 6
    industries = {load_dataset(out / "sources" / s).domain[0] for s in sources}
    assert len(industries) >= 5
    modes, sides, boxed = set(), [], 0
    for root in [out / "sources" / s for s in sources] + [out / "targets" / t for t in targets]:
        rep = check_dataset(root, deep=True)
        assert rep.ok, [str(p) for p in rep.problems]
        info = rep.info
        assert "ok" in info.classes() and 3 <= len(info.classes()) <= 5
        assert all(info.split(s) for s in ("train", "val", "test"))
        modes |= set(rep.modes)
        sides += [max(s) for s in rep.sizes]
        for r in info.records:
            if r.boxes:
                boxed += 1
                with Image.open(root / r.path) as im:
                    w, h = im.size
                assert all(0 <= b.xmin < b.xmax <= w and 0 <= b.ymin < b.ymax <= h for b in r.boxes)
                assert all(b.label == r.label for b in r.boxes)
    assert modes == {"L", "RGB"}
    assert min(sides) <= 64 and max(sides) >= 160  # spread, incl. the "large image" case
    assert boxed > 0
    assert any(r["format"] == "jpg" for r in res["sources"])


def test_relations_match_datasets_and_share_classes(family):
    out, res = family
    rel = json.loads((out / "relations.json").read_text())
    assert rel == res["relations"]
    assert set(rel) == {p.name for p in (out / "targets").iterdir()}
    for target, v in rel.items():
        t = load_dataset(out / "targets" / target)
        assert v["related"] and v["reason"]
        for s in v["related"]:
            src = load_dataset(out / "sources" / s)  # exists
            assert src.domain == t.domain
            assert set(src.classes()) & set(t.classes()) - {"ok"}


def test_cli_synth_other_seed_differs(family, tmp_path, capsys):
    assert main(["synth", str(tmp_path / "f"), "--size", "tiny", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "pcb_a" in out and "target_pcb" in out
    d1, d2 = _digest(family[0]), _digest(tmp_path / "f")
    assert d1.keys() == d2.keys()
    assert sum(d1[k] != d2[k] for k in d1) > len(d1) // 2
    (tmp_path / "file").write_text("x")
    assert main(["synth", str(tmp_path / "file"), "--size", "tiny"]) == 2
    assert capsys.readouterr().err.startswith("rtl: error:")
