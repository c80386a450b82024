"""Importance weights over source classes (Ngiam et al. 2018) and the `weights.json` file.

Ngiam, Peng, Vasudevan, Kornblith, Le, Pang, "Domain Adaptive Transfer Learning with Specialist
Models", arXiv 1811.07056. A model trained on the source corpus is run over the target images; the
average of its (temperature-scaled) softmax estimates the target's distribution over SOURCE classes,
P_t(y). The importance weight of a source class is

    w(y) = P_t(y) / P_s(y)                       (P_s = class frequency in the source corpus)

and in the paper every source EXAMPLE of class y is drawn with probability proportional to w(y), so the
class frequencies seen in pretraining become  w(y) * P_s(y) = P_t(y).

Semantics of the weights file (decision for the `weighted` sampler):
    * `weight`      = w(y), the paper's importance weight (normalised to sum 1 over the classes); a
                      PER-EXAMPLE weight. Kept for reporting and for samplers that weight examples.
    * `class_mass`  = w(y) * P_s(y), normalised = the target-matched CLASS frequency.
Our sampler contract makes CLASS frequencies proportional to the per-class numbers it is given, so the
`weighted` strategy must use `class_mass` (using `weight` as a class frequency would double-count the
prior inversion and over-sample rare source classes). `read_weights` falls back to the normalised
`weight` when a hand-written file has no `class_mass`.

Classes absent from the corpus view (prior 0) are masked out of the target softmax before it is
averaged, i.e. the source model's prediction is restricted to the classes we can actually sample.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from rtl.artifacts.weights import WeightsFile, read_weights  # noqa: F401 (re-exported)
from rtl.errors import RtlError
from rtl.select.transferability import as_matrix

__all__ = [
    "target_class_distribution",
    "importance_weights",
    "class_mass",
    "aggregate_mass",
    "WeightsFile",
    "write_weights",
    "read_weights",
]


def _check_logits(logits: np.ndarray) -> np.ndarray:
    """(N, K) source-model logits over the target images, finite and non-empty."""
    return as_matrix(logits, "target logits")


def target_class_distribution(
    logits: np.ndarray, temperature: float | None, *, mask: np.ndarray | None = None
) -> np.ndarray:
    """P_t(y): mean over target images of softmax(logits / T), float64.  logits (N, K) -> (K,).

    T = None or inf -> uniform (over `mask`); T = 0 -> average of arg-max one-hots (the hard-label
    limit). The softmax uses log-sum-exp, so tiny T gives no NaN/inf. `mask` (K,) bool restricts the
    softmax to the given classes (others get probability 0).
    """
    x = _check_logits(logits)  # (N, K)
    n, k = x.shape
    m = np.ones(k, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != (k,):
        raise RtlError(f"class mask has shape {m.shape}, expected ({k},) to match the logits")
    if not m.any():
        raise RtlError("no source class is present in the corpus view: cannot compute importance weights")
    if temperature is not None and (math.isnan(temperature) or temperature < 0):
        raise RtlError(f"temperature must be >= 0 (or None for uniform), got {temperature}")
    out = np.zeros(k, dtype=np.float64)
    if temperature is None or math.isinf(temperature):
        out[m] = 1.0 / m.sum()
        return out
    xm = np.where(m[None, :], x, -np.inf)  # (N, K), absent classes never win
    if temperature > 0:
        with np.errstate(over="ignore"):
            z = xm / temperature  # (N, K)
        if np.all(np.isfinite(z[:, m])):
            z = z - z.max(axis=1, keepdims=True)  # (N, K) max 0 per row
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            return np.exp(logp).mean(axis=0)
        # logits / T overflowed: the softmax is numerically the arg-max one-hot, fall through
    idx = xm.argmax(axis=1)  # (N,)
    np.add.at(out, idx, 1.0 / n)
    return out


def importance_weights(
    logits: np.ndarray,
    class_prior: np.ndarray,
    temperature: float | None,
    *,
    eps: float = 1e-12,
) -> np.ndarray:
    """Importance weights w(y) = P_t(y) / P_s(y) over the K source classes, normalised to sum 1.

    logits: (N, K) source-model logits on the target images. class_prior: (K,) class counts or
    frequencies of the corpus view (0 for a class not in the view -> weight 0). Returns (K,) >= 0.
    These are the paper's PER-EXAMPLE weights; for class sampling frequencies use `class_mass`.
    """
    x = _check_logits(logits)
    prior = np.asarray(class_prior, dtype=np.float64).reshape(-1)
    if prior.shape[0] != x.shape[1]:
        raise RtlError(
            f"class prior has {prior.shape[0]} classes but the model outputs {x.shape[1]}; "
            "the checkpoint and corpus class tables differ"
        )
    if not np.all(np.isfinite(prior)) or np.any(prior < 0):
        raise RtlError("class prior must be finite and non-negative")
    total = prior.sum()
    if total <= 0:
        raise RtlError("class prior is all zero: the corpus view has no images")
    ps = prior / total  # (K,)
    present = ps > eps
    pt = target_class_distribution(x, temperature, mask=present)  # (K,)
    w = np.zeros_like(ps)
    w[present] = pt[present] / ps[present]
    s = w.sum()
    if not np.isfinite(s) or s <= 0:  # cannot happen with the mask, kept as a guard
        raise RtlError("importance weights are all zero")
    return w / s


def class_mass(weights: np.ndarray, class_prior: np.ndarray) -> np.ndarray:
    """Target-matched class frequency: normalised w(y) * P_s(y)  (K,) -> (K,). What the sampler uses."""
    w = np.asarray(weights, dtype=np.float64)
    p = np.asarray(class_prior, dtype=np.float64)
    mass = w * p
    s = mass.sum()
    if s <= 0:
        raise RtlError("importance mass is zero for every class present in the corpus view")
    return mass / s


def aggregate_mass(mass: np.ndarray, class_table: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Sum per-class mass by source dataset and by domain tag.

    A class with several domain tags counts fully toward each tag, so domain masses can sum to > 1.
    Returns ({dataset: mass}, {domain: mass}), each sorted by decreasing mass.
    """
    if len(class_table) != len(mass):
        raise RtlError(f"class table has {len(class_table)} classes but {len(mass)} masses were given")
    by_ds: dict[str, float] = {}
    by_dom: dict[str, float] = {}
    for c in class_table:
        v = float(mass[int(c["id"])])
        by_ds[c["dataset"]] = by_ds.get(c["dataset"], 0.0) + v
        for tag in c.get("domain", []) or []:
            by_dom[tag] = by_dom.get(tag, 0.0) + v

    def srt(d: dict[str, float]) -> dict[str, float]:
        return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))

    return srt(by_ds), srt(by_dom)


def write_weights(
    path: str | Path,
    *,
    corpus_version: str | None,
    temperature: float | None,
    class_table: list[dict],
    weights: np.ndarray,
    mass: np.ndarray,
    suggested_datasets: list[str] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `weights.json` (CONTRACTS.md "Selection" + `class_mass`, per-dataset/-domain mass).

    One entry per class of the FULL class table (weight 0 for classes outside the view). Atomic write.
    """
    if not (len(class_table) == len(weights) == len(mass)):
        raise RtlError("class table, weights and class mass lengths differ")
    by_ds, by_dom = aggregate_mass(mass, class_table)
    t = None if temperature is None or math.isinf(temperature) else float(temperature)
    doc = {
        "corpus_version": corpus_version,
        "temperature": t,
        "classes": [
            {
                "id": int(c["id"]),
                "dataset": c["dataset"],
                "label": c["label"],
                "weight": float(weights[int(c["id"])]),
                "class_mass": float(mass[int(c["id"])]),
            }
            for c in class_table
        ],
        "datasets": by_ds,
        "domains": by_dom,
        "suggested_datasets": list(suggested_datasets or []),
        **(extra or {}),
    }
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".weights-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise RtlError(f"{path}: cannot write weights file ({e.strerror})") from None
    return path


