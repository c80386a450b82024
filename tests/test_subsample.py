"""Nested, stratified, seeded target train sizes (rtl.data.subsample) and their use by fine-tuning."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rtl.data.convention import ImageRecord
from rtl.data.subsample import nested_train_subsets, subsample_train
from rtl.errors import ConfigError, DatasetError


def _records(counts: dict[str, int]) -> list[ImageRecord]:
    return [ImageRecord(f"images/{lb}/{i:03d}.png", lb, "train") for lb, n in counts.items() for i in range(n)]


COUNTS = {"ok": 40, "scratch": 12, "spot": 3}


def test_per_class_sizes_nest_and_are_stratified():
    recs = _records(COUNTS)
    subs = nested_train_subsets(recs, [1, 2, 5, 10], kind="per_class", seed=3)
    for small, large in zip(subs, subs[1:]):
        assert set(small.paths) < set(large.paths)  # strictly nested
    label = {r.path: r.label for r in recs}
    for sub in subs:
        got = Counter(label[p] for p in sub.paths)
        assert got == {lb: min(int(sub.size), n) for lb, n in COUNTS.items()}
        assert sub.per_class == dict(got)
    assert subs[-1].capped == {"spot": 3}  # 10/class asked, 'spot' has 3: all kept, reported
    assert subs[1].capped == {}


def test_fraction_sizes_nest_keep_one_per_class_and_full_is_all():
    recs = _records(COUNTS)
    subs = nested_train_subsets(recs, [0.05, 0.25, 0.5, 1.0], kind="fraction", seed=0)
    for small, large in zip(subs, subs[1:]):
        assert set(small.paths) <= set(large.paths)
    assert subs[0].per_class["spot"] == 1 and subs[0].per_class["ok"] == 2  # never an empty class
    assert subs[2].per_class == {"ok": 20, "scratch": 6, "spot": 2}
    assert set(subs[-1].paths) == {r.path for r in recs}


def test_seeded_independent_of_record_order_and_seed_changes_the_draw():
    recs = _records(COUNTS)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    a = subsample_train(recs, 5, seed=7)
    assert a == subsample_train(shuffled, 5, seed=7)
    assert a.paths != subsample_train(recs, 5, seed=8).paths


@pytest.mark.parametrize("size,kind", [(0, "per_class"), (2.5, "per_class"), (0.0, "fraction"), (1.5, "fraction"),
                                       (3, "percent")])
def test_bad_sizes_are_config_errors(size, kind):
    with pytest.raises(ConfigError):
        subsample_train(_records(COUNTS), size, kind=kind)


def test_finetune_train_subset_keeps_val_and_test(tmp_path, make_dataset):
    from rtl.data.convention import load_dataset
    from rtl.train.finetune import FinetuneConfig, load_target

    root = make_dataset(tmp_path / "tgt", per_split=(4, 2, 2))
    info = load_dataset(root)
    sub = subsample_train(info.split("train"), 1, seed=0)
    full = load_target(FinetuneConfig(target=str(root)), 3, (32, 36))
    small = load_target(FinetuneConfig(target=str(root), train_subset=list(sub.paths)), 3, (32, 36))
    assert len(full["train"]) == 8 and len(small["train"]) == 2
    assert sorted(small["train"].paths) == sorted(sub.paths)
    for s in ("val", "test"):
        assert small[s].paths == full[s].paths
    with pytest.raises(DatasetError, match="train_subset"):
        load_target(FinetuneConfig(target=str(root), train_subset=[info.split("val")[0].path]), 3, (32, 36))
