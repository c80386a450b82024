"""Per-source signals for `rtl rank`: pure NumPy/SciPy functions, one number per (target, source).

Each "source unit" u has an expert (the generalist continued on u, Puigcerver et al. 2021, "Scalable
transfer learning with expert models", arXiv 2009.13239). The caller extracts pooled features and hands
them here; nothing in this module touches a model, Ray or torch. All inputs are validated: empty arrays,
mismatched lengths, wrong shapes and NaN/inf raise `RtlError` with a one-line message.

* `probe_score` / `transfer_probe_score`  kNN / logistic-regression / nearest-class-mean probe accuracy
  on frozen features, after centring + L2 normalisation (CL2N: Wang, Chao, Weinberger, van der Maaten,
  "SimpleShot", arXiv 1911.04623). Higher is better.
* `feature_distance`  Fréchet distance between Gaussians fitted to two feature sets (as FID: Heusel et al.
  2017) with Ledoit-Wolf shrinkage, or RBF MMD^2 (Gretton et al. 2012). Smaller is closer.
* `image_stats` / `image_stats_similarity`  model-free low-level statistics (after Ge & Yu, "Borrowing
  Treasures from the Wealthy", CVPR 2017, who match low-level filter-bank responses) -- see
  `rtl.select.image_stats`.
* `signed_gains` / `target_verdict`  the gain of each expert over the generalist with its seed noise,
  and the null answer "no source helps".
* `combine_rankings`  mean (weighted) normalised rank across signals, NaN-safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from rtl.errors import RtlError
from rtl.select.image_stats import image_stats, image_stats_similarity
from rtl.select.transferability import as_matrix

__all__ = [
    "probe_score",
    "cv_probe_loss",
    "transfer_probe_score",
    "feature_distance",
    "image_stats",
    "image_stats_similarity",
    "Gain",
    "signed_gains",
    "target_verdict",
    "combine_rankings",
    "NO_SOURCE_HELPS",
]

PROBES = ("knn", "logreg", "ncm")
NO_SOURCE_HELPS = "no source helps — use the generalist"


# ----------------------------------------------------------------------------------------------- probes
def _labels_1d(y: Sequence | np.ndarray, n: int, what: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise RtlError(f"{what} must be a 1-d array, got shape {a.shape}")
    if a.shape[0] != n:
        raise RtlError(f"{what} has {a.shape[0]} entries but there are {n} feature rows")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise RtlError(f"{what} contains NaN or inf")
    return a


def _l2(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (N, D) -> (N, D); zero rows stay zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _cl2n(train: np.ndarray, other: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """SimpleShot's CL2N: L2-normalise, subtract the TRAIN mean, L2-normalise again."""
    a, b = _l2(train), _l2(other)
    if center:
        mu = a.mean(axis=0, keepdims=True)  # (1, D)
        a, b = _l2(a - mu), _l2(b - mu)
    return a, b


def _fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, c: float) -> np.ndarray:
    """Multinomial logistic regression, sklearn's objective  C * sum_i CE_i + |W|^2 / 2  (bias unpenalised).

    x (N, D), y (N,) int codes -> W (D + 1, K) incl. bias row. L-BFGS from zeros: deterministic.
    """
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])  # (N, D+1)
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    pen = np.ones((d + 1, 1))
    pen[-1] = 0.0  # no penalty on the bias

    def fg(w_flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = w_flat.reshape(d + 1, n_classes)
        z = xb @ w  # (N, K)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -c * np.sum(onehot * logp) + 0.5 * np.sum(pen * w * w)
        grad = c * xb.T @ (np.exp(logp) - onehot) + pen * w  # (D+1, K)
        return float(loss), grad.ravel()

    res = minimize(fg, np.zeros((d + 1) * n_classes), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(d + 1, n_classes)


def probe_score(
    train_x: np.ndarray,
    train_y: Sequence | np.ndarray,
    eval_x: np.ndarray,
    eval_y: Sequence | np.ndarray,
    *,
    kind: str = "knn",
    k: int | None = None,
    c: float = 1.0,
    center: bool = True,
) -> float:
    """Accuracy on (eval_x, eval_y) of a probe fitted on frozen features (train_x, train_y). Deterministic.

    train_x (N, D), eval_x (M, D); labels any hashable (N,), (M,). Features are CL2N-normalised with the
    train mean (`center=False`: L2 only). Probes:
      * "knn"    cosine k-nearest neighbours, k = min(5, smallest train class) unless given; votes tie
                 -> larger summed similarity -> smaller class code.
      * "logreg" multinomial logistic regression, fixed C (`c`, sklearn's convention), L-BFGS from zeros.
      * "ncm"    nearest class mean (cosine to the normalised class centroids).
    Eval labels absent from train can never be predicted and count as errors. Returns accuracy in [0, 1].
    """
    if kind not in PROBES:
        raise RtlError(f"unknown probe kind {kind!r}; choose from {', '.join(PROBES)}")
    tx = as_matrix(train_x, "probe train features")
    ex = as_matrix(eval_x, "probe eval features")
    if tx.shape[1] != ex.shape[1]:
        raise RtlError(
            f"probe train features have dim {tx.shape[1]} but eval features have dim {ex.shape[1]}"
        )
    ty = _labels_1d(train_y, tx.shape[0], "probe train labels")
    ey = _labels_1d(eval_y, ex.shape[0], "probe eval labels")
    classes, yc = np.unique(ty, return_inverse=True)
    yc = yc.reshape(-1)
    n_classes = classes.shape[0]
    # eval labels -> train codes; -1 for a class the probe never saw
    lookup = {v: i for i, v in enumerate(classes.tolist())}
    ec = np.array([lookup.get(v, -1) for v in ey.tolist()], dtype=np.int64)  # (M,)
    if n_classes == 1:
        return float(np.mean(ec == 0))
    a, b = _cl2n(tx, ex, center)  # (N, D), (M, D)
    if kind == "knn":
        counts = np.bincount(yc, minlength=n_classes)
        kk = min(5, int(counts.min())) if k is None else int(k)
        if kk < 1:
            raise RtlError(f"knn probe needs k >= 1, got {kk}")
        kk = min(kk, a.shape[0])
        sim = b @ a.T  # (M, N)
        nn = np.argsort(-sim, axis=1, kind="stable")[:, :kk]  # (M, k)
        votes = np.zeros((b.shape[0], n_classes))
        simsum = np.zeros((b.shape[0], n_classes))
        rows = np.repeat(np.arange(b.shape[0]), kk)
        np.add.at(votes, (rows, yc[nn].ravel()), 1.0)
        np.add.at(simsum, (rows, yc[nn].ravel()), np.take_along_axis(sim, nn, axis=1).ravel())
        score = votes * 1e6 + simsum  # votes first, then similarity (|simsum| <= k < 1e6)
        pred = np.argmax(score, axis=1)
    elif kind == "ncm":
        means = np.zeros((n_classes, a.shape[1]))
        np.add.at(means, yc, a)
        pred = np.argmax(b @ _l2(means).T, axis=1)  # (M,)
    else:
        if not (c > 0 and math.isfinite(c)):
            raise RtlError(f"logreg probe needs C > 0, got {c}")
        w = _fit_logreg(a, yc, n_classes, c)
        pred = np.argmax(np.hstack([b, np.ones((b.shape[0], 1))]) @ w, axis=1)
    return float(np.mean(pred == ec))


def cv_probe_loss(x: np.ndarray, y: Sequence | np.ndarray, *, folds: int = 4, c: float = 1.0) -> float:
    """Mean held-out log-loss (nats) of a logistic probe on frozen features, by stratified `folds`-fold
    cross-validation over (x, y): every image is scored once by a probe that never saw it. Deterministic
    (folds dealt per class in a fixed shuffled order). Lower = features that separate the labels better.

    Why not a val error: on 24-32 val images an error moves in steps of 3-4 points, which is the size of the
    differences it must rank (rtl.sweep.specialists); a log-loss over train + val uses every labelled image
    and is continuous. x (N, D); labels any hashable (N,); a class with fewer images than `folds` is scored
    on the folds it appears in."""
    xm = as_matrix(x, "probe features")
    yy = _labels_1d(y, xm.shape[0], "probe labels")
    _, yc = np.unique(yy, return_inverse=True)
    yc = yc.reshape(-1)
    k = int(yc.max()) + 1 if yc.size else 0
    if k < 2:
        raise RtlError(f"cv probe needs >= 2 classes, got {k}")
    rng = np.random.default_rng(0)
    fold = np.zeros(len(yc), dtype=np.int64)
    for cls in range(k):
        idx = np.flatnonzero(yc == cls)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % folds
    losses: list[np.ndarray] = []
    for f in range(folds):
        tr, te = fold != f, fold == f
        if not te.any():
            continue
        a, b = _cl2n(xm[tr], xm[te], True)
        w = _fit_logreg(a, yc[tr], k, c)
        z = np.hstack([b, np.ones((b.shape[0], 1))]) @ w  # (M, K)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        losses.append(-logp[np.arange(b.shape[0]), yc[te]])
    return float(np.concatenate(losses).mean())


def transfer_probe_score(
    source_x: np.ndarray,
    source_y_mapped: Sequence | np.ndarray,
    target_x: np.ndarray,
    target_y: Sequence | np.ndarray,
    *,
    kind: str = "ncm",
    **kw: object,
) -> float:
    """Accuracy on the target of a probe fitted on SOURCE features whose labels were mapped to target
    class names (e.g. "scratch" in both). A source whose labels conflict with the target's (a harmful
    source) scores at or below chance. Same normalisation and probes as `probe_score`."""
    return probe_score(source_x, source_y_mapped, target_x, target_y, kind=kind, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- distance
def _shrunk_cov(xc: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Ledoit-Wolf shrinkage of the covariance of centred rows xc (N, D) toward mu*I, without forming
    the (D, D) matrix: returns (sqrt((1-a)/N) * xc, a*mu, a) so that S = F^T F + a*mu*I with F (N, D)."""
    n, d = xc.shape
    g = xc @ xc.T  # (N, N) Gram
    sq = np.diag(g)  # (N,) |x_k|^2
    tr = float(sq.sum()) / n  # tr(S)
    mu = tr / d
    s_fro2 = float(np.sum(g * g)) / n**2  # |S|_F^2 = |X X^T|_F^2 / N^2
    d2 = s_fro2 - 2 * mu * tr + mu * mu * d  # |S - mu I|_F^2
    # (1/N^2) sum_k |x_k x_k^T - S|_F^2 = (1/N^2) sum_k (|x_k|^4 - 2 x_k^T S x_k) + |S|_F^2 / N
    xsx = np.sum(g * g, axis=1) / n  # (N,) x_k^T S x_k
    b2 = (float(np.sum(sq**2)) - 2.0 * float(np.sum(xsx))) / n**2 + s_fro2 / n
    a = 0.0 if d2 <= 1e-18 else float(np.clip(b2 / d2, 0.0, 1.0))
    return math.sqrt((1.0 - a) / n) * xc, a * mu, a


def _frechet(t: np.ndarray, s: np.ndarray) -> float:
    """Fréchet distance between N(mu_t, S_t) and N(mu_s, S_s), S = F^T F + c I (shrunk, see `_shrunk_cov`).

    Both covariances equal c_i * I outside the span of the centred samples (r <= N_t + N_s directions),
    so the trace term is computed exactly in an orthonormal basis Q (D, r) of that span plus
    (D - r) (sqrt(c_t) - sqrt(c_s))^2 for the complement: cost O((N_t + N_s)^2 D), fine when N << D.
    """
    d = t.shape[1]
    mt, ms = t.mean(axis=0), s.mean(axis=0)
    ft, ct, _ = _shrunk_cov(t - mt)
    fs, cs, _ = _shrunk_cov(s - ms)
    u, sv, _ = np.linalg.svd(np.vstack([ft, fs]).T, full_matrices=False)  # (D, N_t + N_s)
    q = u[:, sv > 1e-10 * max(float(sv.max(initial=0.0)), 1e-300)]  # (D, r) basis of the span
    r = q.shape[1]
    at = (ft @ q).T @ (ft @ q) + ct * np.eye(r)  # (r, r) S_t in the basis
    as_ = (fs @ q).T @ (fs @ q) + cs * np.eye(r)
    lt, vt = np.linalg.eigh(at)
    sqrt_t = (vt * np.sqrt(np.clip(lt, 0.0, None))) @ vt.T  # (r, r)
    cross = np.linalg.eigvalsh(sqrt_t @ as_ @ sqrt_t)
    tr = np.trace(at) + np.trace(as_) - 2.0 * np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    tr += (d - r) * (math.sqrt(ct) - math.sqrt(cs)) ** 2
    return float(max(np.sum((mt - ms) ** 2) + tr, 0.0))


def _mmd2_rbf(t: np.ndarray, s: np.ndarray) -> float:
    """Biased (V-statistic) MMD^2 with an RBF kernel, bandwidth = median pairwise distance of the pooled
    set (median heuristic). >= 0, exactly 0 for identical sets."""
    z = np.vstack([t, s])
    sq = np.sum(z * z, axis=1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0, None)  # (N+M, N+M)
    iu = np.triu_indices(z.shape[0], k=1)
    med = float(np.median(d2[iu])) if iu[0].size else 0.0
    kmat = np.exp(-d2 / (med if med > 0 else 1.0))
    n = t.shape[0]
    return float(max(kmat[:n, :n].mean() + kmat[n:, n:].mean() - 2.0 * kmat[:n, n:].mean(), 0.0))


def feature_distance(target_x: np.ndarray, source_x: np.ndarray, *, kind: str = "frechet") -> float:
    """Distance between the target's and a source's pooled features (same extractor, e.g. the generalist).

    target_x (N, D), source_x (M, D); rows are L2-normalised first, so the distance measures direction,
    not feature scale. Smaller = closer; a set against itself gives ~0.
      * "frechet" |mu_t - mu_s|^2 + tr(S_t + S_s - 2 (S_t^1/2 S_s S_t^1/2)^1/2) with Ledoit-Wolf shrunk
                  covariances S = (1-a) C + a (tr C / D) I (Ledoit & Wolf 2004): well-defined and stable
                  when N < D; computed exactly in the span of the samples (no (D, D) eigendecomposition).
      * "mmd"     RBF MMD^2 (biased), bandwidth by the median heuristic.
    """
    t = as_matrix(target_x, "target features")
    s = as_matrix(source_x, "source features")
    if t.shape[1] != s.shape[1]:
        raise RtlError(f"target features have dim {t.shape[1]} but source features have dim {s.shape[1]}")
    t, s = _l2(t), _l2(s)
    if kind == "frechet":
        return _frechet(t, s)
    if kind == "mmd":
        return _mmd2_rbf(t, s)
    raise RtlError(f"unknown feature distance {kind!r}; choose from frechet, mmd")


# ---------------------------------------------------------------------------------------- signed gains
@dataclass(frozen=True)
class Gain:
    """Gain of one expert over the baseline (the generalist), in score units (e.g. accuracy).

    mean: mean gain; std: std of the per-seed gain (paired differences, ddof=1; 0 with one seed);
    n: number of seeds used; verdict: "helps" | "neutral" | "hurts"; noise: max(std, min_noise), the
    noise level the verdict was judged against.
    """

    mean: float
    std: float
    n: int
    verdict: str
    noise: float = 0.0


def _scores(v: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise RtlError(f"{what} has no scores (one per seed expected)")
    if not np.all(np.isfinite(a)):
        raise RtlError(f"{what} contains NaN or inf scores")
    return a


def signed_gains(
    expert_scores: Mapping[str, Sequence[float]],
    baseline_scores: Sequence[float],
    *,
    min_noise: float = 0.01,
    pooled: bool = False,
) -> dict[str, Gain]:
    """Signed gain of each expert over the baseline with a verdict judged against seed noise.

    expert_scores: {source: [score per seed]}, baseline_scores: [score per seed]; higher = better.
    When an expert has as many scores as the baseline, seed i is PAIRED with baseline seed i (same
    split / init seed): gain_i = expert_i - baseline_i, mean = mean_i gain_i, std = std(gain_i, ddof=1).
    Otherwise (unpaired) mean = mean(expert) - mean(baseline), std = sqrt(var(expert) + var(baseline))
    (the std of one expert-minus-baseline difference under independent seeds).

    noise = max(std, min_noise): the floor keeps one seed (std 0) or identical seeds from making any
    tiny difference "significant". With `pooled`, std is replaced by the root-mean-square of all
    experts' stds first (every expert is fine-tuned with the same recipe, so their seed noise is
    comparable, and 2-3 seeds estimate a single std poorly). Verdict: "helps" if mean > 2 noise,
    "hurts" if mean < -2 noise, else "neutral" (the issue's "gain exceeds 2x the seed std").
    """
    if not (min_noise >= 0 and math.isfinite(min_noise)):
        raise RtlError(f"min_noise must be a finite number >= 0, got {min_noise}")
    base = _scores(baseline_scores, "baseline")
    stats: dict[str, tuple[float, float, int]] = {}
    for name, sc in expert_scores.items():
        e = _scores(sc, f"expert {name}")
        if e.size == base.size:
            diff = e - base
            mean = float(diff.mean())
            std = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        else:
            mean = float(e.mean() - base.mean())
            ve = float(e.var(ddof=1)) if e.size > 1 else 0.0
            vb = float(base.var(ddof=1)) if base.size > 1 else 0.0
            std = math.sqrt(ve + vb)
        stats[name] = (mean, std, int(e.size))
    pooled_std = math.sqrt(float(np.mean([s * s for _, s, _ in stats.values()]))) if stats else 0.0
    out: dict[str, Gain] = {}
    for name, (mean, std, n) in stats.items():
        noise = max(pooled_std if pooled else std, min_noise)
        verdict = "helps" if mean > 2 * noise else "hurts" if mean < -2 * noise else "neutral"
        out[name] = Gain(mean=mean, std=std, n=n, verdict=verdict, noise=noise)
    return out


def target_verdict(gains: Mapping[str, Gain]) -> tuple[list[str], str]:
    """(suggested sources, one-line message). suggested = the sources whose verdict is "helps", by
    decreasing mean gain (ties by name); message is NO_SOURCE_HELPS when none does."""
    helps = sorted((n for n, g in gains.items() if g.verdict == "helps"), key=lambda n: (-gains[n].mean, n))
    hurts = sorted(n for n, g in gains.items() if g.verdict == "hurts")
    tail = f"; hurts: {', '.join(hurts)}" if hurts else ""
    if not helps:
        return [], NO_SOURCE_HELPS + tail
    parts = ", ".join(f"{n} ({gains[n].mean:+.3g} ± {gains[n].noise:.2g})" for n in helps)
    return helps, f"{len(helps)} source(s) help: {parts}{tail}"


# ------------------------------------------------------------------------------------------ combining
def _avg_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n (1 = smallest), ties get their average rank."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    sv = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def combine_rankings(
    signals: Mapping[str, Mapping[str, float]],
    *,
    higher_is_better: Mapping[str, bool],
    weights: Mapping[str, float] | None = None,
) -> list[tuple[str, float]]:
    """Combined ranking of sources across signals on different scales: [(source, score)], best first.

    signals: {signal: {source: value}}. Within each signal the sources with a finite value are ranked
    (ties averaged) and the rank is normalised to [0, 1] (0 = best, 1 = worst), so signals covering
    different numbers of sources are comparable; a signal with < 2 finite values carries no ordering and
    is skipped. A source's combined score = 1 - weighted mean of its normalised ranks over the signals
    where it has a value (missing / NaN skipped), in [0, 1], 1 = best on every signal; with full
    coverage and equal weights the order is that of the mean rank. Sources with no value at all come last
    with score NaN. Ties by name.
    """
    if not signals:
        raise RtlError("no signals to combine")
    weights = dict(weights or {})
    for s in list(signals) + list(weights):
        if s not in signals:
            raise RtlError(f"weight given for unknown signal {s!r}")
        if s not in higher_is_better:
            raise RtlError(f"signal {s!r} needs a higher_is_better entry")
    for s, w in weights.items():
        if not (w >= 0 and math.isfinite(w)):
            raise RtlError(f"weight of signal {s!r} must be a finite number >= 0, got {w}")
    sources = sorted({src for vals in signals.values() for src in vals})
    num = dict.fromkeys(sources, 0.0)
    den = dict.fromkeys(sources, 0.0)
    for s, vals in signals.items():
        w = float(weights.get(s, 1.0))
        names = [n for n, v in vals.items() if v is not None and math.isfinite(float(v))]
        if len(names) < 2 or w == 0:
            continue
        v = np.array([float(vals[n]) for n in names])
        r = _avg_ranks(-v if higher_is_better[s] else v)  # 1 = best
        norm = (r - 1.0) / (len(names) - 1)
        for n, x in zip(names, norm):
            num[n] += w * float(x)
            den[n] += w
    scored = [(n, 1.0 - num[n] / den[n] if den[n] > 0 else math.nan) for n in sources]
    return sorted(scored, key=lambda kv: (math.isnan(kv[1]), -kv[1] if not math.isnan(kv[1]) else 0.0, kv[0]))
