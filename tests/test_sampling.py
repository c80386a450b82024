"""Per-class undersampling from the label table and the append-only class table."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rtl.data.sampling import ClassTable, undersample
from rtl.errors import RtlError


def _items(ds: str, counts: dict[str, int]) -> list[tuple]:
    return [((ds, lab), f"images/{lab}/{i:04d}.png") for lab, n in counts.items() for i in range(n)]


def test_cap_respected_and_small_classes_whole():
    items = _items("a", {"ok": 50, "scratch": 7, "dent": 0})
    kept = undersample(items, 10, seed=0)
    c = Counter(k for k, _ in kept)
    assert c[("a", "ok")] == 10 and c[("a", "scratch")] == 7
    assert set(kept) <= set(items)
    assert undersample(items, None, seed=0) == items
    assert undersample(items, 0, seed=0) == []


def test_deterministic_order_free_and_seeded():
    items = _items("a", {"ok": 40, "bad": 30})
    k1 = undersample(items, 8, seed=3)
    k2 = undersample(list(reversed(items)), 8, seed=3)
    assert set(k1) == set(k2)
    assert k1 == [it for it in items if it in set(k1)]  # input order kept
    assert set(undersample(items, 8, seed=4)) != set(k1)


def test_stable_when_another_dataset_is_added():
    a = _items("a", {"ok": 40, "bad": 30})
    b = _items("b", {"ok": 100})  # same label and same file names in another dataset
    alone = set(undersample(a, 5, seed=0))
    together = undersample(a + b, 5, seed=0)
    assert {it for it in together if it[0][0] == "a"} == alone
    assert sum(1 for it in together if it[0][0] == "b") == 5


def test_growing_class_keeps_most_of_its_selection():
    old = _items("a", {"ok": 100})
    new = old + [(("a", "ok"), f"images/ok/new{i}.png") for i in range(10)]
    k_old, k_new = set(undersample(old, 20, 0)), set(undersample(new, 20, 0))
    # only newcomers can displace old picks, one for one
    assert len(k_old - k_new) == len(k_new - k_old) == sum(1 for it in k_new if "new" in it[1])


def test_class_table_appends_never_renumbers(tmp_path):
    t = ClassTable()
    assert [t.add("a", "ok", ["pcb"]), t.add("a", "scratch"), t.add("a", "ok")] == [0, 1, 0]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"classes": t.to_list()}))
    t2 = ClassTable.load(path)
    assert t2.add("b", "ok") == 2  # new dataset appended after the old ids
    assert t2.add("a", "dent") == 3
    assert [t2.id("a", "ok"), t2.id("a", "scratch")] == [0, 1]
    assert t2.to_list()[0]["domain"] == ["pcb"]
    assert ClassTable.load(tmp_path).to_list() == t.to_list()  # corpus dir works too


def test_class_table_rejects_bad_tables(tmp_path):
    with pytest.raises(RtlError, match="0..n-1"):
        ClassTable([{"id": 1, "dataset": "a", "label": "x"}])
    with pytest.raises(RtlError, match="twice"):
        ClassTable([{"id": 0, "dataset": "a", "label": "x"}, {"id": 1, "dataset": "a", "label": "x"}])
    with pytest.raises(RtlError, match="not found"):
        ClassTable.load(tmp_path / "nope.json")
    with pytest.raises(RtlError, match="not in the class table"):
        ClassTable().id("a", "b")
