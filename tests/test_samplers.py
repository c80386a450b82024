"""Global-draw samplers: class mix matches the weights, ranks split one draw without duplication."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from rtl.errors import RtlError
from rtl.train.samplers import DistributedShuffleSampler, WeightedDistributedSampler


def _class_ids() -> np.ndarray:
    # very unbalanced classes: 500, 50, 5 and 200 rows
    return np.repeat(np.arange(4), [500, 50, 5, 200])


def test_weighted_class_frequencies_match_weights() -> None:
    cids = _class_ids()
    weights = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    s = WeightedDistributedSampler(cids, weights, num_samples_per_epoch=20_000, seed=3)
    drawn = cids[np.fromiter(iter(s), dtype=np.int64)]
    observed = np.bincount(drawn, minlength=4)
    expected = np.array([1, 2, 3, 4]) / 10 * len(drawn)
    assert chisquare(observed, expected).pvalue > 0.001
    # class frequencies follow the weights, not the class sizes (class 2 has 5 rows, 30% of draws)
    assert abs(observed[2] / len(drawn) - 0.3) < 0.02


def test_weighted_within_class_uniform() -> None:
    cids = _class_ids()
    s = WeightedDistributedSampler(cids, {2: 1.0}, num_samples_per_epoch=5_000, seed=0)
    rows = np.fromiter(iter(s), dtype=np.int64)
    assert set(np.unique(cids[rows])) == {2}
    per_row = np.bincount(rows - 550, minlength=5)
    assert chisquare(per_row).pvalue > 0.001


def test_zero_weight_never_drawn_and_dense_weights() -> None:
    cids = _class_ids()
    s = WeightedDistributedSampler(cids, np.array([0.0, 1.0, 0.0, 1.0]), num_samples_per_epoch=3000, seed=1)
    for epoch in range(3):
        s.set_epoch(epoch)
        drawn = set(cids[list(s)].tolist())
        assert drawn == {1, 3}


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_disjoint_and_cover_global_draw(world_size: int) -> None:
    cids = _class_ids()
    weights = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    single = WeightedDistributedSampler(cids, weights, num_samples_per_epoch=999, seed=7, with_keys=True)
    single.set_epoch(2)
    global_draw = list(single)
    per_rank = []
    for rank in range(world_size):
        s = WeightedDistributedSampler(cids, weights, num_samples_per_epoch=999, rank=rank,
                                       world_size=world_size, seed=7, with_keys=True)
        s.set_epoch(2)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    assert len({len(r) for r in per_rank}) == 1  # same number of steps on every rank
    keys = [k for r in per_rank for _, k in r]
    assert len(keys) == len(set(keys))  # no draw position handed to two ranks
    merged = sorted((k, row) for r in per_rank for row, k in r)
    # rank-interleaved merge == the single-worker draw (prefix: 999 -> padded up to a multiple)
    assert [(row, k) for k, row in merged][: len(global_draw)] == global_draw


def test_epochs_differ_and_are_reproducible() -> None:
    cids = _class_ids()
    a = WeightedDistributedSampler(cids, {0: 1, 1: 1}, num_samples_per_epoch=100, seed=0)
    b = WeightedDistributedSampler(cids, {0: 1, 1: 1}, num_samples_per_epoch=100, seed=0)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(b) == first


def test_positive_weight_without_examples_is_error() -> None:
    with pytest.raises(RtlError, match=r"\[7\]"):
        WeightedDistributedSampler(_class_ids(), {0: 1.0, 7: 0.5}, num_samples_per_epoch=10)
    with pytest.raises(RtlError, match="zero"):
        WeightedDistributedSampler(_class_ids(), {0: 0.0}, num_samples_per_epoch=10)
    with pytest.raises(RtlError):
        WeightedDistributedSampler(_class_ids(), {0: -1.0, 1: 1.0}, num_samples_per_epoch=10)


def test_shuffle_sampler_partitions_permutation() -> None:
    n, ws = 101, 2
    ranks = []
    for rank in range(ws):
        s = DistributedShuffleSampler(n, rank=rank, world_size=ws, seed=5)
        s.set_epoch(4)
        ranks.append(list(s))
    assert len(ranks[0]) == len(ranks[1]) == 51
    flat = ranks[0] + ranks[1]
    assert set(flat) == set(range(n))  # every row seen; one padded duplicate
    assert len(flat) - len(set(flat)) == 1
