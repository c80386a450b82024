"""Importance weights (Ngiam et al. 2018), the weights file, and dataset ranking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rtl.errors import RtlError
from rtl.select.importance import (
    aggregate_mass,
    class_mass,
    importance_weights,
    read_weights,
    target_class_distribution,
    write_weights,
)
from rtl.select.ranking import rank_checkpoints, suggest_mask

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(20, 6)) * 3  # (N, K)
PRIOR = np.array([10.0, 30.0, 5.0, 0.0, 40.0, 15.0])  # class 3 absent from the corpus view


def _softmax_mean_loop(logits: np.ndarray, t: float) -> np.ndarray:
    out = np.zeros(logits.shape[1])
    for row in logits:
        e = [math.exp(v / t) for v in row]
        out += np.array(e) / sum(e)
    return out / len(logits)


def test_distribution_matches_softmax_mean() -> None:
    np.testing.assert_allclose(target_class_distribution(LOGITS, 2.0), _softmax_mean_loop(LOGITS, 2.0), rtol=1e-12)


def test_distribution_limits() -> None:
    uniform = np.full(6, 1 / 6)
    np.testing.assert_allclose(target_class_distribution(LOGITS, None), uniform)
    np.testing.assert_allclose(target_class_distribution(LOGITS, math.inf), uniform)
    np.testing.assert_allclose(target_class_distribution(LOGITS, 1e8), uniform, atol=1e-6)
    hard = np.bincount(LOGITS.argmax(1), minlength=6) / len(LOGITS)
    np.testing.assert_allclose(target_class_distribution(LOGITS, 0.0), hard)
    np.testing.assert_allclose(target_class_distribution(LOGITS, 1e-8), hard, atol=1e-12)
    np.testing.assert_allclose(target_class_distribution(LOGITS * 1e300, 1e-300), hard)  # overflow path


@pytest.mark.parametrize("t", [0.0, 1e-8, 0.5, 2.0, 1e8, math.inf, None])
def test_weights_are_a_distribution_without_nan(t: float | None) -> None:
    w = importance_weights(LOGITS, PRIOR, t)
    assert w.shape == (6,)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert w.sum() == pytest.approx(1.0)
    assert w[3] == 0.0  # absent from the corpus view -> never sampled
    m = class_mass(w, PRIOR)
    assert m.sum() == pytest.approx(1.0) and m[3] == 0.0


def test_weights_equal_target_over_prior() -> None:
    present = PRIOR > 0
    pt = target_class_distribution(LOGITS, 2.0, mask=present)
    ps = PRIOR / PRIOR.sum()
    want = np.where(present, pt / np.where(present, ps, 1), 0)
    np.testing.assert_allclose(importance_weights(LOGITS, PRIOR, 2.0), want / want.sum(), rtol=1e-12)
    # class mass = target-matched class frequency P_t(y) (Ngiam et al.: sampled class frequency)
    np.testing.assert_allclose(class_mass(importance_weights(LOGITS, PRIOR, 2.0), PRIOR), pt, rtol=1e-12)


def test_large_temperature_gives_uniform_mass_over_present_classes() -> None:
    present = PRIOR > 0
    w_inf = importance_weights(LOGITS, PRIOR, None)
    np.testing.assert_allclose(w_inf[present], (1 / PRIOR[present]) / (1 / PRIOR[present]).sum())
    gaps = [np.abs(importance_weights(LOGITS, PRIOR, t) - w_inf).sum() for t in (0.5, 5.0, 50.0, 1e4)]
    assert all(a > b for a, b in zip(gaps, gaps[1:]))  # moves monotonically toward the limit
    np.testing.assert_allclose(class_mass(w_inf, PRIOR)[present], 1 / present.sum())


def test_bad_inputs() -> None:
    with pytest.raises(RtlError, match="empty"):
        importance_weights(np.zeros((0, 6)), PRIOR, 1.0)
    with pytest.raises(RtlError, match="class tables differ"):
        importance_weights(LOGITS, PRIOR[:5], 1.0)
    with pytest.raises(RtlError, match="temperature"):
        importance_weights(LOGITS, PRIOR, -1.0)
    with pytest.raises(RtlError, match="no images"):
        importance_weights(LOGITS, np.zeros(6), 1.0)
    with pytest.raises(RtlError, match="NaN"):
        importance_weights(np.full((2, 6), np.nan), PRIOR, 1.0)


TABLE = [
    {"id": i, "dataset": ds, "label": f"c{i}", "domain": dom}
    for i, (ds, dom) in enumerate(
        [("pcb", ["pcb"]), ("pcb", ["pcb"]), ("steel", ["metal"]), ("steel", ["metal"]),
         ("fabric", ["textile", "metal"]), ("fabric", ["textile"])]
    )
]


def test_target_from_one_dataset_puts_mass_on_it() -> None:
    """Synthetic source model whose predictions on the target fall on dataset 'steel' classes."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(50, 6))  # (N, K)
    logits[:, [2, 3]] += 8.0  # the target looks like steel
    prior = np.array([100.0, 80, 10, 10, 200, 150])  # steel is a small part of the corpus
    w = importance_weights(logits, prior, 2.0)
    by_ds, _ = aggregate_mass(class_mass(w, prior), TABLE)
    assert next(iter(by_ds)) == "steel" and by_ds["steel"] > 0.8
    assert suggest_mask(by_ds, mass_threshold=0.8) == ["steel"]


def test_weights_file_roundtrip(tmp_path) -> None:
    w = importance_weights(LOGITS, PRIOR, 2.0)
    m = class_mass(w, PRIOR)
    p = write_weights(tmp_path / "w.json", corpus_version="abc", temperature=2.0, class_table=TABLE,
                      weights=w, mass=m, suggested_datasets=["steel"], extra={"model": "ckpt"})
    doc = json.loads(p.read_text())
    assert doc["classes"][3] == {"id": 3, "dataset": "steel", "label": "c3", "weight": 0.0, "class_mass": 0.0}
    assert doc["domains"]["metal"] == pytest.approx(m[2] + m[3] + m[4])  # multi-tag class counts to each tag
    got = read_weights(p)
    assert got.corpus_version == "abc" and got.temperature == 2.0 and got.extra == {"model": "ckpt"}
    np.testing.assert_allclose([got.class_mass[i] for i in range(6)], m)
    np.testing.assert_allclose([got.weights[i] for i in range(6)], w)
    assert sum(got.datasets.values()) == pytest.approx(1.0)


def test_hand_written_weights_file_and_errors(tmp_path) -> None:
    p = tmp_path / "w.json"
    p.write_text(json.dumps({"corpus_version": None, "temperature": None,
                             "classes": [{"id": 0, "dataset": "a", "label": "x", "weight": 3},
                                         {"id": 1, "dataset": "a", "label": "y", "weight": 1}]}))
    got = read_weights(p)
    assert got.class_mass == {0: 0.75, 1: 0.25}  # no class_mass: weights are the class frequencies
    p.write_text("{not json")
    with pytest.raises(RtlError, match="w.json: invalid JSON at line 1"):
        read_weights(p)
    p.write_text(json.dumps({"classes": [{"id": 0, "weight": -1}]}))
    with pytest.raises(RtlError, match=r"classes\[0\]"):
        read_weights(p)
    with pytest.raises(RtlError, match="cannot read"):
        read_weights(tmp_path / "missing.json")


def test_suggest_mask() -> None:
    mass = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05, "e": 0.0}
    assert suggest_mask(mass) == ["a", "b", "c", "d"]  # all with mass
    assert suggest_mask(mass, top_k=2) == ["a", "b"]
    assert suggest_mask(mass, mass_threshold=0.8) == ["a", "b"]
    assert suggest_mask(mass, mass_threshold=0.81) == ["a", "b", "c"]
    assert suggest_mask(mass, mass_threshold=0.1) == ["a"]
    assert suggest_mask({"x": 0.0, "y": 0.0}) == ["x"]  # never empty
    with pytest.raises(RtlError):
        suggest_mask({})


def test_rank_checkpoints_by_mean_rank() -> None:
    rows = rank_checkpoints({"A": {"logme": 0.1, "leep": -2.0}, "B": {"logme": 0.5, "leep": -1.0},
                             "C": {"logme": 0.3, "leep": -3.0}})
    assert [r["checkpoint"] for r in rows] == ["B", "C", "A"]  # A and C tie on mean rank; logme breaks it
    assert rows[0]["mean_rank"] == 1.0
