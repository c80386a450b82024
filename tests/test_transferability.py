"""Transferability scores against explicit-loop / direct float64 formulas and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtl.errors import RtlError
from rtl.select.transferability import h_score, leep, logme, nce


def _direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Log evidence / N of Bayesian linear regression, straight from the definition (You et al. eq. 2)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    ev = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * logdet
        - beta / 2 * np.sum((y - f @ m) ** 2)
        - alpha / 2 * np.sum(m**2)
        - n / 2 * math.log(2 * math.pi)
    )
    return ev / n


def _grid_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """Max evidence per class by brute-force grid over (log alpha, log beta), then refined; mean over classes."""
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        la, lb = 0.0, 0.0
        best = -np.inf
        for span, steps in ((12.0, 49), (1.0, 41), (0.1, 41)):
            grid = np.linspace(-span, span, steps)
            cand = [(la + da, lb + db) for da in grid for db in grid]
            vals = [_direct_evidence(f, y, math.exp(a), math.exp(b)) for a, b in cand]
            i = int(np.argmax(vals))
            best, (la, lb) = vals[i], cand[i]
        out.append(best)
    return float(np.mean(out))


@pytest.mark.parametrize("n,d", [(40, 5), (8, 12)])  # N > D (eigh path) and N < D (SVD path)
def test_logme_matches_direct_evidence_maximum(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    labels = rng.integers(0, 3, n)
    f = rng.normal(size=(n, d)) + np.eye(3)[labels] @ rng.normal(size=(3, d))
    got = logme(f, labels, tol=1e-8, eps=0.0)
    want = _grid_logme(f, labels)
    assert got == pytest.approx(want, abs=2e-3)


def test_logme_prefers_better_separated_features() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    centres = rng.normal(size=(4, 16))
    noise = rng.normal(size=(300, 16))
    good = logme(centres[labels] * 2.0 + noise, labels)
    bad = logme(centres[labels] * 0.2 + noise, labels)
    random = logme(noise, labels)
    assert good > bad > random


def test_leep_matches_explicit_loops() -> None:
    rng = np.random.default_rng(2)
    n, z, c = 30, 5, 3
    logits = rng.normal(size=(n, z)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, c, n)
    joint = np.zeros((c, z))
    for i in range(n):
        for k in range(z):
            joint[y[i], k] += probs[i, k] / n
    total = 0.0
    for i in range(n):
        s = 0.0
        for k in range(z):
            s += joint[y[i], k] / joint[:, k].sum() * probs[i, k]
        total += math.log(s)
    assert leep(probs, y) == pytest.approx(total / n, rel=1e-12)
    # string labels work the same as ints
    assert leep(probs, np.array(["abc"[k] for k in y])) == pytest.approx(total / n, rel=1e-12)


def test_leep_perfect_source_is_zero_and_rejects_logits() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y]
    assert leep(probs, y) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(RtlError, match="probabilities"):
        leep(np.array([[2.0, -1.0], [0.5, 3.0]]), [0, 1])


def test_nce_matches_explicit_loops_and_bounds() -> None:
    rng = np.random.default_rng(3)
    z = rng.integers(0, 4, 50)
    y = rng.integers(0, 3, 50)
    want = 0.0
    for a in set(y):
        for b in set(z):
            pab = np.mean((y == a) & (z == b))
            pb = np.mean(z == b)
            if pab > 0:
                want += pab * math.log(pab / pb)
    assert nce(z, y) == pytest.approx(want, rel=1e-12)
    assert nce(y, y) == pytest.approx(0.0)  # source labels determine the target: no uncertainty left
    assert nce(np.zeros(50, int), y) <= want  # a constant source label explains nothing


def test_h_score_prefers_separated_features() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    centres = rng.normal(size=(3, 8))
    noise = rng.normal(size=(200, 8))
    assert h_score(centres[y] * 3 + noise, y) > h_score(centres[y] * 0.3 + noise, y)


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: logme(np.zeros((0, 4)), np.zeros(0)), "empty"),
        (lambda: logme(np.ones((5, 4)), np.zeros(4)), "5 samples"),
        (lambda: logme(np.full((3, 2), np.nan), [0, 1, 0]), "NaN"),
        (lambda: leep(np.ones((3, 1)), [0, 1]), "3 samples"),
        (lambda: nce([], []), "empty"),
        (lambda: nce([0, 1, 2], [0, 1]), "3 samples"),
        (lambda: h_score(np.ones((2, 2, 2)), [0, 1]), "2-d"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, msg: str) -> None:
    with pytest.raises(RtlError, match=msg):
        call()


def test_h_score_without_shrinkage_matches_definition_and_shrinkage_avoids_saturation() -> None:
    rng = np.random.default_rng(6)
    y = np.arange(40) % 2
    f = rng.normal(size=(40, 5)) + y[:, None]
    fc = f - f.mean(0)
    g = np.stack([fc[y == c].mean(0) for c in y])
    want = np.trace(np.linalg.inv(fc.T @ fc / 40) @ (g.T @ g / 40))
    assert h_score(f, y, shrinkage=False) == pytest.approx(want, rel=1e-9)
    # N < D: the plain score saturates at C - 1 = 1 for any features, the shrunk one still ranks them
    y2 = np.arange(10) % 2
    noise = rng.normal(size=(10, 64))
    assert h_score(noise, y2, shrinkage=False) == pytest.approx(1.0)
    assert h_score(noise + 3 * y2[:, None], y2) > h_score(noise, y2)
