"""Epoch samplers for distributed pretraining: one global draw per epoch, split across ranks.

Every rank computes the *same* global draw from ``(seed, epoch)`` and keeps positions
``rank::world_size`` of it, so ranks never duplicate an example, together they see exactly the
global draw, and a run on 1 worker sees the same examples in the same global order as a run on
N workers (the basis of the DDP-equivalence test). ``torch.utils.data.DistributedSampler`` does the
same for permutations; we need it for *weighted* draws too, where a per-rank draw would not be a
split of one global draw.

Class weighting follows importance-weighted pretraining of Ngiam et al., "Domain Adaptive Transfer
Learning with Specialist Models" (2018): example ``i`` of class ``c`` is drawn with probability
``w(c) / (sum(w) * n(c))``, so class ``c`` makes up ``w(c) / sum(w)`` of the draw in expectation
regardless of how many examples it has.

With ``with_keys=True`` the samplers yield ``(row, key)`` pairs instead of rows; ``key`` identifies
the draw position (epoch, global position) so the dataset can seed its augmentation from it and be
deterministic irrespective of world size and DataLoader worker count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from torch.utils.data import Sampler

from rtl.errors import RtlError

_KEY_STRIDE = 1 << 40  # key = epoch * _KEY_STRIDE + global position


def draw_key(epoch: int, position: int) -> int:
    """The augmentation key of global draw ``position`` in ``epoch`` (see module docstring)."""
    return epoch * _KEY_STRIDE + position


def _padded_total(num_samples: int, world_size: int) -> int:
    """Round the epoch size up to a multiple of ``world_size`` so every rank runs the same number of
    steps (DDP collectives would otherwise hang on the last batch)."""
    return -(-num_samples // world_size) * world_size


class _GlobalDrawSampler(Sampler):
    """Shared machinery: subclasses implement ``global_draw(epoch) -> (total,) int64``."""

    def __init__(self, num_samples_per_epoch: int, *, rank: int, world_size: int, seed: int,
                 with_keys: bool) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world_size {world_size}")
        if num_samples_per_epoch < 1:
            raise RtlError(f"samples per epoch must be >= 1, got {num_samples_per_epoch}")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.total_size = _padded_total(int(num_samples_per_epoch), world_size)
        self.num_samples = self.total_size // world_size  # per rank
        self.with_keys = with_keys
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def global_draw(self, epoch: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        draw = self.global_draw(self.epoch)  # (total_size,)
        positions = np.arange(self.rank, self.total_size, self.world_size)
        rows = draw[positions]
        if not self.with_keys:
            return iter(rows.tolist())
        keys = draw_key(self.epoch, 0) + positions
        return iter(zip(rows.tolist(), keys.tolist()))

    def __len__(self) -> int:
        return self.num_samples


class WeightedDistributedSampler(_GlobalDrawSampler):
    """Class-weighted sampling with replacement, identical global draw on every rank, split by rank.

    Args:
        class_ids: (N,) class id of each dataset row.
        class_weights: ``{class_id: weight}`` or a dense array indexed by class id. Missing classes
            have weight 0 and are never drawn.
        num_samples_per_epoch: global draw size per epoch (rounded up to a multiple of world_size).
    Raises:
        RtlError: a class with positive weight has no rows, or no class has positive weight.
    """

    def __init__(self, class_ids: np.ndarray, class_weights: Mapping[int, float] | np.ndarray, *,
                 num_samples_per_epoch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 with_keys: bool = False) -> None:
        super().__init__(num_samples_per_epoch, rank=rank, world_size=world_size, seed=seed,
                         with_keys=with_keys)
        cids = np.asarray(class_ids, dtype=np.int64)
        self.probs = example_probabilities(cids, class_weights)  # (N,)
        self._cdf = np.cumsum(self.probs)
        self._cdf /= self._cdf[-1]

    def global_draw(self, epoch: int) -> np.ndarray:
        # Inverse-CDF draw: prefix-consistent, so a larger total only appends draws.
        u = self._rng(epoch).random(self.total_size)
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self._cdf) - 1)


def example_probabilities(class_ids: np.ndarray, class_weights: Mapping[int, float] | np.ndarray
                          ) -> np.ndarray:
    """Per-example draw probabilities ``w(c) / (sum_w * n(c))``, shape (N,), summing to 1."""
    cids = np.asarray(class_ids, dtype=np.int64)
    if cids.ndim != 1 or len(cids) == 0:
        raise RtlError("weighted sampling needs at least one example")
    if isinstance(class_weights, Mapping):
        weights = {int(k): float(v) for k, v in class_weights.items()}
    else:
        arr = np.asarray(class_weights, dtype=np.float64)
        weights = {i: float(v) for i, v in enumerate(arr)}
    bad = sorted(k for k, v in weights.items() if not np.isfinite(v) or v < 0)
    if bad:
        raise RtlError(f"class weights must be finite and >= 0; bad for class ids {bad[:20]}")
    counts = np.bincount(cids, minlength=max([int(cids.max()) + 1, *[k + 1 for k in weights]]))
    empty = sorted(k for k, v in weights.items() if v > 0 and counts[k] == 0)
    if empty:
        raise RtlError(f"classes with positive weight have no examples in the corpus view: ids {empty[:20]}"
                       + (f" (+{len(empty) - 20} more)" if len(empty) > 20 else ""))
    dense = np.zeros(len(counts), dtype=np.float64)
    for k, v in weights.items():
        dense[k] = v
    total = dense.sum()
    if total <= 0:
        raise RtlError("all class weights are zero: nothing to sample")
    per_example = dense / np.maximum(counts, 1) / total  # (K,)
    return per_example[cids]


class DistributedShuffleSampler(_GlobalDrawSampler):
    """Unweighted counterpart: a fresh permutation per epoch (concatenated if the epoch is longer
    than the data, truncated if shorter), same on every rank, split by rank."""

    def __init__(self, num_rows: int, *, num_samples_per_epoch: int | None = None, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, with_keys: bool = False) -> None:
        if num_rows < 1:
            raise RtlError("the corpus view has no examples")
        super().__init__(num_samples_per_epoch or num_rows, rank=rank, world_size=world_size, seed=seed,
                         with_keys=with_keys)
        self.num_rows, self.shuffle = int(num_rows), shuffle

    def global_draw(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        reps = -(-self.total_size // self.num_rows)
        parts = [rng.permutation(self.num_rows) if self.shuffle else np.arange(self.num_rows)
                 for _ in range(reps)]
        return np.concatenate(parts)[: self.total_size]
