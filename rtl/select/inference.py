"""Batched inference of a source checkpoint over a target split: logits (N, K) and features (N, D).

Both selection methods need one forward pass of a source model over the target images: importance
weights (Ngiam et al. 2018) need the logits over the source classes, LogME / H-score the penultimate
features, LEEP / NCE the softmax / arg-max. `infer` computes all three at once:
`features = model.forward_features(x)` and `logits = model.head(features)`.

Parallelism: torch intra-op threads over all local cores by default (restored afterwards). When the
target is large (> `ray_threshold` images) and Ray is already initialised by the caller, the index
range is cut into one chunk per available CPU and each chunk runs as a Ray task. Ray is never
imported here unless the caller already did (CONTRACTS.md: Ray only in corpus build/pretrain/sweep).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from rtl.data.convention import load_dataset
from rtl.errors import RtlError
from rtl.train.checkpoint import load_checkpoint
from rtl.train.target_data import TargetDataset, mean_std

__all__ = ["Inference", "infer", "convert_channels", "infer_checkpoint"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as rtl.data.transforms.to_channels


@dataclass
class Inference:
    logits: np.ndarray  # (N, K) float32
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64 target labels as the dataset yields them

    def probs(self) -> np.ndarray:
        """Source softmax (N, K) in float64 (for LEEP)."""
        z = self.logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) normalised batch -> (B, channels, H, W), same maths as `to_channels` (1->3 replicate,
    3->1 BT.601 luma), applied in pixel space: un-normalise, convert, re-normalise with rtl's statistics."""
    c = x.shape[1]
    if c == channels:
        return x
    if (c, channels) not in ((1, 3), (3, 1)):
        raise RtlError(f"cannot convert {c}-channel target images to a {channels}-channel model")
    m_in, s_in = (v.to(x.dtype).unsqueeze(0) for v in mean_std(c))  # (1, C, 1, 1)
    m_out, s_out = (v.to(x.dtype).unsqueeze(0) for v in mean_std(channels))
    px = x * s_in + m_in  # (B, C, H, W) in [0, 1]
    if channels == 3:
        px = px.expand(-1, 3, -1, -1)
    else:
        px = (px * torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (px - m_out) / s_out


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n if n is not None else (os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run(model: nn.Module, data: Dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    in_ch = int(getattr(model, "in_channels", 3))
    logits, feats, labels = [], [], []
    model.eval()
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0):
            x = convert_channels(x.float(), in_ch)  # (B, C, H, W)
            f = model.forward_features(x)  # (B, D)
            logits.append(model.head(f).numpy())  # (B, K)
            feats.append(f.numpy())
            labels.append(np.asarray(y, dtype=np.int64).reshape(-1))
    return np.concatenate(logits), np.concatenate(feats), np.concatenate(labels)


def _ray_if_initialised() -> Any:
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def infer(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 64,
    num_threads: int | None = None,
    ray_threshold: int = 5000,
) -> Inference:
    """Run `model` (a Backbone) over `data` (a Dataset of (image (C, H, W) normalised, label int)).

    Images whose channel count differs from `model.in_channels` are converted (see `convert_channels`).
    Empty data -> RtlError. Uses Ray tasks only when len(data) > ray_threshold and Ray is initialised.
    """
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise RtlError("the target split has no images: nothing to run the source model on")
    if batch_size < 1:
        raise RtlError(f"batch size must be >= 1, got {batch_size}")
    ray = _ray_if_initialised()
    if ray is not None and n > ray_threshold:
        return _infer_ray(ray, model, data, batch_size)
    with _threads(num_threads):
        lg, ft, lb = _run(model, data, batch_size)
    return Inference(lg, ft, lb)


def _infer_ray(ray: Any, model: nn.Module, data: Dataset, batch_size: int) -> Inference:
    n = len(data)  # type: ignore[arg-type]
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    bounds = np.linspace(0, n, min(cpus, n) + 1).astype(int)

    @ray.remote(num_cpus=1)
    def chunk(m: nn.Module, d: Dataset, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch.set_num_threads(1)
        return _run(m, Subset(d, range(lo, hi)), batch_size)

    m_ref, d_ref = ray.put(model), ray.put(data)
    parts = ray.get([chunk.remote(m_ref, d_ref, int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])])
    return Inference(*(np.concatenate([p[i] for p in parts]) for i in range(3)))


def infer_checkpoint(
    checkpoint: str | Path, target: str | Path, *, split: str = "train", batch_size: int = 64,
    num_threads: int | None = None, sides: tuple[int, int] | None = None,
    default_sides: tuple[int, int] = (64, 72),
) -> tuple[Inference, dict, list[str]]:
    """Load a checkpoint and run it over a target dataset split. -> (inference, meta, target class names).

    The target images are prepared like fine-tuning eval input (decode, `fit_size` to the checkpoint's
    corpus sides, centre crop) and converted to the model's channel count with `to_channels`.
    `sides` = (min_side, max_side) overrides the checkpoint's; `default_sides` is used when the checkpoint
    does not record them (pass the corpus manifest's).
    """
    model, meta = load_checkpoint(checkpoint)
    data, classes = target_dataset(target, split, in_channels=int(getattr(model, "in_channels", 3)),
                                   sides=sides or checkpoint_sides(meta, default_sides))
    return infer(model, data, batch_size=batch_size, num_threads=num_threads), meta, classes


def checkpoint_sides(meta: dict, default: tuple[int, int] = (64, 72)) -> tuple[int, int]:
    """(min_side, max_side) the checkpoint's corpus images were prepared with (as fine-tuning does)."""
    params = meta.get("params") or {}
    lo = meta.get("min_side") or params.get("min_side")
    hi = meta.get("max_side") or params.get("max_side")
    return (int(lo), int(hi or lo)) if lo else default


def target_dataset(
    target: str | Path, split: str, *, in_channels: int, sides: tuple[int, int]
) -> tuple[Dataset, list[str]]:
    """Eval-mode `TargetDataset` over one split of a target folder, labels indexed into its classes."""
    import warnings

    info = load_dataset(target)
    classes = info.classes()
    with warnings.catch_warnings():  # unreadable images are reported by `rtl dataset check`
        warnings.simplefilter("ignore")
        data = TargetDataset(info, split, classes=classes, in_channels=in_channels, min_side=sides[0],
                             max_side=max(sides), train=False)
    if len(data) == 0:
        raise RtlError(f"{target}: no usable images in split {split!r} (ImageSets/Main/{split}.txt)")
    return data, classes
