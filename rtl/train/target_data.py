"""A target dataset split as a torch Dataset, prepared exactly like corpus images.

decode_fit (decode_image -> fit_size(min_side, max_side)) -> to_channels(model in_channels), cached in memory as uint8
(targets are small: a few thousand images at most); then per item a random `min_side` square crop +
horizontal flip (train) or the centre crop (eval), float in [0, 1], normalised with ImageNet statistics
(`MEAN`/`STD`; luma-weighted single values for 1-channel models). Pretraining should use `to_tensor`
too so source and target inputs match.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rtl.data.convention import DatasetInfo, ImageRecord, resolve_image_path
from rtl.data.transforms import DecodeError, decode_fit, to_channels
from rtl.errors import DatasetError

MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet RGB statistics
MEAN1, STD1 = (0.449,), (0.226,)  # BT.601 luma of the above (approx.)


def mean_std(channels: int) -> tuple[Tensor, Tensor]:
    mean, std = (MEAN1, STD1) if channels == 1 else (MEAN3, STD3)
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)  # (C, 1, 1)


def crop(img: np.ndarray, size: int, *, train: bool, generator: torch.Generator | None = None) -> np.ndarray:
    """(H, W, C) uint8 with H, W >= size -> (size, size, C): random crop + hflip (train) or centre crop."""
    h, w = img.shape[:2]
    if h < size or w < size:  # should not happen after fit_size; pad defensively
        canvas = np.zeros((max(h, size), max(w, size), img.shape[2]), np.uint8)
        canvas[:h, :w] = img
        img, (h, w) = canvas, canvas.shape[:2]
    if train:
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        out = img[top:top + size, left:left + size]
        if bool(torch.randint(0, 2, (1,), generator=generator)):
            out = out[:, ::-1]
        return out
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def to_tensor(img: np.ndarray) -> Tensor:
    """(H, W, C) uint8 -> (C, H, W) float32 in [0, 1], then normalised with `mean_std(C)`."""
    t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    mean, std = mean_std(t.shape[0])
    return (t - mean) / std


class TargetDataset(Dataset):
    """Items: (image (C, min_side, min_side) float, label index into `classes`)."""

    def __init__(self, info: DatasetInfo, split: str | Sequence[ImageRecord], *, classes: Sequence[str],
                 in_channels: int = 3, min_side: int = 64, max_side: int = 72, train: bool = False) -> None:
        records = info.split(split) if isinstance(split, str) else list(split)
        index = {c: i for i, c in enumerate(classes)}
        self.classes, self.min_side, self.train = list(classes), min_side, train
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.paths: list[str] = []
        skipped: list[str] = []
        for rec in records:
            if rec.label not in index:
                skipped.append(f"{rec.path} (unknown label {rec.label!r})")
                continue
            try:
                # decode + fit in one step: the function corpus build and `rtl predict` use too (issue 13)
                img = decode_fit(resolve_image_path(info.root, rec.path), min_side, max_side, keep_gray=True)
                img = to_channels(img, in_channels)
            except (DecodeError, DatasetError, ValueError, OSError) as e:
                skipped.append(f"{rec.path} ({getattr(e, 'reason', e)})")
                continue
            self.images.append(img)
            self.labels.append(index[rec.label])
            self.paths.append(rec.path)
        self.skipped = skipped
        if skipped:
            shown = "; ".join(skipped[:20]) + (f"; ... {len(skipped) - 20} more" if len(skipped) > 20 else "")
            warnings.warn(f"{info.name}: skipped {len(skipped)} unreadable image(s): {shown}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return to_tensor(crop(self.images[i], self.min_side, train=self.train)), self.labels[i]

    def class_counts(self) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes)).tolist()
