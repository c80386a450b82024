"""Per-source ranking signals (rtl.select.signals) on small hand-made cases. Pure NumPy, no Ray/torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sl

from rtl.errors import RtlError
from rtl.select.image_stats import BLOCKS, DESCRIPTOR_LEN
from rtl.select.signals import (
    NO_SOURCE_HELPS,
    combine_rankings,
    feature_distance,
    image_stats,
    image_stats_similarity,
    probe_score,
    signed_gains,
    target_verdict,
    transfer_probe_score,
)

D = 128
KINDS = ("knn", "logreg", "ncm")


def _clusters(n: int, seed: int, *, d: int = D, shift: float = 0.0, spread: float = 1.0):
    """n pooled-feature rows (non-negative, like ReLU features) around 3 fixed class centres."""
    centres = np.random.default_rng(123).normal(size=(3, d)) * 2.0
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = np.abs(centres[y] + spread * rng.normal(size=(n, d)) + shift)
    return x, y


# ------------------------------------------------------------------------------------------ probes
@pytest.mark.parametrize("kind", KINDS)
def test_probe_structured_features_beat_noise_features(kind):
    tx, ty = _clusters(30, 1)
    ex, ey = _clusters(60, 2)
    good = probe_score(tx, ty, ex, ey, kind=kind)
    rng = np.random.default_rng(7)
    noise = probe_score(rng.random((30, D)), ty, rng.random((60, D)), ey, kind=kind)
    assert good >= 0.95
    assert noise < 0.6  # 3 classes: chance is 1/3
    assert probe_score(tx, ty, ex, ey, kind=kind) == good  # deterministic


@pytest.mark.parametrize("kind", KINDS)
def test_transfer_probe_identical_source_best_shuffled_labels_worst(kind):
    tx, ty = _clusters(60, 2)  # target images
    same_x, same_y = _clusters(45, 3)  # the target's own distribution, right labels
    shifted_x, shifted_y = _clusters(45, 4, shift=1.5, spread=2.0)  # related, other imaging
    shuffled_y = np.random.default_rng(5).permutation(same_y)
    conflict_y = (same_y + 1) % 3  # same visual classes, conflicting labels (a harmful source)
    s_same = transfer_probe_score(same_x, same_y, tx, ty, kind=kind)
    s_shift = transfer_probe_score(shifted_x, shifted_y, tx, ty, kind=kind)
    s_shuf = transfer_probe_score(same_x, shuffled_y, tx, ty, kind=kind)
    s_conf = transfer_probe_score(same_x, conflict_y, tx, ty, kind=kind)
    assert s_same >= s_shift > s_shuf
    assert s_conf < 1 / 3 < s_same


def test_knn_k_shrinks_to_the_smallest_class():
    # class "a" has ONE training example next to the query; "b" has 6 farther away. With k=5 the query
    # would be outvoted 4:1; k = min(5, smallest class) = 1 gets it right.
    rng = np.random.default_rng(0)
    a = np.array([[1.0, 0.0, 0.0]])
    b = np.array([[0.6, 0.8, 0.0]]) + 0.01 * rng.random((6, 3))
    train_x, train_y = np.vstack([a, b]), ["a"] + ["b"] * 6
    query = np.array([[0.98, 0.05, 0.0]])
    assert probe_score(train_x, train_y, query, ["a"], kind="knn", center=False) == 1.0
    assert probe_score(train_x, train_y, query, ["a"], kind="knn", k=5, center=False) == 0.0


def test_probe_eval_class_unseen_in_train_counts_as_error():
    tx, ty = _clusters(30, 1)
    ex, ey = _clusters(30, 2)
    ey_new = np.where(ey == 2, 9, ey)  # class 9 never in train
    acc = probe_score(tx, ty, ex, ey_new, kind="ncm")
    assert acc == pytest.approx(np.mean(ey_new != 9), abs=0.05)
    assert acc <= np.mean(ey_new != 9)


@pytest.mark.parametrize("kind", KINDS)
def test_probe_robust_when_n_below_dim(kind):
    tx, ty = _clusters(6, 1, d=2048)
    ex, ey = _clusters(9, 2, d=2048)
    acc = probe_score(tx, ty, ex, ey, kind=kind)
    assert math.isfinite(acc) and acc >= 2 / 3


# ---------------------------------------------------------------------------------------- distance
def _lw_direct(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance (D, D), straight from the definition (explicit loop)."""
    n, d = x.shape
    xc = x - x.mean(axis=0)
    c = xc.T @ xc / n
    mu = np.trace(c) / d
    b2 = sum(np.sum((np.outer(v, v) - c) ** 2) for v in xc) / n**2
    d2 = np.sum((c - mu * np.eye(d)) ** 2)
    a = min(max(b2 / d2, 0.0), 1.0)
    return (1 - a) * c + a * mu * np.eye(d)


@pytest.mark.parametrize("n,m,d", [(6, 9, 40), (50, 60, 12)])
def test_frechet_matches_direct_full_dimension_formula(n, m, d):
    rng = np.random.default_rng(n)
    t = rng.normal(size=(n, d)) + 0.5
    s = 1.5 * rng.normal(size=(m, d))
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    sn = s / np.linalg.norm(s, axis=1, keepdims=True)
    st, ss = _lw_direct(tn), _lw_direct(sn)
    root = sl.sqrtm(st)
    direct = np.sum((tn.mean(0) - sn.mean(0)) ** 2) + np.trace(st + ss - 2 * sl.sqrtm(root @ ss @ root).real)
    assert feature_distance(t, s) == pytest.approx(direct, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kind", ["frechet", "mmd"])
def test_distance_identical_zero_and_orders_by_shift(kind):
    t, _ = _clusters(40, 1)
    assert feature_distance(t, t, kind=kind) == pytest.approx(0.0, abs=1e-8)
    near = feature_distance(t, _clusters(40, 2)[0], kind=kind)
    mid = feature_distance(t, _clusters(40, 2, shift=1.0)[0], kind=kind)
    far = feature_distance(t, _clusters(40, 2, shift=4.0)[0], kind=kind)
    assert 0 <= near < mid < far
    # rows are L2-normalised: the feature scale of an extractor does not matter
    assert feature_distance(t, 3.0 * _clusters(40, 2)[0], kind=kind) == pytest.approx(near, rel=1e-9)


def test_frechet_finite_and_ordered_when_n_far_below_dim():
    t, _ = _clusters(5, 1, d=4096)
    same, _ = _clusters(7, 2, d=4096)
    other, _ = _clusters(7, 2, d=4096, shift=3.0)
    assert feature_distance(t, t) == pytest.approx(0.0, abs=1e-8)
    assert 0 < feature_distance(t, same) < feature_distance(t, other) < math.inf


# ------------------------------------------------------------------------------------- image stats
def _texture(kind: str, seed: int, size: int = 48) -> np.ndarray:
    """(size, size, 1) uint8 gray texture: 'stripes' (fine oriented stripes + noise) or 'blobs' (smooth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        theta = rng.uniform(0, np.pi)
        g = 128 + 50 * np.sin(2 * np.pi * 10 / size * (xx * np.cos(theta) + yy * np.sin(theta)))
        g = g + rng.normal(0, 6, (size, size))
    else:
        coarse = rng.normal(0, 1, (6, 6))
        g = np.kron(coarse, np.ones((size // 6, size // 6)))
        g = 100 + 25 * g
    return np.clip(g, 0, 255).astype(np.uint8)[..., None]


def _colourise(gray: np.ndarray) -> np.ndarray:
    """A colour photo of the same texture: add a luma-neutral chroma (0.299 r + 0.587 g + 0.114 b = 0)."""
    g = gray[..., 0].astype(np.float64)
    chroma = np.array([1.0, -0.3, -(0.299 - 0.587 * 0.3) / 0.114]) * 35.0
    return np.clip(np.rint(g[..., None] + chroma), 0, 255).astype(np.uint8)


def test_image_stats_fixed_length_and_gray_has_no_colour():
    imgs = [_colourise(_texture("stripes", i)) for i in range(3)] + [np.zeros((20, 33, 3), np.uint8)]
    for gray in (False, True):
        assert image_stats(imgs, gray=gray).shape == (DESCRIPTOR_LEN,)
    assert np.all(image_stats(imgs, gray=True)[BLOCKS["colour"]] == 0)
    assert np.all(image_stats(imgs, gray=False)[BLOCKS["colour"]] > 0)
    assert image_stats([_texture("stripes", 0)[..., 0]], gray=True).shape == (DESCRIPTOR_LEN,)  # (H, W) ok


def test_image_stats_identical_set_best_and_same_texture_beats_other():
    target = image_stats([_texture("stripes", i) for i in range(6)], gray=True)
    same = image_stats([_texture("stripes", 100 + i) for i in range(6)], gray=True)
    other = image_stats([_texture("blobs", 100 + i) for i in range(6)], gray=True)
    assert image_stats_similarity(target, target) == pytest.approx(1.0)
    assert 1.0 > image_stats_similarity(target, same) > image_stats_similarity(target, other) >= 0.0


def test_colour_source_not_sunk_by_colour_against_gray_target():
    target = image_stats([_texture("stripes", i) for i in range(6)], gray=True)
    gray_src = [_texture("stripes", 200 + i) for i in range(6)]
    colour_src = [_colourise(_texture("stripes", 200 + i)) for i in range(6)]
    other_src = [_colourise(_texture("blobs", 200 + i)) for i in range(6)]
    sim_gray = image_stats_similarity(target, image_stats(gray_src, gray=True))
    sim_colour = image_stats_similarity(target, image_stats(colour_src, gray=True))
    sim_other = image_stats_similarity(target, image_stats(other_src, gray=True))
    assert sim_colour == pytest.approx(sim_gray, abs=0.01)
    assert min(sim_gray, sim_colour) > sim_other + 0.05
    # the gray conversion is what saves it: compared in colour, the same source scores lower
    assert image_stats_similarity(target, image_stats(colour_src, gray=False)) < sim_colour - 0.05


# ------------------------------------------------------------------------------------------- gains
def test_gain_signs_and_verdicts_paired_seeds():
    base = [0.70, 0.78, 0.74]  # seed-to-seed spread much larger than the expert effect
    gains = signed_gains(
        {
            "own_data": [b + 0.06 + e for b, e in zip(base, (0.004, -0.003, 0.0))],
            "harmful": [b - 0.08 + e for b, e in zip(base, (0.005, 0.0, -0.004))],
            "noise": [b + e for b, e in zip(base, (0.006, -0.004, 0.001))],
        },
        base,
    )
    assert gains["own_data"].mean > 0 and gains["own_data"].verdict == "helps"
    assert gains["harmful"].mean < 0 and gains["harmful"].verdict == "hurts"
    assert gains["noise"].verdict == "neutral"
    assert gains["own_data"].n == 3 and gains["own_data"].std < 0.01  # paired: seed spread cancels
    # unpaired (one seed missing): the seed spread is no longer cancelled, the same gain is inside noise
    unpaired = signed_gains({"own_data": [b + 0.06 for b in base[:2]]}, base)
    assert unpaired["own_data"].verdict == "neutral" and unpaired["own_data"].std > 0.03


def test_min_noise_floor_one_seed_or_identical_seeds():
    one = signed_gains({"tiny": [0.705], "big": [0.75]}, [0.70])
    assert one["tiny"].std == 0.0 and one["tiny"].noise == 0.01 and one["tiny"].verdict == "neutral"
    assert one["big"].verdict == "helps"
    same = signed_gains({"tiny": [0.71, 0.81]}, [0.70, 0.80], min_noise=0.01)
    assert same["tiny"].verdict == "neutral"
    assert signed_gains({"tiny": [0.71, 0.81]}, [0.70, 0.80], min_noise=0.001)["tiny"].verdict == "helps"


@pytest.mark.parametrize("pooled", [False, True])
def test_null_verdict_when_all_sources_are_noise(pooled):
    rng = np.random.default_rng(11)
    base = 0.75 + rng.normal(0, 0.02, 3)
    experts = {f"src{i}": list(base + rng.normal(0, 0.01, 3)) for i in range(12)}
    gains = signed_gains(experts, list(base), pooled=pooled)
    suggested, message = target_verdict(gains)
    assert suggested == [] and message.startswith(NO_SOURCE_HELPS)
    assert all(g.verdict != "helps" for g in gains.values())


def test_target_verdict_suggests_helping_sources_by_gain():
    base = [0.6, 0.62, 0.61]
    gains = signed_gains(
        {
            "a": [x + 0.05 for x in base],
            "b": [x + 0.12 for x in base],
            "c": [x - 0.1 for x in base],
            "d": base,
        },
        base,
    )
    suggested, message = target_verdict(gains)
    assert suggested == ["b", "a"]
    assert "b" in message and "c" in message and NO_SOURCE_HELPS not in message


# ----------------------------------------------------------------------------------------- combine
def test_combine_rankings_known_ranks_and_weights():
    signals = {
        "probe": {"x": 0.9, "y": 0.8, "z": 0.7},  # higher better: x, y, z
        "dist": {"x": 1.0, "y": 2.0, "z": 3.0},  # lower better: x, y, z
        "stats": {"x": 0.1, "y": 0.2, "z": 0.3},  # higher better: z, y, x
    }
    hib = {"probe": True, "dist": False, "stats": True}
    # normalised ranks (0 best): x (0, 0, 1), y (.5, .5, .5), z (1, 1, 0)
    ranked = combine_rankings(signals, higher_is_better=hib)
    assert [n for n, _ in ranked] == ["x", "y", "z"]
    assert dict(ranked) == pytest.approx({"x": 1 - 1 / 3, "y": 0.5, "z": 1 / 3})
    weighted = combine_rankings(signals, higher_is_better=hib, weights={"stats": 3.0})
    assert [n for n, _ in weighted] == ["z", "y", "x"]
    assert dict(weighted)["z"] == pytest.approx(1 - 2 / 5)


def test_combine_rankings_nan_and_missing_are_skipped():
    signals = {
        "probe": {"x": 0.9, "y": float("nan"), "z": 0.5, "w": float("nan")},
        "dist": {"y": 1.0, "z": 2.0},  # x missing here
    }
    ranked = combine_rankings(signals, higher_is_better={"probe": True, "dist": False})
    scores = dict(ranked)
    assert scores["x"] == 1.0 and scores["y"] == 1.0 and scores["z"] == 0.0
    assert ranked[-1][0] == "w" and math.isnan(scores["w"])


# --------------------------------------------------------------------------------------- bad input
_X = np.ones((4, 3))
_Y = [0, 1, 0, 1]
_NAN = np.array([[1.0, np.nan, 0.0]] * 4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: probe_score(np.zeros((0, 3)), [], _X, _Y),
        lambda: probe_score(_X, [0, 1, 0], _X, _Y),
        lambda: probe_score(_NAN, _Y, _X, _Y),
        lambda: probe_score(_X, _Y, np.ones((4, 5)), _Y),
        lambda: probe_score(_X, _Y, _X, _Y, kind="svm"),
        lambda: probe_score(_X, _Y, _X, _Y, kind="logreg", c=0.0),
        lambda: feature_distance(np.zeros((0, 3)), _X),
        lambda: feature_distance(_X, _NAN),
        lambda: feature_distance(_X, np.ones((4, 5))),
        lambda: feature_distance(_X, _X, kind="emd"),
        lambda: image_stats([], gray=True),
        lambda: image_stats([np.zeros((8, 8, 3), np.float32)], gray=True),
        lambda: image_stats([np.zeros((8, 8, 4), np.uint8)], gray=False),
        lambda: image_stats_similarity(np.zeros(5), np.zeros(DESCRIPTOR_LEN)),
        lambda: image_stats_similarity(np.full(DESCRIPTOR_LEN, np.nan), np.zeros(DESCRIPTOR_LEN)),
        lambda: signed_gains({"a": []}, [0.5]),
        lambda: signed_gains({"a": [0.5]}, [float("nan")]),
        lambda: signed_gains({"a": [0.5]}, [0.5], min_noise=-1.0),
        lambda: combine_rankings({}, higher_is_better={}),
        lambda: combine_rankings({"p": {"a": 1.0}}, higher_is_better={}),
        lambda: combine_rankings({"p": {"a": 1.0}}, higher_is_better={"p": True}, weights={"q": 1.0}),
        lambda: combine_rankings({"p": {"a": 1.0}}, higher_is_better={"p": True}, weights={"p": -1.0}),
    ],
)
def test_bad_input_is_one_line_rtl_error(call):
    with pytest.raises(RtlError) as err:
        call()
    assert "\n" not in str(err.value) and str(err.value)
