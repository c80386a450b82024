"""Rankings that turn selection numbers into decisions.

* source datasets / domains by their share of the importance mass (Ngiam et al. 2018: pretrain on the
  source data the target "looks like"), and a suggested dataset mask for `pretrain --datasets`;
* candidate checkpoints by transferability scores (LogME / LEEP / NCE), combined by mean rank so
  scores on different scales can be mixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rtl.errors import RtlError

__all__ = ["rank_sources", "suggest_mask", "rank_checkpoints", "top_classes", "format_table"]


def rank_sources(mass_by_name: Mapping[str, float]) -> list[tuple[str, float]]:
    """[(dataset or domain, mass)] sorted by decreasing mass (ties by name)."""
    return sorted(((k, float(v)) for k, v in mass_by_name.items()), key=lambda kv: (-kv[1], kv[0]))


def suggest_mask(
    mass_by_dataset: Mapping[str, float], *, top_k: int | None = None, mass_threshold: float | None = None
) -> list[str]:
    """Datasets to pretrain on: the fewest top datasets covering `mass_threshold` of the mass
    (e.g. 0.9), capped at `top_k`. Never empty: at least the top dataset. No option -> all with mass > 0.
    """
    if not mass_by_dataset:
        raise RtlError("no source datasets to choose from")
    if top_k is not None and top_k < 1:
        raise RtlError(f"top_k must be >= 1, got {top_k}")
    if mass_threshold is not None and not (0.0 < mass_threshold <= 1.0):
        raise RtlError(f"mass_threshold must be in (0, 1], got {mass_threshold}")
    ranked = rank_sources(mass_by_dataset)
    total = sum(max(v, 0.0) for _, v in ranked)
    out: list[str] = []
    acc = 0.0
    for name, v in ranked:
        if out and v <= 0:
            break
        if out and mass_threshold is not None and total > 0 and acc / total >= mass_threshold - 1e-12:
            break
        if top_k is not None and len(out) >= top_k:
            break
        out.append(name)
        acc += max(v, 0.0)
    return out


def top_classes(mass: np.ndarray, class_table: Sequence[dict], k: int) -> list[tuple[dict, float]]:
    """The k classes with the largest mass: [(class entry, mass)]."""
    order = np.argsort(-np.asarray(mass), kind="stable")[:k]
    by_id = {int(c["id"]): c for c in class_table}
    return [(by_id[int(i)], float(mass[i])) for i in order]


def rank_checkpoints(scores: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Rank checkpoints by their scores. scores: {checkpoint: {metric: value}} (higher is better).

    Each metric ranks the checkpoints (1 = best); the final order is by mean rank, ties broken by the
    first metric's value. Returns [{"checkpoint", "mean_rank", <metric>: value, ...}] best first.
    """
    if not scores:
        raise RtlError("no checkpoints to rank")
    names = list(scores)
    metrics = list(next(iter(scores.values())))
    for n in names:
        if list(scores[n]) != metrics:
            raise RtlError(f"checkpoint {n} has metrics {list(scores[n])}, expected {metrics}")
    ranks = np.zeros(len(names))
    for m in metrics:
        vals = np.array([scores[n][m] for n in names], dtype=np.float64)
        vals = np.where(np.isnan(vals), -np.inf, vals)
        order = np.argsort(-vals, kind="stable")
        r = np.empty(len(names))
        r[order] = np.arange(1, len(names) + 1)
        ranks += r
    ranks /= max(len(metrics), 1)
    first = metrics[0] if metrics else None
    rows = [{"checkpoint": n, "mean_rank": float(ranks[i]), **dict(scores[n])} for i, n in enumerate(names)]

    def key(row: dict) -> tuple[float, float]:
        v = row[first] if first is not None else 0.0
        return (row["mean_rank"], -(v if not math.isnan(v) else -math.inf))

    return sorted(rows, key=key)


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain left-aligned text table (floats with 4 significant digits)."""

    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
