"""Shrink a target's training set while keeping val and test fixed: stratified, seeded, nested subsets.

A data-scaling study ("the gain from pretraining shrinks as the target grows"; Kornblith et al. 2019,
"Do Better ImageNet Models Transfer Better?", arXiv 1805.08974, Fig. 5; He et al. 2019, "Rethinking
ImageNet Pre-training", arXiv 1811.08883) compares the same target at several train sizes. For the
curve to mean something the sizes must differ only in how many images there are:

* stratified: the size is applied per class (`per_class` images, or a `fraction` of each class, at least
  one image), so class balance is the target's own;
* seeded: each class is put in one fixed pseudo-random order that depends on (seed, class label) and the
  image paths only — not on the order of labels.csv — so a size is reproducible on any machine;
* nested: a size takes the first n images of that order, so every smaller set is a subset of every larger
  one (the larger run sees everything the smaller one saw, plus more);
* val and test are never touched: these functions only see the train records.

A `per_class` size above what a class has keeps all of that class and says so (`TrainSubset.capped`).
Pure functions: no I/O, no pixels.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from rtl.errors import ConfigError

SizeKind = Literal["per_class", "fraction"]


class _Record(Protocol):
    path: str
    label: str


@dataclass(frozen=True)
class TrainSubset:
    """One train size: the kept image paths (sorted), images kept per class, classes with fewer images
    than asked (label -> images available; `per_class` sizes only)."""

    size: float
    kind: SizeKind
    paths: tuple[str, ...]
    per_class: dict[str, int] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Readable size: `5/class` or `25%`."""
        return f"{int(self.size)}/class" if self.kind == "per_class" else f"{self.size:.0%}"


def check_size(size: float, kind: SizeKind, where: str = "size") -> None:
    """ConfigError unless `size` is an int >= 1 (per_class) or a fraction in (0, 1]."""
    if kind == "per_class":
        if isinstance(size, bool) or not float(size).is_integer() or size < 1:
            raise ConfigError(f"{where}: images per class must be an integer >= 1, got {size!r}")
    elif kind == "fraction":
        if isinstance(size, bool) or not (0 < float(size) <= 1):
            raise ConfigError(f"{where}: a fraction must be in (0, 1], got {size!r}")
    else:
        raise ConfigError(f"{where}: unknown size kind {kind!r}; valid: per_class, fraction")


def _class_seed(seed: int, label: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{label}".encode(), digest_size=8).digest(), "little")


def class_orders(records: Iterable[_Record], seed: int) -> dict[str, list[str]]:
    """label -> the class' train paths in the seeded order every size takes its prefix of."""
    by: dict[str, set[str]] = {}
    for r in records:
        by.setdefault(r.label, set()).add(r.path)
    out = {}
    for label in sorted(by):
        paths = sorted(by[label])  # canonical first: independent of labels.csv order
        perm = np.random.default_rng(_class_seed(seed, label)).permutation(len(paths))
        out[label] = [paths[i] for i in perm]
    return out


def _take(n_class: int, size: float, kind: SizeKind) -> int:
    if kind == "per_class":
        return min(int(size), n_class)
    return min(n_class, max(1, math.floor(float(size) * n_class + 0.5)))  # monotone in size: nests


def subsample_train(records: Iterable[_Record], size: float, *, kind: SizeKind = "per_class",
                    seed: int = 0) -> TrainSubset:
    """The `size` subset of `records` (a target's TRAIN records); see module docstring."""
    check_size(size, kind)
    orders = class_orders(records, seed)
    paths: list[str] = []
    per_class, capped = {}, {}
    for label, order in orders.items():
        n = _take(len(order), size, kind)
        if kind == "per_class" and int(size) > len(order):
            capped[label] = len(order)
        per_class[label] = n
        paths += order[:n]
    return TrainSubset(float(size), kind, tuple(sorted(paths)), per_class, capped)


def nested_train_subsets(records: Sequence[_Record], sizes: Sequence[float], *, kind: SizeKind = "per_class",
                         seed: int = 0) -> list[TrainSubset]:
    """`subsample_train` for every size (same seed, so a smaller size is a subset of a larger one)."""
    return [subsample_train(records, s, kind=kind, seed=seed) for s in sizes]


__all__ = ["TrainSubset", "SizeKind", "check_size", "class_orders", "subsample_train", "nested_train_subsets"]
