"""Transferability scores: how well will a pretrained checkpoint transfer to a target, without training.

All functions are pure NumPy, compute in float64, and raise `RtlError` for empty inputs, mismatched
lengths and NaN/inf values. Higher is better for every score.

* `logme`   You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
            Learning", ICML 2021 (arXiv 2102.11005).
* `leep`    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of
            Learned Representations", ICML 2020 (arXiv 2002.12462).
* `nce`     Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks",
            ICCV 2019 (arXiv 1908.08142).
* `h_score` Bao, Li, Huang, Zheng, Zhang, Tong, "An Information-Theoretic Approach to Transferability
            in Task Transfer Learning", ICIP 2019 (with Ledoit-Wolf shrinkage, Ibrahim et al. 2022).
"""

from __future__ import annotations

import numpy as np

from rtl.errors import RtlError

__all__ = ["logme", "leep", "nce", "h_score", "SCORES"]


def _labels(labels: np.ndarray, n: int | None, what: str) -> np.ndarray:
    """Any hashable labels (N,) -> dense int codes 0..C-1 (N,)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise RtlError(f"{what} must be a 1-d array, got shape {y.shape}")
    if y.shape[0] == 0:
        raise RtlError(f"{what} is empty: no target images")
    if n is not None and y.shape[0] != n:
        raise RtlError(f"{what} has {y.shape[0]} entries but there are {n} samples")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise RtlError(f"{what} contains NaN or inf")
    _, codes = np.unique(y, return_inverse=True)
    return codes.reshape(-1)


def as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    """`x` as a finite, non-empty 2-d float64 array, else an RtlError naming `what`."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise RtlError(f"{what} must be a 2-d (N, D) array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise RtlError(f"{what} is empty (shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise RtlError(f"{what} contain NaN or inf")
    return a


def logme(
    features: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-4, eps: float = 1e-5
) -> float:
    """LogME: mean over classes of the maximum log evidence per sample of Bayesian linear regression.

    For each class c, the one-hot column y_c (N,) is regressed on the features F (N, D) with prior
    w ~ N(0, 1/alpha I) and noise N(0, 1/beta). The evidence (You et al. 2021, eq. 2)

        L(a, b) = D/2 log a + N/2 log b - 1/2 log|a I + b F^T F| - b/2 |y - F m|^2 - a/2 |m|^2 - N/2 log 2pi,
        m = b (a I + b F^T F)^-1 F^T y,

    is maximised by the fixed-point iteration  gamma = sum_i b s_i/(a + b s_i),  a = gamma/|m|^2,
    b = (N - gamma)/|y - F m|^2  (s_i: eigenvalues of F^T F), as in the reference implementation
    (thuml/LogME, tllib/ranking/logme.py), with its eps=1e-5 in the denominators. Every quantity is a
    sum over the spectrum after one SVD, so all classes iterate together as vectors.

    features: (N, D) penultimate features; labels: (N,) target class labels. Returns L / N averaged
    over classes (higher = better transfer).
    """
    f = as_matrix(features, "features")
    n, d = f.shape
    y = _labels(labels, n, "labels")
    onehot = np.zeros((n, int(y.max()) + 1), dtype=np.float64)  # (N, C)
    onehot[np.arange(n), y] = 1.0
    # x = U^T Y over the non-zero singular directions of F (k of them): (k, C); lam = sigma^2 (k,)
    if n > d:
        lam, v = np.linalg.eigh(f.T @ f)  # (D,), (D, D): cheaper than SVD of (N, D) when N > D
        lam = np.clip(lam, 0.0, None)
        keep = lam > lam.max() * 1e-12 if lam.max() > 0 else np.zeros_like(lam, dtype=bool)
        lam, v = lam[keep], v[:, keep]
        x = (v.T @ (f.T @ onehot)) / np.sqrt(lam)[:, None]  # (k, C)
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)  # (N, k), (k,)
        keep = s > s.max() * 1e-6 if s.max() > 0 else np.zeros_like(s, dtype=bool)
        u, lam = u[:, keep], s[keep] ** 2
        x = u.T @ onehot  # (k, C)
    x2 = x**2  # (k, C)
    res_x2 = np.clip(onehot.sum(axis=0) - x2.sum(axis=0), 0.0, None)  # (C,) |y|^2 outside span(F)
    n_classes = onehot.shape[1]
    alpha = np.ones(n_classes)
    beta = np.ones(n_classes)
    lam_c = lam[:, None]  # (k, 1)
    for _ in range(max_iter):
        t = alpha / beta  # (C,)
        gamma = (lam_c / (lam_c + t)).sum(axis=0)  # (C,) effective number of parameters
        m2 = (lam_c * x2 / (lam_c + t) ** 2).sum(axis=0)  # (C,) |m|^2
        res2 = (x2 / (1.0 + lam_c / t) ** 2).sum(axis=0) + res_x2  # (C,) |y - F m|^2
        alpha = gamma / (m2 + eps)
        beta = np.maximum(n - gamma, eps) / (res2 + eps)
        t_new = alpha / beta
        if np.all(np.abs(t_new - t) / t <= tol):
            break
    # evidence at the final (alpha, beta), with m recomputed for them
    t = alpha / beta
    m2 = (lam_c * x2 / (lam_c + t) ** 2).sum(axis=0)
    res2 = (x2 / (1.0 + lam_c / t) ** 2).sum(axis=0) + res_x2
    logdet = np.log(alpha[None, :] + beta[None, :] * lam_c).sum(axis=0) + (d - lam.shape[0]) * np.log(alpha)
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * logdet
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2.0 * np.pi)
    )  # (C,)
    return float(np.mean(evidence / n))


def leep(probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: log expected empirical prediction (Nguyen et al. 2020).

    probs: (N, Z) source-model softmax outputs theta(x_i) over the Z source classes; labels: (N,)
    target labels. With the empirical joint P(y, z) = 1/N sum_i theta(x_i)_z [y_i = y] and
    P(y | z) = P(y, z) / P(z), LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z  (<= 0).
    """
    p = as_matrix(probs, "probs")
    n = p.shape[0]
    y = _labels(labels, n, "labels")
    if np.any(p < -1e-9) or np.any(np.abs(p.sum(axis=1) - 1.0) > 1e-3):
        raise RtlError("leep needs softmax probabilities (rows >= 0 summing to 1), not logits")
    p = np.clip(p, 0.0, None)
    onehot = np.zeros((n, int(y.max()) + 1))  # (N, C)
    onehot[np.arange(n), y] = 1.0
    joint = onehot.T @ p / n  # (C, Z) P(y, z)
    pz = joint.sum(axis=0)  # (Z,)
    cond = np.divide(joint, pz[None, :], out=np.zeros_like(joint), where=pz[None, :] > 0)  # (C, Z)
    eep = (p * cond[y]).sum(axis=1)  # (N,) expected empirical prediction of the true label
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def nce(source_labels: np.ndarray, target_labels: np.ndarray) -> float:
    """NCE: negative conditional entropy -H(Y | Z) of target labels given source labels (Tran et al. 2019).

    source_labels: (N,) hard source-class labels Z of the target images (here: the checkpoint's
    arg-max predictions); target_labels: (N,) target labels Y. NCE = sum_{y,z} P(y,z) log P(y|z) (<= 0).
    """
    z = _labels(source_labels, None, "source_labels")
    y = _labels(target_labels, z.shape[0], "target_labels")
    n = z.shape[0]
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))  # (C, Z) counts
    np.add.at(joint, (y, z), 1.0)
    joint /= n
    pz = joint.sum(axis=0, keepdims=True)  # (1, Z), every column non-empty by construction
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])).sum())


def h_score(features: np.ndarray, labels: np.ndarray, *, shrinkage: bool = True) -> float:
    """H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E[f | y])), features (N, D), labels (N,).

    Larger means the class-conditional means are well separated relative to the feature covariance.
    With few target images (N <~ D) the sample covariance is singular and the plain score saturates at
    C - 1 for every model; `shrinkage` uses tr(S_a^-1 (1 - a) cov(E[f|y])) with the Ledoit-Wolf shrunk
    S_a = (1 - a) cov(f) + a (tr cov(f) / D) I, as recommended by Ibrahim, Ponomareva, Mazumder, "Newer is not always better: rethinking transferability metrics"
    (arXiv 2110.06893). shrinkage=False gives the original (pseudo-inverse) score.
    """
    f = as_matrix(features, "features")
    y = _labels(labels, f.shape[0], "labels")
    n, d = f.shape
    fc = f - f.mean(axis=0, keepdims=True)  # (N, D)
    cov_f = fc.T @ fc / n  # (D, D)
    scale_g = 1.0
    if shrinkage:
        mu = np.trace(cov_f) / d
        d2 = np.sum((cov_f - mu * np.eye(d)) ** 2)  # |S - mu I|_F^2
        sq = np.sum(fc**2, axis=1)  # (N,) |x_k|^2
        # (1/N^2) sum_k |x_k x_k^T - S|_F^2 = (1/N^2) sum_k (|x_k|^4 - 2 x_k^T S x_k + |S|_F^2)
        b2 = (np.sum(sq**2) - 2.0 * np.sum((fc @ cov_f) * fc) + n * np.sum(cov_f**2)) / n**2
        a = 0.0 if d2 <= 0 else float(np.clip(b2 / d2, 0.0, 1.0))
        cov_f = (1.0 - a) * cov_f + a * mu * np.eye(d)
        scale_g = 1.0 - a  # Ibrahim et al.: the between-class covariance is shrunk by the same factor
    counts = np.bincount(y).astype(np.float64)  # (C,)
    means = np.zeros((counts.shape[0], d))
    np.add.at(means, y, fc)
    means /= counts[:, None]  # (C, D) class means of centred features
    g = means[y]  # (N, D) E[f | y_i]
    cov_g = scale_g * (g.T @ g) / n  # (D, D)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


# name -> what the score needs: "features" (penultimate), "probs" (source softmax), "hard" (arg-max)
SCORES: dict[str, str] = {"logme": "features", "leep": "probs", "nce": "hard", "hscore": "features"}
