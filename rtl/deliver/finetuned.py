"""A fine-tune's selected model as a model folder, with its inspection metrics.

Used by `rtl finetune --save-model` and by every sweep trial (rtl.sweep.deliver.save_trial_model): the
metrics are computed on the target's test split (val when there is none) with the evaluation
preprocessing (centre crop), the same path a served model takes (rtl.deliver.model.prepare_image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rtl.data.convention import load_dataset
from rtl.deliver.metrics import inspection_metrics
from rtl.deliver.model import find_ok_class, finetune_provenance, model_from_finetune, save_model_dir
from rtl.train.target_data import TargetDataset

__all__ = ["evaluate_probs", "finetune_metrics", "finetune_model_folder"]


@torch.no_grad()
def evaluate_probs(model: torch.nn.Module, ds: Any, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), softmax probs (N, K)) of a TargetDataset in eval mode (centre crop), in order."""
    model.eval()
    ys, ps = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        ps.append(torch.softmax(model(x).float(), 1).numpy())  # (B, K)
        ys.append(np.asarray(y))
    k = getattr(model, "num_classes", 0)
    return (np.concatenate(ys) if ys else np.zeros(0, np.int64),
            np.concatenate(ps) if ps else np.zeros((0, k), np.float32))


def finetune_metrics(cfg: Any, res: Any, *, ok_class: str | None = None, max_false_alarm: float = 0.05
                     ) -> tuple[torch.nn.Module, tuple[int, int], str | None, dict[str, Any]]:
    """The fine-tune's selected network, its sides, the ok class and its metrics: val/test error plus
    the inspection metrics on the test split (val when the target has none), keys `<split>_<metric>`."""
    model, sides = model_from_finetune(cfg, res)
    split = "test" if res.n_images.get("test") else "val"
    ds = TargetDataset(load_dataset(cfg.target), split, classes=res.classes, in_channels=model.in_channels,
                       min_side=sides[0], max_side=sides[1], train=False)
    ok = find_ok_class(res.classes, ok_class)
    y, p = evaluate_probs(model, ds)
    insp = inspection_metrics(y, p, res.classes, ok, max_false_alarm=max_false_alarm)
    metrics = {"val_error": res.val_error, "test_error": res.test_error, "eval_split": split,
               **{k: v for k, v in (getattr(res, "metrics", None) or {}).items() if k.startswith("val_")},
               **{f"{split}_{k}": v for k, v in insp.items()}}  # val_<m>: the selected epoch's (sweep objective)
    return model, sides, ok, metrics


def finetune_model_folder(out: str | Path, cfg: Any, res: Any, *, provenance: dict[str, Any] | None = None,
                          ok_class: str | None = None, max_false_alarm: float = 0.05) -> tuple[Path, dict[str, Any]]:
    """Save a fine-tune's selected weights as a model folder with `finetune_metrics`. -> (folder, metrics)."""
    model, sides, ok, metrics = finetune_metrics(cfg, res, ok_class=ok_class, max_false_alarm=max_false_alarm)
    prov = finetune_provenance(cfg, res) | (provenance or {})
    path = save_model_dir(out, model, classes=res.classes, min_side=sides[0], max_side=sides[1], metrics=metrics,
                          provenance=prov, ok_class=ok)
    return path, metrics
