"""Linear probe: frozen features -> multinomial logistic regression, C chosen on the validation split.

The standard "how good are these features" measurement (Kornblith et al. 2019, "Do better ImageNet
models transfer better?", which also selects the L2 strength on a held-out split). Features are the
model's pooled `forward_features` on centre crops (no augmentation), standardised with train
statistics; scikit-learn's L-BFGS LogisticRegression is fitted for each C in a log grid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rtl.errors import DatasetError
from rtl.train.engine import OnEpoch
from rtl.train.finetune import FinetuneResult

C_GRID = tuple(10.0 ** k for k in range(-3, 4))  # 1e-3 .. 1e3


@torch.no_grad()
def extract_features(model: torch.nn.Module, ds: Any, *, device: str = "cpu", batch_size: int = 64
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float32 features of centre crops, (N,) int labels."""
    ds = copy.copy(ds)
    ds.train = False  # centre crops only
    model = model.to(device).eval()
    feats, labels = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        feats.append(model.forward_features(x.to(device)).float().cpu().numpy())
        labels.append(np.asarray(y))
    if not feats:
        return np.zeros((0, getattr(model, "feature_dim", 0)), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels).astype(np.int64)


def _stats(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, list[float], list[list[int]]]:
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (y, pred), 1)
    rows = conf.sum(1)
    per_class = [float(conf[i, i] / rows[i]) if rows[i] else math.nan for i in range(k)]
    return float(1.0 - np.trace(conf) / max(1, len(y))), per_class, conf.tolist()


def _log_loss(clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    p = clf.predict_proba(x)  # (N, n_seen)
    col = {c: i for i, c in enumerate(clf.classes_)}
    py = np.array([p[i, col[c]] if c in col else 0.0 for i, c in enumerate(y)])
    return float(-np.log(np.clip(py, 1e-12, 1.0)).mean())


def run_probe(model: torch.nn.Module, data: dict[str, Any], classes: Sequence[str], *, device: str = "cpu",
              batch_size: int = 64, on_epoch: OnEpoch | None = None, keep_state: bool = False,
              c_grid: Sequence[float] = C_GRID):
    """Fit a probe per C on train, select C by (val error, val log-loss), report test once. -> FinetuneResult.

    history holds one entry per C tried (`epoch` = index in the grid, plus `C`). With keep_state, the
    chosen probe is folded into the model's linear head (standardisation included) and returned.
    """
    from sklearn.linear_model import LogisticRegression

    k = len(classes)
    xs = {s: extract_features(model, d, device=device, batch_size=batch_size) for s, d in data.items()}
    x_tr, y_tr = xs["train"]
    if len(np.unique(y_tr)) < 2:
        raise DatasetError("linear probe needs at least 2 classes in the train split")
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    z = {s: ((x - mu) / sd, y) for s, (x, y) in xs.items()}
    history, best, best_key = [], None, (math.inf, math.inf)
    for i, c in enumerate(c_grid):
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(*z["train"])
        err, _, _ = _stats(z["val"][1], clf.predict(z["val"][0]), k)
        metrics = {"epoch": i, "C": c, "train_loss": _log_loss(clf, *z["train"]), "val_error": err,
                   "val_loss": _log_loss(clf, *z["val"])}
        history.append(metrics)
        if (err, metrics["val_loss"]) < best_key:
            best_key, best = (err, metrics["val_loss"]), (i, clf)
        if on_epoch is not None and on_epoch(i, dict(metrics)):
            break
    best_i, clf = best
    final = "test" if len(z["test"][1]) else "val"
    err, per_class, conf = _stats(z[final][1], clf.predict(z[final][0]), k)
    state = None
    if keep_state and isinstance(getattr(model, "head", None), torch.nn.Linear):
        w = np.zeros((k, x_tr.shape[1]))
        b = np.zeros(k)
        coef, icpt = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row for classes_[1]
            coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
        w[clf.classes_] = coef / sd
        b[clf.classes_] = icpt - (coef * (mu / sd)).sum(1)
        b[np.setdiff1d(np.arange(k), clf.classes_)] = -1e4
        model.reset_head(k, "linear")
        model.head.weight.data.copy_(torch.as_tensor(w, dtype=torch.float32))
        model.head.bias.data.copy_(torch.as_tensor(b, dtype=torch.float32))
        state = {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}
    return FinetuneResult(
        val_error=best_key[0], test_error=err if final == "test" else None,
        per_class_accuracy=dict(zip(classes, per_class)), history=history, best_epoch=best_i,
        classes=list(classes), confusion=conf, model_state=state,
    )
